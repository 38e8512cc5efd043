"""A 2-D map of a collection: every image placed so that similar ones lie close, grouped into
clusters, each cluster labelled by its most central images. Computed once and kept with the
collection (:mod:`~.store.map_rows`), so that a page opens it at once.

**Layout.** UMAP (McInnes et al. 2018, umap-learn) of the vectors the collection searches (the
stored ones, whitened where the collection is), L2-normalised, on the Euclidean metric (the same
neighbours as cosine), with a fixed ``random_state`` (the same collection gives the same map; umap
then runs on one thread).

**Sample and place.** Up to ``sample_size`` images (:data:`SAMPLE_SIZE`, measured in
``benchmarks/map.py``) are laid out together. Above it, a uniform sample of that many is laid
out and clustered, and each other image is placed at the similarity-weighted mean position of
its :data:`PLACE_K` most similar sampled images (cosine, exact, a read of the store at a time
against the sample), and takes the cluster with the most similarity among them. Memory holds the
sample's vectors, one read, and the map's rows on their way out, never all N vectors.

**Clusters.** HDBSCAN (scikit-learn) on the 2-D layout of the laid-out images,
``min_cluster_size`` :data:`MIN_CLUSTER_FRACTION` of them (at least :data:`MIN_CLUSTER_SIZE`);
-1 is noise. A cluster's labels are its :data:`LABELS` members most similar to the mean of its
members' vectors.

**Kept and reused.** :func:`embedding_map` reads the kept map when it is fresh, and computes and
keeps one when there is none, when the collection's space changed (whitening learned), when its
image count moved by :data:`STALE_FRACTION` or more since, or when asked (``recompute``). Images
added and removed in equal numbers do not make a map stale; ``vitsearch map --recompute`` does.

**Dates.** :func:`capture_times` reads when each image on the map was taken (the collection's
``taken_at``, :mod:`~.capture`), for the Map page's colouring by date; the map does not keep them.
"""

from __future__ import annotations

import math
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from .paths import path_from_stored, stored_path

if TYPE_CHECKING:  # the store imports pymilvus, umap imports numba: not for `vitsearch map --help`
    from .store import Store

#: Images laid out together at most; above, a sample of this many (``benchmarks/map.py``).
SAMPLE_SIZE = 20_000
#: Sampled neighbours that place an image outside the sample.
PLACE_K = 10
#: A collection whose image count moved by this fraction since its map was made gets a new one.
STALE_FRACTION = 0.1
#: HDBSCAN's smallest cluster: this fraction of the laid-out images, at least MIN_CLUSTER_SIZE.
MIN_CLUSTER_FRACTION = 0.01
MIN_CLUSTER_SIZE = 5
#: Label images per cluster, most central first.
LABELS = 4
#: UMAP's neighbourhood size and minimum distance (umap-learn's defaults).
N_NEIGHBORS, MIN_DIST = 15, 0.1
#: Rows a read of the store asks (the vectors arrive as Python lists: ~13 KB a 384-d row).
READ_ROWS = 4096
#: Rows placed per product against the sample (bounds the (rows, sample) similarity block).
PLACE_BATCH = 512


@dataclass(frozen=True)
class EmbeddingMap:
    """A collection's map.

    Attributes:
        record: how it was made: ``id``, ``rows``, ``count`` (images when it was made), ``space``
            (the collection's space id), ``computed_at`` (s since the epoch), ``seconds``,
            ``sampled`` (images laid out together), ``method`` (``full`` or ``sample+knn``),
            ``clusters``, ``params``.
        paths: N file paths, in stored-path order.
        xy: ``(N, 2) float32`` positions (arbitrary units; only distances mean anything).
        cluster: ``(N,) int32`` cluster ids, 0..clusters-1, -1 for noise.
        labels: ``{cluster id: [paths]}``, most central first.
        computed: whether this call computed it (False: read back as kept).
    """

    record: dict[str, Any]
    paths: list[str]
    xy: np.ndarray
    cluster: np.ndarray
    labels: dict[int, list[str]] = field(default_factory=dict)
    computed: bool = False

    @property
    def folders(self) -> list[str]:
        """Each image's folder (its path's parent), row for row."""
        return [os.path.dirname(p) for p in self.paths]


