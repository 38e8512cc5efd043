"""Duplicates: groups of indexed images that are the same picture (search results with exact
copies collapsed into one hit: :func:`~.hit.collapse`).

Exact duplicates are rows with the same stored ``sha256`` (identical bytes). Near duplicates are
pairs whose embeddings' cosine similarity is at or above a threshold (resized, re-compressed,
lightly cropped or re-coloured copies); the pairs come from Milvus itself, batched searches of
the stored vectors (:func:`neighbours`), are then confirmed by their pixels
(:mod:`.pixels`: the embedding alone puts distinct look-alike products as close as copies; a
pair whose files cannot be read keeps the embedding's decision and is reported), and are joined
into groups, the connected components of the confirmed pairs, with a union-find (Kruskal order:
the strongest pairs first, so a group's weakest link is the lowest score that still holds it
together). A pair joins two parts only where their anchors (each part's largest image, its
suggested keeper so far) are the same picture by their pixels too: a chain of look-alikes, each
alike to the next, stays apart. Nothing here deletes or moves a file: the product only reports.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from .config import MAX_K
from .duplicate_report import CSV_COLUMNS, DuplicateGroup, DuplicateImage, DuplicatePair, DuplicateReport
from .errors import BadQueryError
from .images import Limits
from .pixels import PIXEL_THRESHOLD, PixelChecker
from .store import META_FIELDS, Store

__all__ = [
    "DuplicateImage",
    "DuplicatePair",
    "DuplicateGroup",
    "DuplicateReport",
    "find_duplicates",
    "neighbours",
    "CSV_COLUMNS",
]

#: Neighbours asked for per stored vector by :func:`neighbours` at first; a vector whose last
#: neighbour is still above the threshold is searched again, :data:`NEIGHBOURS_MAX_K` deep.
NEIGHBOURS_K = 16
#: The deepest search of one stored vector's neighbours: enough to join it to its group (a group
#: is a connected component, so it needs one path to each member, not every pair); it bounds the
#: cost where a whole collection is above the threshold (docs/benchmarks/duplicates-speed.md).
NEIGHBOURS_MAX_K = 128


class _UnionFind:
    """Disjoint sets of hashable items, with path halving and union by size."""

    def __init__(self):
        self.parent: dict[Any, Any] = {}
        self.size: dict[Any, int] = {}

    def find(self, x):
        parent = self.parent
        if x not in parent:
            parent[x], self.size[x] = x, 1
            return x
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    def union(self, a, b) -> bool:
        """Join the sets of ``a`` and ``b``; False if they were one already."""
        a, b = self.find(a), self.find(b)
        if a == b:
            return False
        if self.size[a] < self.size[b]:
            a, b = b, a
        self.parent[b] = a
        self.size[a] += self.size[b]
        return True


def find_duplicates(
    store: Store,
    threshold: float | None,
    folder: str | None = None,
    *,
    verify: bool = True,
    limits: Limits = Limits(),
    on_rows: Callable[[int], None] | None = None,
) -> DuplicateReport:
    """Groups of exact and near-duplicate images of a collection.

    One pass over the collection: the rows are streamed in batches; with a ``threshold``, each
    batch's vectors are the query vectors of one Milvus search (:func:`neighbours`), so the
    work is N/Q batched searches of bounded top-k (Q: the store profile's ``search_queries``),
    not N x N; without one, only the sha256 digests are read. Memory holds the sha256 of each row (to pair identical bytes) and the
    pairs found. With ``verify``, each near pair is then confirmed by its pixels
    (:class:`~.pixels.PixelChecker`: the files of candidate pairs only are read, each decoded
    once at small scale, through the decode guards of ``limits``), and a pair below
    :data:`~.pixels.PIXEL_THRESHOLD` is dropped, so that no group is chained through a pair
    that only the embedding calls alike, and two parts are joined only where their anchors
    pass the check too (module docstring). The rows of the grouped images are then read back
    (with their vectors, for each image's score to its keeper).

    Args:
        store: an open collection.
        threshold: cosine similarity at or above which two images are near-duplicate
            candidates (duplicates without ``verify``), in (0, 1]; None: exact duplicates only
            (same sha256).
        folder: only files inside this folder (an absolute path, any depth), on both sides of
            every pair.
        verify: confirm near pairs by their pixels (above); False: the embedding decides alone.
        limits: the decode guards of the pixel check.
        on_rows: called with the number of rows scanned after each batch (a progress bar).

    Returns:
        the groups, largest first (see :class:`DuplicateReport`).

    Raises:
        BadQueryError: ``threshold`` is not in (0, 1].
        StoreError: Milvus refused or stayed unreachable.
    """
    if threshold is not None and not 0 < threshold <= 1:
        raise BadQueryError(f"threshold must be a cosine similarity in (0, 1], got {threshold!r}")
    started = time.perf_counter()
    first_of: dict[str, str] = {}  # sha256 -> the first path seen with it
    edges: dict[tuple[str, str], float] = {}
    exact: set[tuple[str, str]] = set()
    scanned = 0
    if threshold is None:
        batches: Iterable = ((batch, []) for batch in _chunks(store.iter_rows(["sha256"], folder=folder)))
    else:
        batches = neighbours(store, threshold, folder=folder, fields=("sha256",))
    for rows, pairs in batches:
        for row in rows:
            first = first_of.setdefault(row["sha256"], row["path"])
            if first != row["path"]:
                edges[_key(first, row["path"])] = 1.0
                exact.add(_key(first, row["path"]))
        for a, b, score in pairs:
            key = _key(a, b)
            if edges.get(key, -2.0) < score:
                edges[key] = score
        scanned += len(rows)
        if on_rows:
            on_rows(len(rows))
    del first_of
    pixels: dict[tuple[str, str], float] = {}
    unverified: dict[str, str] = {}
    joins = None
    if verify and threshold is not None:
        checker = _confirm(store, edges, exact, pixels, limits)
        unverified = dict(sorted(checker.unreadable.items()))
        joins = _anchored(checker, pixels, exact)
    groups = _groups(store, edges, pixels, joins)
    return DuplicateReport(
        tuple(groups),
        scanned,
        time.perf_counter() - started,
        threshold,
        folder,
        verify and threshold is not None,
        unverified,
    )


def neighbours(
    store: Store,
    threshold: float,
    *,
    folder: str | None = None,
    fields: Sequence[str] = ("sha256",),
    k: int = NEIGHBOURS_K,
    max_k: int = NEIGHBOURS_MAX_K,
    batch_size: int | None = None,
) -> Iterator[tuple[list[dict[str, Any]], list[tuple[str, str, float]]]]:
    """Every stored vector's neighbours at cosine similarity ``threshold`` or more: the rows
    are streamed in primary-key order (:meth:`Store.read_batches`) and each batch's vectors are
    the query vectors of one search (``batch_size`` queries per call, default the store
    profile's ``search_queries``; top-``k`` each, through the HNSW index), so the cost is
    N/``batch_size`` searches, never N x N in Python. A query whose ``k``-th neighbour is still
    at the threshold is searched again ``max_k`` deep; past that its pairs are its ``max_k``
    nearest (its further neighbours are reached through them: enough for connected
    components, not a list of every pair). HNSW is approximate: a neighbour it misses is
    missed. With ``folder``, both the queries and their neighbours are files inside it.

    Args:
        store: an open collection.
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
    batch_size = batch_size or store.profile.search_queries
    for read in store.read_batches(["vector", *fields], folder, max(batch_size, store.read_size())):
        for start in range(0, len(read), batch_size):
            yield _neighbours_of(store, read[start : start + batch_size], threshold, folder, k, max_k)


def _neighbours_of(
    store: Store,
    rows: list[dict[str, Any]],
    threshold: float,
    folder: str | None,
    k: int,
    max_k: int,
) -> tuple[list[dict[str, Any]], list[tuple[str, str, float]]]:
    """One batch of :func:`neighbours`: its rows (their vectors taken out) and their pairs."""
    vectors = np.asarray([r.pop("vector") for r in rows], np.float32)
    pairs: list[tuple[str, str, float]] = []
    todo, depth = np.arange(len(rows)), k
    while len(todo):
        results = store.search(vectors[todo], depth, folder=folder, fields=("path",))
        deeper = []
        for i, hits in zip(todo, results):
            if depth < max_k and len(hits) == depth and hits[-1].score >= threshold:
                deeper.append(i)
                continue
            pairs += [
                (rows[i]["path"], h.path, h.score) for h in hits if h.score >= threshold and h.path != rows[i]["path"]
            ]
        todo, depth = np.asarray(deeper, int), min(max_k, MAX_K)
    return rows, pairs


def _confirm(
    store: Store,
    edges: dict[tuple[str, str], float],
    exact: set[tuple[str, str]],
    scores: dict[tuple[str, str], float],
    limits: Limits,
) -> PixelChecker:
    """Drop from ``edges`` the near pairs whose pixel score is below the threshold, and put the
    pixel scores of the pairs kept in ``scores``; returns the checker (its :attr:`unreadable`:
    the files that could not be read, whose pairs are kept)."""
    near = sorted(key for key in edges if key not in exact)  # grouped by first path: cache hits
    if not near:
        return PixelChecker({}, limits)
    rows = store.get(sorted({p for key in near for p in key}), fields=("size", "sha256"))
    same = [
        key for key in near if key[0] in rows and key[1] in rows and rows[key[0]]["sha256"] == rows[key[1]]["sha256"]
    ]  # identical bytes: nothing to check
    exact.update(same)
    near = [key for key in near if key not in exact]
    checker = PixelChecker({path: int(row["size"]) for path, row in rows.items()}, limits)
    for key, score in zip(near, checker.scores(near)):
        if score is None:
            continue
        if score < PIXEL_THRESHOLD:
            del edges[key]
        else:
            scores[key] = score
    return checker


def _anchored(
    checker: PixelChecker, scores: dict[tuple[str, str], float], exact: set[tuple[str, str]]
) -> Callable[[str, str], bool]:
    """Whether two parts of a group may be joined: their anchors are the same picture by their
    pixels too (or identical bytes, or a file that could not be read: the embedding decides)."""

    def joins(a: str, b: str) -> bool:
        key = _key(a, b)
        if key in exact or key in scores:
            return True
        score = next(iter(checker.scores([key])))
        return score is None or score >= PIXEL_THRESHOLD

    return joins


def _chunks(rows: Iterable[dict[str, Any]], size: int = 1000) -> Iterable[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _key(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def _keeper_rank(row: dict[str, Any]) -> tuple[int, float, str]:
    """Orders a group's rows: the suggested keeper first (the largest pixel count, then the oldest
    mtime, then the path)."""
    return -int(row["width"]) * int(row["height"]), float(row["mtime"]), row["path"]


def _image(row: dict[str, Any], keeper: dict[str, Any]) -> DuplicateImage:
    """``row`` as an image of the group kept by ``keeper``: its score to the keeper (1.0 for the
    same bytes), and whether it is the keeper's own file under another name (same inode and ctime)."""
    if row["sha256"] == keeper["sha256"]:
        score = 1.0
    else:
        score = float(np.dot(np.asarray(keeper["vector"], np.float32), np.asarray(row["vector"], np.float32)))
    link = (
        row["path"] != keeper["path"]
        and row["inode"] == keeper["inode"] != -1
        and row["ctime_ns"] == keeper["ctime_ns"]
        and row["sha256"] == keeper["sha256"]
    )
    return DuplicateImage(
        row["path"],
        int(row["size"]),
        int(row["width"]),
        int(row["height"]),
        float(row["mtime"]),
        row["sha256"],
        min(score, 1.0),
        link,
    )


def _groups(
    store: Store,
    edges: dict[tuple[str, str], float],
    pixels: dict[tuple[str, str], float],
    joins: Callable[[str, str], bool] | None = None,
) -> list[DuplicateGroup]:
    """Connected components of ``edges`` as groups, with their rows read back (``pixels``: the
    pixel scores of the pairs that have one). With ``joins``, an edge joins two parts only where
    ``joins`` holds for their anchors (each part's suggested keeper so far: the largest image,
    which every copy of a picture is closest to), so that a chain of look-alikes, each pair
    alike, does not make one group of distinct pictures."""
    if not edges:
        return []
    rows = store.get(sorted({p for key in edges for p in key}), fields=(*META_FIELDS, "vector"))
    rank = {path: _keeper_rank(row) for path, row in rows.items()}
    missing = (0, float("inf"), "")  # a row deleted since the scan: never an anchor while there is another
    sets = _UnionFind()
    weakest: dict[str, float] = {}  # the component root -> its weakest spanning-tree link so far
    anchor: dict[str, str] = {}  # the component root -> its anchor (itself while alone)
    ordered = sorted(edges.items(), key=lambda e: -e[1])
    for (a, b), score in ordered:  # Kruskal: the last edge that joins two parts is the weakest link
        ra, rb = sets.find(a), sets.find(b)
        if ra == rb:
            continue
        xa, xb = anchor.pop(ra, ra), anchor.pop(rb, rb)
        if joins is None or joins(xa, xb):
            low = min(score, weakest.pop(ra, 1.0), weakest.pop(rb, 1.0))
            sets.union(a, b)
            weakest[sets.find(a)] = low
            anchor[sets.find(a)] = min(xa, xb, key=lambda x: rank.get(x, missing))
        else:
            anchor[ra], anchor[rb] = xa, xb
    members: dict[str, list[str]] = {}
    for path in sets.parent:
        members.setdefault(sets.find(path), []).append(path)
    pairs_of: dict[str, list[DuplicatePair]] = {}
    for (a, b), score in ordered:
        if sets.find(a) == sets.find(b):  # not a pair that was kept apart
            pairs_of.setdefault(sets.find(a), []).append(DuplicatePair(a, b, score, pixels.get((a, b))))
    groups = []
    for root, paths in members.items():
        found = [rows[p] for p in paths if p in rows]  # a row deleted since the scan is left out
        if len(found) < 2:
            continue
        keeper = min(found, key=_keeper_rank)
        images = [_image(r, keeper) for r in found]
        images.sort(key=lambda im: (im.path != keeper["path"], -im.score, im.path))
        kind = "exact" if len({im.sha256 for im in images}) == 1 else "near"
        present = {im.path for im in images}
        pairs = tuple(p for p in pairs_of[root] if p.a in present and p.b in present)
        groups.append(
            DuplicateGroup(kind, tuple(images), keeper["path"], 1.0 if kind == "exact" else weakest[root], pairs)
        )
    groups.sort(key=lambda g: (-len(g.images), -g.min_score, g.keep))
    return groups
