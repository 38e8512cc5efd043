"""Where the files to index come from: a folder (:func:`.scan.scan`), or a URI that ``pyarrow.fs``
opens (``s3://``, ``gs://``, ``abfs://``, ``hdfs://``, ``file://``), the filesystem layer Ray
Data's own readers use (``vitsearch index SOURCE --engine ray``, :mod:`.ray_engine`)."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator

from vitsearch.search.errors import BadImageError
from vitsearch.search.images import Limits

from .scan import FileEntry, scan


def is_uri(source: str) -> bool:
    """True for ``scheme://...`` sources (object stores, ``file://``), False for plain paths."""
    return "://" in source


def list_source(source: str, on_error: Callable[[str, str], None]) -> Iterator[FileEntry]:
    """Image files under ``source`` with size and mtime: :func:`.scan.scan` for a folder, a
    recursive ``pyarrow.fs`` listing for a URI (rows keyed by the full URI).

    Raises:
        NotADirectoryError: ``source`` is neither a folder nor a listable URI prefix.
    """
    if not is_uri(source):
        if not os.path.isdir(source):
            raise NotADirectoryError(f"{source} is not a folder")
        yield from scan(os.path.abspath(source), on_error)
        return
    from pyarrow import fs as pafs

    from vitsearch.search.images import is_image_file

    try:
        filesystem, root = pafs.FileSystem.from_uri(source)
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as exc:
        raise NotADirectoryError(f"cannot list {source}: {exc}") from None
    scheme = source.split("://", 1)[0]
    for info in sorted(infos, key=lambda i: i.path):  # an object store has no ctime or inode: -1
        if info.type == pafs.FileType.File and is_image_file(info.path):
            yield FileEntry(f"{scheme}://{info.path}", int(info.size), info.mtime.timestamp())


@functools.lru_cache(maxsize=8)
def _filesystem(root: str):
    """One ``pyarrow.fs`` filesystem per ``scheme://host`` and process (opening an object
    store's resolves credentials and region: once, not per file)."""
    from pyarrow import fs as pafs

    return pafs.FileSystem.from_uri(root)[0]


def read_uri(uri: str, limits: Limits = Limits()) -> bytes:
    """A file's bytes through ``pyarrow.fs`` (``s3://bucket/key``, ``file:///path``...), at most
    ``limits.max_file_bytes`` of them (the size is checked before reading).

    Raises:
        BadImageError: the file cannot be opened or read, or is over the limit, naming the URI.
    """
    scheme, path = uri.split("://", 1)  # pyarrow's path: "bucket/key", or "/path" for file://
    host = path.split("/", 1)[0]  # the bucket; "" for file:///path
    try:
        filesystem = _filesystem(f"{scheme}://{host or '/'}")
        limits.check_size(filesystem.get_file_info(path).size or 0, uri)
        with filesystem.open_input_stream(path) as f:
            data = f.read(limits.max_file_bytes + 1)
    except (OSError, ValueError) as exc:
        raise BadImageError(uri, str(exc)) from None
    limits.check_size(len(data), uri)
    return data
