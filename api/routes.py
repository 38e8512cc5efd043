"""The routes. Each parses its request, calls :class:`~vitsearch.search.client.SearchClient` (off the
event loop) and answers JSON; an image query's forward pass, and the searches, go through the
batchers (:mod:`.batching`), shared with the requests that arrive together."""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Request, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from vitsearch.search.client import SearchClient
from vitsearch.search.config import MAX_K
from vitsearch.search.errors import BadImageError, BadQueryError, ImageTooLargeError, StoreError
from vitsearch.search.query import Box, Stored
from vitsearch.search.ranking import MAX_EXPAND

from .backend import Backend
from .batching import SearchQuery
from .schemas import (
    AFTER_DOC,
    BEFORE_DOC,
    SORT_DOC,
    AsciiJSONResponse,
    SearchOut,
    SimilarIn,
    Sort,
    VectorIn,
    search_json,
)

router = APIRouter()
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "description": "Bad image, bad k, bad filter, a date that is not one (`after`, `before`), an unknown "
        "`sort`, dates asked of a collection indexed before vitsearch stored them, or a malformed request: "
        '`{"detail": ...}` naming what is wrong'
    },
    401: {"description": "Missing or wrong bearer token (when VITSEARCH_API_TOKEN is set)"},
    503: {"description": "Milvus unreachable or the collection not ready; see Retry-After"},
}


def _backend(request: Request) -> Backend:
    return request.app.state.backend


def _json(content: Any, status: int = 200) -> AsciiJSONResponse:
    return AsciiJSONResponse(content, status_code=status)


@router.post(
    "/search",
    response_model=SearchOut,
    summary="Search by image",
    responses={
        **_ERRORS,
        413: {"description": "Upload over --max-upload-mb, or an image over the decoded-pixel limit"},
    },
)
async def search(
    request: Request,
    image: UploadFile = File(..., description="The query image (JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC/HEIF, AVIF)."),
    k: Annotated[int, Query(ge=1, le=MAX_K, description=f"Number of results, 1 to {MAX_K}.")] = 10,
    folder: str | None = Query(None, description="Only images in this folder or below it."),
    filter: str | None = Query(
        None, description="Milvus boolean expression on the stored fields, e.g. `width >= 500`."
    ),
    min_score: float | None = Query(None, description="Leave out hits scoring below this."),
    collapse: bool = Query(False, description="Show exact duplicates (same sha256) as one hit."),
    expand: Annotated[
        int,
        Query(
            ge=0,
            le=MAX_EXPAND,
            description="Query expansion: search again "
            "with the query averaged with its N nearest results (αQE); 0: off.",
        ),
    ] = 0,
    box: str | None = Query(
        None,
        description="Search for this region of the image only: `x,y,w,h` in pixels of the image as "
        "displayed (after its EXIF orientation).",
    ),
    after: str | None = Query(None, description=AFTER_DOC),
    before: str | None = Query(None, description=BEFORE_DOC),
    sort: Sort = Query("score", description=SORT_DOC),
):
    """The `k` indexed images most similar to the uploaded one (or to a `box` of it), best first
    (score: cosine similarity), or by capture date (`sort`), of those taken between `after` and
    `before`. The upload is decoded as the indexer decodes a file (same size and pixel limits);
    the forward passes and the searches of concurrent requests are batched."""
    backend = _backend(request)
    region = Box.of(box) if box else None
    data = await image.read()
    started = time.perf_counter()
    client = await backend.opened("client")
    low, high = await _dates(client, after, before, sort)  # before the upload is decoded or embedded
    name = image.filename or "upload"
    _check_upload(backend, name, data)
    batcher = await backend.opened("batcher")

    def model_input():
        picture = client.load(data, name, region)  # bounded decode; a decompression bomb is refused from its header
        return batcher.encoder.preprocess([picture])[0]

    pixels = await run_in_threadpool(model_input)
    if collapse:  # searches deeper, then asks for the copies: on its own, not holding up the others' batch
        vector = await batcher.embed(pixels)
        hits = await run_in_threadpool(
            client.search_vector, vector, k, filter, folder or None, True, expand, low, high, sort
        )
    else:
        query = SearchQuery(k, filter, folder or None, expand=expand, after=low, before=high, sort=sort)
        hits = await batcher.search(pixels, query)
    return _json(search_json(hits, 1000 * (time.perf_counter() - started), min_score))


