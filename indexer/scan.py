"""Walking a folder for image files."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

from vitsearch.search.images import is_image_file


@dataclass(frozen=True)
class FileEntry:
    """An image file found by :func:`scan`: absolute ``path``, ``size`` in bytes, ``mtime`` in Unix seconds."""

    path: str
    size: int
    mtime: float


def scan(root: str, on_error: Callable[[str, str], None]) -> Iterator[FileEntry]:
    """Image files under ``root``, recursively, in sorted order within each folder.

    Files with an extension of :data:`~vitsearch.search.images.IMAGE_EXTENSIONS` are yielded;
    symbolic links to files are followed, links to folders are not (no loops). A folder or file
    that cannot be listed or stat'ed is passed to ``on_error(path, reason)`` and skipped.
    """
    stack = [os.path.abspath(root)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            on_error(folder, f"cannot list folder: {exc.strerror or exc}")
            continue
        subfolders = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    subfolders.append(entry.path)
                elif is_image_file(entry.name) and entry.is_file():
                    st = entry.stat()
                    yield FileEntry(entry.path, st.st_size, st.st_mtime)
            except OSError as exc:
                on_error(entry.path, f"cannot stat: {exc.strerror or exc}")
        stack.extend(reversed(subfolders))
