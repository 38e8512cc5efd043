"""The space a collection's vectors are in (:class:`~vitsearch.search.whitening.Space`): kept with
the collection, learned from it, and the rewrite of every vector into a new space.

**Where it is kept.** The record (:meth:`Space.to_json`: id, whether to learn, the whitening's
parameters and sha256, the score statistics) is a property of the collection's physical
collection (:attr:`Store.physical`), so it travels with the vectors it describes. The whitening
matrix (``D + 2`` vectors of ``D`` floats, too big for a property on a Milvus server) is kept in
``<name>__vitsearch_space``, one row per vector, keyed ``<space id>/<i>``; the record's sha256
must match what is read back.

**Learning and rewriting** (:func:`update_space`, called by the indexer at the end of a run,
holding the writer lease): whitening is learned from the collection's own raw embeddings (one
read of every row, :class:`~vitsearch.search.whitening.Moments`) once it holds
:data:`~vitsearch.search.whitening.MIN_IMAGES`, and re-learned when it has grown
:data:`~vitsearch.search.whitening.RELEARN_GROWTH`-fold or on request. The vectors are then
rewritten into a new generation of the collection (raw embeddings recovered from the old space,
mapped into the new one; no image is embedded again), which takes the collection's name once it
holds every row (:meth:`Store.point_alias`); searches meanwhile answer from the old generation,
whole and consistent, and a search that meets the move is run again in the new space
(:class:`~.collection.CollectionMoved`). The copy records its progress after each batch: a run
killed during it is resumed by the next indexing run (:func:`resume_rewrite`) from the last
batch written.

**Upgrading** a collection of an older schema (:func:`upgrade`) is the same rewrite, into the same
space: the vectors are copied as they are, and the fields the old schema lacks are filled by the
caller's ``complete`` (the indexer reads the files' capture facts), resumed the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

import numpy as np
from pymilvus import DataType, MilvusClient

from ..errors import StoreError
from ..whitening import MIN_IMAGES, RELEARN_GROWTH, Moments, Reservoir, ScoreStats, Space, Whitening, new_id, normalise
from .collection import META_FIELDS, Store
from .generations import SPACE_SUFFIX, STATE_KEY, generation_name, generation_of
from .migration import Complete
from .schema import SCHEMA_VERSION, from_milvus, index_params, readable_fields, to_milvus

log = logging.getLogger(__name__)

#: Property holding the :class:`Space` record.
SPACE_KEY = "vitsearch.space"
#: Property of a generation being filled: ``{"from": source generation, "after": last stored
#: path copied or null}``.
COPY_KEY = "vitsearch.copy"
#: Properties that describe one run, not the collection, and are not carried to a new generation.
_TRANSIENT = (STATE_KEY, COPY_KEY, "vitsearch.upgrade")
#: Rows a copy reads (and writes, then records) at a time.
COPY_BATCH = 4096


def read_space(store: Store) -> Space:
    """The space of ``store``'s collection as recorded (raw embeddings when nothing is recorded:
    a collection of an older vitsearch).

    Raises:
        CollectionNotFoundError: the collection does not exist.
        StoreError: the whitening matrix is missing or does not match its record.
    """
    return _space_of(store, store.properties())


def _space_of(store: Store, props: dict[str, str]) -> Space:
    raw = props.get(SPACE_KEY)
    if not raw:
        return Space()
    try:
        record = json.loads(raw)
    except ValueError as exc:
        raise StoreError(f"{store.where}: its space record is not JSON ({exc})") from None
    white = record.get("whitening")
    return Space.from_record(record, _load_whitening(store, record["id"], white) if white else None)


def write_space(store: Store, space: Space, name: str | None = None) -> None:
    """Record ``space`` on the physical collection ``name`` (default the current one); a
    whitening's matrix is stored first."""
    if space.whitening is not None:
        _store_whitening(store, space)
    store.set_properties_of(name or store.physical, {SPACE_KEY: space.to_json()})


def _aux(store: Store) -> str:
    return store.collection + SPACE_SUFFIX


