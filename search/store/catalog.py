"""The collections of a database as a user sees them: listed (:func:`list_collections`) and
dropped (:func:`drop_collection`).

Behind each name a user gives, vitsearch keeps Milvus collections of its own (:func:`.collection.is_internal`):
the generations ``NAME__vitsearch_<n>`` that the name (a Milvus alias) leads to, the whitening
matrices' ``NAME__vitsearch_space``, and during an upgrade ``NAME__vitsearch_upgrade`` and
``NAME__vitsearch_v1``. Those are never shown as collections; dropping a name drops all of them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..errors import CollectionBusyError, CollectionNotFoundError, StoreError
from .collection import Store
from .generations import GENERATION, SPACE_SUFFIX, generation_of, is_internal
from .lease import busy_message, live_holder, writer_lease
from .migration import OLD, UPGRADING


@dataclass(frozen=True)
class CollectionSummary:
    """One collection of a database, as :func:`list_collections` reports it.

    Attributes:
        name: the name a user gives (``--collection``).
        count: images (rows) it holds.
        model: the encoder that filled it (hub id, pulled model's name or folder), or None for a
            collection that vitsearch did not make (no encoder record).
        dim: its embeddings' dimension, None where ``model`` is.
        indexing: whether an indexing run holds its writer lease now (see :mod:`.lease`).
    """

    name: str
    count: int
    model: str | None
    dim: int | None
    indexing: bool

    def to_dict(self) -> dict:
        """The fields as a JSON-serialisable dict (``name``, ``count``, ``model``, ``dim``, ``indexing``)."""
        return asdict(self)


def _owner(name: str) -> str | None:
    """The user's collection that the Milvus collection ``name`` belongs to: itself for a plain
    collection, ``NAME`` for one of the internal collections behind ``NAME``, None for the
    whitening matrices' collection (it holds no images and is no collection on its own)."""
    if not is_internal(name):
        return name
    for suffix in (UPGRADING, OLD):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    base, _, number = name.rpartition(GENERATION)
    return base if base and number.isdigit() else None


def _behind(names: set[str], collection: str) -> list[str]:
    """The Milvus collections of ``names`` that are ``collection`` or kept behind its name."""
    internal = {collection, collection + UPGRADING, collection + OLD, collection + SPACE_SUFFIX}
    return sorted(n for n in names if n in internal or generation_of(collection, n) is not None)


def collection_names(store: Store) -> list[str]:
    """The user's collections of ``store``'s database (the name of ``store`` itself need not
    exist), sorted; vitsearch's internal collections are not listed.

    Raises:
        StoreError: Milvus refused or stayed unreachable.
    """
    names = {_owner(n) for n in store._call("list_collections")}
    return sorted(n for n in names if n)


def list_collections(store: Store) -> list[CollectionSummary]:
    """Every user's collection of ``store``'s database with its image count and model, sorted by
    name (each is opened as its own :class:`Store` on the same database, then closed).

    Raises:
        StoreError: Milvus refused or stayed unreachable.
    """
    found = []
    for name in collection_names(store):
        with store.sibling(name) as other:
            try:
                found.append(summary(other))
            except CollectionNotFoundError:  # dropped while being listed
                continue
    return found


def summary(store: Store) -> CollectionSummary:
    """``store``'s collection summarised (:class:`CollectionSummary`).

    Raises:
        CollectionNotFoundError: the collection does not exist.
        StoreError: Milvus refused or stayed unreachable.
    """
    try:
        info = store.encoder_info()
    except CollectionNotFoundError:
        raise
    except StoreError:  # exists, but not made by vitsearch
        info = None
    return CollectionSummary(
        store.collection, store.count(), info and info.model, info and info.dim, live_holder(store) is not None
    )


def drop_collection(store: Store, confirm: Callable[[CollectionSummary | None], bool] | None = None) -> list[str]:
    """Delete ``store``'s collection: everything vitsearch keeps behind its name, which is every
    generation of its rows, its whitening matrices (``NAME__vitsearch_space``), the copies of an
    interrupted upgrade, and the alias. The image files are not touched. The collection's writer
    lease is held while it is dropped, so no indexing run starts writing to it meanwhile.

    A drop cut short (Milvus unreachable, the process killed) leaves either the collection,
    still whole or without some of its generations, or only internal leftovers: running it
    again finishes it.

    Args:
        confirm: asked, once the collection is found and no run writes to it, whether to go on:
            given the collection's summary (None where only leftovers of a drop cut short are
            there); False drops nothing.

    Returns:
        the Milvus collections dropped, sorted; empty where ``confirm`` said no.

    Raises:
        CollectionNotFoundError: nothing by that name (also for the name of one of vitsearch's
            internal collections, which belong to a collection and are dropped with it).
        CollectionBusyError: an indexing run writes to it now (another process holds its
            writer lease); nothing is dropped.
        StoreError: Milvus refused or stayed unreachable.
    """
    if is_internal(store.collection):
        owner = _owner(store.collection)
        behind = repr(owner) if owner else "a collection"
        raise CollectionNotFoundError(
            f"{store.collection!r} is not a collection but part of {behind}, which vitsearch keeps "
            f"behind that name at {store.uri}: drop that one instead (see `vitsearch collections`)"
        )
    names = _behind(set(store._call("list_collections")), store.collection)
    if not names:
        raise CollectionNotFoundError(
            f"collection {store.collection!r} does not exist at {store.uri} (see `vitsearch collections`)"
        )
    if not store.exists():  # only leftovers of a drop cut short: no lease to take
        if confirm is not None and not confirm(None):
            return []
        store.drop()
        return names
    holder = live_holder(store)
    if holder is not None:
        raise CollectionBusyError(busy_message(store, holder))
    if confirm is not None and not confirm(summary(store)):
        return []
    with writer_lease(store):  # refuses a run that began meanwhile, and keeps new ones out
        names = _behind(set(store._call("list_collections")), store.collection)
        store.drop()
    return names
