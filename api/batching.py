"""Concurrent requests served together: one forward pass for the image queries that arrive within
a few milliseconds of each other, and one Milvus search for the queries that are ready at the
same time.

A request thread decodes and preprocesses its upload (in parallel with the others and with the
forward pass running meanwhile: Pillow and ONNX Runtime release the GIL), then hands the
``(3, H, W) float32`` model input to :class:`EmbedBatcher`; its one worker thread waits up to
``window_s`` after the first query for more to join, stacks them into ``(N, 3, H, W)`` and calls
:meth:`~vitsearch.search.encoder.Encoder.embed_pixels` once. On a GPU a pass of 32 images costs
about as much as a pass of one, so throughput under load grows with the batch; on a CPU it is
roughly flat in the batch size (see :data:`~vitsearch.search.config.DEFAULT_BATCH_SIZE`), and the
window mostly saves per-pass overhead. This is the dynamic batching of model servers (NVIDIA
Triton's ``max_queue_delay_microseconds``, TorchServe's ``maxBatchDelay``).

The embeddings of one pass go on, together, to :class:`SearchBatcher`, whose worker thread runs
the searches while the next pass computes. It also takes the stored-vector (``/search/similar``)
and embedding (``/search/vector``) queries; it does not wait for more to come, it takes every
query queued while its last call ran. For all of them it reads the stored vectors of the
``/search/similar`` paths in one query, and runs one multi-vector search
(:meth:`~vitsearch.search.client.SearchClient.search_vectors`) per distinct ``(k, filter,
folder, expand, after, before, sort)``: each answer is what the same request alone gets from ``SearchClient``. Per request
this saves a Milvus round trip and, with Milvus Lite (served inside this process, in Python), most
of its CPU time.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import torch

from vitsearch.search.client import Hit, SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.paths import absolute
from vitsearch.search.when import DateLike

log = logging.getLogger(__name__)
T = TypeVar("T")
#: Most queries one :class:`SearchBatcher` call sends to Milvus (a forward pass's queries are never split).
MAX_SEARCH_BATCH = 64


class _Worker(Generic[T]):
    """One daemon thread that takes entries (lists of items) from a queue and hands batches of
    them to ``run``: the first entry, then every entry that arrives within ``window_s`` of it,
    or is already queued, until the batch holds ``max_items`` items."""

    def __init__(self, name: str, run: Callable[[list[T]], None], window_s: float, max_items: int):
        self._run_batch, self.window_s, self.max_items = run, window_s, max_items
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, items: list[T]) -> None:
        """Queue ``items``, to be run in one batch."""
        self._queue.put(items)

    def close(self) -> None:
        """Stop the thread after the entries already queued."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = list(first), False
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_items:
                wait = deadline - time.monotonic()
                try:
                    entry = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if entry is None:
                    stop = True
                    break
                batch.extend(entry)
            try:
                self._run_batch(batch)
            except BaseException:  # noqa: BLE001 - the run function answers its futures; never lose the thread
                log.exception("%s: a batch of %d failed", self._thread.name, len(batch))
            if stop:
                return


@dataclass
class SearchQuery:
    """One request's search: by ``vector`` (``(D,) float32``) or by the stored vector of ``path``
    (which is then left out of the results), with the request's ``k``, ``filter``, ``folder``,
    ``expand``, capture-date range ``after``/``before`` and ``sort`` (as
    :meth:`~vitsearch.search.client.SearchClient.search` takes them). ``future`` gets its hits, or
    the exception its search raised."""

    k: int
    filter: str | None = None
    folder: str | None = None
    vector: np.ndarray | None = None
    path: str | None = None
    expand: int = 0
    after: DateLike | None = None
    before: DateLike | None = None
    sort: str = "score"
    future: Future = field(default_factory=Future)

    async def hits(self) -> list[Hit]:
        """The awaited hits."""
        return await asyncio.wrap_future(self.future)


