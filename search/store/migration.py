"""Schema upgrades: what fills the fields an older schema lacks (:data:`Complete`; the upgrade
itself is a rewrite into a new generation, :func:`~.space.upgrade`), and finishing an upgrade of
vitsearch 0.2, which copied a schema-1 collection to ``<name><UPGRADING>`` and renamed it, where
a crash interrupted it between its renames (:func:`finish_upgrade`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .generations import Generations

#: vitsearch 0.2 copied a collection being upgraded to ``<name><UPGRADING>`` and kept the old one
#: as ``<name><OLD>`` until the copy had taken its name.
UPGRADING, OLD = "__vitsearch_upgrade", "__vitsearch_v1"
#: Property of that copy: ``"copying"`` while its rows were written, ``"done"`` once whole.
UPGRADE_KEY = "vitsearch.upgrade"

#: What an upgrade does with each batch of rows before they are written: given rows with file
#: system paths and the fields the old schema lacks unknown, returns them with those fields
#: filled (the indexer reads the capture facts from the files: :func:`~..capture.read_capture`).
Complete = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


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
            names.schema = None  # read again: the copy's own record
            listed.add(collection)
    if collection not in listed and old in listed:
        client.rename_collection(old, collection)
        listed.add(collection)
    elif old in listed:
        client.drop_collection(old)