def _store_whitening(store: Store, space: Space) -> None:
    matrix = space.whitening.matrix()
    name = _aux(store)
    if not store._call("has_collection", name):
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=64)
        schema.add_field("space", DataType.VARCHAR, max_length=32)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=matrix.shape[1])
        index = index_params(store._client, "L2")
        store._call("create_collection", name, schema=schema, index_params=index, consistency_level="Strong")
    rows = [{"key": f"{space.id}/{i}", "space": space.id, "vector": row.tolist()} for i, row in enumerate(matrix)]
    for start in range(0, len(rows), 512):
        store._call("upsert", name, rows[start : start + 512])


def _load_whitening(store: Store, space_id: str, record: dict) -> Whitening:
    dim = int(record["dim"])
    store._call("load_collection", _aux(store))  # not loaded when Milvus Lite reopens the database
    rows = store._call(
        "query", _aux(store), filter=f'space == "{space_id}"', output_fields=["key", "vector"], limit=dim + 2
    )
    found = {int(r["key"].split("/")[1]): r["vector"] for r in rows}
    if len(found) != dim + 2:
        raise StoreError(
            f"{store.where}: the whitening matrix of space {space_id} is incomplete "
            f"({len(found)} of {dim + 2} rows in {_aux(store)!r}); re-learn it: "
            f"vitsearch index DIR --relearn"
        )
    whitening = Whitening.from_matrix(np.asarray([found[i] for i in range(dim + 2)], np.float32), record)
    if whitening.sha256() != record["sha256"]:
        raise StoreError(
            f"{store.where}: the whitening matrix of space {space_id} does not match its record "
            f"(sha256); re-learn it: vitsearch index DIR --relearn"
        )
    return whitening


def _drop_whitening(store: Store, space_id: str) -> None:
    if space_id and store._call("has_collection", _aux(store)):
        store._call("delete", _aux(store), filter=f'space == "{space_id}"')


def raw_batches(store: Store, space: Space, name: str | None = None):
    """Every stored vector of the physical collection ``name`` (default the current one) as the
    model's raw embedding, in batches ``(B, D) float32`` (:meth:`Space.to_raw`)."""
    for rows in store.read_stored(name or store.physical, ["vector"], batch_size=COPY_BATCH):
        yield space.to_raw(np.asarray([r["vector"] for r in rows], np.float32))


def measure(
    store: Store, space: Space, whitening: Whitening | None, count: int, learn: bool
) -> tuple[Whitening | None, ScoreStats | None]:
    """One read of every stored vector: the moments to learn a whitening from (``learn``; else
    ``whitening`` is kept) and a uniform sample for the score statistics of the resulting space."""
    dim = store.encoder_info().dim
    moments, sample = Moments(dim), Reservoir()
    for raw in raw_batches(store, space):
        if learn:
            moments.add(raw)
        sample.add(raw)
    if learn:
        whitening = Whitening.learn(moments)
    return whitening, ScoreStats.measure(sample.sample(dim), count, whitening)


def update_space(
    store: Store,
    learn: str | None = None,
    relearn: bool = False,
    on_rows: Callable[[int], None] | None = None,
    on_start: Callable[[str, int], None] | None = None,
    batch_size: int = COPY_BATCH,
) -> Space:
    """Bring the collection's space up to date after an indexing run (hold the writer lease).

    Whitening is learned when the collection reaches :data:`MIN_IMAGES` images, re-learned when
    it has grown :data:`RELEARN_GROWTH`-fold since (or ``relearn``), removed with ``learn="none"``
    (the vectors rewritten back to raw embeddings); the score statistics are measured again when
    the collection has grown or shrunk that much, or is small.

    Args:
        learn: ``"auto"`` or ``"none"`` to change the collection's setting; None keeps it.
        relearn: learn the whitening again now (with ``learn`` auto).
        on_rows: called with the number of rows rewritten after each batch.
        on_start: called with what is done (``"learning"``, ``"re-learning"``, ``"removing"``) and
            the number of rows, before a rewrite.
        batch_size: rows a rewrite copies (and records as done) at a time.

    Returns:
        the space now in use.

    Raises:
        StoreError: Milvus refused, or a copy did not hold every row (the collection is unchanged).
    """
    space = read_space(store)
    mode = learn or space.learn
    count = store.count()
    if mode == "none":
        target = Space(new_id(), None, "none") if space.whitened else Space(space.id, None, "none", space.stats)
    elif count >= MIN_IMAGES and (not space.whitened or relearn or count >= RELEARN_GROWTH * space.whitening.n):
        target = Space(new_id(), None, "auto")
    else:
        target = Space(space.id, space.whitening, "auto", space.stats)
    if target.id != space.id:  # the vectors change: learn (where asked), measure, rewrite
        kind = "removing" if mode == "none" else "re-learning" if space.whitened else "learning"
        if on_start:
            on_start(kind, count)
        whitening, stats = measure(store, space, None, count, learn=mode != "none")
        target = Space(target.id, whitening, mode, stats)
        rewrite(store, space, target, on_rows, batch_size)
        return target
    if _stats_due(target.stats, count):
        _, stats = measure(store, space, space.whitening, count, learn=False)
        target = target.with_stats(stats)
    if target.record() != space.record():
        write_space(store, target)
    return target


