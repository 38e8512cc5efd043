"""Indexing a folder into a collection: the one place that knows the order of the stages.

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
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from vitsearch.search.config import DEFAULT_BATCH_SIZE
from vitsearch.search.encoder import Encoder
from vitsearch.search.images import Limits
from vitsearch.search.paths import stored_path
from vitsearch.search.store import MAX_PATH_BYTES, META_FIELDS, Store, writer_lease
from vitsearch.search.store.space import read_space, resume_rewrite, update_space
from vitsearch.search.whitening import Space

from .reader import read_batches
from .scan import FileEntry, scan
from .writer import Writer

log = logging.getLogger(__name__)

#: Paths compared with the collection per request.
LOOKUP_CHUNK = 1000


@dataclass
class IndexReport:
    """What an indexing run did, and where its time went.

    Attributes:
        indexed: files embedded and written (new or changed).
        unchanged: files not embedded: their row matches (path, size, mtime, ctime and inode), or
            their bytes still hash to the row's sha256.
        rehashed: files with a row that were read to compare their bytes with its sha256 (their
            metadata changed, or ``verify``); each is then counted as unchanged or indexed.
        removed: rows deleted because their path is no longer a regular file (``prune``).
        failures: ``(path, reason)`` of files that could not be read or decoded.
        seconds: wall time of the run, model loading excluded.
        decode_seconds: read + decode + preprocess CPU time, summed over the worker processes.
        embed_seconds: time in the encoder's forward passes.
        write_seconds: time in Milvus upserts (in the background).
        wait_seconds: time the encoder waited for decoded input (0 when decoding keeps up).
        space: what the run did to the collection's space: ``""`` (nothing), ``"learned"``,
            ``"re-learned"`` or ``"removed"`` (whitening), ``"resumed"`` (a rewrite a stopped
            run left).
        rewritten: rows whose vectors were rewritten into the new space (no image embedded).
        rewrite_seconds: wall time of that rewrite (learning included), within ``seconds``.
        unsupported: files under the folder that are not of an image type vitsearch reads,
            skipped unread, counted by extension in lower case (``{".heic": 12, ".mp4": 3}``;
            ``""`` for a name without one); hidden files are not counted.
    """

    indexed: int = 0
    unchanged: int = 0
    rehashed: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    decode_seconds: float = 0.0
    embed_seconds: float = 0.0
    write_seconds: float = 0.0
    wait_seconds: float = 0.0
    space: str = ""
    rewritten: int = 0
    rewrite_seconds: float = 0.0
    unsupported: dict[str, int] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        """Number of files that failed."""
        return len(self.failures)

    @property
    def images_per_s(self) -> float:
        """Indexed images per second of wall time."""
        return self.indexed / self.seconds if self.seconds else 0.0

    def stages(self) -> str:
        """One line: where the time went."""
        return (
            f"decode {self.decode_seconds:.1f} s (CPU, workers summed), embed {self.embed_seconds:.1f} s, "
            f"write {self.write_seconds:.1f} s (background), waited for input {self.wait_seconds:.1f} s"
        )


class IndexInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped :func:`index_folder` after it wrote every row it had embedded.

    Attributes:
        report: the :class:`IndexReport` of the work done until then.
    """

    def __init__(self, report: IndexReport):
        super().__init__("indexing interrupted")
        self.report = report


class Progress:
    """Callbacks the runner reports to; the CLI passes a tqdm-backed one. Default: silent."""

    def found(self, n: int) -> None:
        """``n`` more files are to be embedded (the scan streams, so the total grows)."""

    def advance(self, n: int) -> None:
        """``n`` more files are done (embedded or failed)."""

    def close(self) -> None:
        """The embedding stage is over."""

    def rewriting(self, kind: str, rows: int) -> None:
        """The collection's ``rows`` vectors are being rewritten into a new space (``kind``:
        ``"learning"``, ``"re-learning"`` or ``"removing"`` whitening, ``"resuming"`` a rewrite
        a stopped run left; see :mod:`vitsearch.search.store.space`)."""

    def rewritten(self, n: int) -> None:
        """``n`` more rows are rewritten."""


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
    a time writes to a collection (:func:`~vitsearch.search.lease.writer_lease`); a collection of
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
    if not os.path.isdir(root):
        raise NotADirectoryError(f"{root} is not a folder")
    root = os.path.abspath(root)
    progress = progress or Progress()
    report = IndexReport()
    started = time.perf_counter()

    def failed(path: str, reason: str) -> None:
        report.failures.append((path, reason))
        log.debug("skipped %s: %s", path, reason)
        if on_failure:
            on_failure(path, reason)

    store.ensure(encoder.info)
    with writer_lease(store):
        space = begin(store, progress, report)
        log.debug("scanning %s", root)
        try:
            _run(
                root,
                encoder,
                store,
                space,
                batch_size,
                workers,
                limits or encoder.limits,
                verify,
                progress,
                report,
                failed,
            )
        except KeyboardInterrupt:
            report.seconds = time.perf_counter() - started
            raise IndexInterrupted(report) from None
        if prune:
            report.removed = _prune(root, store)
        finish(store, whitening, relearn, progress, report)
    report.seconds = time.perf_counter() - started
    return report


