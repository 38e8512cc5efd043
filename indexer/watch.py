"""Keeping a collection equal to folders while they change (:class:`Watcher`, ``vitsearch watch``).

    start: watch the folders (the OS's events; polling where it refuses more watches)
      -> catch up: the incremental index of each folder, pruned        [index_folder's job]
      -> follow: events -> pending changes, a dict keyed by path
           -> settled (size and mtime unchanged for ``settle_s``; during a burst, gathered while
              changes keep coming, up to ``GATHER_S``, so that a burst is a few large batches)
           -> one batch, holding the writer lease:
                moves (the row under its new path, no embedding)
                -> the changed files embedded                          [LocalExecutor]
                -> the rows of what is gone deleted

Every batch runs as an :class:`~.job.IndexJob` with :class:`~.runner.LocalExecutor`, its lister
yielding the settled files: decode limits, failures and the collection's space are those of
``vitsearch index``. Every write is a whole row, and a move writes the new row before it deletes
the old one, so a process killed at any moment leaves at worst a stale row, which the next
start's catch-up (pruned) deletes.

Memory: the OS's watches (a descriptor per folder with inotify; a snapshot of the tree where
polled) and one small entry per path changed and not yet written; the catch-up is streamed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from vitsearch.search.config import DEFAULT_BATCH_SIZE
from vitsearch.search.encoder import Encoder
from vitsearch.search.errors import CollectionBusyError, StoreError
from vitsearch.search.images import Limits, is_image_file
from vitsearch.search.store import Store

from .job import IndexJob, IndexReport
from .moves import move_folder, move_rows
from .runner import LocalExecutor, chunks
from .scan import FileEntry, is_regular_file, scan

__all__ = ["Watcher", "WatchBatch", "REFUSED"]

log = logging.getLogger(__name__)
#: ``OSError.errno`` values with which the OS refuses another watch (inotify's per-user limits).
REFUSED = (errno.ENOSPC, errno.EMFILE)
#: Seconds settled changes may wait, past ``settle_s``, while other changes keep coming (a burst
#: of copies, a file still being written): a burst is written as a few large batches, with the
#: decode processes, rather than a small batch per tick. A change alone is never held.
GATHER_S = 5.0


@dataclass(slots=True)
class _Change:
    """A path that changed and is not written yet: ``seen`` (monotonic seconds) when its last event
    came or its size and mtime were last found changed, ``sig`` those ``(size, mtime_ns)`` then,
    ``src`` the path it was moved from (its row is to follow it), ``is_dir`` a folder's event."""

    seen: float
    sig: tuple[int, int] | None = None
    src: str | None = None
    is_dir: bool = False


@dataclass
class WatchBatch:
    """What one batch of changes did.

    Attributes:
        report: the batch's :class:`~.job.IndexReport` (``indexed``, ``moved``, ``removed``,
            ``unchanged``, ``failures``, ``seconds``).
        paths: changed paths the batch took (files, folders, paths gone).
        busy: set when another run held the writer lease: nothing was written, the changes
            wait for the next batch; says who holds it.
        error: set when Milvus refused or stayed unreachable: the changes wait for the next batch.
    """

    report: IndexReport = field(default_factory=IndexReport)
    paths: int = 0
    busy: str = ""
    error: str = ""


class _Events(FileSystemEventHandler):
    def __init__(self, note: Callable[[FileSystemEvent], None]):
        self.note = note

    def on_any_event(self, event: FileSystemEvent) -> None:
        self.note(event)


