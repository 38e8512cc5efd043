"""What the API serves: one :class:`~vitsearch.search.client.SearchClient` per process, its
encoder loaded once and fed by an :class:`~.batching.EmbedBatcher`, its searches run by a
:class:`~.batching.SearchBatcher`.

The server starts whether or not Milvus can be reached and the collection exists: ``/healthz``
answers at once, ``/readyz`` once the collection is open and the encoder loaded. A failed open is
remembered for ``retry_after_s`` (requests meanwhile get the same 503 at once, not another wait),
then the next request tries again; once open, the store itself reconnects to a Milvus that went
away (:class:`~vitsearch.search.store.Store`).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import torch
from starlette.concurrency import run_in_threadpool

from vitsearch.search.client import SearchClient
from vitsearch.search.config import Settings
from vitsearch.search.errors import VitsearchError

from .batching import EmbedBatcher, SearchBatcher
from .settings import ApiSettings

log = logging.getLogger(__name__)


class Backend:
    """The served collection's client and batchers, opened on first need (thread-safe).

    Args:
        settings: the library's settings (URI, collection, model, limits); their ``retry_s`` is
            capped by ``api.retry_s``.
        api: the API's settings (batch window and size, Retry-After).
    """

    def __init__(self, settings: Settings, api: ApiSettings):
        self.settings = settings.model_copy(update={"retry_s": min(settings.retry_s, api.retry_s)})
        self.api = api
        self._lock = threading.Lock()
        self._client: SearchClient | None = None
        self._batcher: EmbedBatcher | None = None
        self._searches: SearchBatcher | None = None
        self._failure: tuple[float, VitsearchError] | None = None

    def client(self) -> SearchClient:
        """The open client (blocking: call it off the event loop).

        Raises:
            StoreError: Milvus cannot be reached, or the collection does not exist (also the
                remembered error of an attempt less than ``retry_after_s`` ago).
            VitsearchError: the collection's encoder cannot be loaded.
        """
        if self._client is not None:
            return self._client
        with self._lock:
            if self._client is None:
                if self._failure and time.monotonic() - self._failure[0] < self.api.retry_after_s:
                    raise self._failure[1]
                try:
                    self._client = SearchClient(settings=self.settings)
                except VitsearchError as exc:
                    self._failure = (time.monotonic(), exc)
                    raise
                self._failure = None
        return self._client

    def searches(self) -> SearchBatcher:
        """The batcher of the collection's searches (blocking on first call: it opens the client).

        Raises:
            as :meth:`client`.
        """
        if self._searches is not None:
            return self._searches
        client = self.client()
        with self._lock:
            if self._searches is None:
                self._searches = SearchBatcher(client)
        return self._searches

    def batcher(self) -> EmbedBatcher:
        """The batcher over the collection's encoder, loading it on first call (blocking).

        Raises:
            as :meth:`client`; and :class:`~vitsearch.search.errors.ModelNotFoundError` or
            :class:`~vitsearch.search.errors.EncoderMismatchError` from loading the encoder.
        """
        if self._batcher is not None:
            return self._batcher
        searches = self.searches()
        encoder = self.client().encoder  # loaded once; concurrent callers wait for the same load
        with self._lock:
            if self._batcher is None:
                self._batcher = EmbedBatcher(encoder, self.api.batch_window_ms / 1000, self.api.max_batch, searches)
        return self._batcher

    async def opened(self, what: str) -> SearchClient | SearchBatcher | EmbedBatcher:
        """``"client"``, ``"searches"`` or ``"batcher"``, awaited: at once when it is open already
        (no thread hop per request), else opened in a worker thread (connecting to Milvus and
        loading the model block).

        Raises:
            as :meth:`client`, :meth:`searches` and :meth:`batcher`.
        """
        ready = {"client": self._client, "searches": self._searches, "batcher": self._batcher}[what]
        return ready if ready is not None else await run_in_threadpool(getattr(self, what))

    @property
    def encoder_loaded(self) -> bool:
        """Whether the encoder is loaded and its batcher running."""
        return self._batcher is not None

    def warm_up(self) -> None:
        """Open the collection and load its encoder now, so the first query does not wait; a
        failure is logged (requests report it)."""
        try:
            self.batcher()
            log.info(
                "ready: %s, encoder %s on %s",
                self._client.store.where,
                self._client.encoder_info.model,
                self._batcher.encoder.device,
            )
        except VitsearchError as exc:
            log.warning("not ready: %s", exc)

    def stats(self) -> dict:
        """This process's figures: ``pid``, ``forward_passes``, ``images_embedded``,
        ``batch_window_ms``, ``max_batch``, ``torch_threads``, ``milvus_searches`` (multi-vector
        searches run) and ``queries_searched`` (the queries they answered)."""
        b, s = self._batcher, self._searches
        return {
            "pid": os.getpid(),
            "forward_passes": b.passes if b else 0,
            "images_embedded": b.images if b else 0,
            "batch_window_ms": self.api.batch_window_ms,
            "max_batch": self.api.max_batch,
            "torch_threads": torch.get_num_threads(),
            "milvus_searches": s.calls if s else 0,
            "queries_searched": s.queries if s else 0,
        }

    def close(self) -> None:
        """Stop the batchers and close the Milvus connection."""
        if self._batcher is not None:
            self._batcher.close()
        if self._searches is not None:
            self._searches.close()
        if self._client is not None:
            self._client.close()
