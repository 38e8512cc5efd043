"""Sharing one Milvus Lite database between processes (the UI while ``vitsearch index`` writes).

Milvus Lite serves a ``.db`` directory from inside the process that opens it, over gRPC, and
holds an exclusive ``flock`` on ``<db>/LOCK`` meanwhile: a second process cannot open it. So
the first vitsearch process to open a database serves it (Lite's own gRPC servicer, in this
process) and publishes the server's URI in ``<db>/vitsearch-endpoint.json``. Any other
vitsearch process finds the lock taken, reads the endpoint and connects to it as to a Milvus
server. When the serving process exits, the lock is released; the next open (or a reconnect,
see :class:`~vitsearch.search.store.Store`) takes over the serving.

Only the user who owns the database gets in: the server listens on a Unix domain socket
(``unix:<db>/vitsearch.sock``, mode 0600), not on a TCP port that every local user can reach;
the database folder is made (or made again) 0700 and the endpoint file 0600. Where the folder
cannot hold a socket (a path longer than a socket address allows, ~107 bytes; a file system
without sockets), the socket lives in a private 0700 folder of the system's temporary folder.

Before Lite opens a database its files are checked (:mod:`.lite_files`): a damaged one is
refused, nothing in it changed; files Lite's recovery would delete from a sound one are kept
under ``<db>/vitsearch-kept/`` first.

No daemon is started and nothing outlives the processes that use the database.
"""

from __future__ import annotations

import atexit
import errno
import json
import logging
import os
import shutil
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DatabaseDamagedError, StoreError
from ..files import write_atomic
from ..processes import pid_alive
from .lite_files import inspect, keep

log = logging.getLogger(__name__)
ENDPOINT_FILE = "vitsearch-endpoint.json"
#: The serving process's Unix socket, in the database folder where it can be.
SOCKET_FILE = "vitsearch.sock"
_POLL_S = 0.1
#: What a Milvus Lite 3 database directory holds (a folder with none of these is something else).
_LITE_MARKERS = {"LOCK", "collections", "databases", ".database-staging", ENDPOINT_FILE}
#: gRPC message limit of the server, each way: Lite's own server's (``milvus_lite.adapter.grpc.
#: server``), which :attr:`~.profile.LITE` ``read_rows`` is sized for.
_MESSAGE_BYTES = 256 * 1024 * 1024
#: Threads answering calls (Lite's own server has 10).
_WORKERS = 10


@dataclass
class _Served:
    """A database this process serves: its gRPC server, Lite's handle, the socket (and the
    private folder holding it, when not the database folder)."""

    server: Any
    lite: Any
    socket: Path
    scratch: Path | None

    @property
    def uri(self) -> str:
        return f"unix:{self.socket}"


_served: dict[Path, _Served] = {}
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
        ``(uri, served_here)``: ``unix:/path/of/socket`` and whether this process serves it.

    Raises:
        DatabaseDamagedError: its files are damaged (see :mod:`.lite_files`); nothing in it
            was changed.
        StoreError: ``db`` is not a Lite 3 directory (a file, a folder of other files, a path
            under a file), cannot be created or opened (read-only: the reason is given), or is
            held by a process that does not publish an endpoint (not vitsearch) for longer than
            ``wait_s``.
    """
    db = db.expanduser().absolute()
    _check_path(db)
    deadline = time.monotonic() + wait_s
    while True:
        uri = _serve(db)
        if uri is not None:
            _publish(db, uri)
            return uri, True
        published = _published(db)
        if published is not None:
            return published, False
        if time.monotonic() >= deadline:
            raise StoreError(
                f"Milvus Lite database {db} is open in another process that does not share it "
                f"(not a vitsearch process, or an older one); waited {wait_s:g} s. Close that "
                f"process, or use a Milvus server"
            )
        time.sleep(_POLL_S)


def _check_path(db: Path) -> None:
    """Refuse, before anything is written, a path that cannot be a Lite database; create its parent
    folders, and the database folder itself mode 0700."""
    for parent in reversed(db.parents):
        if parent.exists() and not parent.is_dir():
            raise StoreError(f"cannot use {db} as a Milvus Lite database: {parent} is a file, not a folder")
    if db.exists() and not db.is_dir():
        raise StoreError(
            f"{db} is a file, not a Milvus Lite database directory (files of milvus-lite "
            f"before 3.0 cannot be read by this version): use a new path"
        )
    if db.is_dir():
        entries = sorted(os.listdir(db))
        if entries and not set(entries) & _LITE_MARKERS:
            raise StoreError(
                f"{db} is a folder that is not a Milvus Lite database (it holds {len(entries)} "
                f"other entries, such as {entries[0]!r}): give the database a path of its own, "
                f"such as ~/vitsearch/milvus.db"
            )
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        db.mkdir(mode=0o700, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder of Milvus Lite database {db}: {exc.strerror or exc}") from None


def release(db: Path) -> None:
    """Stop serving ``db`` from this process and close it (releasing its lock); a no-op if this
    process does not serve it. Clients in other processes then take it over."""
    with _serving:
        served = _served.pop(db.expanduser().absolute(), None)
        if not _served:
            atexit.unregister(_release_all)
    if served is None:
        return
    served.server.stop(grace=2).wait()
    served.lite.close()
    served.socket.unlink(missing_ok=True)
    if served.scratch is not None:
        shutil.rmtree(served.scratch, ignore_errors=True)


def _release_all() -> None:
    """Release every database this process serves (at exit: registered while it serves one)."""
    for db in list(_served):
        release(db)


def _serve(db: Path) -> str | None:
    """Open ``db`` and serve it from this process (or find it served here already).

    Returns:
        its URI, or None when another process holds it.

    Raises:
        DatabaseDamagedError: its files are damaged; it was closed again, nothing changed.
        StoreError: it cannot be opened or served; the message says why.
    """
    from milvus_lite.db import MilvusLite
    from milvus_lite.exceptions import DataDirLockedError

    with _serving:
        if db in _served:
            return _served[db].uri
        try:
            lite = MilvusLite(str(db))  # takes the lock; it opens no collection yet
        except DataDirLockedError:
            return None
        except Exception as exc:  # OSError, or whatever Lite makes of a folder that is not its own
            raise StoreError(f"cannot open Milvus Lite database {db}: {_reason(exc)}") from None
        try:
            _own(db)
            _check_files(db)
            served = _start(db, lite)
        except BaseException:
            lite.close()
            raise
        if not _served:
            atexit.register(_release_all)
        _served[db] = served
        return served.uri


def _own(db: Path) -> None:
    """Make the database folder this user's alone (0700), where an older vitsearch or Lite
    itself made it readable by others (0755): the rows' paths and vectors are in its files."""
    try:
        info = db.stat()
        if info.st_uid == os.geteuid() and info.st_mode & 0o077:
            db.chmod(0o700)
    except OSError as exc:
        log.warning(
            "cannot make Milvus Lite database %s private to its owner (%s): other users may read it",
            db,
            exc.strerror or exc,
        )


