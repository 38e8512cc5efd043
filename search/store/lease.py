"""One indexing run per collection at a time: a lease kept in the collection's properties.

``vitsearch index`` takes the lease before it writes and gives it back when it ends. The lease
names the run (host, pid, start time) and is renewed every :data:`RENEW_S` seconds. Another run
that finds a live lease refuses with :class:`~.errors.CollectionBusyError`, naming the holder.
A lease is dead, and taken over, when its process is gone (same host, pid not running) or when
it has not been renewed for :data:`EXPIRE_S` seconds (a run that crashed on another machine).
The lease lives in Milvus, so it works alike for Milvus Lite and a server, across machines.

Two runs starting in the same instant both write their lease; the one whose lease is not the
one read back afterwards steps aside.

``vitsearch watch`` takes the lease for each batch of changes it writes (a second or so), not
for as long as it runs, and marks it ``"kind": "watch"``: a run that finds such a lease waits
for it (up to :data:`WATCH_WAIT_S`) instead of refusing, and the watcher, finding the lease
taken, keeps its changes and writes them once the run is over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from ..errors import CollectionBusyError, StoreError
from ..processes import pid_alive
from .collection import Store

log = logging.getLogger(__name__)

KEY = "vitsearch.writer"
#: Seconds between renewals of a held lease.
RENEW_S = 10.0
#: Seconds without renewal after which a lease from another host is considered dead.
EXPIRE_S = 60.0
#: Seconds a run waits for a lease held by a watcher's batch (``"kind": "watch"``) before refusing.
WATCH_WAIT_S = 60.0


@contextlib.contextmanager
def writer_lease(
    store: Store,
    renew_s: float = RENEW_S,
    expire_s: float = EXPIRE_S,
    *,
    kind: str = "index",
    wait_s: float = WATCH_WAIT_S,
) -> Iterator[None]:
    """Hold the collection's writer lease for the duration of the ``with`` block.

    Args:
        kind: what holds it, recorded in the lease: ``"index"`` (a run) or ``"watch"`` (one
            batch of ``vitsearch watch``, held a short while).
        wait_s: seconds to wait for a live lease of kind ``"watch"`` to be given back before
            refusing (a watcher does not wait for another watcher: pass 0).

    Raises:
        CollectionBusyError: another live run holds it.
        StoreError: Milvus refused or cannot be reached.
    """
    mine = {
        "token": uuid.uuid4().hex,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "since": time.time(),
        "renewed": time.time(),
        "kind": kind,
    }
    holder = _holder(store)
    deadline = time.monotonic() + wait_s
    while holder is not None and holder.get("kind") == "watch" and _alive(holder, expire_s):
        if time.monotonic() >= deadline:
            break
        time.sleep(0.05)  # a watcher's batch: a second or so
        holder = _holder(store)
    if holder is not None and _alive(holder, expire_s):
        raise CollectionBusyError(_busy(store, holder))
    if holder is not None:
        log.info("taking over the writer lease of a run that is gone: %s", holder)
    store.set_properties({KEY: json.dumps(mine)})
    holder = _holder(store)
    if holder is None or holder["token"] != mine["token"]:  # lost a race with a run that began with us
        raise CollectionBusyError(_busy(store, holder or mine))
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(renew_s):
            try:
                store.set_properties({KEY: json.dumps({**mine, "renewed": time.time()})})
            except StoreError as exc:  # the run itself will meet the same error
                log.warning("could not renew the writer lease: %s", exc)

    thread = threading.Thread(target=renew, name="vitsearch-lease", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(StoreError):
            holder = _holder(store)
            if holder is not None and holder["token"] == mine["token"]:
                store.set_properties({KEY: ""})


def live_holder(store: Store, expire_s: float = EXPIRE_S) -> dict | None:
    """The run that holds the collection's writer lease now (``{"host", "pid", "since", ...}``),
    or None when no live run does (:func:`writer_lease` would take it).

    Raises:
        CollectionNotFoundError: the collection does not exist.
        StoreError: Milvus refused or cannot be reached.
    """
    holder = _holder(store)
    return holder if holder is not None and _alive(holder, expire_s) else None


def busy_message(store: Store, holder: dict) -> str:
    """One line saying that ``holder`` (from :func:`live_holder`) writes to the collection."""
    return _busy(store, holder)


def _holder(store: Store) -> dict | None:
    raw = store.properties().get(KEY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _alive(holder: dict, expire_s: float) -> bool:
    if time.time() - float(holder.get("renewed", 0)) > expire_s:
        return False
    if holder.get("host") != socket.gethostname():
        return True
    try:
        return pid_alive(int(holder["pid"]))
    except (KeyError, TypeError, ValueError):  # a record without a pid: trust its renewal time
        return True


def _busy(store: Store, holder: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(holder.get("since", 0))))
    return (
        f"{store.where} is being indexed by another run "
        f"(pid {holder.get('pid')} on {holder.get('host')}, since {since}); wait for it to finish "
        f"or stop it. A run that crashed on another machine is taken over after {EXPIRE_S:g} s"
    )