@router.post(
    "/search/examples",
    response_model=SearchOut,
    summary="Search by several examples",
    responses={
        **_ERRORS,
        404: {"description": "An example path is not indexed"},
        413: {"description": "An upload over --max-upload-mb, or an image over the decoded-pixel limit"},
    },
)
async def search_examples(
    request: Request,
    positive: list[UploadFile] = File([], description="Images to find more of."),
    negative: list[UploadFile] = File([], description="Images of what not to find."),
    positive_path: list[str] = Form([], description="Indexed files to find more of (their stored vectors)."),
    negative_path: list[str] = Form([], description="Indexed files of what not to find."),
    weights: str | None = Form(
        None,
        description="A JSON list of numbers above 0, one per example in this order: positive files, "
        "positive paths, negative files, negative paths. Default: all 1.",
    ),
    k: Annotated[int, Query(ge=1, le=MAX_K, description=f"Number of results, 1 to {MAX_K}.")] = 10,
    folder: str | None = Query(None, description="Only images in this folder or below it."),
    filter: str | None = Query(None, description="Milvus boolean expression on the stored fields."),
    min_score: float | None = Query(None, description="Leave out hits scoring below this."),
    expand: Annotated[int, Query(ge=0, le=MAX_EXPAND, description="Query expansion (αQE); 0: off.")] = 0,
    after: str | None = Query(None, description=AFTER_DOC),
    before: str | None = Query(None, description=BEFORE_DOC),
    sort: Sort = Query("score", description=SORT_DOC),
):
    """The images most like the positive examples and least like the negative ones: the weighted
    sum of the examples minus a fifth of that of the negatives, in the collection's space (see the Python
    reference of `vitsearch.search.query`). Indexed examples are left out of the results. `after`,
    `before` and `sort` as in `/search`."""
    backend = _backend(request)
    started = time.perf_counter()
    try:
        weight_list = json.loads(weights) if weights else None
    except ValueError:
        raise BadQueryError("weights must be a JSON list of numbers") from None
    if weight_list is not None and not isinstance(weight_list, list):
        raise BadQueryError("weights must be a JSON list of numbers")
    uploads = [(f.filename or "upload", await f.read()) for f in [*positive, *negative]]
    for name, data in uploads:
        _check_upload(backend, name, data)
    client = await backend.opened("client")
    low, high = await _dates(client, after, before, sort)

    def run():
        images = [client.load(data, name) for name, data in uploads]
        pos = images[: len(positive)] + [Stored(p) for p in positive_path]
        neg = images[len(positive) :] + [Stored(p) for p in negative_path]
        return client.search_examples(
            pos, neg, weight_list, k, filter, folder or None, expand=expand, after=low, before=high, sort=sort
        )

    hits = await run_in_threadpool(run)
    return _json(search_json(hits, 1000 * (time.perf_counter() - started), min_score))


async def _dates(
    client: SearchClient, after: str | None, before: str | None, sort: str
) -> tuple[float | None, float | None]:
    """``(after, before)`` as Unix seconds (None where not given or empty), checked with ``sort``
    before any work is done: a value that is not a date, a range that is empty, or dates or a
    date order asked of a collection indexed before vitsearch stored them is a 400 that names it
    (:class:`~vitsearch.search.errors.BadQueryError`)."""
    where = await run_in_threadpool(client.where, None, after or None, before or None, sort)
    return where.taken or (None, None)


def _check_upload(backend: Backend, name: str, data: bytes) -> None:
    """Refuse an upload over ``--max-upload-mb`` (413)."""
    if len(data) > backend.settings.max_upload_mb * 2**20:
        raise ImageTooLargeError(
            name,
            f"upload is {len(data) / 2**20:.1f} MB, over the limit of "
            f"{backend.settings.max_upload_mb} MB (vitsearch serve --max-upload-mb)",
        )


@router.post(
    "/search/similar",
    response_model=SearchOut,
    summary="Search by an indexed image",
    responses={**_ERRORS, 404: {"description": "The path is not indexed"}},
)
async def search_similar(request: Request, body: SimilarIn):
    """Images similar to an indexed file, by its stored vector (no model runs); the file itself is
    left out. `after`, `before` and `sort` as in `/search`."""
    started = time.perf_counter()
    backend = _backend(request)
    searches = await backend.opened("searches")
    low, high = await _dates(await backend.opened("client"), body.after, body.before, body.sort)
    query = SearchQuery(
        body.k,
        body.filter,
        body.folder or None,
        path=body.path,
        expand=body.expand,
        after=low,
        before=high,
        sort=body.sort,
    )
    hits = await searches.search(query)
    return _json(search_json(hits, 1000 * (time.perf_counter() - started), body.min_score))