def _check_files(db: Path) -> None:
    """Refuse a damaged database; keep a copy of the files Lite's recovery is about to delete.

    Raises:
        DatabaseDamagedError: what is damaged, and how to recover.
        StoreError: the files to be deleted could not be kept.
    """
    try:
        found = inspect(db)
    except OSError as exc:
        raise StoreError(f"cannot read Milvus Lite database {db}: {_reason(exc)}") from None
    if found.damage:
        more = f" (and {len(found.damage) - 1} more damaged collections)" if len(found.damage) > 1 else ""
        raise DatabaseDamagedError(
            f"Milvus Lite database {db} is damaged, so it was not opened and nothing in it was changed: "
            f"{found.damage[0]}{more}. Restore the database folder from a backup, or move it aside (keep it) "
            f"and index your folders again into a new one"
        )
    if found.doomed:
        try:
            kept = keep(db, found.doomed)
        except OSError as exc:
            raise StoreError(
                f"Milvus Lite database {db}: its recovery would delete {len(found.doomed)} files that "
                f"its manifests do not list, and no copy of them could be kept ({exc.strerror or exc}: "
                f"{exc.filename}); free some space and run again"
            ) from None
        n = len(found.doomed)
        log.warning(
            "Milvus Lite database %s: its recovery deletes %d file%s that its manifests do not list "
            "(left by a write that stopped, or a manifest that is not the latest); copies are kept in %s",
            db,
            n,
            "" if n == 1 else "s",
            kept,
        )


def _start(db: Path, lite) -> _Served:
    """Serve ``lite`` (the open database ``db``) on a Unix socket of mode 0600.

    Raises:
        StoreError: no socket could be made, in the database folder nor in a private
            temporary folder.
    """
    import grpc
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from pymilvus.grpc_gen import milvus_pb2_grpc

    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=_WORKERS),
        options=[("grpc.max_receive_message_length", _MESSAGE_BYTES), ("grpc.max_send_message_length", _MESSAGE_BYTES)],
    )
    milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(lite), server)
    socket, scratch = db / SOCKET_FILE, None
    try:
        server.add_insecure_port(f"unix:{socket}")
    except RuntimeError:  # too long a path for a socket address, or a file system without sockets
        scratch = Path(tempfile.mkdtemp(prefix="vitsearch-lite-"))  # 0700
        socket = scratch / "milvus.sock"
        try:
            server.add_insecure_port(f"unix:{socket}")
        except RuntimeError:
            scratch.rmdir()
            raise StoreError(
                f"cannot serve Milvus Lite database {db}: no Unix socket can be made in it nor in {scratch.parent}"
            ) from None
    socket.chmod(0o600)
    server.start()
    return _Served(server, lite, socket, scratch)


def _reason(exc: BaseException) -> str:
    """One line on why a Lite database could not be opened."""
    if isinstance(exc, OSError) and exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (
            f"{exc.strerror}: {exc.filename} (the database is read-only here: Milvus Lite needs write "
            f"access to open a database, also only to search it; copy it to a writable place)"
        )
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return f"{exc.strerror}: {exc.filename} (the disk is full)"
    return f"{type(exc).__name__}: {exc}"


def _publish(db: Path, uri: str) -> None:
    """Write ``{"pid", "uri"}`` to the endpoint file (mode 0600) atomically (rename over the old
    one). Where it cannot be written (a full disk, a read-only folder), this process still serves
    the database but other processes cannot share it; nothing half-written is left."""
    record = {"pid": os.getpid(), "uri": uri}
    path = db / ENDPOINT_FILE
    try:
        if json.loads(path.read_text()) == record:
            return
    except (OSError, ValueError):
        pass
    try:
        write_atomic(path, json.dumps(record), mode=0o600)
    except OSError as exc:  # the temporary file is removed
        log.warning(
            "cannot publish the endpoint of %s (%s): other processes cannot share the database "
            "while this one has it open",
            db,
            exc.strerror or exc,
        )


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
