"""The base of :class:`~.collection.Store` (:class:`CollectionBase`): the store's parts put
together, the collection's records (encoder, schema version, properties), and what it does on
the physical collections behind its name, one generation at a time, for rewriting the vectors
(:mod:`.space`) and upgrading the schema (:mod:`.migration`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from pymilvus import MilvusClient

from ..encoder_info import EncoderInfo
from .connection import Connection
from .generations import Generations
from .migration import Complete
from .profile import BackendProfile
from .reads import Rows
from .schema import ENCODER_KEY, SCHEMA_VERSION

log = logging.getLogger(__name__)


class CollectionBase:
    """One collection's connection, generations and rows; its records; and the calls on its
    physical collections (each named by its Milvus name: :attr:`physical` is the current one).

    Args:
        uri: a Milvus Lite path or a server URI.
        collection: the collection's name.
        token: server auth token; kept private, never logged.
        profile: the backend's sizes and switches.
        lite_wait_s, retry_s: see :class:`~.connection.Connection`.
        filter_limits: the longest and the deepest user's filter (see :func:`~.expr.check_filter`).

    Raises:
        StoreError: Milvus cannot be opened or reached.
    """

    def __init__(
        self,
        uri: str,
        collection: str,
        token: str,
        profile: BackendProfile,
        *,
        lite_wait_s: float,
        retry_s: float,
        filter_limits: tuple[int, int],
    ):
        self.uri = uri
        self.collection = collection
        self._profile = profile
        self._token = token
        self._conn = Connection(uri, collection, token, profile, lite_wait_s=lite_wait_s, retry_s=retry_s)
        self._names = Generations(self._conn)
        self._rows = Rows(self._conn, self._names, profile, filter_limits)
        self._conn.connect(self._names)

    @property
    def profile(self) -> BackendProfile:
        """The backend's sizes and switches in use (:class:`~.profile.BackendProfile`), chosen
        when the store was opened; another profile takes another store (``Store(..., profile=)``)."""
        return self._profile

    @property
    def _client(self) -> MilvusClient:
        """The pymilvus client (for :mod:`.space`; calls go through :meth:`_call`)."""
        return self._conn.client

    @property
    def token(self) -> str:
        """The token the store connects with (``""``: none), for Milvus' REST calls that pymilvus'
        client does not make itself (:mod:`.bulk`'s import jobs)."""
        return self._token

    @property
    def served_here(self) -> bool:
        """Whether this process serves the Lite database (other processes share it through this
        one; see :mod:`.lite`); False on a server."""
        return self._conn.served_here

    def _call(self, method: str | Callable, *args, **kwargs):
        """A Milvus call with retries and errors as :class:`StoreError`
        (:meth:`.connection.Connection.call`)."""
        return self._conn.call(method, *args, **kwargs)

    @property
    def physical(self) -> str | None:
        """The Milvus collection that holds the rows now (None: the collection does not exist).

        The name a user gives is a Milvus alias of ``<name>__vitsearch_<n>`` (:data:`GENERATION`):
        rewriting the vectors (whitening learned, :mod:`.space`) fills a new generation and moves
        the alias, so a reader keeps a whole, consistent collection until the alias moves, and a
        reader still on the old one is told (:class:`CollectionMoved`). A collection made by an
        older vitsearch is a plain collection of that name until its first rewrite.
        """
        return self._names.physical

    def resolve(self) -> str | None:
        """Look up which Milvus collection holds the rows (:attr:`physical`), finishing a move of
        the alias that a crash interrupted (the newest complete generation wins).

        Returns:
            its name, or None when the collection does not exist.
        """
        return self._names.resolve()

    def point_alias(self, name: str) -> None:
        """Make the collection's name lead to the physical collection ``name`` (the alias created
        or moved; a plain collection of that name from an older vitsearch renamed to generation 0
        first), and use it from now on."""
        self._names.point_alias(name)

    def create_generation(self, dim: int, properties: dict[str, str]) -> str:
        """Create the next generation of this collection (:attr:`physical`), empty, with the
        current schema and index and these properties; the alias does not move. Its number is
        the time in milliseconds (or one more than the newest there is): a name is never used
        twice, so no Milvus proxy can hold a stale entry for it from a dropped collection.

        Returns:
            its name.
        """
        return self._names.create_generation(dim, properties)

    def count_of(self, name: str) -> int:
        """Rows of the physical collection ``name``.

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        return self._rows.count_of(name)

    def properties_of(self, name: str) -> dict[str, str]:
        """The properties of the physical collection ``name``."""
        return self._names.properties_of(name)

    def set_properties_of(self, name: str, properties: dict[str, str]) -> None:
        """Add or replace properties of the physical collection ``name``."""
        self._call("alter_collection_properties", name, properties=properties)

    def generations(self) -> dict[str, str]:
        """This collection's generations that exist: ``{physical name: state}`` (``"copying"``
        or ``"done"``; one of an older vitsearch has none and reads as done)."""
        return self._names.generations()

    def drop_physical(self, name: str) -> None:
        """Drop the physical collection ``name`` (a generation no longer in use)."""
        self._call("drop_collection", name)

    def upsert_stored(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        """Upsert rows whose ``path`` and ``folder`` are already in their stored form (as
        :meth:`read_stored` gives them) into the physical collection ``name``, in requests of
        at most the profile's ``upsert_bytes``.

        Raises:
            StoreError: Milvus refused or stayed unreachable; the requests sent before stay written.
        """
        self._rows.upsert_stored(name, rows)

    def read_stored(
        self, name: str, fields: Sequence[str], after: str | None = None, batch_size: int | None = None
    ) -> Iterator[list[dict[str, Any]]]:
        """Every row of the physical collection ``name`` as Milvus stores it (``path`` and
        ``folder`` in stored form), in primary-key order from after the stored path ``after``,
        in batches of ``batch_size`` rows (default the profile's ``read_rows``)."""
        return self._rows.batches(name, list(fields), "", batch_size, after)

    # --- the collection and its records ---------------------------------------------------------

    def exists(self) -> bool:
        """Whether the collection exists.

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        return self._names.exists()

    @property
    def where(self) -> str:
        """``collection 'NAME' at URI``, for messages."""
        return self._conn.where

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
        return self._names.encoder_info()

    def properties(self) -> dict[str, str]:
        """The collection's properties (vitsearch keeps its records there).

        Raises:
            CollectionNotFoundError: the collection does not exist.
        """
        return self._names.properties()

    def schema_version(self) -> str:
        """The collection's schema version: :data:`SCHEMA_VERSION`, or ``"1"`` before an upgrade.

        Raises:
            CollectionNotFoundError: the collection does not exist.
            StoreError: a version this vitsearch does not know (a newer vitsearch made it).
        """
        return self._names.schema_version()

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
            self.encoder_info().check_same(info, self.where)
            return False
        first = self.create_generation(info.dim, {ENCODER_KEY: info.to_json()})
        self._call(self.point_alias, first)
        self._names.schema = SCHEMA_VERSION
        log.info("created collection %s at %s for %s", self.collection, self.uri, info.model)
        return True

    def upgrade(self, on_rows: Callable[[int], None] | None = None, complete: Complete | None = None) -> int:
        """Bring a collection of an older schema to :data:`SCHEMA_VERSION` in place; a no-op on a
        current one.

        Every row, its vector as it is, is copied into a new generation of the current schema,
        which then takes the collection's name (:func:`.space.upgrade`: the rewrite that learning
        whitening does, in the same space). What the old schema lacks is unknown in the copy
        unless ``complete`` fills it: from schema 1, ``ctime_ns`` and ``inode`` (-1, so that the
        next indexing run compares each file's bytes with its sha256 once, without embedding it
        again; paths re-encoded with :func:`stored_path`); from schemas 1 and 2, the capture
        facts (the indexer reads them from the files' EXIF). Searches answer from the old
        generation until the copy is whole. A copy stopped by a crash is resumed by the next
        call, after the last batch it wrote. Call it holding the writer lease (:mod:`.lease`).

        Args:
            on_rows: called with the number of rows copied after each batch (a progress bar).
            complete: fills the missing fields of a batch of rows (:data:`.migration.Complete`).

        Returns:
            the number of rows copied by this call (0 when the collection was current).

        Raises:
            StoreError: Milvus refused, or the copy does not hold every row.
        """
        from .space import upgrade

        return upgrade(self, on_rows, complete)

    def set_properties(self, properties: dict[str, str]) -> None:
        """Add or replace collection properties (to clear one, set it to ``""``: Milvus 2.3
        servers cannot drop properties).

        Raises:
            StoreError: Milvus refused (the collection does not exist) or stayed unreachable.
        """
        self._call("alter_collection_properties", self.physical, properties=properties)

    def drop(self) -> None:
        """Delete the collection and all its rows (no error if it does not exist).

        Raises:
            StoreError: Milvus refused or stayed unreachable.
        """
        self._names.drop()