@router.post("/search/vector", response_model=SearchOut, summary="Search by embedding", responses=_ERRORS)
async def search_vector(request: Request, body: VectorIn):
    """The `k` rows nearest to an embedding of the collection's dimension: the model's raw
    embedding (made by the same model elsewhere, or a hit's `/search/similar`), which is mapped
    into the collection's space here; any length but zero. `after`, `before` and `sort` as in
    `/search`."""
    started = time.perf_counter()
    backend = _backend(request)
    client = await backend.opened("client")
    vector = np.asarray(body.vector, np.float32)
    dim = client.encoder_info.dim
    if vector.shape != (dim,):
        raise BadQueryError(f"vector has {vector.size} dimensions; the collection's embeddings have {dim}")
    if not np.isfinite(vector).all() or not np.any(vector):
        raise BadQueryError("vector must be finite and not all zeros (its direction is the query)")
    low, high = await _dates(client, body.after, body.before, body.sort)
    searches = await backend.opened("searches")
    query = SearchQuery(
        body.k,
        body.filter,
        body.folder or None,
        vector=vector,
        expand=body.expand,
        after=low,
        before=high,
        sort=body.sort,
    )
    hits = await searches.search(query)
    return _json(search_json(hits, 1000 * (time.perf_counter() - started), body.min_score))


@router.get("/stats", summary="Collection facts", responses=_ERRORS)
async def stats(request: Request):
    """Number of images, model, dimension, pooling, input size, index type, metric, URI and
    collection; `api`: this server process's batching figures."""
    backend = _backend(request)
    client = await backend.opened("client")
    return _json({**await run_in_threadpool(client.stats), "api": backend.stats()})


@router.get("/healthz", summary="Liveness")
async def healthz():
    """200 while the process serves requests (no token needed, nothing else checked)."""
    return _json({"status": "ok"})


@router.get("/readyz", summary="Readiness", responses={503: _ERRORS[503]})
async def readyz(request: Request):
    """200 when the collection answers and its encoder is loaded, else 503 saying why."""
    backend = _backend(request)
    client = await backend.opened("client")
    if not await run_in_threadpool(client.store.exists):
        raise StoreError(f"{client.store.where} no longer exists")
    if not backend.encoder_loaded:
        return AsciiJSONResponse(
            {"detail": "the encoder is loading"},
            status_code=503,
            headers={"Retry-After": str(backend.api.retry_after_s)},
        )
    return _json(
        {
            "status": "ready",
            "collection": client.store.collection,
            "uri": client.store.uri,
            "model": client.encoder_info.model,
        }
    )


@router.get(
    "/thumbnail",
    summary="Thumbnail of an indexed image",
    responses={
        200: {"content": {"image/jpeg": {}}},
        404: {"description": "Not a row of the collection, or the file changed since it was indexed"},
        **_ERRORS,
    },
)
async def thumbnail(
    request: Request,
    path: str = Query(..., description="An indexed file's path, as a hit gives it (percent-encoded bytes)."),
):
    """A JPEG of at most 320 pixels a side, only of a row of the collection and only from the
    bytes that were indexed (size and sha256 checked): a path that is not a row is never opened."""
    client = await _backend(request).opened("client")
    try:
        jpeg = await run_in_threadpool(client.thumbnail, _raw_query(request, "path") or path)
    except BadImageError as exc:  # gone, unreadable, or not the indexed bytes: nothing to show
        raise HTTPException(404, f"no thumbnail: {' '.join(str(exc).split())}") from None
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=60"})


def _raw_query(request: Request, name: str) -> str | None:
    """A query parameter decoded as a file name is (``os.fsdecode``: bytes that are not UTF-8 kept
    as surrogates), where Starlette replaces them with U+FFFD."""
    raw = request.scope.get("query_string", b"").decode("latin-1")
    for key, value in urllib.parse.parse_qsl(raw, keep_blank_values=True, encoding="utf-8", errors="surrogateescape"):
        if key == name:
            return value
    return None
