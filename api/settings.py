"""Settings of the HTTP API, read from ``VITSEARCH_API_*`` environment variables (the Milvus URI,
the collection, the model and the image limits are the library's :class:`~vitsearch.search.config.Settings`)."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from vitsearch.search.config import DEFAULT_BATCH_SIZE


class ApiSettings(BaseSettings):
    """``vitsearch serve``'s own settings.

    Attributes:
        token: bearer token every route but ``/healthz`` requires when set
            (``Authorization: Bearer TOKEN``; ``VITSEARCH_API_TOKEN``); never logged.
        cors_origins: origins a browser may call the API from, comma-separated
            (``VITSEARCH_API_CORS_ORIGINS="https://shop.example,http://localhost:3000"``; ``*`` for
            any); default none (no CORS headers: only same-origin pages and non-browser clients).
        batch_window_ms: how long the first image query of a batch waits for others to join it
            before the forward pass, in milliseconds. Queries that arrive while a forward pass
            runs join the next one anyway.
        max_batch: most images per forward pass (1 turns batching off).
        retry_s: seconds a request keeps retrying an unreachable Milvus before answering 503
            (the library's ``VITSEARCH_RETRY_S`` is for batch jobs and defaults to a minute).
        retry_after_s: the ``Retry-After`` of a 503, in seconds; also how long a failed attempt
            to open the collection is remembered before the next request tries again.
        max_json_kb: largest request body that is not an image upload (the JSON of
            ``/search/similar`` and ``/search/vector``), in KB (1024 bytes); a bigger one gets 413
            before it is read. Default 256: a 4,096-d vector in JSON is ~100 KB, a filter at most
            16 K characters (``VITSEARCH_MAX_FILTER_CHARS``).
        body_timeout_s: seconds a request body may take to arrive, counted from the server's
            first read of it; 408 after that (a client announcing more than it sends no longer
            holds a connection forever). Default 60: a 20 MB upload at 2.7 Mbit/s.
        index_roots: folders under which ``POST /index`` may index a file or a folder, separated
            by the OS's path separator (``:`` on Linux and macOS; ``vitsearch serve --index-root
            DIR``, repeatable); a path is checked with symlinks and ``..`` resolved. Default none:
            indexing over HTTP is off. It also needs ``token``.
    """

    model_config = SettingsConfigDict(env_prefix="VITSEARCH_API_", extra="ignore")

    token: SecretStr | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    batch_window_ms: float = Field(default=5.0, ge=0)
    max_batch: int = Field(default=DEFAULT_BATCH_SIZE, ge=1)
    retry_s: float = Field(default=5.0, ge=0)
    retry_after_s: int = Field(default=5, ge=1)
    max_json_kb: int = Field(default=256, ge=1)
    body_timeout_s: float = Field(default=60.0, gt=0)
    index_roots: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split(cls, value):
        if isinstance(value, str):
            return [o.strip() for o in value.split(",") if o.strip()]
        return value

    @field_validator("index_roots", mode="before")
    @classmethod
    def _split_paths(cls, value):
        if isinstance(value, str):
            return [p for p in value.split(os.pathsep) if p.strip()]
        return value

    @field_validator("token", mode="before")
    @classmethod
    def _empty_is_none(cls, value):
        return None if isinstance(value, str) and not value.strip() else value
