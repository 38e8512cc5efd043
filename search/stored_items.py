"""The part of :class:`~.client.SearchClient` that reads what a collection stores and needs no
model: stored vectors, duplicate groups, thumbnails of indexed files and the export."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from .config import DEFAULT_DUPLICATE_THRESHOLD, DEFAULT_WHITENED_DUPLICATE_THRESHOLD
from .duplicates import DuplicateReport, find_duplicates
from .export import ExportFormat, ExportReport, ExportSpace, export_collection
from .images import Limits
from .paths import absolute
from .searcher import Searcher
from .store import Store
from .thumbnails import THUMB_PX, thumbnail
from .whitening import Space


class StoredItems:
    """A base of :class:`~.client.SearchClient`: its calls that need no model. It uses the
    client's ``store``, its searcher, its decode ``limits`` and the collection's ``space``."""

    store: Store
    _searcher: Searcher
    limits: Limits
    space: Space

    def stored_vectors(self, paths: Sequence[str]) -> dict[str, np.ndarray]:
        """The embeddings of indexed files as the model computed them (raw, also in a whitened
        collection: :meth:`~.whitening.Space.to_raw`), read in one query per 1,000 paths (no
        model needed).

        Args:
            paths: file paths; relative ones are taken from the current folder.

        Returns:
            ``{absolute path: (D,) float32 vector}`` for the paths that are indexed; the others
            are absent.

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        wanted = list(dict.fromkeys(absolute(p) for p in paths))

        def run(space: Space) -> dict[str, np.ndarray]:
            rows = self._searcher.rows(wanted, ["vector"])
            if not rows:
                return {}
            raw = space.to_raw(np.asarray([row["vector"] for row in rows.values()], np.float32))
            return dict(zip(rows, raw))

        return self._searcher.consistent(run)

    def duplicate_threshold(self) -> float:
        """The default near-duplicate threshold of this collection's space:
        :data:`~.config.DEFAULT_DUPLICATE_THRESHOLD` on raw embeddings,
        :data:`~.config.DEFAULT_WHITENED_DUPLICATE_THRESHOLD` on whitened ones."""
        return DEFAULT_WHITENED_DUPLICATE_THRESHOLD if self.space.whitened else DEFAULT_DUPLICATE_THRESHOLD

    def duplicates(
        self,
        threshold: float | None = None,
        folder: str | None = None,
        *,
        exact_only: bool = False,
        verify: bool = True,
        on_rows: Callable[[int], None] | None = None,
    ) -> DuplicateReport:
        """Groups of images of the collection that are the same picture (no model needed; nothing
        is deleted or moved): exact duplicates by sha256, near duplicates by cosine similarity
        of the stored embeddings at or above ``threshold``, confirmed by their pixels, joined
        into connected components. See :func:`~vitsearch.search.duplicates.find_duplicates`.

        Args:
            threshold: cosine similarity of near-duplicate candidates in the collection's space,
                in (0, 1]; None: :meth:`duplicate_threshold`, chosen for the default model on
                planted copies of real photos (``benchmarks/duplicates.py``).
            folder: only files in this folder or below it, on both sides of each pair (a
                relative path is taken from the current folder).
            exact_only: only identical bytes (same sha256); no vector search.
            verify: confirm each near pair by the two files' pixels at small scale (the files
                of candidate pairs are read, through this client's decode limits); False: the
                embedding decides alone.
            on_rows: called with the number of rows scanned after each batch.

        Raises:
            BadQueryError: ``threshold`` is not in (0, 1].
            StoreError: Milvus refused or stayed unreachable.
        """
        folder = absolute(folder) if folder else None
        if not exact_only and threshold is None:
            threshold = self.duplicate_threshold()
        return find_duplicates(
            self.store, None if exact_only else threshold, folder, verify=verify, limits=self.limits, on_rows=on_rows
        )

    def export(
        self,
        out: str | os.PathLike,
        *,
        format: ExportFormat | str = ExportFormat.parquet,
        folder: str | None = None,
        space: ExportSpace | str = ExportSpace.raw,
        on_rows: Callable[[int], None] | None = None,
    ) -> ExportReport:
        """Write the collection's (or ``folder``'s) embeddings and metadata to ``out``: Parquet, or
        ``.npy`` + ``.csv`` beside it; ``raw`` vectors (the model's) or ``searched`` (as stored).
        Streamed, written atomically (no model needed); see :func:`~.export.export_collection`.
        Started again in the new space if whitening is re-learned while it runs.

        Raises:
            OSError: a file cannot be written. StoreError: Milvus refused or stayed unreachable.
            ValueError: an unknown ``format`` or ``space``.
        """
        fmt, vectors = ExportFormat(format), ExportSpace(space)
        folder = absolute(folder) if folder else None
        return self._searcher.consistent(
            lambda s: export_collection(self.store, s, out, fmt=fmt, folder=folder, vectors=vectors, on_rows=on_rows)
        )

    def thumbnail(self, path: str, max_px: int = THUMB_PX) -> bytes:
        """A JPEG thumbnail (longest side at most ``max_px`` pixels) of an indexed file, made only
        from the bytes that were indexed (:func:`~.thumbnails.thumbnail`): a path without a row
        is never opened.

        Raises:
            NotIndexedError: ``path`` has no row in the collection (the file is not touched).
            BadImageError: the file is gone, unreadable, or not the bytes that were indexed.
        """
        path = absolute(path)
        return thumbnail(self._searcher.row(path, ["size", "sha256"]), max_px, self.limits)
