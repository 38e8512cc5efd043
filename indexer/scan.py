"""Walking a folder for image files."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from vitsearch.search.images import is_image_file, not_regular


@dataclass(frozen=True)
class FileEntry:
    """An image file found by :func:`scan`.

    Attributes:
        path: absolute path (``os.fsdecode``: a byte that is not UTF-8 as a surrogate).
        size: bytes. mtime: Unix seconds (a user can set it back).
        ctime_ns: inode change time in Unix nanoseconds (no user can set it back), or -1 where
            the source has none (an object store).
        inode: the inode number as a signed 64-bit integer, or -1 where the source has none.
        sha256: the sha256 of this path's row when the file's bytes are to be compared with it
            before embedding (its metadata changed, or ``--verify``); None for a new file.
    """

    path: str
    size: int
    mtime: float
    ctime_ns: int = -1
    inode: int = -1
    sha256: str | None = None

    @classmethod
    def of(cls, path: str, st: os.stat_result) -> FileEntry:
        """The entry of ``path`` from its ``os.stat`` (links followed)."""
        inode = st.st_ino - 2**64 if st.st_ino >= 2**63 else st.st_ino  # Milvus INT64 is signed
        return cls(path, st.st_size, st.st_mtime, st.st_ctime_ns, inode)

    @classmethod
    def at(cls, path: str) -> FileEntry | None:
        """The entry of the regular file (or link to one) at ``path``; None when there is none."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        return cls.of(path, st) if stat.S_ISREG(st.st_mode) else None


def is_regular_file(path: str) -> bool:
    """Whether ``path`` is a regular file, or a link to one (False when it cannot be stat'ed)."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def scan(
    root: str, on_error: Callable[[str, str], None], on_unsupported: Callable[[str], None] | None = None
) -> Iterator[FileEntry]:
    """Image files under ``root``, recursively, in sorted order within each folder.

    Files with an extension of :data:`~vitsearch.search.images.IMAGE_EXTENSIONS` are yielded;
    symbolic links to files are followed, also to files outside ``root`` (the row keeps the
    link's path); links to folders are not (no loops, no escaping ``root`` by a folder). A folder
    or file that cannot be listed or stat'ed, and a link to nothing (or to a link loop), is passed
    to ``on_error(path, reason)`` and skipped, as is a pipe, socket or device with an image
    extension (never opened: reading a pipe could block forever). Every other regular file (or
    link to one) that is not hidden is passed to ``on_unsupported(path)``, if given: a file of a
    kind vitsearch does not index (a video, a RAW file...), for the summary to count.
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
                elif not is_image_file(entry.name):
                    if on_unsupported is not None and not entry.name.startswith(".") and entry.is_file():
                        on_unsupported(entry.path)
                    continue
                elif entry.is_file():
                    yield FileEntry.of(entry.path, entry.stat())
                elif entry.is_symlink() and not os.path.exists(entry.path):
                    os.stat(entry.path)  # raises: says why (no such file, loop)
                elif not entry.is_dir():
                    on_error(entry.path, not_regular(entry.stat().st_mode))
            except OSError as exc:
                on_error(entry.path, f"cannot stat: {exc.strerror or exc}")
        stack.extend(reversed(subfolders))