def capture_times(store: Store, emap: EmbeddingMap) -> tuple[np.ndarray, np.ndarray]:
    """When each image on ``emap`` was taken, from one streamed read of the collection's
    ``taken_at`` and ``date_source`` (memory: a dict of the map's paths).

    The collection's rows are matched to the map's by path: a map made before rows were added or
    removed still lines up (an image no longer in the collection has no date).

    Returns:
        ``(taken, file_date)``, row for row with ``emap.paths``: ``(N,) float64`` capture times
        (Unix seconds), NaN where unknown (``date_source`` ``""``: a collection of an older schema
        not yet upgraded by ``vitsearch index``; or the path is no longer in the collection), and
        ``(N,) bool``, True where the time is the file's modification time standing in for a
        missing EXIF date (``date_source`` ``mtime``).

    Raises:
        CollectionNotFoundError: the collection does not exist.
        StoreError: Milvus refused or stayed unreachable.
    """
    from .capture import SOURCES

    row_of = {p: i for i, p in enumerate(emap.paths)}
    taken = np.full(len(emap.paths), np.nan, np.float64)
    file_date = np.zeros(len(emap.paths), bool)
    for batch in store.read_batches(["taken_at", "date_source"]):
        for row in batch:
            i = row_of.get(row["path"])
            if i is not None and row["date_source"] in SOURCES and row["taken_at"] is not None:
                taken[i] = row["taken_at"]
                file_date[i] = row["date_source"] == "mtime"
    return taken, file_date


def stale_reason(store: Store, record: dict[str, Any] | None) -> str | None:
    """Why the kept map (its ``record``) must be made again, or None when it is fresh."""
    from .store.space import read_space

    if record is None:
        return "no map yet"
    count = store.count()
    if record.get("space") != read_space(store).id:
        return "the collection's space changed"
    if abs(count - int(record.get("count", 0))) >= max(1, math.ceil(STALE_FRACTION * int(record.get("count", 0)))):
        return f"{record.get('count')} images when it was made, {count} now"
    return None


def embedding_map(store: Store, *, recompute: bool = False, **options: Any) -> EmbeddingMap:
    """The collection's map: the kept one when fresh (:func:`stale_reason`), else computed now
    (:func:`compute_map`, ``options`` passed on) and kept.

    Raises:
        CollectionNotFoundError: the collection does not exist.
        StoreError: Milvus refused or stayed unreachable.
    """
    from .store.map_rows import read_record

    record = read_record(store)
    if not recompute and stale_reason(store, record) is None:
        return read_map(store, record)
    return compute_map(store, **options)


def read_map(store: Store, record: dict[str, Any]) -> EmbeddingMap:
    """The kept map that ``record`` describes, read back from the store."""
    from .store.map_rows import map_collection, read_map_rows

    paths: list[str] = []
    xy, cluster, labels = [], [], {}
    for batch in read_map_rows(store, map_collection(store, record["id"])):
        for row in batch:
            path = path_from_stored(row["path"])
            paths.append(path)
            xy.append(row["vector"])
            cluster.append(row["cluster"])
            if row["label"] >= 0:
                labels.setdefault(int(row["cluster"]), []).append((row["label"], path))
    return EmbeddingMap(
        record,
        paths,
        np.asarray(xy, np.float32).reshape(len(paths), 2),
        np.asarray(cluster, np.int32),
        {c: [p for _, p in sorted(v)] for c, v in sorted(labels.items())},
    )


