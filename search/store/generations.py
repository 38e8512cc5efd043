"""The Milvus collections behind a collection's name (:class:`Generations`): the name a user gives
is an alias of its current generation ``<name>__vitsearch_<n>``, records kept in the current
generation's properties (encoder, schema version), and a name found moved while a call ran."""

from __future__ import annotations

import logging
import time
from typing import Any

from pymilvus.exceptions import MilvusException

from ..encoder_info import EncoderInfo
from ..errors import CollectionNotFoundError, StoreError
from ..models import index_hint
from .connection import Connection
from .migration import OLD, UPGRADING, finish_upgrade
from .schema import ENCODER_KEY, KNOWN_VERSIONS, SCHEMA_KEY, SCHEMA_VERSION, collection_schema, index_params

log = logging.getLogger(__name__)
#: Between a collection's name and the number of one of its generations (:attr:`Store.physical`).
GENERATION = "__vitsearch_"
#: The collection that holds the whitening matrices of ``<name>`` is ``<name><SPACE_SUFFIX>``.
SPACE_SUFFIX = "__vitsearch_space"
#: The collections that hold the 2-D maps of ``<name>`` are ``<name><MAP_PREFIX><map id>``
#: (:mod:`.map_rows`).
MAP_PREFIX = "__vitsearch_map_"
#: Property of a generation: ``"copying"`` while its rows are written, ``"done"`` once whole.
STATE_KEY = "vitsearch.state"


class CollectionMoved(StoreError):
    """The collection's rows moved to a new generation (its vectors were rewritten: whitening
    learned or re-learned) while a call ran on the old one; the store now uses the new one, and
    a query embedded for the old vectors must be embedded again (:class:`~..client.SearchClient`
    does)."""


def generation_name(collection: str, generation: int) -> str:
    """The physical collection of ``collection``'s generation ``generation`` (see :attr:`Store.physical`)."""
    return f"{collection}{GENERATION}{generation}"


def generation_of(collection: str, name: str) -> int | None:
    """The generation number of ``name`` if it is one of ``collection``'s, else None."""
    prefix = collection + GENERATION
    rest = name[len(prefix) :] if name.startswith(prefix) else ""
    return int(rest) if rest.isdigit() else None


def is_internal(name: str) -> bool:
    """Whether a Milvus collection name is one vitsearch keeps behind a collection's name
    (a generation, the whitening matrix, an upgrade's copy) rather than a collection itself."""
    return "__vitsearch_" in name


