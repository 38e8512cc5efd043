"""Indexing a folder into a collection in this process (:class:`LocalExecutor`, the executor of an
:class:`~.job.IndexJob`, which holds the lease and brings the space up to date around it; and
:func:`index_folder`): the one place that knows the order of the stages.

    scan (streamed) -> compare with the collection (incremental, in chunks)
      -> read + decode + preprocess (worker processes)      [indexer/reader.py]
      -> embed (the encoder, this thread)
      -> upsert (a background thread)                        [indexer/writer.py]
    -> prune

The stages overlap: the workers decode the next batches while the encoder runs, and Milvus
writes while the encoder runs on the following batch. Rows are written batch by batch, so a run
that is stopped keeps everything written so far, and the next run only embeds what is missing
or changed.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from vitsearch.search.config import DEFAULT_BATCH_SIZE, Settings
from vitsearch.search.encoder import Encoder, EncoderInfo, batch_size_for
from vitsearch.search.images import Limits
from vitsearch.search.paths import stored_path
from vitsearch.search.store import MAX_PATH_BYTES, META_FIELDS, Store

from .job import IndexInterrupted, IndexJob, IndexReport, Progress, Run
from .reader import read_batches
from .scan import FileEntry, is_regular_file, scan
from .writer import Writer

__all__ = ["index_folder", "LocalExecutor", "IndexReport", "IndexInterrupted", "Progress"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class LocalExecutor:
    """The stages in this process (:class:`~.job.Executor`): the scan streamed, worker processes
    decoding, the encoder in this thread, a background thread writing.

    Attributes:
        workers: decode/preprocess processes (0: decode in this thread).
        prune: delete the rows under the folder whose path is no longer a regular file.
        verify: hash every file, also those whose size, mtime, ctime and inode match their row.
        limits: what reading and decoding one file may cost; None: the encoder's.
        lister: what finds the files under the folder, ``lister(folder, on_error(path, reason),
            on_unsupported(path))`` yielding :class:`~.scan.FileEntry`; default :func:`~.scan.scan`.
    """

    def __init__(
        self,
        workers: int = 2,
        prune: bool = False,
        verify: bool = False,
        limits: Limits | None = None,
        lister: Callable[..., Iterable[FileEntry]] = scan,
    ):
        self.workers, self.prune, self.verify, self.limits, self.lister = workers, prune, verify, limits, lister

    def encoder_settings(self, settings: Settings, recorded: EncoderInfo | None) -> Settings:
        """The settings as they are: the encoder runs here."""
        return settings

    def default_batch_size(self, encoder: Encoder) -> int:
        """:func:`~vitsearch.search.encoder.batch_size_for` the encoder's device."""
        return batch_size_for(encoder)

    def prepare(self, job: IndexJob, run: Run) -> None:
        """Make ``run.source`` absolute.

        Raises:
            NotADirectoryError: it is not a folder.
        """
        if not os.path.isdir(run.source):
            raise NotADirectoryError(f"{run.source} is not a folder")
        run.source = os.path.abspath(run.source)

    def execute(self, job: IndexJob, run: Run) -> None:
        """The stages, overlapped; every embedded row is written before this returns or raises."""
        report, encoder = run.report, job.encoder

        def unsupported(path: str) -> None:
            ext = os.path.splitext(path)[1].lower()
            report.unsupported[ext] = report.unsupported.get(ext, 0) + 1

        found = storable(self.lister(run.source, run.failed, unsupported), run.failed)
        todo = changed(found, job.store, report, job.progress, self.verify)
        writer = Writer(job.store)
        try:
            batches = read_batches(
                todo,
                encoder.preprocessor,
                job.batch_size,
                self.workers,
                pin_memory=encoder.device.type == "cuda",
                limits=self.limits or encoder.limits,
            )
            waited = time.perf_counter()
            for n, batch in enumerate(batches, 1):
                report.wait_seconds += time.perf_counter() - waited
                report.decode_seconds += batch.decode_seconds
                for path, reason in batch.failures:
                    run.failed(path, reason)
                if batch.unchanged:
                    writer.put(refreshed(job.store, batch.unchanged), embedded=False)
                    report.unchanged += len(batch.unchanged)
                if batch.entries:
                    t = time.perf_counter()
                    vectors = run.space.to_search(encoder.embed_pixels(batch.pixel_values))
                    embed_s = time.perf_counter() - t
                    report.embed_seconds += embed_s
                    now = time.time()
                    writer.put([make_row(e, v, info, now) for e, v, info in zip(batch.entries, vectors, batch.info)])
                    log.debug(
                        "batch %d: %d images, decode %.0f ms (summed), waited %.0f ms, embed %.0f ms",
                        n,
                        len(batch.entries),
                        1000 * batch.decode_seconds,
                        1000 * (t - waited),
                        1000 * embed_s,
                    )
                job.progress.advance(len(batch.entries) + len(batch.unchanged) + len(batch.failures))
                waited = time.perf_counter()
        finally:
            try:
                writer.close()
            finally:
                report.indexed = writer.written
                report.write_seconds = writer.seconds

    def complete(self, job: IndexJob, run: Run) -> None:
        """With :attr:`prune`, delete the rows under the folder whose path is no longer a regular
        file (gone, a folder, a socket; links are followed, as the scan does)."""
        if not self.prune:
            return
        gone = [r["path"] for r in job.store.iter_rows(["path"], folder=run.source) if not is_regular_file(r["path"])]
        for chunk in chunks(gone, job.store.profile.lookup_paths):
            job.store.delete(chunk)
        run.report.removed = len(gone)