def compute_map(
    store: Store,
    *,
    sample_size: int = SAMPLE_SIZE,
    random_state: int = 0,
    place: str = "knn",
    on_rows: Callable[[int], None] | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> EmbeddingMap:
    """Compute the collection's map now and keep it (see the module docstring).

    Args:
        sample_size: images laid out together at most (more: sample and place).
        random_state: seeds the sample, UMAP and so the whole map.
        place: how images outside the sample are placed: ``knn`` (the default) or ``transform``
            (umap-learn's ``UMAP.transform``, measured slower in ``benchmarks/map.py``).
        on_rows: called with the number of rows read after each read (two passes when sampled).
        on_stage: called with what is being done (``reading``, ``laying out``, ``placing``, ...).

    Raises:
        ValueError: ``sample_size`` < 2 or an unknown ``place``.
        CollectionNotFoundError: the collection does not exist.
        StoreError: Milvus refused or stayed unreachable (nothing kept).
    """
    from .store.map_rows import create_map_rows, drop_map_rows, publish, write_map_rows
    from .store.space import read_space

    if sample_size < 2 or place not in ("knn", "transform"):
        raise ValueError(f"sample_size must be at least 2 and place knn or transform, not {sample_size}, {place!r}")
    stage = on_stage or (lambda _: None)
    start, space_id, count = time.perf_counter(), read_space(store).id, store.count()
    rng = np.random.default_rng(random_state)
    chosen = np.sort(rng.choice(count, sample_size, replace=False)) if count > sample_size else None
    stage("reading")
    paths, vectors = _read_sample(store, chosen, on_rows)
    stage("laying out")
    model, xy = _layout(vectors, random_state)
    stage("clustering")
    clusters = _clusters(xy)
    labels = _labels(vectors, clusters)
    map_id = f"{int(time.time() * 1000)}_{uuid.uuid4().hex[:8]}"
    name = create_map_rows(store, map_id)
    try:
        if chosen is None:
            write_map_rows(store, name, _rows(paths, xy, clusters, labels))
            rows = len(paths)
        else:
            stage("placing")
            rows = _place_all(
                store, name, paths, vectors, xy, clusters, labels, model if place == "transform" else None, on_rows
            )
        record = {
            "id": map_id,
            "rows": rows,
            "count": count,
            "space": space_id,
            "computed_at": time.time(),
            "seconds": round(time.perf_counter() - start, 3),
            "sampled": len(paths),
            "method": "full" if chosen is None else f"sample+{place}",
            "clusters": int(clusters.max(initial=-1)) + 1,
            "params": {
                "n_neighbors": N_NEIGHBORS,
                "min_dist": MIN_DIST,
                "min_cluster_size": _min_cluster_size(len(paths)),
                "random_state": random_state,
            },
        }
        publish(store, record)
    except BaseException:
        drop_map_rows(store, name)
        raise
    result = read_map(store, record)  # what a later call reads, in the same order
    return EmbeddingMap(result.record, result.paths, result.xy, result.cluster, result.labels, computed=True)


def _read_sample(
    store: Store, chosen: np.ndarray | None, on_rows: Callable[[int], None] | None
) -> tuple[list[str], np.ndarray]:
    """The sampled rows' paths and L2-normalised ``(S, D) float32`` vectors (all rows when
    ``chosen`` is None; else those at the running indices ``chosen``, sorted)."""
    paths, blocks, seen = [], [], 0
    for batch in store.read_batches(["vector"], batch_size=READ_ROWS):
        take = range(len(batch)) if chosen is None else _picked(chosen, seen, len(batch))
        if len(take):
            paths.extend(batch[i]["path"] for i in take)
            blocks.append(np.asarray([batch[i]["vector"] for i in take], np.float32))
        seen += len(batch)
        if on_rows:
            on_rows(len(batch))
    if len(paths) < 2:
        raise _too_small(store, len(paths))
    return paths, _normalised(np.concatenate(blocks))


def _picked(chosen: np.ndarray, seen: int, n: int) -> np.ndarray:
    lo, hi = np.searchsorted(chosen, [seen, seen + n])
    return chosen[lo:hi] - seen


def _too_small(store: Store, n: int) -> Exception:
    from .errors import VitsearchError

    return VitsearchError(f"{store.where} holds {n} image(s): a map needs at least 2")


def _normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32, copy=False)


