"""Indexing on request: ``POST /index`` (a file or a folder under an allowed root, answered once its
rows are written) and ``GET /index/status`` (the folder being indexed: files found, done, failed).

Guarded twice: the routes answer only where the API has a token (``VITSEARCH_API_TOKEN``: the
:class:`~.auth.BearerToken` middleware then checks every request) and only for a path whose real
location (symlinks and ``..`` resolved) is under a real'd ``--index-root``
(:attr:`~.settings.ApiSettings.index_roots`); 403 otherwise. One request indexes at a time in a
process (409 for another meanwhile, and for a run of ``vitsearch index`` holding the writer lease).

The images are embedded by the served encoder through its :class:`~.batching.EmbedBatcher`: one
thread runs every forward pass of the process, the search queries' and the indexing's, never two
at once; a query that arrives while a folder is indexed waits for at most one batch.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from vitsearch.indexer import IndexJob, IndexReport, LocalExecutor, Progress
from vitsearch.indexer.scan import FileEntry, scan
from vitsearch.search.errors import CollectionBusyError
from vitsearch.search.hit import META_FIELDS
from vitsearch.search.images import is_image_file

from .backend import Backend
from .batching import EmbedBatcher
from .schemas import AsciiJSONResponse

router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Not an absolute path, not an image file, or the image cannot be decoded"},
    401: {"description": "Missing or wrong bearer token"},
    403: {"description": "No token configured, no --index-root, or the path is outside every root"},
    404: {"description": "No such file or folder"},
    409: {"description": "Another indexing run writes to the collection (this API's or `vitsearch index`)"},
    503: {"description": "Milvus unreachable or the collection not ready; see Retry-After"},
}


class IndexIn(BaseModel):
    """``POST /index``'s body."""

    path: str = Field(..., description="Absolute path of an image file or a folder, under an --index-root.")


class IndexStatus:
    """The state of this process's indexing: one run at a time, its counts for ``/index/status``."""

    def __init__(self):
        self.lock = threading.Lock()
        self.path: str | None = None
        self.found = self.done = self.failed = 0
        self.started = 0.0
        self.last: dict[str, Any] | None = None

    def json(self) -> dict[str, Any]:
        """``{"running", "path", "found", "done", "failed", "seconds", "last"}``."""
        running = self.path is not None
        return {
            "running": running,
            "path": self.path,
            "found": self.found,
            "done": self.done,
            "failed": self.failed,
            "seconds": round(time.monotonic() - self.started, 2) if running else 0.0,
            "last": self.last,
        }


class _Counting(Progress):
    def __init__(self, status: IndexStatus):
        self.status = status

    def found(self, n: int) -> None:
        self.status.found += n

    def advance(self, n: int) -> None:
        self.status.done += n


class BatchedEncoder:
    """The served encoder with its forward passes sent through the process's
    :class:`~.batching.EmbedBatcher` (one thread, shared with the search queries)."""

    def __init__(self, batcher: EmbedBatcher):
        self._batcher = batcher

    def __getattr__(self, name: str):
        return getattr(self._batcher.encoder, name)

    def embed_pixels(self, pixel_values) -> np.ndarray:
        """``(N, 3, H, W)`` model input to ``(N, D) float32`` embeddings, a pass of the batcher."""
        import torch

        pixels = torch.as_tensor(pixel_values)
        futures = [self._batcher.submit(p) for p in pixels]
        return np.stack([f.result() for f in futures]) if futures else np.empty((0, self.info.dim), np.float32)


def allowed(path: str, roots: list[str]) -> str:
    """The real path of ``path`` (symlinks and ``..`` resolved) if it is one of ``roots`` or
    under one (each real'd too); raises 403 otherwise, 400 for a path no file system can hold
    (a NUL byte, a lone surrogate that is not an undecodable byte)."""
    try:
        real = os.path.realpath(path)
        os.fsencode(real)
    except (ValueError, UnicodeError):
        raise HTTPException(400, "not a path: it holds a NUL byte or a character no file name can") from None
    for root in roots:
        r = os.path.realpath(root)
        if real == r or real.startswith(r.rstrip(os.sep) + os.sep):
            return real
    raise HTTPException(403, "the path is outside every --index-root of this server")


