"""The library's errors as HTTP answers, every one JSON ``{"detail": "one line"}``:

- 400: a bad image (not an image, corrupt, empty), a bad query (``k`` out of range, a filter that
  is not one valid expression, a vector of the wrong dimension) or a malformed request;
- 404: a path that is not indexed; 413: an upload or image over a limit (bytes or decoded pixels);
- 503 with ``Retry-After``: Milvus unreachable, the collection missing, or its encoder not loadable;
- 500: anything else (the server logs its traceback; the answer names only its type).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException

from vitsearch.search.errors import BadImageError, BadQueryError, ImageTooLargeError, NotIndexedError, VitsearchError

from .schemas import AsciiJSONResponse


def status_of(exc: VitsearchError) -> int:
    """The HTTP status of a library error."""
    if isinstance(exc, ImageTooLargeError):
        return 413
    if isinstance(exc, NotIndexedError):
        return 404
    if isinstance(exc, (BadImageError, BadQueryError)):
        return 400
    return 503  # StoreError, CollectionNotFoundError, ModelNotFoundError, EncoderMismatchError


def install(app: FastAPI, retry_after_s: int) -> None:
    """Register the handlers on ``app``; a 503 says ``Retry-After: retry_after_s``."""

    @app.exception_handler(VitsearchError)
    async def library_error(request: Request, exc: VitsearchError):
        status = status_of(exc)
        headers = {"Retry-After": str(retry_after_s)} if status == 503 else None
        return AsciiJSONResponse({"detail": " ".join(str(exc).split())}, status_code=status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        return AsciiJSONResponse({"detail": validation_message(exc)}, status_code=400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return AsciiJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # uvicorn logs the traceback
        return AsciiJSONResponse(
            {"detail": f"internal error ({type(exc).__name__}); the server log has the details"}, status_code=500
        )


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's validation errors as one line: ``k: Input should be less than or equal to 16384``."""
    parts = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query")] or ["request"]
        parts.append(f"{'.'.join(loc)}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)
