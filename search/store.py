"""Milvus storage of image embeddings: the only module that imports pymilvus.

One collection holds one row per image file, keyed by the file's absolute path. The same code
talks to Milvus Lite (a local ``.db`` directory) and to a Milvus server (``http://host:19530``);
backend differences (hit keys, ``delete`` return values, errors) are absorbed here, so callers
never branch on the backend.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

# gRPC logs a line each time a DataLoader worker forks; our errors carry what matters.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
from pymilvus import DataType, MilvusClient  # noqa: E402
from pymilvus.client.types import Status  # noqa: E402
from pymilvus.exceptions import MilvusException, MilvusUnavailableException  # noqa: E402

from .config import Settings  # noqa: E402
from .encoder import EncoderInfo  # noqa: E402
from .errors import BadQueryError, CollectionNotFoundError, StoreError  # noqa: E402
from .lite import lite_uri  # noqa: E402

log = logging.getLogger(__name__)
# pymilvus logs every failed call with a traceback; StoreError already names the call and cause.
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
logging.getLogger("milvus_lite").setLevel(logging.CRITICAL)
# Milvus Lite's in-process gRPC server logs "Method not implemented" for query_iterator's
# timestamp probe, which pymilvus then replaces with a client-side timestamp.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

SCHEMA_VERSION = "1"
_ENCODER_KEY = "vitsearch.encoder"
_SCHEMA_KEY = "vitsearch.schema_version"
MAX_PATH_BYTES = 4096
#: Upper bound of one upsert request in bytes (Milvus's gRPC messages are limited; ~20 MB is safe).
UPSERT_BYTES = 20 * 1024 * 1024
#: HNSW build parameters (Malkov & Yashunin 2016): M links per node, efConstruction beam width.
HNSW_PARAMS = {"M": 16, "efConstruction": 200}
#: Consistency of searches. The collection's own level is Strong (lookups and counts see every
#: write), but a Strong search on a server waits for the next time tick (~200 ms measured on
#: Milvus 2.3.5 standalone); Session still shows a client its own writes, without that wait.
SEARCH_CONSISTENCY = "Session"
#: How Milvus Lite and Milvus servers word a filter they cannot parse or apply.
_FILTER_ERROR = re.compile(r"expression|parse|field|column|syntax|unterminated|operator|token", re.I)
#: Fields of a row besides the vector, in schema order.
META_FIELDS = ("path", "folder", "size", "mtime", "width", "height", "sha256", "indexed_at")


@dataclass(frozen=True)
class StoredHit:
    """One search result as the store returns it: ``score`` is cosine similarity in [-1, 1]."""

    path: str
    score: float
    fields: dict[str, Any]


def is_server_uri(uri: str) -> bool:
    """True for a Milvus server URI (``http(s)://``, ``tcp://``), False for a Milvus Lite path."""
    return uri.startswith(("http://", "https://", "tcp://", "grpc://"))


class Store:
    """One Milvus collection of image embeddings.

    A Milvus Lite database is shared between vitsearch processes (see :mod:`.lite`): the first to
    open it serves it, the others connect to that process; when the serving process exits,
    another takes the database over. A call that finds Milvus unreachable (a server restarting,
    a network cut, the serving process gone) reconnects and retries with exponential backoff
    for up to ``retry_s`` seconds; all calls are idempotent (upsert, get, delete by path).

    Args:
        uri: a Milvus Lite path (``.../milvus.db``, created with its parent folders) or a
            server URI ``http://host:19530``.
        collection: collection name.
        token: server auth token (``user:password`` or an API key); kept private, never logged.
        lite_wait_s: seconds to wait for a Lite database held by another process to be shared.
        retry_s: seconds to keep retrying a call while Milvus is unreachable.

    Raises:
        StoreError: Milvus cannot be opened or reached; the message names the URI.
    """

    def __init__(self, uri: str, collection: str, token: str | None = None, *, lite_wait_s: float = 10.0,
                 retry_s: float = 60.0):
        self.uri = uri
        self.collection = collection
        self._token = token or ""
        self._lite = None if is_server_uri(uri) else Path(uri).expanduser()
        self._lite_wait_s = lite_wait_s
        self._retry_s = retry_s
        self._served_here = False
        self._connect()

    @classmethod
    def from_settings(cls, settings: Settings, uri: str | None = None, collection: str | None = None,
                      token: str | None = None) -> "Store":
        """Open the store that ``settings`` names; explicit ``uri``/``collection``/``token`` win.

        Raises:
            StoreError: Milvus cannot be opened or reached.
        """
        token = token or (settings.token.get_secret_value() if settings.token else None)
        return cls(uri or settings.resolved_uri(), collection or settings.collection, token,
                   lite_wait_s=settings.lite_wait_s, retry_s=settings.retry_s)

    def _connect(self) -> None:
        target = self.uri
        if self._lite is not None:
            self._lite.parent.mkdir(parents=True, exist_ok=True)
            target, self._served_here = lite_uri(self._lite, self._lite_wait_s)
        try:
            self._client = MilvusClient(uri=target, token=self._token)
        except Exception as exc:  # pymilvus raises assorted types
            raise StoreError(f"cannot open Milvus at {self.uri}: {type(exc).__name__}: {exc}") from exc
        # A collection reopened by Milvus Lite (or released on a server) is not searchable until loaded.
        try:
            if self._client.has_collection(self.collection):
                self._client.load_collection(self.collection)
        except MilvusException as exc:
            raise self._error("load_collection", exc) from exc

    def _call(self, method: str, *args, **kwargs):
        """``self._client.<method>(...)`` with Milvus errors turned into :class:`StoreError`, and
        reconnection with backoff (0.5 s doubling to 8 s) while Milvus is unreachable."""
        deadline, delay, connected = None, 0.5, True
        while True:
            if connected:
                try:
                    return getattr(self._client, method)(*args, **kwargs)
                except MilvusException as exc:
                    if not _unreachable(exc):
                        raise self._error(method, exc) from exc
                    last: Exception = exc
            deadline = deadline or time.monotonic() + self._retry_s
            if time.monotonic() + delay > deadline:
                raise StoreError(
                    f"Milvus at {self.uri} did not answer for {self._retry_s:g} s ({method}: {last}); "
                    f"run again once it is back: an indexing run resumes where it stopped") from last
            log.warning("Milvus at %s is unreachable; retrying in %.1f s", self.uri, delay)
            time.sleep(delay)
            delay = min(2 * delay, 8.0)
            try:
                self._connect()  # a Lite database whose server process has gone is taken over
                connected = True
            except StoreError as exc:
                last, connected = exc, False

    def _error(self, what: str, exc: MilvusException) -> StoreError:
        return StoreError(f"Milvus at {self.uri}, collection {self.collection!r}: {what} failed: {exc}")

    # --- the collection and its encoder record ---------------------------------------------------

    def exists(self) -> bool:
        """Whether the collection exists."""
        return bool(self._call("has_collection", self.collection))

    def encoder_info(self) -> EncoderInfo:
        """The encoder recorded in the collection.

        Raises:
            CollectionNotFoundError: the collection does not exist.
            StoreError: it exists but was not made by vitsearch (no encoder record).
        """
        props = self.properties()
        if _ENCODER_KEY not in props:
            raise StoreError(f"collection {self.collection!r} at {self.uri} has no vitsearch encoder "
                             f"record: it was not created by vitsearch; use another --collection")
        return EncoderInfo.from_json(props[_ENCODER_KEY])

    def properties(self) -> dict[str, str]:
        """The collection's properties (vitsearch keeps its records there).

        Raises:
            CollectionNotFoundError: the collection does not exist.
        """
        if not self.exists():
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.uri}: "
                f"index a folder first: vitsearch index DIR")
        desc = self._call("describe_collection", self.collection)
        return dict(desc.get("properties") or {})

    def ensure(self, info: EncoderInfo) -> bool:
        """Create the collection for ``info``'s embeddings, or check an existing one matches.

        Returns:
            True if the collection was created now.

        Raises:
            EncoderMismatchError: the collection holds vectors of another encoder.
            StoreError: unknown schema version, or Milvus refused.
        """
        if self.exists():
            props = self.properties()
            if props.get(_SCHEMA_KEY) != SCHEMA_VERSION:
                raise StoreError(f"collection {self.collection!r} at {self.uri} has schema version "
                                 f"{props.get(_SCHEMA_KEY)!r}, this vitsearch writes {SCHEMA_VERSION!r}")
            self.encoder_info().check_same(info, f"collection {self.collection!r} at {self.uri}")
            return False
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=MAX_PATH_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=info.dim)
        schema.add_field("folder", DataType.VARCHAR, max_length=MAX_PATH_BYTES)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime", DataType.DOUBLE)
        schema.add_field("width", DataType.INT64)
        schema.add_field("height", DataType.INT64)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("indexed_at", DataType.DOUBLE)
        index = self._client.prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE", params=HNSW_PARAMS)
        self._call("create_collection", self.collection,
                   schema=schema, index_params=index, consistency_level="Strong",
                   properties={_ENCODER_KEY: info.to_json(), _SCHEMA_KEY: SCHEMA_VERSION})
        log.info("created collection %s at %s for %s", self.collection, self.uri, info.model)
        return True

    def set_properties(self, properties: dict[str, str]) -> None:
        """Add or replace collection properties (to clear one, set it to ``""``: Milvus 2.3
        servers cannot drop properties)."""
        self._call("alter_collection_properties", self.collection, properties=properties)

    def drop(self) -> None:
        """Delete the collection and all its rows (no error if it does not exist)."""
        if self.exists():
            self._call("drop_collection", self.collection)

    # --- rows ----------------------------------------------------------------------------------

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace rows (keyed by ``path``), in requests of at most :data:`UPSERT_BYTES`.

        Each row has the fields of :data:`META_FIELDS` and ``vector``, a ``(D,) float32`` array
        or list.
        """
        batch: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            row_bytes = 4 * len(row["vector"]) + 2 * len(row["path"]) + len(row["folder"]) + 128
            if batch and size + row_bytes > UPSERT_BYTES:
                self._call("upsert", self.collection, batch)
                batch, size = [], 0
            batch.append({**row, "vector": np.asarray(row["vector"], np.float32).tolist()})
            size += row_bytes
        if batch:
            self._call("upsert", self.collection, batch)

    def get(self, paths: Sequence[str], fields: Sequence[str] = META_FIELDS) -> dict[str, dict[str, Any]]:
        """Rows of the given paths that exist, by path. Missing paths are absent from the result."""
        if not paths:
            return {}
        fields = list(dict.fromkeys(["path", *fields]))
        rows = self._call("get", self.collection, ids=list(paths), output_fields=fields)
        return {r["path"]: dict(r) for r in rows}

    def iter_rows(self, fields: Sequence[str] = ("path",), filter: str = "",
                  batch_size: int = 1000) -> Iterator[dict[str, Any]]:
        """All rows (optionally matching a Milvus ``filter`` expression), streamed in batches."""
        fields = list(dict.fromkeys(["path", *fields]))
        it = self._call("query_iterator", self.collection,
                        batch_size=batch_size, filter=filter, output_fields=fields)
        try:
            while True:
                try:
                    batch = it.next()
                except MilvusException as exc:
                    raise self._error("query_iterator.next", exc) from exc
                if not batch:
                    break
                yield from (dict(r) for r in batch)
        finally:
            it.close()

    def flush(self, timeout_s: float = 600.0) -> None:
        """Seal what was written and wait until the vector index covers every row (a server
        builds it on sealed segments in the background; until then it searches the rest by
        brute force). Not needed for correctness, only before measuring search.

        Raises:
            StoreError: Milvus refused, or the index was not complete after ``timeout_s``.
        """
        self._call("flush", self.collection)
        deadline = time.monotonic() + timeout_s
        while True:
            desc = self._call("describe_index", self.collection, "vector")
            pending = desc.get("pending_index_rows", 0) or 0
            if not pending or desc.get("indexed_rows", 0) >= desc.get("total_rows", 0):
                return
            if time.monotonic() > deadline:
                raise StoreError(f"Milvus at {self.uri}: the index of {self.collection!r} still has "
                                 f"{pending} rows to build after {timeout_s:g} s")
            time.sleep(1)

    def delete(self, paths: Sequence[str]) -> None:
        """Delete the rows of these paths (paths without a row are ignored)."""
        if paths:
            self._call("delete", self.collection, ids=list(paths))

    def count(self) -> int:
        """Number of rows in the collection."""
        res = self._call("query", self.collection, filter="",
                         output_fields=["count(*)"])
        return int(res[0]["count(*)"])

    def search(self, vectors: np.ndarray, k: int, filter: str | None = None,
               fields: Sequence[str] = META_FIELDS, ef: int | None = None) -> list[list[StoredHit]]:
        """Top-``k`` rows by cosine similarity for each query vector.

        Args:
            vectors: ``(Q, D) float32`` query embeddings.
            k: results per query, best first.
            filter: Milvus boolean expression on the scalar fields, e.g. ``width > 500``.
            ef: HNSW search beam width; default ``max(64, k)``.

        Returns:
            Q lists of hits, best first; ``score`` is cosine similarity (higher is closer).

        Raises:
            BadQueryError: ``filter`` is not a valid expression on this collection's fields.
            StoreError: Milvus refused the search or cannot be reached.
        """
        fields = list(dict.fromkeys(["path", *fields]))
        try:
            res = self._call(
                "search", self.collection, data=np.asarray(vectors, np.float32).tolist(),
                limit=k, filter=filter or "", output_fields=fields, consistency_level=SEARCH_CONSISTENCY,
                search_params={"metric_type": "COSINE", "params": {"ef": max(ef or 64, k)}},
            )
        except StoreError as exc:
            cause = exc.__cause__
            if filter and isinstance(cause, MilvusException) and _FILTER_ERROR.search(cause.message or ""):
                raise BadQueryError(
                    f"filter {filter!r} is not a valid Milvus expression on this collection "
                    f"(fields: {', '.join(META_FIELDS)}): {' '.join(cause.message.split())}") from None
            raise
        # A server keys hits "id", Milvus Lite by the primary-key name: read the path from the entity.
        return [[StoredHit(h["entity"]["path"], float(h["distance"]), dict(h["entity"])) for h in hits]
                for hits in res]

    def bulk_import(self, files: Sequence[str], timeout_s: float = 24 * 3600, poll_s: float = 5.0) -> int:
        """Load Parquet files into the collection by Milvus bulk import (a server's REST API,
        ``pymilvus.bulk_writer.bulk_import``; Milvus 2.4+), one file per import task, and wait
        for the job.

        Args:
            files: object keys within the server's own bucket; each file has one column per
                field (``vector`` a list of float32).

        Returns:
            rows imported.

        Raises:
            StoreError: a Milvus Lite URI, the server refused the job, or it failed or timed out.
        """
        from pymilvus.bulk_writer import bulk_import, get_import_progress

        if self._lite is not None:
            raise StoreError(f"bulk import needs a Milvus server, not Milvus Lite ({self.uri})")
        reply = bulk_import(url=self.uri, collection_name=self.collection, api_key=self._token,
                            files=[[f] for f in files]).json()
        job = (reply.get("data") or {}).get("jobId")
        if not job:
            raise StoreError(f"Milvus at {self.uri} refused the bulk import of {len(files)} files: "
                             f"{reply.get('message', reply)}")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            state = get_import_progress(url=self.uri, job_id=job, api_key=self._token).json().get("data") or {}
            if state.get("state") == "Completed":
                return int(state.get("importedRows") or 0)
            if state.get("state") == "Failed":
                raise StoreError(f"bulk import job {job} at {self.uri} failed: {state.get('reason')}")
            time.sleep(poll_s)
        raise StoreError(f"bulk import job {job} at {self.uri} did not finish in {timeout_s:.0f} s")

    def index_info(self) -> dict[str, Any]:
        """The vector index as Milvus describes it: ``index_type`` and ``metric_type``."""
        desc = self._call("describe_index", self.collection, "vector")
        return {"index_type": desc.get("index_type"), "metric_type": desc.get("metric_type")}

    def close(self) -> None:
        """Close this connection. A Lite database served by this process stays open, and shared
        with other vitsearch processes, until the process exits."""
        self._client.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _unreachable(exc: MilvusException) -> bool:
    """Whether ``exc`` says Milvus could not be reached (as opposed to refusing the request)."""
    return isinstance(exc, MilvusUnavailableException) or exc.code == Status.CONNECT_FAILED
