"""One Milvus collection of image embeddings (:class:`Store`): a facade over the store's parts,
which with :mod:`.space` and :mod:`.bulk` are the only code that calls pymilvus (:mod:`.lite`
uses its generated gRPC service to serve Milvus Lite).

One collection holds one row per image file, keyed by the file's absolute path. The same code
talks to Milvus Lite (a local ``.db`` directory) and to a Milvus server (``http://host:19530``);
backend differences (hit keys, ``delete`` return values, errors) are absorbed here, and the sizes
that differ are one :class:`~.profile.BackendProfile`, so callers never branch on the backend.
The parts: :mod:`.connection` (the client, retries, errors), :mod:`.schema` (fields, index,
rows as stored), :mod:`.generations` (the physical collections behind the name and their
records), :mod:`.migration` (schema upgrades), :mod:`.reads` (paged reads, writes, search).

Paths are hostile input: callers pass paths, folders and a user's filter as arguments, never as
expression text, and the expressions are built by :mod:`.expr`. A path is stored as text that
maps back to its exact bytes (:func:`~vitsearch.search.paths.stored_path`), also where a name is
not valid UTF-8.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..config import DEFAULT_MAX_FILTER_CHARS, DEFAULT_MAX_FILTER_DEPTH, Settings
from ..errors import StoreError
from ..hit import META_FIELDS, Hit
from .base import CollectionBase
from .expr import paths_in
from .generations import GENERATION as GENERATION
from .generations import SPACE_SUFFIX as SPACE_SUFFIX
from .generations import CollectionMoved as CollectionMoved
from .generations import is_internal as is_internal
from .profile import SEARCH_CONSISTENCY as SEARCH_CONSISTENCY
from .profile import BackendProfile, profile_for
from .profile import is_server_uri as is_server_uri
from .schema import MAX_PATH_BYTES as MAX_PATH_BYTES
from .schema import SCHEMA_VERSION, to_milvus


class Store(CollectionBase):
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
        profile: the backend's sizes and switches; default :func:`~.profile.profile_for` ``uri``.

    The collection's records and the calls on the physical collections behind its name
    (generations) are inherited from :class:`~.base.CollectionBase`.

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
        profile: BackendProfile | None = None,
    ):
        if not uri or not uri.strip():
            raise StoreError(
                "the Milvus URI is empty: give a Milvus Lite path (such as ~/vitsearch/milvus.db) "
                "or a server URI (http://host:19530)"
            )
        super().__init__(
            uri,
            collection,
            token or "",
            profile or profile_for(uri),
            lite_wait_s=lite_wait_s,
            retry_s=retry_s,
            filter_limits=(max_filter_chars, max_filter_depth),
        )

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
        """Another collection of the same database, opened with this store's URI, token, limits
        and profile.

        Raises:
            StoreError: Milvus cannot be opened or reached.
        """
        chars, depth = self._rows.filter_limits
        return Store(
            self.uri,
            collection,
            self._token,
            lite_wait_s=self._conn.lite_wait_s,
            retry_s=self._conn.retry_s,
            max_filter_chars=chars,
            max_filter_depth=depth,
            profile=self.profile,
        )

    # --- rows ----------------------------------------------------------------------------------

    def upsert(self, rows: Sequence[dict[str, Any]]) -> None:
        """Insert or replace rows (keyed by ``path``), in requests of at most the profile's
        ``upsert_bytes``.

        Each row has the fields of :data:`META_FIELDS` and ``vector``, a ``(D,) float32`` array
        or list; ``path`` and ``folder`` are file system paths. A path given more than once: its
        last row is written (a Milvus 2.3 server keeps every copy of a key sent in one request).

        Raises:
            StoreError: Milvus refused (a full disk, a schema-1 collection not yet upgraded) or
                stayed unreachable; the requests sent before stay written.
        """
        if self.schema_version() != SCHEMA_VERSION:
            raise StoreError(
                f"{self.where} has schema version {self._names.schema}: `vitsearch index` upgrades it before writing"
            )
        last = {row["path"]: row for row in rows}
        self.upsert_stored(self.physical, (to_milvus(row) for row in last.values()))

    def get(
        self, paths: Sequence[str], fields: Sequence[str] = META_FIELDS, *, consistency: str | None = None
    ) -> dict[str, dict[str, Any]]:
        """Rows of the given paths that exist, by path. Missing paths are absent from the result.

        Args:
            paths: file paths as the rows hold them.
            fields: row fields to read besides ``path``.
            consistency: Milvus consistency level of the read; default the collection's
                (Strong: every write is seen, but a server makes the read wait for the next
                time tick). Searches' lookups pass the profile's ``search_consistency``.

        Returns:
            ``{path: row}``, each row holding ``path`` and ``fields`` (``vector`` a list of D floats).

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        return self._rows.get(paths, fields, consistency)

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
        for batch in self.read_batches(fields, folder, batch_size):
            yield from batch

    def read_batches(
        self, fields: Sequence[str] = ("path",), folder: str | None = None, batch_size: int | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """:meth:`iter_rows` a read at a time: lists of up to ``batch_size`` rows (default
        :meth:`read_size`) in primary-key order (``vector``, when asked, a list of D floats).

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        return self._rows.read(fields, folder, batch_size)

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
        return self._rows.vectors(self.encoder_info().dim, folder, batch_size)

    def read_size(self) -> int:
        """Rows a full read asks per query here: the profile's ``read_rows``."""
        return self.profile.read_rows

    def persist(self) -> None:
        """Milvus Lite: write what was written to its data and index files now (a later process
        then opens and searches the collection without writing anything, also on a full or
        read-only disk; until then Lite keeps a log and builds the index at the next load). A
        no-op on a server, which persists on its own. The indexer calls it at the end of a run.

        Raises:
            StoreError: Milvus refused (a full disk).
        """
        if self.profile.lite:
            self._call("flush", self.physical)

    def flush(self, timeout_s: float = 600.0) -> None:
        """Seal what was written and wait until the vector index covers every row (a server
        builds it on sealed segments in the background; until then it searches the rest by
        brute force). Not needed for correctness, only before measuring search.

        Raises:
            StoreError: Milvus refused, or the index was not complete after ``timeout_s``.
        """
        self._call("flush", self.physical)
        deadline = time.monotonic() + timeout_s
        while True:
            desc = self._call("describe_index", self.physical, "vector")
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
            self._call("delete", self.physical, filter=expr)

    def count(self, folder: str | None = None) -> int:
        """Number of rows in the collection, or of files inside ``folder`` (an absolute path).

        Raises:
            StoreError: Milvus refused (the collection does not exist) or stayed unreachable.
        """
        return self._rows.count(folder)

    def copies(
        self,
        sha256s: Sequence[str],
        filter: str | None = None,
        *,
        folder: str | None = None,
        exclude: Sequence[str] = (),
        taken: tuple[float | None, float | None] | None = None,
    ) -> dict[str, list[str]]:
        """The paths of the rows whose file bytes have each of these sha256 digests, under the
        same conditions as :meth:`search` (``filter``, ``folder``, ``exclude``, ``taken``), sorted.

        Returns:
            ``{sha256: [path, ...]}`` for the digests that have rows.

        Raises:
            BadQueryError: ``filter`` is not one valid expression.
            StoreError: Milvus refused or stayed unreachable.
        """
        return self._rows.copies(sha256s, filter, folder, exclude, taken)

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
        taken: tuple[float | None, float | None] | None = None,
    ) -> list[list[Hit]]:
        """Top-``k`` rows by cosine similarity for each query vector.

        The conditions are ANDed: ``filter`` (checked by :func:`check_filter` to be one
        expression, so it cannot undo the others), ``folder``, ``taken`` and ``exclude``.

        Args:
            vectors: ``(Q, D) float32`` query embeddings.
            k: results per query, best first.
            filter: a user's Milvus boolean expression on the scalar fields, e.g. ``width > 500``
                (``path`` and ``folder`` hold :func:`stored_path` text).
            folder: only files inside this folder (an absolute path), at any depth.
            exclude: paths left out of the results.
            fields: row fields each hit's ``metadata`` holds.
            taken: ``(low, high)`` Unix seconds: only rows taken in ``[low, high)``
                (``taken_at``; a None end is open), :func:`~.expr.taken_between`.
            ef: HNSW search beam width; default ``max(64, k)``.

        Returns:
            Q lists of hits, best first; ``score`` is cosine similarity (higher is closer).

        Raises:
            BadQueryError: ``filter`` is not one valid expression on this collection's fields.
            CollectionMoved: the vectors were rewritten while the search ran (embed again).
            StoreError: Milvus refused the search or cannot be reached.
        """
        return self._rows.search(vectors, k, filter, folder, exclude, fields, ef, taken)

    def index_info(self) -> dict[str, Any]:
        """The vector index as Milvus describes it.

        Returns:
            ``{"index_type": "HNSW", "metric_type": "COSINE"}`` (as the collection has them).

        Raises:
            StoreError: Milvus refused (the collection does not exist) or stayed unreachable.
        """
        desc = self._call("describe_index", self.physical, "vector")
        return {"index_type": desc.get("index_type"), "metric_type": desc.get("metric_type")}

    @property
    def is_lite(self) -> bool:
        """Whether this is a Milvus Lite database (else a server)."""
        return self.profile.lite

    def close(self, release: bool = False) -> None:
        """Close this connection. A Lite database served by this process stays open, and shared
        with other vitsearch processes, until the process exits, or (``release``) is closed now,
        so that its folder can be removed or another process take it over."""
        self._conn.close(release)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