def _stats_due(stats: ScoreStats | None, count: int) -> bool:
    """Whether the score statistics are missing or were measured on a collection of another size
    by a factor of :data:`RELEARN_GROWTH` (every change counts below :data:`MIN_IMAGES`)."""
    if count < 3:
        return False
    if stats is None:
        return True
    if count < MIN_IMAGES:
        return count != stats.count
    return count >= RELEARN_GROWTH * stats.count or count * RELEARN_GROWTH <= stats.count


def upgrade(store: Store, on_rows: Callable[[int], None] | None = None, complete: Complete | None = None) -> int:
    """Bring a collection of an older schema to :data:`~.schema.SCHEMA_VERSION` (see
    :meth:`Store.upgrade`): a copy stopped earlier is resumed (:func:`resume_rewrite`), else
    every row is copied into a new generation of the current schema, in the collection's space,
    the fields the old schema lacks filled by ``complete``. Hold the writer lease.

    Returns:
        rows copied (0 when the collection was current).
    """
    copied = 0
    if store.schema_version() != SCHEMA_VERSION:
        copied += resume_rewrite(store, on_rows, complete=complete)
    if store.schema_version() != SCHEMA_VERSION:
        space = read_space(store)
        copied += rewrite(store, space, space, on_rows, COPY_BATCH, complete)
        log.info("upgraded %s to schema %s (%d rows)", store.where, SCHEMA_VERSION, copied)
    return copied


def rewrite(
    store: Store,
    source: Space,
    target: Space,
    on_rows: Callable[[int], None] | None = None,
    batch_size: int = COPY_BATCH,
    complete: Complete | None = None,
) -> int:
    """Copy every row of the collection into a new generation with its vector mapped from
    ``source`` to ``target`` (:meth:`Space.to_raw`, :meth:`Space.to_search`), then make the new
    generation the collection and drop the old (see the module docstring). Hold the writer lease.
    Rows of an older schema are brought to the current one, the fields they lack filled by
    ``complete`` (:data:`~.migration.Complete`; None: left unknown).

    Returns:
        rows copied.

    Raises:
        StoreError: Milvus refused, or the copy does not hold every row (the collection unchanged).
    """
    old = store.physical
    props = {k: v for k, v in store.properties().items() if k not in _TRANSIENT}
    dim = store.encoder_info().dim
    if target.whitening is not None:
        _store_whitening(store, target)
    new = store.create_generation(
        dim,
        {
            **props,
            SPACE_KEY: target.to_json(),
            STATE_KEY: "copying",
            COPY_KEY: json.dumps({"from": old, "after": None}),
        },
    )
    log.debug("rewriting %s into %s (space %s)", store.where, new, target.id)
    return _copy(store, old, new, source, target, None, on_rows, batch_size, complete)