def index_folder(
    root: str,
    *,
    encoder: Encoder,
    store: Store,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 2,
    prune: bool = False,
    verify: bool = False,
    progress: Progress | None = None,
    on_failure: Callable[[str, str], None] | None = None,
    limits: Limits | None = None,
    whitening: str | None = None,
    relearn: bool = False,
) -> IndexReport:
    """Index the image files under ``root`` into ``store``'s collection with ``encoder``.

    New and changed files are embedded and upserted; unchanged files are skipped. A file is
    unchanged when its row has the same size, mtime, ctime and inode (ctime and inode cannot be
    set back by a user or a sync tool); when any differs, its bytes are hashed first, and only a
    file whose sha256 differs from the row's is embedded again. With ``verify`` every file is
    hashed so. With ``prune``, rows under ``root`` whose path is no longer a regular file (gone,
    a folder, a socket) are deleted. A file that cannot be read or decoded is reported to
    ``on_failure(path, reason)``, recorded in the report and skipped. Memory stays bounded on any
    folder size: the scan is streamed, and only a few batches are in flight at a time. One run at
    a time writes to a collection (:func:`~vitsearch.search.store.lease.writer_lease`); a collection of
    an older schema is upgraded first (:meth:`~vitsearch.search.store.Store.upgrade`).

    Every row is complete when written (vector and metadata in one upsert keyed by path), so a
    run killed at any point leaves only whole rows, and the next run embeds just what is missing.
    On an exception the rows already embedded are written before it propagates.

    The vectors are written in the collection's space (:mod:`vitsearch.search.whitening`): at the
    end of the run whitening is learned, re-learned or removed as due
    (:func:`~vitsearch.search.store.space.update_space`), and a rewrite a stopped run left is
    finished before anything is written.

    Args:
        limits: what reading and decoding one file may cost; default the encoder's (from its
            settings: ``VITSEARCH_MAX_IMAGE_PIXELS``, ``VITSEARCH_MAX_FILE_MB``).
        whitening: ``"auto"`` (learn whitening from the collection) or ``"none"`` (raw
            embeddings) to change the collection's setting; None keeps it (auto for a new one).
        relearn: learn the whitening again at the end of the run, whatever the collection's growth.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        IndexInterrupted: Ctrl-C; carries the report of the work done (all of it written).
        CollectionBusyError: another run is indexing into the collection.
        EncoderMismatchError: the collection was filled by another encoder.
        StoreError: Milvus refused a request or stayed unreachable.
    """
    job = IndexJob(
        store,
        encoder,
        LocalExecutor(workers, prune, verify, limits),
        batch_size,
        progress=progress or Progress(),
        on_failure=on_failure,
        whitening=whitening,
        relearn=relearn,
    )
    return job.run(root)


def refreshed(store: Store, entries: list[FileEntry]) -> list[dict[str, Any]]:
    """For files whose bytes are unchanged but whose size, mtime, ctime or inode is not the
    row's: their row with the stored vector and the files' current metadata, so that the next
    run reads them no more."""
    now = {e.path: {f: getattr(e, f) for f in UNCHANGED_IF_EQUAL} for e in entries}
    rows = store.get(list(now), fields=UNCHANGED_IF_EQUAL)
    stale = [p for p, row in rows.items() if any(row[f] != now[p][f] for f in UNCHANGED_IF_EQUAL)]
    return [{**row, **now[p]} for p, row in store.get(stale, fields=[*META_FIELDS, "vector"]).items()]


def make_row(entry: FileEntry, vector, info: dict[str, Any], now: float) -> dict[str, Any]:
    """The collection row of one embedded file: ``vector`` ``(D,) float32``, ``info`` the
    ``width``/``height``/``sha256`` read with it, ``now`` the Unix time of the write."""
    return {
        "path": entry.path,
        "vector": vector,
        "folder": os.path.dirname(entry.path),
        "size": entry.size,
        "mtime": entry.mtime,
        "ctime_ns": entry.ctime_ns,
        "inode": entry.inode,
        "indexed_at": now,
        **info,
    }


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last one shorter), consumed as they are asked for."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def storable(found: Iterable[FileEntry], failed: Callable[[str, str], None]) -> Iterator[FileEntry]:
    """The files whose path fits a row's key (:data:`~vitsearch.search.store.MAX_PATH_BYTES`)."""
    for e in found:
        size = len(stored_path(e.path).encode("utf-8"))
        if size > MAX_PATH_BYTES:
            failed(e.path, f"path is {size} bytes long as stored, over the limit of {MAX_PATH_BYTES} for a key")
            continue
        yield e


#: What a file's row must match for it to be skipped unread.
UNCHANGED_IF_EQUAL = ("size", "mtime", "ctime_ns", "inode")


def changed(
    found: Iterable[FileEntry], store: Store, report: IndexReport, progress: Progress, verify: bool = False
) -> Iterator[FileEntry]:
    """The files to read, as the scan finds them: those without a row, and those whose row
    differs in :data:`UNCHANGED_IF_EQUAL` (all of them with ``verify``), the latter with the
    row's sha256 so that the reader embeds them only if their bytes changed. Counts the others
    as unchanged."""
    for chunk in chunks(found, store.profile.lookup_paths):
        rows = store.get([e.path for e in chunk], fields=[*UNCHANGED_IF_EQUAL, "sha256"])
        todo = []
        for e in chunk:
            row = rows.get(e.path)
            if row is None:
                todo.append(e)
            elif verify or any(row[f] != getattr(e, f) for f in UNCHANGED_IF_EQUAL):
                todo.append(dataclasses.replace(e, sha256=row["sha256"]))
                report.rehashed += 1
            else:
                report.unchanged += 1
        progress.found(len(todo))
        log.debug("looked up %d paths: %d to read", len(chunk), len(todo))
        yield from todo