class Watcher:
    """Keeps ``store``'s collection equal to the image files under ``folders`` while it runs.

    Call :meth:`start` (watch), :meth:`catch_up` (index what changed while nothing watched),
    then :meth:`step` repeatedly (or :meth:`run`); :meth:`stop` at the end.

    Args:
        folders: the folders watched, recursively (made absolute, as the rows' paths are).
        store, encoder: the collection and its encoder (as :meth:`IndexJob.open` gives them).
        batch_size: images per forward pass. workers: decode processes (0: in this thread).
        settle_s: seconds a file's size and mtime must stay unchanged before it is read: a file
            still being written is not read half-written.
        poll_s: seconds between two looks at a folder that is polled (see ``observer``).
        limits: what reading and decoding one file may cost; None: the encoder's.
        on_failure: called with ``(path, reason)`` for each file that cannot be indexed.
        observer: makes the OS-event observer (watchdog's ``Observer``); when its ``schedule``
            raises ``OSError`` with an errno of :data:`REFUSED` (the inotify limits), that folder
            is polled instead (``poller``), and ``on_fallback(folder, reason)`` is told once.
        poller: makes the polling observer, called with ``timeout=poll_s``.
    """

    def __init__(
        self,
        folders: list[str],
        store: Store,
        encoder: Encoder,
        *,
        batch_size: int = DEFAULT_BATCH_SIZE,
        workers: int = 0,
        settle_s: float = 1.0,
        poll_s: float = 2.0,
        limits: Limits | None = None,
        on_failure: Callable[[str, str], None] | None = None,
        on_fallback: Callable[[str, str], None] | None = None,
        observer: Callable[[], object] = Observer,
        poller: Callable[..., object] = PollingObserver,
    ):
        self.folders = [os.path.abspath(f) for f in folders]
        for f in self.folders:
            if not os.path.isdir(f):
                raise NotADirectoryError(f"{f} is not a folder")
        self.store, self.encoder, self.batch_size, self.workers = store, encoder, batch_size, workers
        self.settle_s, self.poll_s, self.limits = settle_s, poll_s, limits
        self.on_failure, self.on_fallback = on_failure, on_fallback
        self._make_observer, self._make_poller = observer, poller
        self._pending: dict[str, _Change] = {}
        self._lock = threading.Lock()
        self._observers: list = []
        self.polled: list[str] = []  # folders polled because the OS refused more watches

    # --- watching -------------------------------------------------------------------------

    def start(self) -> None:
        """Watch every folder: the OS's events, or polling for a folder the OS refuses to watch
        (said once through ``on_fallback``). Events are queued from now on.

        Raises:
            OSError: a folder cannot be watched nor polled.
        """
        handler = _Events(self._note)
        events = self._make_observer()
        events.start()
        self._observers.append(events)
        poller = None
        for folder in self.folders:
            try:
                events.schedule(handler, folder, recursive=True)
                continue
            except OSError as exc:
                if exc.errno not in REFUSED:
                    raise
                reason = _refusal(exc)
            if not self.polled and self.on_fallback is not None:
                self.on_fallback(folder, reason)
            log.warning("%s: %s; polling it every %g s", folder, reason, self.poll_s)
            if poller is None:
                poller = self._make_poller(timeout=self.poll_s)
                poller.start()
                self._observers.append(poller)
            poller.schedule(handler, folder, recursive=True)
            self.polled.append(folder)

    def stop(self) -> None:
        """Stop watching (the changes not yet written are dropped: the next start catches up)."""
        for o in self._observers:
            o.stop()
        for o in self._observers:
            o.join(timeout=10)
        self._observers.clear()

    def pending(self) -> int:
        """Changed paths not written yet."""
        with self._lock:
            return len(self._pending)

    def _note(self, event: FileSystemEvent) -> None:
        if event.event_type in ("opened", "closed_no_write") or (event.is_directory and event.event_type == "modified"):
            return
        src, dest = os.fsdecode(event.src_path), os.fsdecode(getattr(event, "dest_path", "") or "")
        is_dir, now = event.is_directory, time.monotonic()
        if event.event_type == "moved":
            sig = None if is_dir else _signature(dest)
            with self._lock:
                moved = self._pending.pop(src, None)
                origin = moved.src if moved is not None and moved.src else src  # a chain of moves: the first
                if is_dir or is_image_file(src):
                    self._pending[src] = _Change(now, is_dir=is_dir)  # gone, unless something comes back
                if is_dir or is_image_file(dest):
                    self._pending[dest] = _Change(now, sig, origin, is_dir)
        elif is_dir or is_image_file(src):
            sig = None if is_dir else _signature(src)  # the stat of the event: settled if unchanged settle_s on
            with self._lock:
                old = self._pending.get(src)
                self._pending[src] = _Change(now, sig, old.src if old else None, is_dir)

    def _is_pending(self, path: str) -> bool:
        with self._lock:
            return path in self._pending

    # --- writing --------------------------------------------------------------------------

    def catch_up(self) -> dict[str, IndexReport]:
        """The incremental index of each folder, pruned (``index_folder(..., prune=True)``):
        what changed while nothing watched. Call it after :meth:`start`, so that nothing
        changed meanwhile is missed.

        Raises:
            CollectionBusyError: another run holds the writer lease (after waiting for a watcher's).
            StoreError, EncoderMismatchError: as :func:`~.runner.index_folder`.
        """
        out = {}
        for folder in self.folders:
            executor = LocalExecutor(self.workers, prune=True, limits=self.limits)
            out[folder] = self._job(executor).run(folder)
        return out

    def step(self) -> WatchBatch | None:
        """Write the changes that have settled, as one batch holding the writer lease; None when
        none has. Changes that cannot be written now (the lease taken by another run, Milvus
        unreachable) are kept for the next step; the batch says why.
        """
        ready = self._settled()
        if not ready:
            return None
        batch = WatchBatch(paths=len(ready))
        workers = self.workers if len(ready) > self.batch_size else 0  # no processes forked for a few files
        executor = _BatchExecutor(ready, workers, self.limits, self._is_pending)
        try:
            batch.report = self._job(executor, kind="watch").run(self.folders[0])
        except CollectionBusyError as exc:
            batch.busy = str(exc)
            self._requeue(ready)
        except StoreError as exc:
            batch.error = str(exc)
            self._requeue(ready)
        return batch

    def run(self, stop: threading.Event, on_batch: Callable[[WatchBatch], None] | None = None, tick_s: float = 0.2):
        """:meth:`step` until ``stop`` is set, ``tick_s`` seconds apart (a run of ``vitsearch
        index`` waiting for the lease takes it between two batches)."""
        while not stop.wait(tick_s):
            batch = self.step()
            if batch is not None and on_batch is not None:
                on_batch(batch)

    def _job(self, executor: LocalExecutor, kind: str = "index") -> IndexJob:
        return IndexJob(
            self.store, self.encoder, executor, self.batch_size, on_failure=self.on_failure, lease_kind=kind
        )

    def _settled(self) -> dict[str, _Change]:
        """The pending changes whose paths have been quiet for ``settle_s`` and whose size and
        mtime are what they were then, taken out of the pending dict; the others stay."""
        now = time.monotonic()
        with self._lock:
            quiet = [(p, c) for p, c in self._pending.items() if now - c.seen >= self.settle_s]
            arriving = len(self._pending) > len(quiet)
        if quiet and arriving:
            if now - min(c.seen for _, c in quiet) < self.settle_s + GATHER_S:
                return {}  # a burst still arriving: gather it
        ready = {}
        for path, change in quiet:
            sig = _signature(path)
            with self._lock:
                if self._pending.get(path) is not change:  # a new event meanwhile
                    continue
                if sig is not None and sig != change.sig and not change.is_dir:
                    change.seen, change.sig = now, sig  # still changing (or first look): wait again
                    continue
                ready[path] = self._pending.pop(path)
        return ready

    def _requeue(self, ready: dict[str, _Change]) -> None:
        now = time.monotonic()  # tried again in settle_s, not at once
        with self._lock:
            for path, change in ready.items():
                change.seen = now
                self._pending.setdefault(path, change)


