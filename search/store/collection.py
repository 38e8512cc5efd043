"""One Milvus collection of image embeddings (:class:`Store`): with :mod:`.space` and
:mod:`.bulk`, the only code that calls pymilvus (:mod:`.lite` uses its generated gRPC service
to serve Milvus Lite).

One collection holds one row per image file, keyed by the file's absolute path. The same code
talks to Milvus Lite (a local ``.db`` directory) and to a Milvus server (``http://host:19530``);
backend differences (hit keys, ``delete`` return values, errors) are absorbed here, so callers
never branch on the backend.

Paths are hostile input: callers pass paths, folders and a user's filter as arguments, never as
expression text, and the expressions are built by :mod:`.expr`. A path is stored as text that
maps back to its exact bytes (:func:`~vitsearch.search.paths.stored_path`), also where a name is
not valid UTF-8.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from pymilvus import DataType, MilvusClient
from pymilvus.client.types import Status
from pymilvus.exceptions import MilvusException, MilvusUnavailableException

from ..config import DEFAULT_MAX_FILTER_CHARS, DEFAULT_MAX_FILTER_DEPTH, MAX_K, Settings
from ..encoder_info import EncoderInfo
from ..errors import BadQueryError, CollectionNotFoundError, StoreError
from ..hit import META_FIELDS, Hit
from ..models import index_hint
from ..paths import path_from_stored, stored_path
from .expr import all_of, check_filter, literal, path_is_not, paths_in, under, values_in
from .lite import lite_uri
from .lite import release as lite_release

log = logging.getLogger(__name__)
#: gRPC channel options of every Milvus client (``MilvusClient(..., grpc_options=...)``).
#: pymilvus pings every 10 s, also with no call in flight; Lite's server (in a vitsearch process,
#: or ``milvus-lite server``) is Python gRPC with grpc core's defaults, which allow one ping per
#: 2 h on an idle connection and one per 5 min during a call, and answer the third early ping
#: with GOAWAY "too_many_pings". A client idle for 30 s was cut off, and pymilvus' recovery of its
#: shared connection then failed ("Fail connecting to server"). These options send no keepalive
#: pings; a dead idle connection is still found, by pymilvus' own health check of a connection
#: idle over 30 s (``GetVersion``, pymilvus.client.connection_manager) before it is used.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 2**31 - 1, "grpc.keepalive_permit_without_calls": 0}


class CollectionMoved(StoreError):
    """The collection's rows moved to a new generation (its vectors were rewritten: whitening
    learned or re-learned) while a call ran on the old one; the store now uses the new one, and
    a query embedded for the old vectors must be embedded again (:class:`~..client.SearchClient`
    does)."""


class _ReplyTooLarge(StoreError):
    """A reply over gRPC's message limit (a Milvus 2.3 server's query nodes send the proxy up to
    ``limit`` rows per segment: 4,096 rows of 384-d vectors from ~15 segments of a 1M collection
    came to 98 MB, over its 64 MB)."""


#: Version 2 (vitsearch 0.2) added ``ctime_ns`` and ``inode`` and stores paths with
#: :func:`stored_path`; a version-1 collection is read as it is and upgraded in place by the
#: indexer (:meth:`Store.upgrade`).
SCHEMA_VERSION = "2"
_ENCODER_KEY = "vitsearch.encoder"
_SCHEMA_KEY = "vitsearch.schema_version"
#: Longest stored path or folder, in bytes of UTF-8: any Linux path (PATH_MAX 4096 bytes) fits,
#: also with each byte of a non-UTF-8 name spelled ``\\xNN``.
MAX_PATH_BYTES = 16384
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
#: Neighbours asked for per stored vector by :meth:`Store.neighbours` at first; a vector whose
#: last neighbour is still above the threshold is searched again, :data:`NEIGHBOURS_MAX_K` deep.
NEIGHBOURS_K = 16
#: The deepest search of one stored vector's neighbours: enough to join it to its group (a group
#: is a connected component, so it needs one path to each member, not every pair); it bounds the
#: cost where a whole collection is above the threshold (measured: 2,400 catalogue photos at 0.90).
NEIGHBOURS_MAX_K = 128
#: Stored vectors sent as the query vectors of one search of a server by :meth:`Store.neighbours`.
NEIGHBOURS_BATCH = 256
#: Rows a full read of a server asks per query (:meth:`Store.iter_rows`, :meth:`Store.neighbours`;
#: vectors included: 6 MB at 384 dimensions, 25 MB at 1,536, under gRPC's 64 MB). Few and large,
#: because a Milvus 2.3 server makes each iterator query wait for the next time tick whatever the
#: consistency level asked (measured on 2.3.5: ~270 ms a query, 30 ms of it CPU), which at 256
#: rows a query was 40 % of a 100k scan.
NEIGHBOURS_READ = 4096
#: Rows a full read of Milvus Lite asks per query. Lite (3.2.2, ``Collection.query``) evaluates a
#: read's condition (``path > last``) over every row of the collection and sorts what matches in
#: Python whatever the limit (measured at 1M rows: 7.4 s for 1,000 rows, 5.3 s for 16,384, 4.8 s
#: for 16,384 with their vectors), so a full read costs N/this reads of O(N) each, and Lite reads
#: many more rows a query than a server (its gRPC limit is 256 MB: 25 MB at 384 dimensions).
LITE_READ = 16384
#: Query vectors of one search of Milvus Lite in :meth:`Store.neighbours`. Each Lite search also
#: walks every stored row in Python outside the vector index (dedup by sequence number and
#: tombstones: ``executor_indexed.execute_search_with_index``); measured at 1M rows, top-16: 2.9 s
#: for 256 query vectors, 6.8 s for 1,024, 19.9 s for 4,096 (11.5, 6.7, 4.9 ms a query).
LITE_NEIGHBOURS_BATCH = 4096
#: Between a collection's name and the number of one of its generations (:attr:`Store.physical`).
GENERATION = "__vitsearch_"
#: The collection that holds the whitening matrices of ``<name>`` is ``<name><SPACE_SUFFIX>``.
SPACE_SUFFIX = "__vitsearch_space"
#: Property of a generation: ``"copying"`` while its rows are written, ``"done"`` once whole.
STATE_KEY = "vitsearch.state"
#: Fields schema 1 lacks, and the value its rows are read with (-1: unknown, so the indexer
#: compares the file's bytes with the stored sha256 before trusting the row).
_NEW_IN_2 = {"ctime_ns": -1, "inode": -1}
#: A collection being upgraded is copied to ``<name><suffix>`` first (see :meth:`Store.upgrade`).
_UPGRADING, _OLD = "__vitsearch_upgrade", "__vitsearch_v1"
_UPGRADE_KEY = "vitsearch.upgrade"


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

    Paths given to and returned by every method are file system paths as Python gives them
    (``os.fsdecode``); how they are stored is this class's business (:func:`stored_path`).

    Args:
        uri: a Milvus Lite path (``.../milvus.db``, created with its parent folders) or a
            server URI ``http://host:19530``.
        collection: collection name.
        token: server auth token (``user:password`` or an API key); kept private, never logged.
        lite_wait_s: seconds to wait for a Lite database held by another process to be shared.
        retry_s: seconds to keep retrying a call while Milvus is unreachable.
        max_filter_chars, max_filter_depth: the longest and the deepest user's filter that
            :meth:`search` and :meth:`copies` take (see :func:`~.expr.check_filter`).

    Raises:
        StoreError: ``uri`` is empty, or Milvus cannot be opened or reached; the message names
            the URI and the reason.
    """

    def __init__(
        self,
        uri: str,
        collection: str,
        token: str | None = None,
        *,
        lite_wait_s: float = 10.0,
        retry_s: float = 60.0,
        max_filter_chars: int = DEFAULT_MAX_FILTER_CHARS,
        max_filter_depth: int = DEFAULT_MAX_FILTER_DEPTH,
    ):
        if not uri or not uri.strip():
            raise StoreError(
                "the Milvus URI is empty: give a Milvus Lite path (such as ~/vitsearch/milvus.db) "
                "or a server URI (http://host:19530)"
            )
        self.uri = uri
        self.collection = collection
        self._token = token or ""
        self._lite = None if is_server_uri(uri) else Path(uri).expanduser()
        self._lite_wait_s = lite_wait_s
        self._retry_s = retry_s
        self._filter_limits = (max_filter_chars, max_filter_depth)  # of a user's filter: see check_filter
        self._served_here = False
        self._stale = False  # a call gave up on an unreachable Milvus: reconnect before the next
        self._schema: str | None = None  # the collection's schema version, once read
        self._name: str | None = None  # the physical collection behind the name (see :meth:`resolve`)
        self._connect()

    @classmethod
    def from_settings(
        cls, settings: Settings, uri: str | None = None, collection: str | None = None, token: str | None = None
    ) -> Store:
        """Open the store that ``settings`` names; explicit ``uri``/``collection``/``token`` win.

        Raises:
            StoreError: Milvus cannot be opened or reached.
        """
        uri = uri if uri is not None else settings.resolved_uri()
        token = token or settings.token_for(uri)
        return cls(
            uri,
            collection or settings.collection,
            token,
            lite_wait_s=settings.lite_wait_s,
            retry_s=settings.retry_s,
            max_filter_chars=settings.max_filter_chars,
            max_filter_depth=settings.max_filter_depth,
        )

    def sibling(self, collection: str) -> Store:
        """Another collection of the same database, opened with this store's URI, token and limits.

        Raises:
            StoreError: Milvus cannot be opened or reached.
        """
        return Store(
            self.uri,
            collection,
            self._token,
            lite_wait_s=self._lite_wait_s,
            retry_s=self._retry_s,
            max_filter_chars=self._filter_limits[0],
            max_filter_depth=self._filter_limits[1],
        )

    def _connect(self) -> None:
        target = self.uri
        if self._lite is not None:
            target, self._served_here = lite_uri(self._lite, self._lite_wait_s)
        try:
            self._client = MilvusClient(uri=target, token=self._token, grpc_options=GRPC_OPTIONS)
        except Exception as exc:  # pymilvus raises assorted types
            raise StoreError(f"cannot open Milvus at {self.uri}: {type(exc).__name__}: {exc}") from exc
        try:  # a collection reopened by Milvus Lite (or released on a server) is not searchable until loaded
            self._finish_upgrade()
            self.resolve()
        except MilvusException as exc:
            raise self._error("load_collection", exc) from exc

    def _call(self, method: str | Callable, *args, **kwargs):
        """``self._client.<method>(...)`` with Milvus errors turned into :class:`StoreError`, and
        reconnection with backoff (0.5 s doubling to 8 s) while Milvus is unreachable. A call that
        gave up leaves the next one to reconnect first; a collection that a restarted Milvus has
        released is loaded again (once per call)."""
        deadline, delay, connected, reloaded = None, 0.5, True, False
        what = method if isinstance(method, str) else method.__name__
        named = bool(args) and args[0] == self._name  # a call on this store's own collection
        if named and self._name is None:  # it did not exist when last looked up: look again
            args = (self._require(),) + args[1:]
        if self._stale:
            try:
                self._connect()
                self._stale = False
            except StoreError as exc:
                last: Exception = exc
                connected = False
        while True:
            if connected:
                try:
                    return (getattr(self._client, method) if isinstance(method, str) else method)(*args, **kwargs)
                except grpc.RpcError as exc:  # pymilvus passes some through unwrapped
                    kind = _ReplyTooLarge if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else StoreError
                    raise kind(
                        f"Milvus at {self.uri}, collection {self.collection!r}: {what} failed: "
                        f"{exc.code().name}: {exc.details()}"
                    ) from exc
                except MilvusException as exc:
                    if _released(exc) and not reloaded:
                        reloaded = True
                        try:
                            self._client.load_collection(args[0] if args and isinstance(args[0], str) else self._name)
                            continue
                        except MilvusException:
                            pass
                    if named and _missing(exc) and self._follow(args[0], what, kwargs):
                        args = (self._name,) + args[1:]
                        continue
                    if not _unreachable(exc):
                        raise self._error(what, exc) from exc
                    last = exc
            deadline = deadline or time.monotonic() + self._retry_s
            if time.monotonic() + delay > deadline:
                self._stale = True
                raise StoreError(
                    f"Milvus at {self.uri} did not answer for {self._retry_s:g} s ({what}: {last}); "
                    f"run again once it is back: an indexing run resumes where it stopped"
                ) from last
            log.warning("Milvus at %s is unreachable; retrying in %.1f s", self.uri, delay)
            time.sleep(delay)
            delay = min(2 * delay, 8.0)
            try:
                self._connect()  # a Lite database whose server process has gone is taken over
                connected = True
            except StoreError as exc:
                last, connected = exc, False
            if connected and named and self._name != args[0] and self._follow(args[0], what, kwargs):
                args = (self._name,) + args[1:]

    def _follow(self, name: str, what: str, kwargs: dict[str, Any]) -> bool:
        """The physical collection ``name`` a call was made on is gone, or may be (a reply shorter
        than asked: Milvus Lite answers from a collection being dropped): look the name up again.
        Where it now leads elsewhere (its vectors rewritten, :mod:`.space`), a call that neither
        sends nor reads vectors is to be made again there (True); one that does (a search, an
        upsert, a read of ``vector``: its vectors are of the old space) raises
        :class:`CollectionMoved`. False where the name still leads to ``name``.

        Raises:
            CollectionNotFoundError: the name leads nowhere now.
            CollectionMoved: as above.
        """
        self._resolve_checked()
        if self._name is None:
            raise CollectionNotFoundError(f"collection {self.collection!r} does not exist at {self.uri} (any more)")
        if self._name == name:
            return False
        if what in ("search", "upsert", "insert") or "vector" in (kwargs.get("output_fields") or ()):
            raise CollectionMoved(
                f"{self.where}: its vectors were rewritten into {self._name!r} while this call ran on {name!r}"
            )
        return True

    def _require(self) -> str:
        """The physical collection's name, looked up again if unknown.

        Raises:
            CollectionNotFoundError: the collection does not exist.
        """
        if self._name is None:
            self._resolve_checked()
        if self._name is None:
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.uri}: index a folder first: {index_hint()}"
            )
        return self._name

    @property
    def physical(self) -> str | None:
        """The Milvus collection that holds the rows now (None: the collection does not exist).

        The name a user gives is a Milvus alias of ``<name>__vitsearch_<n>`` (:data:`GENERATION`):
        rewriting the vectors (whitening learned, :mod:`.space`) fills a new generation and moves
        the alias, so a reader keeps a whole, consistent collection until the alias moves, and a
        reader still on the old one is told (:class:`CollectionMoved`). A collection made by an
        older vitsearch is a plain collection of that name until its first rewrite.
        """
        return self._name

    def resolve(self) -> str | None:
        """Look up which Milvus collection holds the rows (:attr:`physical`), finishing a move of
        the alias that a crash interrupted (the newest complete generation wins).

        Returns:
            its name, or None when the collection does not exist.
        """
        names = set(self._client.list_collections())
        target = self._alias_target(names)
        if self.collection in names:
            self._name = self.collection  # made before generations, or by another tool
        elif target is not None and target in names:
            self._name = target
        else:
            done = [
                n
                for n in names
                if _generation(self.collection, n) is not None
                and self._client.describe_collection(n).get("properties", {}).get(STATE_KEY, "done") == "done"
            ]
            self._name = max(done, key=lambda n: _generation(self.collection, n)) if done else None
            if self._name is not None:
                self.point_alias(self._name)
        if self._name is not None:  # a collection reopened by Milvus Lite, or renamed, is not loaded
            self._client.load_collection(self._name)
        return self._name

    def _resolve_checked(self) -> None:
        """:meth:`resolve`, with Milvus errors as :class:`StoreError`."""
        try:
            self.resolve()
        except MilvusException as exc:
            raise self._error("resolve", exc) from exc

    def _alias_target(self, names: set[str]) -> str | None:
        """The collection the name is an alias of, or None (``names``: the collections there are)."""
        if self.collection in names or not self._client.has_collection(self.collection):
            return None  # a plain collection of that name, or nothing (asked first: no error logged)
        try:
            return self._client.describe_alias(self.collection).get("collection_name") or None
        except MilvusException:
            return None

    def point_alias(self, name: str) -> None:
        """Make the collection's name lead to the physical collection ``name`` (the alias created
        or moved; a plain collection of that name from an older vitsearch renamed to generation 0
        first), and use it from now on."""
        names = set(self._client.list_collections())
        if self.collection in names:
            self._client.rename_collection(self.collection, generation_name(self.collection, 0))
        if self._alias_target(names) is not None:
            self._client.alter_alias(name, self.collection)
        else:
            try:
                self._client.create_alias(name, self.collection)
            except MilvusException:  # an alias whose collection is gone (Milvus Lite keeps it)
                self._client.alter_alias(name, self.collection)
        self._name = name

    def _error(self, what: str, exc: MilvusException) -> StoreError:
        return StoreError(
            f"Milvus at {self.uri}, collection {self.collection!r}: {what} failed: {' '.join(str(exc).split())}"
        )

    # --- the collection and its encoder record ---------------------------------------------------

    def exists(self) -> bool:
        """Whether the collection exists.

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        if self._name is not None and self._call("has_collection", self._name):
            return True
        self._resolve_checked()
        return self._name is not None

    @property
    def where(self) -> str:
        """``collection 'NAME' at URI``, for messages."""
        return f"collection {self.collection!r} at {self.uri}"

    def recorded_encoder(self) -> EncoderInfo | None:
        """The encoder recorded in the collection, or None when the collection does not exist.

        Raises:
            StoreError: it exists but was not made by vitsearch (no encoder record).
        """
        return self.encoder_info() if self.exists() else None

    def encoder_info(self) -> EncoderInfo:
        """The encoder recorded in the collection.

        Raises:
            CollectionNotFoundError: the collection does not exist.
            StoreError: it exists but was not made by vitsearch (no encoder record).
        """
        props = self.properties()
        if _ENCODER_KEY not in props:
            raise StoreError(
                f"collection {self.collection!r} at {self.uri} has no vitsearch encoder "
                f"record: it was not created by vitsearch; use another --collection"
            )
        return EncoderInfo.from_json(props[_ENCODER_KEY])

    def properties(self) -> dict[str, str]:
        """The collection's properties (vitsearch keeps its records there).

        Raises:
            CollectionNotFoundError: the collection does not exist.
        """
        if not self.exists():
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.uri}: index a folder first: {index_hint()}"
            )
        desc = self._call("describe_collection", self._name)
        return dict(desc.get("properties") or {})

    def schema_version(self) -> str:
        """The collection's schema version: :data:`SCHEMA_VERSION`, or ``"1"`` before an upgrade.

        Raises:
            CollectionNotFoundError: the collection does not exist.
            StoreError: a version this vitsearch does not know (a newer vitsearch made it).
        """
        if self._schema is None:
            version = self.properties().get(_SCHEMA_KEY)
            if version not in ("1", SCHEMA_VERSION):
                raise StoreError(
                    f"collection {self.collection!r} at {self.uri} has schema version "
                    f"{version!r}; this vitsearch reads 1 and {SCHEMA_VERSION}: upgrade vitsearch"
                )
            self._schema = version
        return self._schema

    def ensure(self, info: EncoderInfo) -> bool:
        """Create the collection for ``info``'s embeddings, or check an existing one matches.

        Returns:
            True if the collection was created now.

        Raises:
            EncoderMismatchError: the collection holds vectors of another encoder.
            StoreError: unknown schema version, or Milvus refused.
        """
        if self.exists():
            self.schema_version()
            self.encoder_info().check_same(info, f"collection {self.collection!r} at {self.uri}")
            return False
        first = self.create_generation(info.dim, {_ENCODER_KEY: info.to_json()})
        self._call(self.point_alias, first)
        self._schema = SCHEMA_VERSION
        log.info("created collection %s at %s for %s", self.collection, self.uri, info.model)
        return True

    def create_generation(self, dim: int, properties: dict[str, str]) -> str:
        """Create the next generation of this collection (:attr:`physical`), empty, with the
        current schema and index and these properties; the alias does not move. Its number is
        the time in milliseconds (or one more than the newest there is): a name is never used
        twice, so no Milvus proxy can hold a stale entry for it from a dropped collection.

        Returns:
            its name.
        """
        names = self._call("list_collections")
        taken = [g for n in names if (g := _generation(self.collection, n)) is not None]
        name = generation_name(self.collection, max(max(taken, default=0) + 1, int(time.time() * 1000)))
        self._create(name, dim, properties)
        return name

    def _create(self, name: str, dim: int, properties: dict[str, str]) -> None:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=MAX_PATH_BYTES)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
        schema.add_field("folder", DataType.VARCHAR, max_length=MAX_PATH_BYTES)
        schema.add_field("size", DataType.INT64)
        schema.add_field("mtime", DataType.DOUBLE)
        schema.add_field("ctime_ns", DataType.INT64)
        schema.add_field("inode", DataType.INT64)
        schema.add_field("width", DataType.INT64)
        schema.add_field("height", DataType.INT64)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        schema.add_field("indexed_at", DataType.DOUBLE)
        index = self._client.prepare_index_params()
        index.add_index(field_name="vector", index_type="HNSW", metric_type="COSINE", params=HNSW_PARAMS)
        self._call(
            "create_collection",
            name,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            properties={**properties, _SCHEMA_KEY: SCHEMA_VERSION},
        )
        if name == self._name:
            self._schema = SCHEMA_VERSION

    def upgrade(self, on_rows: Callable[[int], None] | None = None) -> int:
        """Bring a schema-1 collection to :data:`SCHEMA_VERSION` in place; a no-op on a current one.

        The rows are copied, vectors and all, to a new collection of the current schema, which
        then takes the old one's name (paths re-encoded with :func:`stored_path`; ``ctime_ns``
        and ``inode`` unknown, -1, so that the next indexing run compares each file's bytes with
        its sha256 once, without embedding it again). A run stopped at any point leaves either
        the old collection or the new one under the name: the next open finishes the swap
        (:meth:`_finish_upgrade`). Call it holding the writer lease (:mod:`.lease`).

        Args:
            on_rows: called with the number of rows copied after each batch (a progress bar).

        Returns:
            the number of rows copied (0 when the collection was current).

        Raises:
            StoreError: Milvus refused, or the copy does not hold every row.
        """
        if self.schema_version() == SCHEMA_VERSION:
            return 0
        new, old = self.collection + _UPGRADING, self.collection + _OLD
        props = self.properties()
        if self._call("has_collection", new):
            self._call("drop_collection", new)  # an earlier copy that did not finish
        dim = EncoderInfo.from_json(props[_ENCODER_KEY]).dim
        self._create(new, dim, {**props, _UPGRADE_KEY: "copying"})
        copied = 0
        old_fields = [f for f in ("vector", *META_FIELDS[1:]) if f not in _NEW_IN_2]
        for rows in self._batches(self._name, old_fields, "", 1000):  # each read is one upsert
            self._call(
                "upsert",
                new,
                [{**_NEW_IN_2, **r, "path": stored_path(r["path"]), "folder": stored_path(r["folder"])} for r in rows],
            )
            copied += len(rows)
            if on_rows:
                on_rows(len(rows))
        count = int(self._call("query", new, filter="", output_fields=["count(*)"])[0]["count(*)"])
        if count != self.count():
            raise StoreError(
                f"upgrading {self.collection!r} at {self.uri}: the copy holds {count} rows, "
                f"not {self.count()}; the collection is unchanged, run again"
            )
        self._call("alter_collection_properties", new, properties={_UPGRADE_KEY: "done"})
        self._call("rename_collection", self.collection, old)
        self._finish_upgrade()
        self.resolve()  # loads the renamed copy
        log.info(
            "upgraded collection %s at %s to schema %s (%d rows)", self.collection, self.uri, SCHEMA_VERSION, copied
        )
        return copied

    def _finish_upgrade(self) -> None:
        """Complete an upgrade stopped between its renames: put the finished copy (or, if the copy
        did not finish, the old collection) back under the collection's name; load the collection."""
        names = set(self._client.list_collections())
        new, old = self.collection + _UPGRADING, self.collection + _OLD
        if self.collection not in names and new in names:
            props = self._client.describe_collection(new).get("properties") or {}
            if props.get(_UPGRADE_KEY) == "done":
                self._client.rename_collection(new, self.collection)
                self._client.alter_collection_properties(self.collection, properties={_UPGRADE_KEY: ""})
                self._schema = SCHEMA_VERSION
                names.add(self.collection)
        if self.collection not in names and old in names:
            self._client.rename_collection(old, self.collection)
            names.add(self.collection)
        elif old in names:
            self._client.drop_collection(old)

    def set_properties(self, properties: dict[str, str]) -> None:
        """Add or replace collection properties (to clear one, set it to ``""``: Milvus 2.3
        servers cannot drop properties).

        Raises:
            StoreError: Milvus refused (the collection does not exist) or stayed unreachable.
        """
        self._call("alter_collection_properties", self._name, properties=properties)

    def drop(self) -> None:
        """Delete the collection and all its rows (no error if it does not exist).

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        names = set(self._call("list_collections"))
        if self._alias_target(names) is not None:
            self._call("drop_alias", self.collection)
        internal = {
            self.collection,
            self.collection + _UPGRADING,
            self.collection + _OLD,
            self.collection + SPACE_SUFFIX,
        }
        for name in names:
            if name in internal or _generation(self.collection, name) is not None:
                self._call("drop_collection", name)
        self._name = self._schema = None

    # --- rows ----------------------------------------------------------------------------------

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace rows (keyed by ``path``), in requests of at most :data:`UPSERT_BYTES`.

        Each row has the fields of :data:`META_FIELDS` and ``vector``, a ``(D,) float32`` array
        or list; ``path`` and ``folder`` are file system paths.

        Raises:
            StoreError: Milvus refused (a full disk, a schema-1 collection not yet upgraded) or
                stayed unreachable; the requests sent before stay written.
        """
        if self.schema_version() != SCHEMA_VERSION:
            raise StoreError(
                f"collection {self.collection!r} at {self.uri} has schema version "
                f"{self._schema}: `vitsearch index` upgrades it before writing"
            )
        self.upsert_stored(
            self._name,
            ({**row, "path": stored_path(row["path"]), "folder": stored_path(row["folder"])} for row in rows),
        )

    def upsert_stored(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """Upsert rows whose ``path`` and ``folder`` are already in their stored form (as
        :meth:`read_stored` gives them) into the physical collection ``name``, in requests of
        at most :data:`UPSERT_BYTES`.

        Raises:
            StoreError: Milvus refused or stayed unreachable; the requests sent before stay written.
        """
        batch: list[dict[str, Any]] = []
        size = 0
        for row in rows:
            row_bytes = 4 * len(row["vector"]) + len(row["path"].encode()) + len(row["folder"].encode()) + 160
            if batch and size + row_bytes > UPSERT_BYTES:
                self._call("upsert", name, batch)
                batch, size = [], 0
            batch.append({**row, "vector": np.asarray(row["vector"], np.float32).tolist()})
            size += row_bytes
        if batch:
            self._call("upsert", name, batch)

    def read_stored(
        self, name: str, fields: Sequence[str], after: str | None = None, batch_size: int | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Every row of the physical collection ``name`` as Milvus stores it (``path`` and
        ``folder`` in stored form), in primary-key order from after the stored path ``after``,
        in batches (:meth:`_batches`)."""
        return self._batches(name, list(fields), "", batch_size, after)

    def count_of(self, name: str) -> int:
        """Rows of the physical collection ``name``.

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        return int(self._call("query", name, filter="", output_fields=["count(*)"])[0]["count(*)"])

    def properties_of(self, name: str) -> dict[str, str]:
        """The properties of the physical collection ``name``."""
        return dict(self._call("describe_collection", name).get("properties") or {})

    def set_properties_of(self, name: str, properties: dict[str, str]) -> None:
        """Add or replace properties of the physical collection ``name``."""
        self._call("alter_collection_properties", name, properties=properties)

    def generations(self) -> dict[str, str]:
        """This collection's generations that exist: ``{physical name: state}`` (``"copying"``
        or ``"done"``; one of an older vitsearch has none and reads as done)."""
        names = [n for n in self._call("list_collections") if _generation(self.collection, n) is not None]
        return {n: self.properties_of(n).get(STATE_KEY, "done") for n in names}

    def drop_physical(self, name: str) -> None:
        """Drop the physical collection ``name`` (a generation no longer in use)."""
        self._call("drop_collection", name)

    def get(
        self, paths: Sequence[str], fields: Sequence[str] = META_FIELDS, *, consistency: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Rows of the given paths that exist, by path. Missing paths are absent from the result.

        Args:
            paths: file paths as the rows hold them.
            fields: row fields to read besides ``path``.
            consistency: Milvus consistency level of the read; default the collection's
                (Strong: every write is seen, but a server makes the read wait for the next
                time tick, ~200 ms on 2.3.5). Searches' lookups pass :data:`SEARCH_CONSISTENCY`.

        Returns:
            ``{path: row}``, each row holding ``path`` and ``fields`` (``vector`` a list of D floats).

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        asked, fields = fields, self._fields(fields)
        found: dict[str, dict[str, Any]] = {}
        level = {"consistency_level": consistency} if consistency else {}
        name = self._name
        for expr in paths_in(paths):
            for row in self._call("query", name, filter=expr, output_fields=fields, **level):
                row = self._row(row, asked)
                found[row["path"]] = row
        if len(found) < len(set(paths)) and self._follow(name, "query", {"output_fields": fields}):
            return self.get(paths, asked, consistency=consistency)
        return found

    def iter_rows(
        self, fields: Sequence[str] = ("path",), folder: str | None = None, batch_size: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """All rows, or those of files inside ``folder`` (an absolute path, any depth), streamed
        in reads of ``batch_size`` rows (default :meth:`read_size`).

        Yields:
            rows holding ``path`` and ``fields``.

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        for batch in self._batches(self._name, self._fields(fields), under(folder) if folder else "", batch_size):
            yield from (self._row(r, fields) for r in batch)

    def vectors(self, folder: str | None = None, batch_size: int | None = None) -> tuple[list[str], np.ndarray]:
        """Every stored vector at once, read in one pass (``batch_size`` rows a read, default
        :meth:`read_size`): what exact search and evaluation rank (``vitsearch eval``), without
        one search per query.

        Args:
            folder: only files inside this folder (an absolute path, any depth).

        Returns:
            ``(paths, matrix)``: N paths in primary-key order and their ``(N, D) float32``
            vectors, row i being ``paths[i]`` (``(0, D)`` for an empty collection).

        Raises:
            CollectionNotFoundError: the collection does not exist.
            StoreError: Milvus refused or stayed unreachable.
        """
        dim = self.encoder_info().dim
        paths: list[str] = []
        blocks = [np.empty((0, dim), np.float32)]
        for batch in self._batches(self._name, ["vector"], under(folder) if folder else "", batch_size):
            paths.extend(path_from_stored(r["path"]) for r in batch)
            blocks.append(np.asarray([r["vector"] for r in batch], np.float32).reshape(len(batch), dim))
        return paths, np.concatenate(blocks)

    def read_size(self) -> int:
        """Rows a full read asks per query here: :data:`LITE_READ` on Milvus Lite,
        :data:`NEIGHBOURS_READ` on a server."""
        return LITE_READ if self._lite is not None else NEIGHBOURS_READ

    def _batches(
        self,
        collection: str,
        fields: list[str],
        filter: str,
        batch_size: int | None = None,
        start_after: str | None = None,
    ) -> Iterator[list[dict[str, Any]]]:
        """Rows of ``collection`` matching ``filter`` as Milvus stores them, in batches of
        ``batch_size`` rows (default :meth:`read_size`), in
        primary-key order: each query asks for the next rows after the last path seen, as
        pymilvus' ``query_iterator`` does (an iterator query returns rows sorted by key, and may
        return a short batch before the end, when one segment runs out), but with the path
        escaped: ``query_iterator`` puts it into ``path > "..."`` raw, so a newline or a quote
        in a name breaks it. A reply over gRPC's message limit halves the rows asked a query."""
        fields = list(dict.fromkeys(["path", *fields]))
        last, limit = start_after, batch_size or self.read_size()
        while True:
            after = f"path > {literal(last)}" if last is not None else ""
            try:
                rows = self._call(
                    "query",
                    collection,
                    filter=all_of(after, filter),
                    output_fields=fields,
                    limit=limit,
                    iterator="True",
                    reduce_stop_for_best="True",
                )
            except _ReplyTooLarge:
                if limit == 1:
                    raise
                limit = max(1, limit // 2)  # fewer rows a query, from here on
                log.info("a query of %s was over gRPC's message limit: reading %d rows a query", self.where, limit)
                continue
            if not rows:
                return
            yield [dict(r) for r in rows]
            last = rows[-1]["path"]

    def _fields(self, fields: Sequence[str]) -> list[str]:
        """``path`` and ``fields``, less those the collection's schema lacks."""
        if self._schema is None and self.exists():
            self.schema_version()
        if self._schema == "1":
            fields = [f for f in fields if f not in _NEW_IN_2]
        return list(dict.fromkeys(["path", *fields]))

    @staticmethod
    def _row(row: dict[str, Any], asked: Sequence[str]) -> dict[str, Any]:
        """A row as Milvus returns it, with file system paths (schema 1 stored no path that
        :func:`path_from_stored` changes) and the fields ``asked`` that schema 1 lacks as -1."""
        row = {**{f: v for f, v in _NEW_IN_2.items() if f in asked}, **row}
        row["path"] = path_from_stored(row["path"])
        if "folder" in row:
            row["folder"] = path_from_stored(row["folder"])
        return row

    def persist(self) -> None:
        """Milvus Lite: write what was written to its data and index files now (a later process
        then opens and searches the collection without writing anything, also on a full or
        read-only disk; until then Lite keeps a log and builds the index at the next load). A
        no-op on a server, which persists on its own. The indexer calls it at the end of a run.

        Raises:
            StoreError: Milvus refused (a full disk).
        """
        if self._lite is not None:
            self._call("flush", self._name)

    def flush(self, timeout_s: float = 600.0) -> None:
        """Seal what was written and wait until the vector index covers every row (a server
        builds it on sealed segments in the background; until then it searches the rest by
        brute force). Not needed for correctness, only before measuring search.

        Raises:
            StoreError: Milvus refused, or the index was not complete after ``timeout_s``.
        """
        self._call("flush", self._name)
        deadline = time.monotonic() + timeout_s
        while True:
            desc = self._call("describe_index", self._name, "vector")
            pending = desc.get("pending_index_rows", 0) or 0
            if not pending or desc.get("indexed_rows", 0) >= desc.get("total_rows", 0):
                return
            if time.monotonic() > deadline:
                raise StoreError(
                    f"Milvus at {self.uri}: the index of {self.collection!r} still has "
                    f"{pending} rows to build after {timeout_s:g} s"
                )
            time.sleep(1)

    def delete(self, paths: Sequence[str]) -> None:
        """Delete the rows of exactly these paths (paths without a row are ignored).

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        for expr in paths_in(paths):
            self._call("delete", self._name, filter=expr)

    def count(self, folder: str | None = None) -> int:
        """Number of rows in the collection, or of files inside ``folder`` (an absolute path).

        Raises:
            StoreError: Milvus refused (the collection does not exist) or stayed unreachable.
        """
        name = self._name
        res = self._call("query", name, filter=under(folder) if folder else "", output_fields=["count(*)"])
        if not int(res[0]["count(*)"]) and name is not None and self._follow(name, "query", {}):
            return self.count(folder)
        return int(res[0]["count(*)"])

    def neighbours(
        self,
        threshold: float,
        *,
        folder: str | None = None,
        fields: Sequence[str] = ("sha256",),
        k: int = NEIGHBOURS_K,
        max_k: int = NEIGHBOURS_MAX_K,
        batch_size: int | None = None,
    ) -> Iterator[tuple[list[dict[str, Any]], list[tuple[str, str, float]]]]:
        """Every stored vector's neighbours at cosine similarity ``threshold`` or more: the rows
        are streamed in primary-key order (:meth:`_batches`) and each batch's vectors are the
        query vectors of one search (``batch_size`` queries per call, default
        :data:`NEIGHBOURS_BATCH` on a server and :data:`LITE_NEIGHBOURS_BATCH` on Lite; top-``k``
        each, through the HNSW index), so the cost is N/``batch_size`` searches, never N x N in
        Python. A query whose ``k``-th neighbour is still at the threshold is searched again
        ``max_k`` deep; past that its pairs are its ``max_k`` nearest (its further neighbours
        are reached through them: enough for connected components, not a list of every pair).
        HNSW is approximate: a neighbour it misses is missed. With ``folder``, both the
        queries and their neighbours are files inside it.

        Args:
            threshold: cosine similarity, in [-1, 1].
            folder: an absolute path, or None for the whole collection.
            fields: row fields to yield besides ``path``.

        Yields:
            ``(rows, pairs)`` per batch: the batch's rows (``path`` and ``fields``, no vector),
            and ``(path, neighbour path, score)`` for each neighbour at the threshold or above,
            the row itself left out (each pair is found from both ends).

        Raises:
            StoreError: Milvus refused the search or stayed unreachable.
        """
        batch_size = batch_size or (LITE_NEIGHBOURS_BATCH if self._lite is not None else NEIGHBOURS_BATCH)
        for read in self._batches(
            self._name,
            self._fields(["vector", *fields]),
            under(folder) if folder else "",
            max(batch_size, self.read_size()),
        ):
            for start in range(0, len(read), batch_size):
                yield self._neighbours_of(read[start : start + batch_size], threshold, folder, fields, k, max_k)

    def _neighbours_of(
        self,
        batch: list[dict[str, Any]],
        threshold: float,
        folder: str | None,
        fields: Sequence[str],
        k: int,
        max_k: int,
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str, float]]]:
        """One batch of :meth:`neighbours`: its rows (vector removed) and their pairs."""
        rows = [self._row(r, fields) for r in batch]
        vectors = np.asarray([r.pop("vector") for r in rows], np.float32)
        pairs: list[tuple[str, str, float]] = []
        todo, depth = np.arange(len(rows)), k
        while len(todo):
            results = self.search(vectors[todo], depth, folder=folder, fields=("path",))
            deeper = []
            for i, hits in zip(todo, results):
                if depth < max_k and len(hits) == depth and hits[-1].score >= threshold:
                    deeper.append(i)
                    continue
                pairs += [
                    (rows[i]["path"], h.path, h.score)
                    for h in hits
                    if h.score >= threshold and h.path != rows[i]["path"]
                ]
            todo, depth = np.asarray(deeper, int), min(max_k, MAX_K)
        return rows, pairs

    def copies(
        self,
        sha256s: Sequence[str],
        filter: str | None = None,
        *,
        folder: str | None = None,
        exclude: Sequence[str] = (),
    ) -> dict[str, list[str]]:
        """The paths of the rows whose file bytes have each of these sha256 digests, under the
        same conditions as :meth:`search` (``filter``, ``folder``, ``exclude``), sorted.

        Returns:
            ``{sha256: [path, ...]}`` for the digests that have rows.

        Raises:
            BadQueryError: ``filter`` is not one valid expression.
            StoreError: Milvus refused or stayed unreachable.
        """
        user = check_filter(filter or "", *self._filter_limits)
        found: dict[str, list[str]] = {}
        for expr in values_in("sha256", sorted(set(sha256s))):
            cond = all_of(expr, user, under(folder) if folder else "", path_is_not(exclude))
            for batch in self._batches(self._name, ["sha256"], cond):
                for row in batch:
                    found.setdefault(row["sha256"], []).append(path_from_stored(row["path"]))
        return {sha: sorted(paths) for sha, paths in found.items()}

    def search(
        self,
        vectors: np.ndarray,
        k: int,
        filter: str | None = None,
        *,
        folder: str | None = None,
        exclude: Sequence[str] = (),
        fields: Sequence[str] = META_FIELDS,
        ef: int | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` rows by cosine similarity for each query vector.

        The conditions are ANDed: ``filter`` (checked by :func:`check_filter` to be one
        expression, so it cannot undo the others), ``folder`` and ``exclude``.

        Args:
            vectors: ``(Q, D) float32`` query embeddings.
            k: results per query, best first.
            filter: a user's Milvus boolean expression on the scalar fields, e.g. ``width > 500``
                (``path`` and ``folder`` hold :func:`stored_path` text).
            folder: only files inside this folder (an absolute path), at any depth.
            exclude: paths left out of the results.
            ef: HNSW search beam width; default ``max(64, k)``.

        Returns:
            Q lists of hits, best first; ``score`` is cosine similarity (higher is closer).

        Raises:
            BadQueryError: ``filter`` is not one valid expression on this collection's fields.
            StoreError: Milvus refused the search or cannot be reached.
        """
        user = check_filter(filter or "", *self._filter_limits)
        expr = all_of(user, under(folder) if folder else "", path_is_not(exclude))
        asked, fields = fields, self._fields(fields)
        name = self._name
        try:
            res = self._call(
                "search",
                name,
                data=np.asarray(vectors, np.float32).tolist(),
                limit=k,
                filter=expr,
                output_fields=fields,
                consistency_level=SEARCH_CONSISTENCY,
                search_params={"metric_type": "COSINE", "params": {"ef": max(ef or 64, k)}},
            )
        except StoreError as exc:
            cause = exc.__cause__
            if user and isinstance(cause, MilvusException) and _FILTER_ERROR.search(cause.message or ""):
                raise BadQueryError(
                    f"filter {user!r} is not a valid Milvus expression on this collection "
                    f"(fields: {', '.join(META_FIELDS)}): {' '.join(cause.message.split())}"
                ) from None
            raise
        if any(len(hits) < k for hits in res):  # also what Milvus Lite answers from a generation being dropped
            self._follow(name, "search", {})  # CollectionMoved where it was
        # A server keys hits "id", Milvus Lite by the primary-key name: read the path from the entity.
        out = []
        for hits in res:
            rows = [self._row(h["entity"], asked) for h in hits]
            out.append([Hit(r["path"], float(h["distance"]), r) for h, r in zip(hits, rows)])
        return out

    def index_info(self) -> dict[str, Any]:
        """The vector index as Milvus describes it.

        Returns:
            ``{"index_type": "HNSW", "metric_type": "COSINE"}`` (as the collection has them).

        Raises:
            StoreError: Milvus refused (the collection does not exist) or stayed unreachable.
        """
        desc = self._call("describe_index", self._name, "vector")
        return {"index_type": desc.get("index_type"), "metric_type": desc.get("metric_type")}

    @property
    def is_lite(self) -> bool:
        """Whether this is a Milvus Lite database (else a server)."""
        return self._lite is not None

    def close(self, release: bool = False) -> None:
        """Close this connection. A Lite database served by this process stays open, and shared
        with other vitsearch processes, until the process exits, or (``release``) is closed now,
        so that its folder can be removed or another process take it over."""
        self._client.close()
        if release and self._lite is not None:
            lite_release(self._lite)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def generation_name(collection: str, generation: int) -> str:
    """The physical collection of ``collection``'s generation ``generation`` (see :attr:`Store.physical`)."""
    return f"{collection}{GENERATION}{generation}"


def _generation(collection: str, name: str) -> int | None:
    """The generation number of ``name`` if it is one of ``collection``'s, else None."""
    prefix = collection + GENERATION
    rest = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def is_internal(name: str) -> bool:
    """Whether a Milvus collection name is one vitsearch keeps behind a collection's name
    (a generation, the whitening matrix, an upgrade's copy) rather than a collection itself."""
    return "__vitsearch_" in name


def _missing(exc: MilvusException) -> bool:
    """Whether ``exc`` says the collection a call named does not exist."""
    message = (exc.message or "").lower()
    return exc.code == 100 or "does not exist" in message or "collection not found" in message


def _released(exc: MilvusException) -> bool:
    """Whether ``exc`` says the collection is not loaded (a restarted Milvus Lite server forgets
    what was loaded; Milvus: "collection not loaded", Lite: "in state 'released'; call load()")."""
    message = exc.message or ""
    return "call load()" in message or "not loaded" in message


def _unreachable(exc: MilvusException) -> bool:
    """Whether ``exc`` says Milvus could not be reached (as opposed to refusing the request)."""
    return isinstance(exc, MilvusUnavailableException) or exc.code == Status.CONNECT_FAILED
