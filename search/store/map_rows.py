"""Where a collection's 2-D map (:mod:`~vitsearch.search.embedding_map`) is kept, the same way on
Milvus Lite and on a Milvus server (no file beside the database).

**The record** (:data:`MAP_KEY`, small JSON: the map's id, the row count and space it was made
for, when, how) is a property of the collection's physical collection, as the space's record is
(:mod:`.space`). **The rows**, one per image (stored path, position, cluster, label rank), are in a
companion collection ``<name>__vitsearch_map_<id>`` (:data:`~.generations.MAP_PREFIX`), keyed by
the stored path; the position is its 2-d ``vector`` field (Milvus needs one). A new map fills a
new companion, then the record names it, then the older companions are dropped: a reader sees the
old map whole or the new one whole. ``Store.drop`` drops them with the collection.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from pymilvus import DataType, MilvusClient

from ..errors import StoreError
from .collection import Store
from .generations import MAP_PREFIX
from .schema import MAX_PATH_BYTES, index_params

#: Property holding the map's record.
MAP_KEY = "vitsearch.map"
#: Fields of a map row besides ``path`` (stored form): ``vector`` = ``[x, y]``, ``cluster``
#: (-1: noise), ``label`` (rank among its cluster's label images, 0 the most central; -1: none).
MAP_FIELDS = ("vector", "cluster", "label")


def map_collection(store: Store, map_id: str) -> str:
    """The companion collection of ``store``'s map ``map_id``."""
    return f"{store.collection}{MAP_PREFIX}{map_id}"


def create_map_rows(store: Store, map_id: str) -> str:
    """Create the (empty) companion collection of map ``map_id``; returns its name."""
    name = map_collection(store, map_id)
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=MAX_PATH_BYTES)
    schema.add_field("cluster", DataType.INT32)
    schema.add_field("label", DataType.INT32)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=2)
    index = index_params(store._client, "L2")
    store._call("create_collection", name, schema=schema, index_params=index, consistency_level="Strong")
    return name


def write_map_rows(store: Store, name: str, rows: Iterable[dict[str, Any]]) -> None:
    """Upsert map rows (``path`` in stored form, :data:`MAP_FIELDS`) into the companion ``name``,
    in requests of at most the profile's ``upsert_bytes``."""
    batch: list[dict[str, Any]] = []
    size = 0
    for row in rows:
        row_bytes = len(row["path"].encode()) + 64
        if batch and size + row_bytes > store.profile.upsert_bytes:
            store._call("upsert", name, batch)
            batch, size = [], 0
        batch.append(row)
        size += row_bytes
    if batch:
        store._call("upsert", name, batch)


def read_map_rows(store: Store, name: str) -> Iterator[list[dict[str, Any]]]:
    """The rows of the companion ``name``, a read at a time, in stored-path order (``path`` in
    stored form).

    Raises:
        StoreError: the companion is gone (the map was replaced meanwhile), or Milvus refused.
    """
    if not store._call("has_collection", name):
        raise StoreError(f"{store.where}: its map {name!r} is gone (replaced meanwhile?): open the map again")
    store._call("load_collection", name)  # not loaded when Milvus Lite reopens the database
    return store.read_stored(name, MAP_FIELDS)


def read_record(store: Store) -> dict[str, Any] | None:
    """The map's record, or None when the collection has no map (or an unreadable record).

    Raises:
        CollectionNotFoundError: the collection does not exist.
    """
    raw = store.properties().get(MAP_KEY)
    if not raw:
        return None
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    return record if isinstance(record, dict) and record.get("id") else None


def publish(store: Store, record: dict[str, Any]) -> None:
    """Make ``record``'s map the collection's (its rows written first), then drop every other
    map companion of the collection."""
    store.set_properties({MAP_KEY: json.dumps(record)})
    keep = map_collection(store, record["id"])
    prefix = store.collection + MAP_PREFIX
    for name in store._call("list_collections"):
        if name.startswith(prefix) and name != keep:
            store._call("drop_collection", name)


def drop_map_rows(store: Store, name: str) -> None:
    """Drop a companion (a map abandoned half-way)."""
    if store._call("has_collection", name):
        store._call("drop_collection", name)