def _layout(vectors: np.ndarray, random_state: int):
    """The UMAP model and ``(S, 2) float32`` layout of ``vectors``; fewer than 4 images lie on a line."""
    import warnings

    n = len(vectors)
    if n < 4:
        return None, np.column_stack([np.arange(n), np.zeros(n)]).astype(np.float32)
    import umap

    model = umap.UMAP(
        n_components=2,
        n_neighbors=min(N_NEIGHBORS, n - 1),
        min_dist=MIN_DIST,
        metric="euclidean",
        random_state=random_state,
        init="spectral" if n > 16 else "random",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state", spectral init fallbacks
        xy = model.fit_transform(vectors)
    return model, np.asarray(xy, np.float32)


def _min_cluster_size(n: int) -> int:
    return max(MIN_CLUSTER_SIZE, round(MIN_CLUSTER_FRACTION * n))


def _clusters(xy: np.ndarray) -> np.ndarray:
    """HDBSCAN's ``(S,) int32`` clusters of the layout (-1 noise; all -1 below the smallest cluster)."""
    if len(xy) < 2 * MIN_CLUSTER_SIZE:
        return np.full(len(xy), -1, np.int32)
    from sklearn.cluster import HDBSCAN

    size = _min_cluster_size(len(xy))
    return HDBSCAN(min_cluster_size=size, min_samples=min(size, 10), copy=True).fit_predict(xy).astype(np.int32)


def _labels(vectors: np.ndarray, clusters: np.ndarray) -> dict[int, list[int]]:
    """Each cluster's :data:`LABELS` members (row indices) most similar to its mean vector."""
    labels = {}
    for c in range(int(clusters.max(initial=-1)) + 1):
        members = np.flatnonzero(clusters == c)
        centre = vectors[members].mean(axis=0)
        scores = vectors[members] @ centre
        labels[c] = members[np.argsort(-scores, kind="stable")[:LABELS]].tolist()
    return labels


def _rows(paths, xy, clusters, labels):
    rank = {i: r for members in labels.values() for r, i in enumerate(members)}
    for i, path in enumerate(paths):
        yield {
            "path": stored_path(path),
            "vector": [float(xy[i, 0]), float(xy[i, 1])],
            "cluster": int(clusters[i]),
            "label": rank.get(i, -1),
        }


def _place_all(store, name, paths, sample, xy, clusters, labels, model, on_rows=None) -> int:
    """Write the sample's rows, then read every row again and place each one not sampled
    (:func:`place`, or ``model.transform``); returns the rows written."""
    from .store.map_rows import write_map_rows

    write_map_rows(store, name, _rows(paths, xy, clusters, labels))
    sampled, rows = set(paths), len(paths)
    for batch in store.read_batches(["vector"], batch_size=READ_ROWS):
        rest = [r for r in batch if r["path"] not in sampled]
        if on_rows:
            on_rows(len(batch))
        if not rest:
            continue
        vectors = _normalised(np.asarray([r["vector"] for r in rest], np.float32))
        if model is None:
            where, which = place(vectors, sample, xy, clusters)
        else:
            where = np.asarray(model.transform(vectors), np.float32)
            _, which = place(vectors, sample, xy, clusters)
        rest_paths = [r["path"] for r in rest]
        write_map_rows(store, name, _rows(rest_paths, where, which, {}))
        rows += len(rest)
    return rows


def place(
    vectors: np.ndarray, sample: np.ndarray, xy: np.ndarray, clusters: np.ndarray, k: int = PLACE_K
) -> tuple[np.ndarray, np.ndarray]:
    """Positions and clusters of images outside the sample, from their ``k`` most similar sampled
    images.

    Args:
        vectors: ``(B, D) float32`` L2-normalised vectors to place.
        sample: ``(S, D) float32`` L2-normalised vectors of the laid-out sample.
        xy: ``(S, 2)`` the sample's positions; clusters: ``(S,)`` its cluster ids.

    Returns:
        ``(B, 2) float32`` positions (the mean of the neighbours' positions weighted by cosine
        similarity, clipped at 0.01) and ``(B,) int32`` clusters (the one, noise included, whose
        neighbours hold the most similarity).
    """
    k = min(k, len(sample))
    where = np.empty((len(vectors), 2), np.float32)
    which = np.empty(len(vectors), np.int32)
    for lo in range(0, len(vectors), PLACE_BATCH):
        sims = vectors[lo : lo + PLACE_BATCH] @ sample.T
        near = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        weights = np.maximum(np.take_along_axis(sims, near, axis=1), 0.01)
        where[lo : lo + len(near)] = (weights[:, :, None] * xy[near]).sum(axis=1) / weights.sum(axis=1, keepdims=True)
        for row, (ids, w) in enumerate(zip(clusters[near], weights)):
            votes: dict[int, float] = {}
            for c, wi in zip(ids.tolist(), w.tolist()):
                votes[c] = votes.get(c, 0.0) + wi
            which[lo + row] = max(votes, key=votes.__getitem__)
    return where, which
