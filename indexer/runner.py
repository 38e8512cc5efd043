"""Indexing a folder into a collection: the one place that knows the order of the stages.

scan -> compare with the collection (incremental) -> read + decode + preprocess (workers)
-> embed (encoder) -> upsert (store) -> prune.

Rows are written batch by batch, so a run that is stopped keeps everything written so far, and
the next run only embeds what is missing or changed.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable

from vitsearch.search.config import Settings
from vitsearch.search.encoder import Encoder
from vitsearch.search.store import Store

from .reader import batches
from .scan import FileEntry, scan

log = logging.getLogger(__name__)

#: Paths compared with the collection per request.
LOOKUP_CHUNK = 1000


@dataclass
class IndexReport:
    """What an indexing run did.

    Attributes:
        indexed: files embedded and written (new or changed).
        unchanged: files skipped because path, size and mtime match their row.
        removed: rows deleted because their file is gone (``prune``).
        failures: ``(path, reason)`` of files that could not be read or decoded.
        seconds: wall time of the run, model loading excluded.
        embed_seconds: time spent in the encoder's forward passes.
    """

    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    embed_seconds: float = 0.0

    @property
    def failed(self) -> int:
        """Number of files that failed."""
        return len(self.failures)

    @property
    def images_per_s(self) -> float:
        """Indexed images per second of wall time."""
        return self.indexed / self.seconds if self.seconds else 0.0


class Progress:
    """Callbacks the runner reports to; the CLI passes a tqdm-backed one. Default: silent."""

    def start(self, total: int) -> None:
        """``total`` files are to be embedded."""

    def advance(self, n: int) -> None:
        """``n`` more files are done (embedded or failed)."""

    def close(self) -> None:
        """The embedding stage is over."""


def index_folder(root: str, *, encoder: Encoder, store: Store, batch_size: int = 32,
                 workers: int = 2, prune: bool = False, progress: Progress | None = None,
                 on_failure: Callable[[str, str], None] | None = None) -> IndexReport:
    """Index the image files under ``root`` into ``store``'s collection with ``encoder``.

    New and changed files (path, size or mtime differ from the row) are embedded and upserted;
    unchanged files are skipped. With ``prune``, rows under ``root`` whose file no longer exists
    are deleted. A file that cannot be read or decoded is reported to ``on_failure(path, reason)``,
    recorded in the report and skipped.

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        EncoderMismatchError: the collection was filled by another encoder.
        StoreError: Milvus refused a request.
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
    found: list[FileEntry] = list(scan(root, failed))
    todo = _changed(found, store, report)
    progress.start(len(todo))
    pin = encoder.device.type == "cuda"
    for batch in batches(todo, encoder.processor, batch_size, workers, pin_memory=pin):
        for path, reason in batch.failures:
            failed(path, reason)
        if batch.entries:
            t = time.perf_counter()
            vectors = encoder.embed_pixels(batch.pixel_values)
            report.embed_seconds += time.perf_counter() - t
            now = time.time()
            store.upsert([
                {"path": e.path, "vector": v, "folder": os.path.dirname(e.path), "size": e.size,
                 "mtime": e.mtime, "indexed_at": now, **info}
                for e, v, info in zip(batch.entries, vectors, batch.info)
            ])
            report.indexed += len(batch.entries)
        progress.advance(len(batch.entries) + len(batch.failures))
    progress.close()
    if prune:
        report.removed = _prune(root, {e.path for e in found}, store)
    report.seconds = time.perf_counter() - started
    return report


def _changed(found: list[FileEntry], store: Store, report: IndexReport) -> list[FileEntry]:
    """The files whose row is missing or differs in size or mtime; counts the others as unchanged."""
    todo: list[FileEntry] = []
    for start in range(0, len(found), LOOKUP_CHUNK):
        chunk = found[start:start + LOOKUP_CHUNK]
        rows = store.get([e.path for e in chunk], fields=["size", "mtime"])
        for e in chunk:
            row = rows.get(e.path)
            if row and row["size"] == e.size and row["mtime"] == e.mtime:
                report.unchanged += 1
            else:
                todo.append(e)
    return todo


def _prune(root: str, present: set[str], store: Store) -> int:
    """Delete rows under ``root`` whose file this run's scan did not find and that no longer exists."""
    prefix = root.rstrip(os.sep) + os.sep
    gone = [r["path"] for r in store.iter_rows(["path"])
            if r["path"].startswith(prefix) and r["path"] not in present
            and not os.path.exists(r["path"])]
    for start in range(0, len(gone), LOOKUP_CHUNK):
        store.delete(gone[start:start + LOOKUP_CHUNK])
    return len(gone)


def encoder_for(store: Store, settings: Settings) -> Encoder:
    """Load the encoder to index with: the model asked for (argument or ``VITSEARCH_MODEL``),
    else the one recorded in an existing collection, else the default model.

    Raises:
        ModelNotFoundError: the model cannot be loaded.
    """
    model = settings.model
    if "model" not in settings.model_fields_set and store.exists():
        model = store.encoder_info().model
    return Encoder.load(model, settings=settings)
