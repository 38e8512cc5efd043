"""The app factory: :func:`create_app` builds the FastAPI app that ``vitsearch serve`` runs on
uvicorn (``uvicorn --factory vitsearch.api.app:create_app`` does the same, reading everything from
``VITSEARCH_*`` variables)."""

from __future__ import annotations

import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from vitsearch.search.application import configure
from vitsearch.search.config import Settings

from . import errors
from .auth import BearerToken
from .backend import Backend
from .hosts import AllowedHosts
from .indexing import router as indexing_router
from .routes import router
from .schemas import AsciiJSONResponse
from .settings import ApiSettings
from .uploads import BodyLimit

DESCRIPTION = """Image similarity search over a vitsearch collection: upload a photo (`POST /search`),
search with an indexed file's stored vector (`POST /search/similar`) or with an embedding
(`POST /search/vector`); index a file or a folder under an allowed root (`POST /index`). Scores are cosine similarities of the Vision Transformer's CLS embeddings
(higher is closer). Errors are `{"detail": "..."}`: 400 bad input (or a Host this server is not
served on), 401 token, 403 indexing not allowed, 404 not indexed, 409 another indexing run, 408 body too slow, 413 too large, 503 Milvus unreachable
(with `Retry-After`)."""


def create_app(settings: Settings | None = None, api: ApiSettings | None = None) -> FastAPI:
    """The HTTP API over the collection ``settings`` names.

    Args:
        settings: the library's settings (default: ``VITSEARCH_*``): URI, collection, model,
            ``max_upload_mb``, the image and filter limits, ``allowed_hosts``.
        api: the API's own (default: ``VITSEARCH_API_*``): token, CORS origins, batching, body
            limits.

    The collection is opened and its encoder loaded in the background at startup; the app
    answers ``/healthz`` meanwhile and everything else once it can (503 until then).
    """
    settings = settings or Settings()
    api = api or ApiSettings()
    configure(settings)  # an application: quiet the libraries' logs, Pillow's pixel guard
    backend = Backend(settings, api)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        threading.Thread(target=backend.warm_up, name="vitsearch-warm-up", daemon=True).start()
        yield
        backend.close()

    app = FastAPI(
        title="vitsearch",
        summary="Image similarity search with Vision Transformer embeddings in Milvus",
        description=DESCRIPTION,
        version=_version(),
        lifespan=lifespan,
        default_response_class=AsciiJSONResponse,
    )
    app.state.backend = backend
    app.include_router(router)
    app.include_router(indexing_router)
    errors.install(app, api.retry_after_s)
    # Middleware added last runs first: the Host check, CORS (answers preflights), the token, the body limits.
    app.add_middleware(
        BodyLimit,
        upload_bytes=settings.max_upload_mb * 2**20,
        json_bytes=api.max_json_kb * 1024,
        timeout_s=api.body_timeout_s,
    )
    if api.token is not None:
        app.add_middleware(BearerToken, token=api.token.get_secret_value())
        _document_bearer(app)
    if api.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=api.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(AllowedHosts, hosts=settings.allowed_hosts, open_paths={"/healthz"})
    return app


def _document_bearer(app: FastAPI) -> None:
    """Say in the OpenAPI document that the routes take a bearer token, so that ``/docs`` has an
    "Authorize" button and its "Try it out" sends the token."""
    schema_of = app.openapi

    def openapi() -> dict:
        schema = schema_of()  # built once and cached by FastAPI; the additions are idempotent
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["bearer"] = {
            "type": "http",
            "scheme": "bearer",
        }
        schema["security"] = [{"bearer": []}]
        return schema

    app.openapi = openapi


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vitsearch")
    except PackageNotFoundError:
        return "0"
