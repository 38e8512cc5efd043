"""Upgrading a collection of schema 1 (vitsearch 0.1) to :data:`~.schema.SCHEMA_VERSION` in place
(:func:`upgrade`), and finishing an upgrade that a crash interrupted (:func:`finish_upgrade`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..encoder_info import EncoderInfo
from ..errors import StoreError
from ..hit import META_FIELDS
from .schema import ENCODER_KEY, NEW_IN_2, SCHEMA_VERSION, from_schema_1

if TYPE_CHECKING:
    from .generations import Generations
    from .reads import Rows

log = logging.getLogger(__name__)
#: A collection being upgraded is copied to ``<name><UPGRADING>`` first, and the old one kept as
#: ``<name><OLD>`` until the copy has taken its name.
UPGRADING, OLD = "__vitsearch_upgrade", "__vitsearch_v1"
#: Property of the copy: ``"copying"`` while its rows are written, ``"done"`` once whole.
UPGRADE_KEY = "vitsearch.upgrade"
#: Rows copied a read (each read is one upsert).
_COPY_ROWS = 1000


def upgrade(names: Generations, rows: Rows, on_rows: Callable[[int], None] | None = None) -> int:
    """Bring a schema-1 collection to :data:`SCHEMA_VERSION` in place (see :meth:`Store.upgrade`).

    Args:
        names: the collection's generations; rows: its rows (reads and counts).
        on_rows: called with the number of rows copied after each batch (a progress bar).

    Returns:
        the number of rows copied (0 when the collection was current).

    Raises:
        StoreError: Milvus refused, or the copy does not hold every row.
    """
    if names.schema_version() == SCHEMA_VERSION:
        return 0
    collection, conn = names.collection, names.conn
    new, old = collection + UPGRADING, collection + OLD
    props = names.properties()
    if conn.call("has_collection", new):
        conn.call("drop_collection", new)  # an earlier copy that did not finish
    names.create(new, EncoderInfo.from_json(props[ENCODER_KEY]).dim, {**props, UPGRADE_KEY: "copying"})
    copied = 0
    old_fields = [f for f in ("vector", *META_FIELDS[1:]) if f not in NEW_IN_2]
    for batch in rows.batches(names.physical, old_fields, "", _COPY_ROWS):
        conn.call("upsert", new, [from_schema_1(r) for r in batch])
        copied += len(batch)
        if on_rows:
            on_rows(len(batch))
    count = rows.count_of(new)
    if count != rows.count():
        raise StoreError(
            f"upgrading {collection!r} at {conn.uri}: the copy holds {count} rows, "
            f"not {rows.count()}; the collection is unchanged, run again"
        )
    conn.call("alter_collection_properties", new, properties={UPGRADE_KEY: "done"})
    conn.call("rename_collection", collection, old)
    finish_upgrade(names)
    names.resolve()  # loads the renamed copy
    log.info("upgraded collection %s at %s to schema %s (%d rows)", collection, conn.uri, SCHEMA_VERSION, copied)
    return copied


def finish_upgrade(names: Generations) -> None:
    """Complete an upgrade stopped between its renames: put the finished copy (or, if the copy
    did not finish, the old collection) back under the collection's name.

    Raises:
        MilvusException: as pymilvus raised it (no retry: called on connection).
    """
    client, collection = names.conn.client, names.collection
    listed = set(client.list_collections())
    new, old = collection + UPGRADING, collection + OLD
    if collection not in listed and new in listed:
        props = client.describe_collection(new).get("properties") or {}
        if props.get(UPGRADE_KEY) == "done":
            client.rename_collection(new, collection)
            client.alter_collection_properties(collection, properties={UPGRADE_KEY: ""})
            names.schema = SCHEMA_VERSION
            listed.add(collection)
    if collection not in listed and old in listed:
        client.rename_collection(old, collection)
        listed.add(collection)
    elif old in listed:
        client.drop_collection(old)
