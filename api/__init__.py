"""vitsearch's HTTP API (``vitsearch serve``): search by image, by indexed item or by vector,
collection facts, health and thumbnails, for applications not written in Python.

A FastAPI app on uvicorn over the library's :class:`~vitsearch.search.client.SearchClient`:
:mod:`.app` builds it, :mod:`.backend` holds the client (opened lazily, reopened after Milvus
comes back), :mod:`.batching` gathers the image queries of concurrent requests into one forward
pass, :mod:`.hosts` answers only the Host names it is served on (DNS rebinding), :mod:`.auth` checks
the bearer token, :mod:`.uploads` bounds request bodies in size and time, :mod:`.errors`
turns the library's errors into JSON responses and :mod:`.routes` holds the routes;
:mod:`.settings` reads ``VITSEARCH_API_*``. Installed with vitsearch itself (no extra).
"""

from __future__ import annotations

__all__ = ["create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
