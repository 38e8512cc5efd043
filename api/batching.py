"""Image queries of concurrent requests embedded together: one forward pass for all the queries
that arrive within a few milliseconds of each other (or while the previous pass runs).

A request thread decodes and preprocesses its upload (in parallel with the others), then hands
the ``(3, H, W) float32`` model input to :class:`EmbedBatcher`; its one worker thread waits up to
``window_s`` after the first query for more to join, stacks them into ``(N, 3, H, W)`` and calls
:meth:`~vitsearch.search.encoder.Encoder.embed_pixels` once. On a GPU a pass of 32 images costs
about as much as a pass of one, so throughput under load grows with the batch; on a CPU it is
roughly flat in the batch size (see :data:`~vitsearch.search.config.DEFAULT_BATCH_SIZE`), and the
window mostly saves per-pass overhead. This is the dynamic batching of model servers (NVIDIA
Triton's ``max_queue_delay_microseconds``, TorchServe's ``maxBatchDelay``).
"""
from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from concurrent.futures import Future

import numpy as np
import torch

from vitsearch.search.encoder import Encoder

log = logging.getLogger(__name__)


class EmbedBatcher:
    """One worker thread that embeds queued model inputs in batches.

    Args:
        encoder: the collection's encoder.
        window_s: seconds the first query of a batch waits for others (0: only those queued).
        max_batch: most images per forward pass (1: no batching).

    Attributes:
        passes: forward passes run so far; ``images``: images embedded by them.
    """

    def __init__(self, encoder: Encoder, window_s: float = 0.005, max_batch: int = 32):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.encoder = encoder
        self.window_s = window_s
        self.max_batch = max_batch
        self.passes = 0
        self.images = 0
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="vitsearch-embed", daemon=True)
        self._thread.start()

    def submit(self, pixels: torch.Tensor) -> Future:
        """Queue one model input ``(3, H, W) float32``; the future gives its ``(D,) float32``
        L2-normalised embedding, or the forward pass's exception."""
        future: Future = Future()
        self._queue.put((pixels, future))
        return future

    async def embed(self, pixels: torch.Tensor) -> np.ndarray:
        """:meth:`submit`, awaited: the ``(D,) float32`` embedding of ``pixels``."""
        return await asyncio.wrap_future(self.submit(pixels))

    def close(self) -> None:
        """Stop the worker thread after the queries already queued."""
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            deadline = time.monotonic() + self.window_s
            while len(batch) < self.max_batch:
                wait = deadline - time.monotonic()
                try:
                    item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            self._embed([(p, f) for p, f in batch if f.set_running_or_notify_cancel()])
            if stop:
                return

    def _embed(self, batch: list[tuple[torch.Tensor, Future]]) -> None:
        by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, Future]]] = {}
        for pixels, future in batch:  # a processor without a centre crop keeps the aspect ratio
            by_shape.setdefault(tuple(pixels.shape), []).append((pixels, future))
        for group in by_shape.values():
            try:
                vectors = self.encoder.embed_pixels(torch.stack([p for p, _ in group]))
            except BaseException as exc:  # noqa: BLE001 - handed to every waiting request
                log.exception("forward pass of %d images failed", len(group))
                for _, future in group:
                    future.set_exception(exc)
                continue
            self.passes += 1
            self.images += len(group)
            for (_, future), vector in zip(group, vectors):
                future.set_result(vector)