def _guard(request: Request) -> tuple[Backend, IndexStatus]:
    backend: Backend = request.app.state.backend
    if backend.api.token is None:
        raise HTTPException(403, "indexing over HTTP needs a token: set VITSEARCH_API_TOKEN")
    if not backend.api.index_roots:
        raise HTTPException(403, "indexing over HTTP is off: start the server with --index-root DIR")
    status = getattr(request.app.state, "indexing", None)
    if status is None:
        status = request.app.state.indexing = IndexStatus()
    return backend, status


@router.post("/index", summary="Index a file or a folder", responses=_ERRORS)
async def index(request: Request, body: IndexIn) -> AsciiJSONResponse:
    """Index one image file (the answer is its row, without the vector) or a folder, incrementally
    as `vitsearch index` does (the answer is the run's report), under an `--index-root`; answered
    once the rows are written. The row is keyed by the real path."""
    backend, status = _guard(request)
    if not os.path.isabs(body.path):
        raise HTTPException(400, "path must be absolute")
    real = allowed(body.path, backend.api.index_roots)
    if not os.path.exists(real):
        raise HTTPException(404, "no such file or folder")
    if not os.path.isdir(real) and not is_image_file(real):
        raise HTTPException(400, "not an image file (JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC/HEIF, AVIF)")
    batcher = await backend.opened("batcher")
    if not status.lock.acquire(blocking=False):
        raise HTTPException(409, f"this server is indexing {status.path} now; see GET /index/status")
    try:
        return AsciiJSONResponse(await run_in_threadpool(_run, backend, batcher, status, real))
    finally:
        status.path = None
        status.lock.release()


@router.get("/index/status", summary="The indexing in progress", responses=_ERRORS)
async def index_status(request: Request) -> AsciiJSONResponse:
    """Whether this server process indexes now, the path, files found to embed, done and failed so
    far, and the report of the last run (`last`)."""
    _, status = _guard(request)
    return AsciiJSONResponse(status.json())


def _run(backend: Backend, batcher: EmbedBatcher, status: IndexStatus, real: str) -> dict[str, Any]:
    client = backend.client()
    status.path, status.found, status.done, status.failed, status.started = real, 0, 0, 0, time.monotonic()
    failures: list[tuple[str, str]] = []

    def failed(path: str, reason: str) -> None:
        status.failed += 1
        failures.append((path, reason))

    folder = os.path.isdir(real)
    lister = scan if folder else (lambda root, on_error, on_unsupported: [FileEntry.of(real, os.stat(real))])
    executor = LocalExecutor(0, lister=lister)
    job = IndexJob(client.store, BatchedEncoder(batcher), executor, batcher.max_batch, _Counting(status), failed)
    try:
        report = job.run(real if folder else os.path.dirname(real))
    except CollectionBusyError as exc:
        raise HTTPException(409, str(exc)) from None
    out = _report(report, failures)
    status.last = {"path": real, **out}
    if folder:
        return out
    if failures:
        raise HTTPException(400, failures[0][1])
    row = client.store.get([real], fields=META_FIELDS).get(real, {})
    return {"path": real, "indexed": report.indexed, "metadata": {k: v for k, v in row.items() if k != "path"}}


def _report(report: IndexReport, failures: list[tuple[str, str]]) -> dict[str, Any]:
    return {
        "indexed": report.indexed,
        "unchanged": report.unchanged,
        "rehashed": report.rehashed,
        "failed": report.failed,
        "seconds": round(report.seconds, 2),
        "images_per_s": round(report.images_per_s, 2),
        "unsupported": dict(report.unsupported),
        "failures": [{"path": p, "reason": r} for p, r in failures],
    }