def begin(store: Store, progress: Progress, report: IndexReport) -> Space:
    """What an indexing run does first, holding the lease: upgrade an older schema, finish a
    rewrite a stopped run left (:func:`~vitsearch.search.store.space.resume_rewrite`).

    Returns:
        the space to write the run's vectors in.
    """
    store.upgrade()
    started = time.perf_counter()
    resumed = resume_rewrite(store, on_rows=progress.rewritten, on_start=progress.rewriting)
    if resumed:
        report.space, report.rewritten = "resumed", resumed
        report.rewrite_seconds += time.perf_counter() - started
    return read_space(store)


def finish(store: Store, whitening: str | None, relearn: bool, progress: Progress, report: IndexReport) -> Space:
    """What an indexing run does last, holding the lease: bring the collection's space up to date
    (:func:`~vitsearch.search.store.space.update_space`) and, on Milvus Lite, write the data and
    index files while the run owns the disk.

    Returns:
        the space the collection is in now.
    """
    started = time.perf_counter()
    kinds = {"learning": "learned", "re-learning": "re-learned", "removing": "removed"}

    def rewriting(kind: str, rows: int) -> None:
        report.space = kinds.get(kind, kind)
        progress.rewriting(kind, rows)

    before = report.space
    space = update_space(
        store, whitening, relearn, on_rows=lambda n: _rewritten(progress, report, n), on_start=rewriting
    )
    if report.space != before:
        report.rewrite_seconds += time.perf_counter() - started
    store.persist()
    return space


def _rewritten(progress: Progress, report: IndexReport, n: int) -> None:
    report.rewritten += n
    progress.rewritten(n)


def _run(
    root: str,
    encoder: Encoder,
    store: Store,
    space: Space,
    batch_size: int,
    workers: int,
    limits: Limits,
    verify: bool,
    progress: Progress,
    report: IndexReport,
    failed: Callable[[str, str], None],
) -> None:
    """The stages, overlapped; every embedded row is written before this returns or raises."""

    def unsupported(path: str) -> None:
        ext = os.path.splitext(path)[1].lower()
        report.unsupported[ext] = report.unsupported.get(ext, 0) + 1

    todo = changed(storable(scan(root, failed, unsupported), failed), store, report, progress, verify)
    writer = Writer(store)
    try:
        batches = read_batches(
            todo, encoder.preprocessor, batch_size, workers, pin_memory=encoder.device.type == "cuda", limits=limits
        )
        waited = time.perf_counter()
        for n, batch in enumerate(batches, 1):
            report.wait_seconds += time.perf_counter() - waited
            report.decode_seconds += batch.decode_seconds
            for path, reason in batch.failures:
                failed(path, reason)
            if batch.unchanged:
                writer.put(refreshed(store, batch.unchanged), embedded=False)
                report.unchanged += len(batch.unchanged)
            if batch.entries:
                t = time.perf_counter()
                vectors = space.to_search(encoder.embed_pixels(batch.pixel_values))
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
            progress.advance(len(batch.entries) + len(batch.unchanged) + len(batch.failures))
            waited = time.perf_counter()
    finally:
        progress.close()
        try:
            writer.close()
        finally:
            report.indexed = writer.written
            report.write_seconds = writer.seconds


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


def chunks(items: Iterable[FileEntry], size: int) -> Iterator[list[FileEntry]]:
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
    for chunk in chunks(found, LOOKUP_CHUNK):
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


def _prune(root: str, store: Store) -> int:
    """Delete the rows under ``root`` whose path is no longer a regular file (gone, a folder,
    a socket; links are followed, as the scan does)."""
    gone = [r["path"] for r in store.iter_rows(["path"], folder=root) if not _is_file(r["path"])]
    for start in range(0, len(gone), LOOKUP_CHUNK):
        store.delete(gone[start : start + LOOKUP_CHUNK])
    return len(gone)


def _is_file(path: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False