class _BatchExecutor(LocalExecutor):
    """One batch of settled changes, holding the lease: moves first (the row under its new path),
    then the changed files and new folders through :class:`~.runner.LocalExecutor`'s stages, then
    the deletions."""

    def __init__(self, ready: dict[str, _Change], workers: int, limits: Limits | None, changing: Callable[[str], bool]):
        super().__init__(workers, limits=limits, lister=self._list)
        self.ready, self.changing = ready, changing

    def prepare(self, job: IndexJob, run) -> None:
        """Nothing to check: the batch's paths are checked one by one."""

    def execute(self, job: IndexJob, run) -> None:
        """Moves, then the stages over the files to read."""
        moves = {p: c.src for p, c in self.ready.items() if c.src and not c.is_dir}
        run.report.moved += move_rows(job.store, moves)
        for path, change in self.ready.items():
            if change.src and change.is_dir and os.path.isdir(path):
                run.report.moved += move_folder(job.store, change.src, path)
        super().execute(job, run)

    def complete(self, job: IndexJob, run) -> None:
        """Delete the rows of files gone (and of the files that were under a folder gone)."""
        gone = [p for p in self.ready if not is_regular_file(p)]
        gone += [c.src for c in self.ready.values() if c.src and not c.is_dir and not is_regular_file(c.src)]
        removed = 0
        for chunk in chunks(gone, job.store.profile.lookup_paths):
            rows = job.store.get(chunk, fields=())
            job.store.delete(list(rows))
            removed += len(rows)
        for path, change in self.ready.items():
            for folder in (path, change.src):
                if change.is_dir and folder and not os.path.isdir(folder):
                    stale = (r["path"] for r in job.store.iter_rows(["path"], folder=folder))
                    for chunk in chunks((p for p in stale if not is_regular_file(p)), job.store.profile.lookup_paths):
                        job.store.delete(chunk)
                        removed += len(chunk)
        run.report.removed += removed

    def _list(self, root: str, on_error, on_unsupported) -> Iterator[FileEntry]:
        for path, change in self.ready.items():
            try:
                st = os.stat(path)
            except OSError:
                continue  # gone: complete() deletes its row
            if stat.S_ISDIR(st.st_mode):
                if change.is_dir:  # a folder come in: its files, but not those still being written
                    yield from (e for e in scan(path, on_error, on_unsupported) if not self.changing(e.path))
            elif stat.S_ISREG(st.st_mode):
                yield FileEntry.of(path, st)


def _signature(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _refusal(exc: OSError) -> str:
    if exc.errno == errno.ENOSPC:
        return "the OS refuses more watches (inotify's fs.inotify.max_user_watches is reached)"
    return "the OS refuses more watches (inotify's fs.inotify.max_user_instances is reached)"
