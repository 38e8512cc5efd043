"""Files and folders written atomically: a reader sees the old content or the new one, never half
of it, also across a crash or a full disk.

A file is written to a temporary name in the same folder (so the rename cannot cross file
systems), flushed to the disk (``fsync``), renamed over the target (``os.replace``), then the
folder itself is flushed, so that the rename survives a power cut. Temporary files are named
``.<stem>.<random>.tmp<suffix>`` (the target's extension kept) and removed when the write fails.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["write_atomic", "written", "written_folder"]


@contextmanager
def written(path: str | os.PathLike, *, mode: int = 0o600) -> Iterator[Path]:
    """A temporary file beside ``path`` for the caller (or a library that wants a file name, such
    as ``torch.onnx.export``) to fill; renamed over ``path`` when the block ends without an
    exception, removed when it raises (``path`` is then left as it was).

    Args:
        path: the file to write; its folder must exist.
        mode: permission bits of the new file (default 0600, readable by this user only, as
            :func:`tempfile.mkstemp` creates it).

    Yields:
        The temporary file's path (created empty, already with ``mode``).

    Raises:
        OSError: the temporary file cannot be created, flushed or renamed (it is removed).
    """
    path = Path(path)
    # the name keeps the suffix: a library writing to it may pick a format by the file's extension
    fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    tmp = Path(name)
    try:
        try:
            if mode != 0o600:
                os.fchmod(fd, mode)
        finally:
            os.close(fd)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_folder(path.parent)


def write_atomic(path: str | os.PathLike, data: bytes | str, *, mode: int = 0o600) -> None:
    """Write ``data`` (``str`` as UTF-8) to ``path`` atomically (:func:`written`), the file
    getting ``mode`` (default 0600).

    Raises:
        OSError: it cannot be written; ``path`` is then left as it was and no temporary file stays.
    """
    with written(path, mode=mode) as tmp, open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


@contextmanager
def written_folder(path: str | os.PathLike) -> Iterator[Path]:
    """A new, empty temporary folder beside ``path`` (mode 0700) for the caller to fill; when the
    block ends without an exception, what is at ``path`` (a folder and all it holds, or a file)
    is removed and the temporary folder renamed to ``path``; when it raises, the temporary folder
    is removed and ``path`` left as it was.

    ``path``'s parent must exist; ``path`` itself should not be a symbolic link (resolve it first:
    a link is replaced, not written through).
    """
    path = Path(path)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}-"))
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_folder(path.parent)


def fsync_folder(folder: str | os.PathLike) -> None:
    """Flush ``folder``'s entries (a rename or a new file in it) to the disk; a no-op where folders
    cannot be opened for that (Windows) or the file system refuses."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
