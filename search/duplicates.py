"""Duplicates: groups of indexed images that are the same picture, and search results with exact
copies collapsed into one hit.

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

import csv
import io
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, TextIO

import numpy as np

from .config import MAX_K
from .errors import BadQueryError
from .images import Limits
from .pixels import PIXEL_THRESHOLD, PixelChecker
from .store import META_FIELDS, Hit, Store

__all__ = [
    "DuplicateImage",
    "DuplicatePair",
    "DuplicateGroup",
    "DuplicateReport",
    "find_duplicates",
    "collapse",
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
#: Columns of the CSV (:meth:`DuplicateReport.write_csv`): one row per image of a group.
CSV_COLUMNS = ("group", "path", "keep", "score", "kind", "size", "width", "height", "mtime", "sha256", "same_file")


@dataclass(frozen=True)
class DuplicateImage:
    """One image of a duplicate group, as its row was indexed.

    Attributes:
        path: the file's path, exact (``os.fsencode`` gives its bytes).
        size: file size in bytes. width, height: pixels. mtime: Unix seconds.
        sha256: hex digest of the file's bytes.
        score: cosine similarity of its embedding to the group's keeper's (1.0 for the keeper
            and its exact copies).
        same_file: the keeper's own file under another name (a symbolic or hard link: the same
            inode and ctime, links followed): removing it frees nothing, and removing the
            keeper's target would remove this one's bytes too.
    """

    path: str
    size: int
    width: int
    height: int
    mtime: float
    sha256: str
    score: float = 1.0
    same_file: bool = False

    @property
    def pixels(self) -> int:
        """``width * height``."""
        return self.width * self.height


@dataclass(frozen=True)
class DuplicatePair:
    """Two images of a group found to be the same picture: ``score`` is their cosine similarity
    (1.0 for identical bytes, which are paired by sha256, not by embedding); ``pixels`` the
    pixel score that confirmed it (:func:`~.pixels.pixel_score`, in [-1, 1]), None for
    identical bytes, without the check, or where a file could not be read."""

    a: str
    b: str
    score: float
    pixels: float | None = None


@dataclass(frozen=True)
class DuplicateGroup:
    """Images that are the same picture: a connected component of the duplicate pairs.

    Attributes:
        kind: ``"exact"`` when every image has the same bytes (sha256), else ``"near"``.
        images: the images, the suggested keeper first, then by score to it (best first), path.
        keep: the suggested keeper's path: the largest pixel count, then the oldest mtime
            (then the first path, so that it is stable).
        min_score: the group's weakest link: the lowest pair score on the strongest pairs that
            hold the group together (a maximum spanning tree); 1.0 for an exact group.
        pairs: the pairs found inside the group (each at or above the threshold), best first.
    """

    kind: Literal["exact", "near"]
    images: tuple[DuplicateImage, ...]
    keep: str
    min_score: float
    pairs: tuple[DuplicatePair, ...] = ()

    @property
    def paths(self) -> list[str]:
        """The images' paths, keeper first."""
        return [im.path for im in self.images]

    def to_dict(self) -> dict[str, Any]:
        """``{"kind", "paths", "keep", "min_score", "images": [...], "pairs": [[a, b, score, pixels], ...]}``."""
        return {
            "kind": self.kind,
            "paths": self.paths,
            "keep": self.keep,
            "min_score": self.min_score,
            "images": [
                {
                    "path": im.path,
                    "size": im.size,
                    "width": im.width,
                    "height": im.height,
                    "mtime": im.mtime,
                    "sha256": im.sha256,
                    "score": im.score,
                    "same_file": im.same_file,
                }
                for im in self.images
            ],
            "pairs": [[p.a, p.b, p.score, p.pixels] for p in self.pairs],
        }


@dataclass(frozen=True)
class DuplicateReport:
    """What :func:`find_duplicates` found.

    Attributes:
        groups: the groups, largest first, then by weakest link (strongest first), keeper path.
        images: number of images scanned (the collection, or the folder's files).
        seconds: wall time of the scan, in seconds.
        threshold: the cosine similarity used (None with ``exact_only``).
        folder: the folder scanned, or None for the whole collection.
        verified: whether near pairs were confirmed by their pixels.
        unverified: ``{path: reason}`` of files of candidate pairs that could not be read for
            the pixel check (gone, changed, unreadable): their pairs kept the embedding's decision.
    """

    groups: tuple[DuplicateGroup, ...]
    images: int
    seconds: float
    threshold: float | None
    folder: str | None = None
    verified: bool = False
    unverified: dict[str, str] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Images that are not their group's keeper (what removing the copies would save)."""
        return sum(len(g.images) - 1 for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        """``{"groups": [...], "images": N, "seconds": S, "threshold": T, "folder": F,
        "verified": V, "unverified": {path: reason}}``; paths that are not UTF-8 hold their
        bytes as surrogates (``json.dumps`` escapes them)."""
        return {
            "groups": [g.to_dict() for g in self.groups],
            "images": self.images,
            "seconds": self.seconds,
            "threshold": self.threshold,
            "folder": self.folder,
            "verified": self.verified,
            "unverified": self.unverified,
        }

    def write_csv(self, out: TextIO) -> None:
        """One row per image of a group (:data:`CSV_COLUMNS`: group number from 1, path, keep
        ``yes``/``no``, score to the keeper, ...). Open ``out`` with ``newline=""`` and
        ``errors="surrogateescape"`` so that a name that is not UTF-8 is written as its bytes."""
        writer = csv.writer(out)
        writer.writerow(CSV_COLUMNS)
        for number, group in enumerate(self.groups, 1):
            for im in group.images:
                writer.writerow(
                    [
                        number,
                        im.path,
                        "yes" if im.path == group.keep else "no",
                        f"{im.score:.6f}",
                        group.kind,
                        im.size,
                        im.width,
                        im.height,
                        im.mtime,
                        im.sha256,
                        "yes" if im.same_file else "no",
                    ]
                )

    def csv_bytes(self) -> bytes:
        """:meth:`write_csv` as bytes (UTF-8; a name that is not UTF-8 as its own bytes)."""
        buf = io.StringIO(newline="")
        self.write_csv(buf)
        return buf.getvalue().encode("utf-8", "surrogateescape")


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


def collapse(hits: list[Hit], copies: dict[str, list[str]] | None = None) -> list[Hit]:
    """``hits`` with every later hit of the same bytes (same ``sha256``) folded into the first,
    best-scored one, which carries the others' paths as ``copies``.

    Args:
        hits: search results, best first, with ``sha256`` in their metadata.
        copies: ``{sha256: paths}`` of every row with those bytes (:meth:`Store.copies`); when
            given, each kept hit's ``copies`` are all those paths but its own (also copies
            ranked below the hits searched), else the paths among ``hits``.

    Returns:
        the distinct hits, in order.
    """
    first: dict[str, int] = {}
    kept: list[Hit] = []
    found: list[list[str]] = []
    for hit in hits:
        sha = hit.metadata.get("sha256")
        if sha is None or sha not in first:
            if sha is not None:
                first[sha] = len(kept)
            kept.append(hit)
            found.append([])
        else:
            found[first[sha]].append(hit.path)
    out = []
    for hit, seen in zip(kept, found):
        pool = copies.get(hit.metadata.get("sha256"), seen) if copies is not None else seen
        others = sorted(p for p in pool if p != hit.path)
        out.append(replace(hit, copies=tuple(others)))
    return out