class Generations:
    """Which physical collection holds one collection's rows (:attr:`physical`), and what it records.

    Args:
        conn: the store's connection; its :meth:`~.connection.Connection.connect` is given this
            object, which it asks to look the name up on each (re)connection.
    """

    def __init__(self, conn: Connection):
        self.conn = conn
        self.collection = conn.collection
        self.physical: str | None = None  # None: the collection does not exist (as last looked up)
        self.schema: str | None = None  # the collection's schema version, once read

    def opened(self) -> None:
        """On (re)connection: finish an interrupted upgrade (:mod:`.migration`), look the name up."""
        finish_upgrade(self)
        self.resolve()

    def resolve(self) -> str | None:
        """Look up which Milvus collection holds the rows, finishing a move of the alias that a
        crash interrupted (the newest complete generation wins), and load it.

        Returns:
            its name, or None when the collection does not exist.

        Raises:
            MilvusException: as pymilvus raised it (no retry: called by the connection itself).
        """
        client = self.conn.client
        names = set(client.list_collections())
        target = self.alias_target(names)
        if self.collection in names:
            self.physical = self.collection  # made before generations, or by another tool
        elif target is not None and target in names:
            self.physical = target
        else:
            done = [
                n
                for n in names
                if generation_of(self.collection, n) is not None
                and client.describe_collection(n).get("properties", {}).get(STATE_KEY, "done") == "done"
            ]
            self.physical = max(done, key=lambda n: generation_of(self.collection, n)) if done else None
            if self.physical is not None:
                self.point_alias(self.physical)
        if self.physical is not None:  # a collection reopened by Milvus Lite, or renamed, is not loaded
            client.load_collection(self.physical)
        return self.physical

    def resolve_checked(self) -> None:
        """:meth:`resolve`, with Milvus errors as :class:`StoreError`."""
        try:
            self.resolve()
        except MilvusException as exc:
            raise self.conn.error("resolve", exc) from exc

    def alias_target(self, names: set[str]) -> str | None:
        """The collection the name is an alias of, or None (``names``: the collections there are)."""
        client = self.conn.client
        if self.collection in names or not client.has_collection(self.collection):
            return None  # a plain collection of that name, or nothing (asked first: no error logged)
        try:
            return client.describe_alias(self.collection).get("collection_name") or None
        except MilvusException:
            return None

    def point_alias(self, name: str) -> None:
        """Make the name lead to the physical collection ``name`` (see :meth:`Store.point_alias`)."""
        client = self.conn.client
        names = set(client.list_collections())
        if self.collection in names:
            client.rename_collection(self.collection, generation_name(self.collection, 0))
        if self.alias_target(names) is not None:
            client.alter_alias(name, self.collection)
        else:
            try:
                client.create_alias(name, self.collection)
            except MilvusException:  # an alias whose collection is gone (Milvus Lite keeps it)
                client.alter_alias(name, self.collection)
        self.physical, self.schema = name, None  # the schema version is read from the new one

    def follow(self, name: str, what: str, kwargs: dict[str, Any]) -> bool:
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
        self.resolve_checked()
        if self.physical is None:
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.conn.uri} (any more)"
            )
        if self.physical == name:
            return False
        if what in ("search", "upsert", "insert") or "vector" in (kwargs.get("output_fields") or ()):
            raise CollectionMoved(
                f"{self.conn.where}: its vectors were rewritten into {self.physical!r} while this call ran on {name!r}"
            )
        return True

    def require(self) -> str:
        """The physical collection's name, looked up again if unknown.

        Raises:
            CollectionNotFoundError: the collection does not exist.
        """
        if self.physical is None:
            self.resolve_checked()
        if self.physical is None:
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.conn.uri}: index a folder first: {index_hint()}"
            )
        return self.physical

    def exists(self) -> bool:
        """Whether the collection exists (see :meth:`Store.exists`)."""
        if self.physical is not None and self.conn.call("has_collection", self.physical):
            return True
        self.resolve_checked()
        return self.physical is not None

    def properties(self) -> dict[str, str]:
        """The current generation's properties (see :meth:`Store.properties`)."""
        if not self.exists():
            raise CollectionNotFoundError(
                f"collection {self.collection!r} does not exist at {self.conn.uri}: index a folder first: {index_hint()}"
            )
        return self.properties_of(self.physical)

    def encoder_info(self) -> EncoderInfo:
        """The encoder recorded in the collection (see :meth:`Store.encoder_info`)."""
        props = self.properties()
        if ENCODER_KEY not in props:
            raise StoreError(
                f"{self.conn.where} has no vitsearch encoder "
                f"record: it was not created by vitsearch; use another --collection"
            )
        return EncoderInfo.from_json(props[ENCODER_KEY])

    def schema_version(self) -> str:
        """The collection's schema version (see :meth:`Store.schema_version`)."""
        if self.schema is None:
            version = self.properties().get(SCHEMA_KEY)
            if version not in KNOWN_VERSIONS:
                raise StoreError(
                    f"{self.conn.where} has schema version "
                    f"{version!r}; this vitsearch reads {', '.join(KNOWN_VERSIONS)}: upgrade vitsearch"
                )
            self.schema = version
        return self.schema

    def known_schema(self) -> str | None:
        """The schema version where the collection exists (read once), else None."""
        if self.schema is None and self.exists():
            self.schema_version()
        return self.schema

    def create(self, name: str, dim: int, properties: dict[str, str]) -> None:
        """Create the physical collection ``name``, empty, of the current schema for ``dim``-d
        vectors with its index and these properties."""
        self.conn.call(
            "create_collection",
            name,
            schema=collection_schema(dim),
            index_params=index_params(self.conn.client),
            consistency_level="Strong",
            properties={**properties, SCHEMA_KEY: SCHEMA_VERSION},
        )
        if name == self.physical:
            self.schema = SCHEMA_VERSION

    def create_generation(self, dim: int, properties: dict[str, str]) -> str:
        """Create the next generation, empty (see :meth:`Store.create_generation`); returns its name."""
        names = self.conn.call("list_collections")
        taken = [g for n in names if (g := generation_of(self.collection, n)) is not None]
        name = generation_name(self.collection, max(max(taken, default=0) + 1, int(time.time() * 1000)))
        self.create(name, dim, properties)
        return name

    def generations(self) -> dict[str, str]:
        """The generations that exist: ``{physical name: state}`` (see :meth:`Store.generations`)."""
        names = [n for n in self.conn.call("list_collections") if generation_of(self.collection, n) is not None]
        return {n: self.properties_of(n).get(STATE_KEY, "done") for n in names}

    def properties_of(self, name: str) -> dict[str, str]:
        """The properties of the physical collection ``name``."""
        return dict(self.conn.call("describe_collection", name).get("properties") or {})

    def drop(self) -> None:
        """Drop the name, every generation and every collection kept behind it."""
        names = set(self.conn.call("list_collections"))
        if self.alias_target(names) is not None:
            self.conn.call("drop_alias", self.collection)
        internal = {
            self.collection,
            self.collection + UPGRADING,
            self.collection + OLD,
            self.collection + SPACE_SUFFIX,
        }
        for name in names:
            maps = name.startswith(self.collection + MAP_PREFIX)
            if name in internal or maps or generation_of(self.collection, name) is not None:
                self.conn.call("drop_collection", name)
        self.physical = self.schema = None