def resume_rewrite(
    store: Store,
    on_rows: Callable[[int], None] | None = None,
    on_start: Callable[[str, int], None] | None = None,
    complete: Complete | None = None,
) -> int:
    """Finish a rewrite that a stopped run left: a generation being filled from the current one
    is filled from where its record says it stopped, then takes the collection's name; stale
    generations (neither the current one nor being filled from it) are dropped. Call it before
    writing anything (hold the writer lease). ``complete`` fills what the rows of an older schema
    lack (as :func:`rewrite`).

    Returns:
        rows copied now (0 when nothing was pending).
    """
    current = store.physical
    copied = 0
    dropped: set[str | None] = set()
    by_number = sorted(store.generations().items(), key=lambda g: generation_of(store.collection, g[0]) or 0)
    for name, state in by_number:
        if name == current or name in dropped:
            continue
        props = store.properties_of(name)
        progress = json.loads(props.get(COPY_KEY) or "{}")
        if progress.get("from") != current:
            log.debug("dropping %s: a generation of %s no longer in use", name, store.where)
            _drop_generation(store, name, props)
            continue
        if on_start:
            on_start("resuming" if store.schema_version() == SCHEMA_VERSION else "upgrading", store.count())
        target = _space_of(store, props)
        source = read_space(store)
        after = progress.get("after") if state == "copying" else ""
        copied += _copy(store, current, name, source, target, after, on_rows, COPY_BATCH, complete)
        dropped.add(current)
        current = store.physical
    return copied


def _copy(
    store: Store,
    old: str,
    new: str,
    source: Space,
    target: Space,
    after: str | None,
    on_rows: Callable[[int], None] | None,
    batch_size: int = COPY_BATCH,
    complete: Complete | None = None,
) -> int:
    """Fill ``new`` from ``old`` (the current generation) from after the stored path ``after``
    ("": already whole), check it holds every row, then move the collection's name to it and
    drop ``old``. Rows of an older schema are brought to the current one (``complete``)."""
    copied = 0
    if after != "":
        version = store.schema_version()
        fields = ["vector", *META_FIELDS[1:]]
        for rows in store.read_stored(old, readable_fields(fields, version), after, batch_size):
            last = rows[-1]["path"]  # as the old generation stores it (read_stored's "after")
            if version != SCHEMA_VERSION:
                current = [from_milvus(r, fields) for r in rows]
                rows = [to_milvus(r) for r in (complete(current) if complete else current)]
            if source.id != target.id:
                vectors = target.to_search(source.to_raw(np.asarray([r["vector"] for r in rows], np.float32)))
                rows = [{**r, "vector": v} for r, v in zip(rows, vectors)]
            store.upsert_stored(new, rows)
            store.set_properties_of(new, {COPY_KEY: json.dumps({"from": old, "after": last})})
            copied += len(rows)
            if on_rows:
                on_rows(len(rows))
        have, want = store.count_of(new), store.count_of(old)
        if have != want:
            raise StoreError(
                f"rewriting {store.where}: the new generation {new!r} holds {have} rows, not {want}; "
                f"the collection is unchanged: run `vitsearch index` again to finish it"
            )
        store.set_properties_of(new, {STATE_KEY: "done", COPY_KEY: json.dumps({"from": old, "after": ""})})
    old_props = store.properties_of(old)
    store._call(store.point_alias, new)
    if old == store.collection:  # a collection of an older vitsearch: renamed to generation 0 by the move
        old = generation_name(store.collection, 0)
    _drop_generation(store, old, old_props)
    store.set_properties_of(new, {COPY_KEY: ""})
    log.debug("%s now in space %s (%d rows copied)", store.where, target.id, copied)
    return copied


def _drop_generation(store: Store, name: str, props: dict[str, str]) -> None:
    """Drop a generation and its whitening matrix (unless the current space uses the same)."""
    store.drop_physical(name)
    try:
        record = json.loads(props.get(SPACE_KEY) or "{}")
    except ValueError:
        return
    current = json.loads(store.properties().get(SPACE_KEY) or "{}").get("id")
    if record.get("whitening") and record.get("id") != current:
        _drop_whitening(store, record["id"])


__all__ = [
    "SPACE_KEY",
    "upgrade",
    "read_space",
    "write_space",
    "update_space",
    "rewrite",
    "resume_rewrite",
    "raw_batches",
    "normalise",
]
