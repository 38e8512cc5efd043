"""The API's JSON: request and response shapes (they make the OpenAPI document at ``/docs``),
search responses as JSON (a hit: :meth:`~vitsearch.search.hit.Hit.to_dict`) and the
response class.

Paths are exact: a path whose bytes are not UTF-8 (``os.fsdecode`` gives each such byte as a
surrogate, U+DC80-U+DCFF) is sent as a ``\\udcNN`` escape, which JSON allows and which a JSON
parser such as Python's gives back as the same string, so a hit's path can be sent back as it is
(``/search/similar``). Every response is therefore ASCII JSON (:class:`AsciiJSONResponse`).
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from vitsearch.search.client import Hit
from vitsearch.search.config import MAX_K
from vitsearch.search.ranking import MAX_EXPAND
from vitsearch.search.when import SORTS

K = Annotated[int, Field(ge=1, le=MAX_K, description=f"Number of results, 1 to {MAX_K}.")]
EXPAND = Annotated[
    int,
    Field(
        ge=0,
        le=MAX_EXPAND,
        description="Query expansion: search again with the query averaged with its N nearest results (αQE); 0: off.",
    ),
]
#: What ``after``, ``before`` and ``sort`` say, in the query string of the upload routes and in the JSON bodies.
AFTER_DOC = (
    "Only images taken at or after this (capture time: EXIF DateTimeOriginal, else the file's "
    "modification time): an ISO 8601 date or date and time, `2024`, `2024-05`, `2024-05-01`, "
    "`2024-05-01T18:30`, optionally with `+02:00` or `Z`; without a zone, the server's local time."
)
BEFORE_DOC = (
    "Only images taken before this (the first moment left out; same forms as `after`): "
    "`after=2024-05&before=2024-06` is May 2024."
)
SORT_DOC = (
    "`score` (best first), or `date` / `date-asc`: the close matches (`match`) first, newest / oldest "
    "first, then the other hits by score."
)
#: The orders of a search's hits (:data:`~vitsearch.search.when.SORTS`).
Sort = Literal[SORTS]


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped (``\\uXXXX``), so that any path, also one that
    is not UTF-8, is sent exactly; NaN and infinities are refused."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


class HitOut(BaseModel):
    """One result: ``score`` is the cosine similarity of the embeddings in the collection's space
    (whitened once it holds 50 images: unrelated images score near 0; higher is closer, 1 is
    identical); ``match`` whether it is a close match (the same object, scene or product, not
    merely the nearest image); ``metadata`` the stored fields (``folder``, ``size`` bytes,
    ``mtime`` Unix seconds, ``ctime_ns``, ``inode``, ``width``, ``height`` pixels, ``sha256``,
    ``indexed_at``, ``taken_at`` capture time in Unix seconds, ``date_source`` where it came
    from: ``exif``, ``exif-local`` (an EXIF date without zone, read in the indexing machine's
    local time), ``mtime`` (no EXIF date: the file's modification time), or ``""`` in a
    collection not yet upgraded; ``camera`` EXIF make and model, or ``""``)."""

    model_config = ConfigDict(extra="allow")
    path: str
    score: float
    match: bool
    metadata: dict[str, Any]


class SearchOut(BaseModel):
    """Hits best first (or in the order ``sort`` asks); ``close_match``: whether any of them is a
    close match (false: "no close match in this collection"); the time the search took on the
    server in milliseconds."""

    hits: list[HitOut]
    close_match: bool
    took_ms: float


class SimilarIn(BaseModel):
    """A search with the stored vector of an indexed file (no model runs); the file itself is
    left out of the results."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="The indexed file's absolute path, as a hit gives it.")
    k: K = 10
    folder: str | None = Field(None, description="Only images in this folder or below it.")
    filter: str | None = Field(None, description='Milvus boolean expression on the stored fields, e.g. "width >= 500".')
    min_score: float | None = Field(None, description="Leave out hits scoring below this.")
    expand: EXPAND = 0
    after: str | None = Field(None, description=AFTER_DOC)
    before: str | None = Field(None, description=BEFORE_DOC)
    sort: Sort = Field("score", description=SORT_DOC)


class VectorIn(BaseModel):
    """A search with an embedding of the collection's dimension (``/stats`` gives ``dim``)."""

    model_config = ConfigDict(extra="forbid")
    vector: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(
        description="The query embedding, D floats (need not be normalised: the metric is COSINE)."
    )
    k: K = 10
    folder: str | None = None
    filter: str | None = None
    min_score: float | None = None
    expand: EXPAND = 0
    after: str | None = Field(None, description=AFTER_DOC)
    before: str | None = Field(None, description=BEFORE_DOC)
    sort: Sort = Field("score", description=SORT_DOC)


def search_json(hits: list[Hit], took_ms: float, min_score: float | None) -> dict[str, Any]:
    """The body of a search response: hits at or above ``min_score``, best first, and whether any
    hit searched (also one below ``min_score``) is a close match."""
    kept = [h for h in hits if min_score is None or h.score >= min_score]
    return {
        "hits": [h.to_dict() for h in kept],
        "close_match": any(h.match for h in hits),
        "took_ms": round(took_ms, 2),
    }
