"""Sharing one Milvus Lite database between processes (the UI while ``vitsearch index`` writes).

Milvus Lite serves a ``.db`` directory from inside the process that opens it, over gRPC on a
loopback port, and holds an exclusive ``flock`` on ``<db>/LOCK`` meanwhile: a second process
cannot open it. So the first vitsearch process to open a database serves it (Lite's own
in-process server, started through ``milvus_lite.server_manager`` as pymilvus does for ``.db``
URIs) and publishes that server's URI in ``<db>/vitsearch-endpoint.json``. Any other vitsearch
process finds the lock taken, reads the endpoint and connects to it as to a Milvus server. When
the serving process exits, the lock is released; the next open (or a reconnect, see
:class:`~vitsearch.search.store.Store`) takes over the serving.

No daemon is started and nothing outlives the processes that use the database.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import threading
import time
from pathlib import Path

from ..errors import StoreError
from ..processes import pid_alive

log = logging.getLogger(__name__)
ENDPOINT_FILE = "vitsearch-endpoint.json"
_POLL_S = 0.1
#: What a Milvus Lite 3 database directory holds (a folder with none of these is something else).
_LITE_MARKERS = {"LOCK", "collections", "databases", ".database-staging", ENDPOINT_FILE}
_serving = threading.Lock()


def lite_uri(db: Path, wait_s: float) -> tuple[str, bool]:
    """A gRPC URI that serves the Milvus Lite database ``db``, for ``MilvusClient(uri=...)``.

    Serves ``db`` from this process when no other process holds it; otherwise returns the URI
    published by the process that does, waiting up to ``wait_s`` seconds for it to appear (a
    process that has just taken the lock publishes within milliseconds).

    Args:
        db: the Lite database directory (created if missing; its parent must exist).
        wait_s: seconds to wait for a published endpoint when the database is held elsewhere.

    Returns:
        ``(uri, served_here)``: ``http://127.0.0.1:PORT`` and whether this process serves it.

    Raises:
        StoreError: ``db`` is not a Lite 3 directory (a file, a folder of other files, a path
            under a file), cannot be created or opened (read-only: the reason is given), or is
            held by a process that does not publish an endpoint (not vitsearch) for longer than
            ``wait_s``.
    """
    db = db.expanduser().absolute()
    _check_path(db)
    deadline = time.monotonic() + wait_s
    while True:
        uri, error = _serve(db)
        if uri is not None:
            _publish(db, uri)
            return uri, True
        if not is_locked(db):  # free, yet it failed to open: not a lock problem
            raise StoreError(f"cannot open Milvus Lite database {db}: {error}")
        published = _published(db)
        if published is not None:
            return published, False
        if time.monotonic() >= deadline:
            raise StoreError(
                f"Milvus Lite database {db} is open in another process that does not share it "
                f"(not a vitsearch process, or an older one); waited {wait_s:g} s. Close that "
                f"process, or use a Milvus server")
        time.sleep(_POLL_S)


def _check_path(db: Path) -> None:
    """Refuse, before anything is written, a path that cannot be a Lite database; create its parent."""
    for parent in reversed(db.parents):
        if parent.exists() and not parent.is_dir():
            raise StoreError(f"cannot use {db} as a Milvus Lite database: {parent} is a file, not a folder")
    if db.exists() and not db.is_dir():
        raise StoreError(f"{db} is a file, not a Milvus Lite database directory (files of milvus-lite "
                         f"before 3.0 cannot be read by this version): use a new path")
    if db.is_dir():
        entries = sorted(os.listdir(db))
        if entries and not set(entries) & _LITE_MARKERS:
            raise StoreError(f"{db} is a folder that is not a Milvus Lite database (it holds {len(entries)} "
                             f"other entries, such as {entries[0]!r}): give the database a path of its own, "
                             f"such as ~/vitsearch/milvus.db")
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder of Milvus Lite database {db}: {exc.strerror or exc}") from None


def release(db: Path) -> None:
    """Stop serving ``db`` from this process and close it (releasing its lock); a no-op if this
    process does not serve it. Clients in other processes then take it over."""
    from milvus_lite.server_manager import server_manager_instance

    server_manager_instance.release_server(str(db.expanduser().absolute()))


def _serve(db: Path) -> tuple[str | None, str]:
    """Start (or reuse) this process's Lite server for ``db``: ``(uri, "")`` or ``(None, why)``."""
    from milvus_lite.server_manager import server_manager_instance

    errors: list[str] = []

    class Catch(logging.Handler):  # the server manager logs its failure and returns None
        def emit(self, record: logging.LogRecord) -> None:
            exc = record.exc_info[1] if record.exc_info else None
            errors.append(_reason(exc) if exc else record.getMessage())

    logger = logging.getLogger("milvus_lite.server_manager")
    handler = Catch(logging.ERROR)
    with _serving:  # the logger is switched to us for the call, and back
        level, propagate = logger.level, logger.propagate
        logger.addHandler(handler)
        logger.setLevel(logging.ERROR)
        logger.propagate = False  # its traceback is not the user's business; the reason is
        try:
            uri = server_manager_instance.start_and_get_uri(str(db))
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
    return uri, "; ".join(errors) or "unknown error"


def _reason(exc: BaseException) -> str:
    """One line on why a Lite database could not be opened."""
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"{exc.strerror}: {exc.filename} (the database is read-only here: Milvus Lite needs write "
                f"access to open a database, also only to search it; copy it to a writable place)")
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"{exc.strerror}: {exc.filename} (the disk is full)"
    return f"{type(exc).__name__}: {exc}"


def _publish(db: Path, uri: str) -> None:
    """Write ``{"pid", "uri"}`` to the endpoint file atomically (rename over the old one). Where
    it cannot be written (a full disk, a read-only folder), this process still serves the
    database but other processes cannot share it; nothing half-written is left."""
    record = {"pid": os.getpid(), "uri": uri}
    path = db / ENDPOINT_FILE
    try:
        if json.loads(path.read_text()) == record:
            return
    except (OSError, ValueError):
        pass
    tmp = db / f".{ENDPOINT_FILE}.{os.getpid()}"
    try:
        tmp.write_text(json.dumps(record))
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        log.warning("cannot publish the endpoint of %s (%s): other processes cannot share the database "
                    "while this one has it open", db, exc.strerror or exc)


def _published(db: Path) -> str | None:
    """The URI published by a live process other than this one, or None."""
    try:
        record = json.loads((db / ENDPOINT_FILE).read_text())
        pid, uri = int(record["pid"]), str(record["uri"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if pid == os.getpid() or not pid_alive(pid):
        return None
    return uri


def is_locked(db: Path) -> bool:
    """Whether a process (this one included) holds Milvus Lite's ``flock`` on ``<db>/LOCK``."""
    lock = db / "LOCK"
    if os.name != "posix" or not lock.exists():
        return False
    import fcntl

    with open(lock, "rb") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False