class SearchBatcher:
    """One worker thread that answers the queued :class:`SearchQuery` items together: one Milvus query
    for the stored vectors they need, one Milvus search per distinct ``(k, filter, folder, expand,
    after, before, sort)``.

    Args:
        client: the served collection's client.
        max_batch: most queries per call (:data:`MAX_SEARCH_BATCH`).

    Attributes:
        calls: Milvus searches run so far; ``queries``: queries they answered.
    """

    def __init__(self, client: SearchClient, max_batch: int = MAX_SEARCH_BATCH):
        self.client = client
        self.calls = 0
        self.queries = 0
        self._worker: _Worker[SearchQuery] = _Worker("vitsearch-search", self._search, 0.0, max_batch)

    def submit(self, queries: list[SearchQuery]) -> None:
        """Queue ``queries`` (answered in the same call where their ``k``, filter, folder,
        expansion, dates and sort agree)."""
        self._worker.put(queries)

    async def search(self, query: SearchQuery) -> list[Hit]:
        """:meth:`submit` one query, awaited: its hits."""
        self.submit([query])
        return await query.hits()

    def close(self) -> None:
        """Stop the worker thread after the queries already queued."""
        self._worker.close()

    def _search(self, batch: list[SearchQuery]) -> None:
        batch = [q for q in batch if q.future.set_running_or_notify_cancel()]
        by_path = [q for q in batch if q.vector is None]
        if by_path:
            try:
                stored = self.client.stored_vectors([q.path for q in by_path])
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for q in by_path:
                    q.future.set_exception(exc)
                batch = [q for q in batch if q.vector is not None]
            else:
                for q in by_path:
                    q.path = absolute(q.path)  # as SearchClient takes a path
                    q.vector = stored.get(q.path)
                    if q.vector is None:  # not indexed: SearchClient's own error (and its one query)
                        self._alone(q)
                batch = [q for q in batch if q.vector is not None]
        groups: dict[tuple, list[SearchQuery]] = {}
        for q in batch:  # different filters cannot share one call
            key = (q.k, q.filter or "", q.folder or "", q.expand, q.after, q.before, q.sort)
            groups.setdefault(key, []).append(q)
        for (k, filter, folder, expand, after, before, sort), group in groups.items():
            try:
                found = self.client.search_vectors(
                    np.stack([q.vector for q in group]),
                    k,
                    filter or None,
                    folder or None,
                    [q.path for q in group],
                    expand,
                    after=after,
                    before=before,
                    sort=sort,
                )
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                for q in group:
                    q.future.set_exception(exc)
                continue
            self.calls += 1
            self.queries += len(group)
            for q, hits in zip(group, found):
                q.future.set_result(hits)

    def _alone(self, q: SearchQuery) -> None:
        try:
            hits = self.client.search_similar(
                q.path, q.k, q.filter, True, q.folder, expand=q.expand, after=q.after, before=q.before, sort=q.sort
            )
            q.future.set_result(hits)
        except BaseException as exc:  # noqa: BLE001 - the request's own answer
            q.future.set_exception(exc)


class EmbedBatcher:
    """One worker thread that embeds queued model inputs in batches.

    Args:
        encoder: the collection's encoder.
        window_s: seconds the first query of a batch waits for others (0: only those queued).
        max_batch: most images per forward pass (1: no batching).
        searches: where the embeddings of queries submitted with a :class:`SearchQuery` go on, a
            forward pass's together.

    Attributes:
        passes: forward passes run so far; ``images``: images embedded by them.
    """

    def __init__(
        self, encoder: Encoder, window_s: float = 0.005, max_batch: int = 32, searches: SearchBatcher | None = None
    ):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.encoder = encoder
        self.window_s = window_s
        self.max_batch = max_batch
        self.searches = searches
        self.passes = 0
        self.images = 0
        self._worker: _Worker[tuple[torch.Tensor, Future, SearchQuery | None]] = _Worker(
            "vitsearch-embed", self._embed, window_s, max_batch
        )

    def submit(self, pixels: torch.Tensor, query: SearchQuery | None = None) -> Future:
        """Queue one model input ``(3, H, W) float32``; the future gives its ``(D,) float32``
        L2-normalised embedding, or the forward pass's exception. With a ``query`` (and
        ``searches``), the embedding becomes the query's vector and is searched (its future
        gets the hits)."""
        future: Future = Future()
        self._worker.put([(pixels, future, query)])
        return future

    async def embed(self, pixels: torch.Tensor) -> np.ndarray:
        """:meth:`submit`, awaited: the ``(D,) float32`` embedding of ``pixels``."""
        return await asyncio.wrap_future(self.submit(pixels))

    async def search(self, pixels: torch.Tensor, query: SearchQuery) -> list[Hit]:
        """The hits of ``query`` searched with the embedding of ``pixels``, awaited (the
        forward pass and the search each shared with the queries arriving together)."""
        if self.searches is None:
            raise RuntimeError("EmbedBatcher has no SearchBatcher to send queries to")
        self.submit(pixels, query)
        return await query.hits()

    def close(self) -> None:
        """Stop the worker thread after the queries already queued."""
        self._worker.close()

    def _embed(self, batch: list[tuple[torch.Tensor, Future, SearchQuery | None]]) -> None:
        batch = [item for item in batch if item[1].set_running_or_notify_cancel()]
        by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, Future, SearchQuery | None]]] = {}
        for item in batch:  # a processor without a centre crop keeps the aspect ratio
            by_shape.setdefault(tuple(item[0].shape), []).append(item)
        for group in by_shape.values():
            try:
                vectors = self.encoder.embed_pixels(torch.stack([p for p, _, _ in group]))
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                log.exception("forward pass of %d images failed", len(group))
                for _, future, query in group:
                    future.set_exception(exc)
                    if query is not None and query.future.set_running_or_notify_cancel():
                        query.future.set_exception(exc)
                continue
            self.passes += 1
            self.images += len(group)
            queries = []
            for (_, future, query), vector in zip(group, vectors):
                future.set_result(vector)
                if query is not None:
                    query.vector = vector
                    queries.append(query)
            if queries:
                self.searches.submit(queries)
