"""Retrieval quality on a labelled image set, computed the way the field computes it: the
datasets and the figures (numpy only; :func:`vitsearch.indexer.evaluate` indexes a dataset and
searches it, training computes the same figures per epoch).

Two dataset layouts (:func:`load_dataset`):

- **groundtruth**: ``DATASET/images/`` and ``DATASET/groundtruth.json`` mapping a query file to
  the list of its relevant files (names relative to ``images/``), as in INRIA Holidays (Jegou,
  Douze, Schmid 2008);
- **classes**: one subfolder per class; every image is a query and the other images of its class
  are its relevant set.

Every query's ranking leaves the query out; the figures:

- **mAP**: mean over queries of non-interpolated average precision (the mean, over a query's
  relevant items, of the precision at each one's rank; a relevant item not retrieved counts 0);
- **recall@k**: mean over queries of ``|relevant in top k| / |relevant|``;
- **precision@k**: mean over queries of ``|relevant in top k| / k``;
- **ANN recall@10**: mean overlap of the index's top-10 with the exact (brute-force cosine)
  top-10 over the same stored vectors: what the HNSW index costs in quality.

"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BadQueryError
from .images import is_image_file


@dataclass
class Dataset:
    """Images to index and queries with their relevant sets (absolute paths).

    Attributes:
        root: the folder that is indexed.
        kind: ``"groundtruth"`` or ``"classes"``.
        queries: query path to the set of its relevant paths (the query itself excluded).
    """

    root: Path
    kind: str
    queries: dict[str, set[str]]

    def without(self, paths: Iterable[str]) -> Dataset:
        """The dataset with ``paths`` left out, as queries and from every relevant set (files
        that could not be indexed: they can be neither asked nor found)."""
        gone = set(paths)
        return Dataset(self.root, self.kind, {q: rel - gone for q, rel in self.queries.items() if q not in gone})


def load_dataset(path: str | os.PathLike) -> Dataset:
    """Read a dataset folder in either layout.

    Raises:
        BadQueryError: neither layout, or a groundtruth naming files that do not exist.
    """
    path = Path(os.path.abspath(path))  # as the indexer names files: ".." collapsed, links kept
    truth = path / "groundtruth.json"
    if truth.is_file():
        images = path / "images"
        try:
            pairs = json.loads(truth.read_text())
        except ValueError as exc:
            raise BadQueryError(f"{truth}: not valid JSON ({exc})") from None
        if not images.is_dir() or not isinstance(pairs, dict):
            raise BadQueryError(
                f"{path}: a groundtruth dataset needs images/ and groundtruth.json "
                f"mapping each query file to a list of relevant files"
            )
        queries = {str(images / q): {str(images / r) for r in rel} - {str(images / q)} for q, rel in pairs.items()}
        missing = [p for q, rel in queries.items() for p in (q, *rel) if not os.path.exists(p)]
        if missing:
            raise BadQueryError(f"{truth} names {len(missing)} files not in {images}, e.g. {missing[0]}")
        return Dataset(images, "groundtruth", queries)
    classes = class_folders(path)
    if len(classes) < 2:
        raise BadQueryError(
            f"{path}: expected groundtruth.json and images/, or one subfolder of "
            f"images per class (found {len(classes)} class folders with images)"
        )
    queries = {q: set(files) - {q} for files in classes.values() for q in files}
    return Dataset(path, "classes", queries)


def class_folders(root: Path) -> dict[Path, list[str]]:
    """The subfolders of ``root`` that hold image files (searched recursively), sorted by name,
    each with its image paths, sorted. As the indexer reads a folder (:func:`vitsearch.indexer.scan.scan`),
    links to files are followed and links to folders are not: a link such as ``all -> .`` or
    ``c2link -> c2`` is neither a class nor a second copy of one."""
    found = {
        c: sorted(str(p) for p in c.rglob("*") if is_image_file(p) and p.is_file())
        for c in sorted(root.iterdir())
        if c.is_dir() and not c.is_symlink()
    }
    return {c: files for c, files in found.items() if files}


def average_precision(ranking: Sequence[str], relevant: set[str]) -> float:
    """Non-interpolated AP of one ranking; 0 for an empty relevant set."""
    if not relevant:
        return 0.0
    hits, total = 0, 0.0
    for rank, item in enumerate(ranking, 1):
        if item in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


@dataclass
class RankingFigures:
    """mAP, recall@k and precision@k of a set of rankings (module docstring), all in [0, 1]."""

    map: float
    recall: dict[int, float]
    precision: dict[int, float]


def ranking_figures(
    rankings: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], ks: Sequence[int]
) -> RankingFigures:
    """The retrieval figures of the module docstring from each query's ranking (best first, the
    query itself left out) and its relevant set; ``rankings`` and ``relevant`` have the same keys.

    A query with an empty relevant set counts 0 in mAP and recall. The one definition used by
    ``vitsearch eval`` (:func:`vitsearch.indexer.evaluate`) and by training (:mod:`vitsearch.train`).
    """
    aps, recalls, precisions = {}, {k: [] for k in ks}, {k: [] for k in ks}
    for query, ranking in rankings.items():
        rel = relevant[query]
        aps[query] = average_precision(ranking, rel)
        for k in ks:
            found = len(rel.intersection(ranking[:k]))
            recalls[k].append(found / len(rel) if rel else 0.0)
            precisions[k].append(found / k)
    return RankingFigures(
        map=float(np.mean(list(aps.values()))),
        recall={k: float(np.mean(v)) for k, v in recalls.items()},
        precision={k: float(np.mean(v)) for k, v in precisions.items()},
    )


def exact_rankings(
    matrix: np.ndarray,
    names: Sequence[str],
    queries: np.ndarray,
    leave_out: Sequence[str | None] | None = None,
    depth: int | None = None,
    chunk_bytes: int = 256 * 2**20,
) -> list[list[str]]:
    """For each query, ``names`` ordered by cosine similarity to it, best first (exact, brute
    force: the reference any ANN index is measured against), its ``leave_out`` name removed.

    Ties keep the order of ``names``. The similarities are computed in chunks of queries of at
    most ``chunk_bytes`` (``(q, N) float32``), so memory stays bounded at any collection size;
    where ``depth`` is below N, only the top ``depth + 1`` are sorted (``argpartition``).

    Args:
        matrix: ``(N, D) float32`` L2-normalised vectors, row i being ``names[i]``.
        queries: ``(Q, D) float32`` L2-normalised query vectors.
        leave_out: Q names (or None) each left out of its own ranking; default none.
        depth: ranking length (default N, less one where a name is left out).

    Returns:
        Q lists of at most ``depth`` names.
    """
    queries = np.atleast_2d(np.asarray(queries, np.float32))
    n = len(names)
    leave_out = list(leave_out) if leave_out is not None else [None] * len(queries)
    depth = n if depth is None else max(0, min(depth, n))
    keep = min(n, depth + 1)  # one spare for the name left out
    step = max(1, chunk_bytes // max(1, 4 * n))
    out: list[list[str]] = []
    for start in range(0, len(queries), step):
        scores = queries[start : start + step] @ np.asarray(matrix, np.float32).T  # (q, N)
        for row, left in zip(scores, leave_out[start : start + step]):
            if keep < n:
                top = np.argpartition(-row, keep - 1)[:keep]
                order = top[np.lexsort((top, -row[top]))]  # by score, ties by position
            else:
                order = np.argsort(-row, kind="stable")
            out.append([names[i] for i in order if names[i] != left][:depth])
    return out
