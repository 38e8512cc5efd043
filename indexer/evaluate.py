"""Measuring retrieval quality end to end (``vitsearch eval``): a labelled set is indexed with the
normal indexer, the collection's vectors are read once and every query is ranked exactly over
them in NumPy (its stored vector when it is indexed, else its image embedded, the query left out
of its own ranking), and a sample of queries is searched through Milvus to compare the index's
top-10 with the exact one. The figures are :mod:`vitsearch.search.metrics`'.

Rankings are ``min(N - 1, MAX_K)`` deep (``MAX_K`` 16384, Milvus's top-k limit, kept so that
figures stay comparable with a search through the index).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vitsearch.search import ranking
from vitsearch.search.client import SearchClient
from vitsearch.search.config import MAX_K, Settings
from vitsearch.search.errors import BadQueryError
from vitsearch.search.images import is_image_file
from vitsearch.search.metrics import Dataset, exact_rankings, load_dataset, ranking_figures
from vitsearch.search.whitening import Space

from .job import IndexJob, Progress
from .runner import LocalExecutor

#: Queries whose top-10 through Milvus is compared with the exact top-10 (ANN recall@10): a
#: fixed-seed sample, every stored query where there are fewer. 200 queries measure a recall near
#: 1 to about +-0.01 (binomial standard error over 2,000 neighbours).
ANN_SAMPLE = 200


@dataclass
class EvalResult:
    """Retrieval figures of :mod:`vitsearch.search.metrics` (all in [0, 1]) and the time they took.

    Attributes:
        queries: queries ranked.
        map: mean average precision. recall, precision: by k. p_at_10: precision@10.
        ann_recall_at_10: mean overlap of the index's top-10 (a search through Milvus, as
            ``vitsearch search -k 10`` does it) with the exact top-10, over ``ann_queries`` queries.
        ann_queries: how many queries that sample holds.
        match_precision: of the queries whose top hit is labelled a close match
            (:attr:`~vitsearch.search.client.Hit.match`), the share whose top hit is relevant.
        match_recall: of the queries whose top hit is relevant, the share labelled a close match.
        unrelated: queries from ``--unrelated`` (images that match nothing in the set).
        unrelated_rejected: the share of them answered "no close match" (no hit of their top 10
            labelled); None without unrelated queries.
        search_seconds: wall time of the ranking: reading the stored vectors, the exact ranking
            of every query, the ANN sample (``ann_seconds`` of it).
    """

    queries: int
    map: float
    recall: dict[int, float]
    precision: dict[int, float]
    p_at_10: float
    ann_recall_at_10: float
    ann_queries: int
    match_precision: float
    match_recall: float
    unrelated: int
    unrelated_rejected: float | None
    search_seconds: float
    ann_seconds: float

    def to_dict(self) -> dict:
        """JSON-ready; ``k`` keys become strings."""
        return {
            **asdict(self),
            "recall": {str(k): v for k, v in self.recall.items()},
            "precision": {str(k): v for k, v in self.precision.items()},
        }


def evaluate_collection(
    dataset: Dataset,
    client: SearchClient,
    ks: Sequence[int] = (1, 5, 10),
    *,
    expand: int = 0,
    unrelated: Sequence[str] = (),
    ann_sample: int = ANN_SAMPLE,
    seed: int = 0,
) -> EvalResult:
    """Rank every query of ``dataset`` against ``client``'s collection (which must hold the
    dataset's images; other rows act as distractors) and compute mAP, recall@k, precision@k, the
    close-match label's precision and recall, and the index's recall@10 on a sample of the queries.

    The rankings are exact, in the collection's space (:attr:`SearchClient.space`: whitened or
    raw): the stored vectors are read once (``(N, D) float32``, held in memory) and ranked by
    cosine in NumPy (:func:`~vitsearch.search.metrics.exact_rankings`), a query that is indexed
    by its stored vector and left out of its own ranking, any other embedded with the
    collection's encoder; with ``expand``, each query is first expanded with its ``expand``
    nearest (:func:`~vitsearch.search.ranking.expand`, itself left out), as a search does. Each
    query's top 10 are labelled as a search labels them (:meth:`~vitsearch.search.whitening.Space.is_match`).
    ``unrelated`` images (matching nothing in the set) are embedded and searched the same way,
    to count how many are answered "no close match". ``ann_sample`` indexed queries (chosen with
    ``seed``) are also searched through Milvus with k = 10, as a user's search runs, to measure
    what the index costs (ANN recall@10).

    Raises:
        BadQueryError: the collection holds none of the dataset's images, or a k is not positive.
        BadImageError: a query that is not indexed, or an unrelated image, cannot be decoded.
    """
    if not ks or min(ks) < 1:
        raise BadQueryError(f"k values must be positive integers, got {list(ks)}")
    started = time.perf_counter()
    space = client.space
    names, matrix = client.store.vectors()
    row = {p: i for i, p in enumerate(names)}
    stored = [q for q in dataset.queries if q in row]
    if not stored:
        raise BadQueryError(f"the collection holds none of the images under {dataset.root}: index them first")
    others = [q for q in dataset.queries if q not in row]
    order = stored + others
    vectors = matrix[[row[q] for q in stored]]
    if others:
        vectors = np.concatenate([vectors, space.to_search(client.encoder.embed(others))])
    leave_out = [*stored, *[None] * len(others)]
    raw = space.to_raw(matrix) if space.whitened else matrix
    depth = min(len(names) - 1, MAX_K) or 1  # the whole ranking, the query left out
    queries = _expanded(matrix, vectors, leave_out, expand)
    rankings = dict(zip(order, exact_rankings(matrix, names, queries, leave_out, depth)))
    rankings = {q: rankings[q] for q in dataset.queries}
    figures = ranking_figures(rankings, dataset.queries, sorted({*ks, 10}))
    first = {q: rankings[q][0] for q in order if rankings[q]}
    labelled = _labels(space, matrix, raw, row, vectors, order, {q: [first[q]] for q in first})
    matched = [q for q in first if labelled[q][0]]
    relevant_top = [q for q in first if first[q] in dataset.queries[q]]
    rejected = None
    if unrelated:
        u = space.to_search(client.encoder.embed(list(unrelated)))
        u_expanded = _expanded(matrix, u, [None] * len(u), expand)
        top = exact_rankings(matrix, names, u_expanded, depth=10)
        u_labels = _labels(space, matrix, raw, row, u, list(range(len(u))), dict(enumerate(top)))
        rejected = float(np.mean([not any(v) for v in u_labels.values()]))
    ann_started = time.perf_counter()
    rng = np.random.default_rng(seed)
    sample = [stored[i] for i in sorted(rng.choice(len(stored), min(ann_sample, len(stored)), replace=False))]
    ann = []
    for start in range(0, len(sample), 100):
        chunk = sample[start : start + 100]
        found = client.store.search(matrix[[row[q] for q in chunk]], k=min(11, len(names)), fields=())
        for query, hits in zip(chunk, found):
            exact = exact_rankings(matrix, names, matrix[[row[query]]], [query], 10)[0]
            index = [h.path for h in hits if h.path != query][:10]
            ann.append(len(set(exact) & set(index)) / max(1, len(exact)))
    now = time.perf_counter()
    return EvalResult(
        queries=len(rankings),
        map=figures.map,
        recall={k: figures.recall[k] for k in ks},
        precision={k: figures.precision[k] for k in ks},
        p_at_10=figures.precision[10],
        ann_recall_at_10=float(np.mean(ann)) if ann else float("nan"),
        ann_queries=len(ann),
        match_precision=_share([q for q in matched if q in relevant_top], matched),
        match_recall=_share([q for q in relevant_top if q in matched], relevant_top),
        unrelated=len(unrelated),
        unrelated_rejected=rejected,
        search_seconds=now - started,
        ann_seconds=now - ann_started,
    )


def _share(part: Sequence, whole: Sequence) -> float:
    return len(part) / len(whole) if whole else float("nan")


def _expanded(
    matrix: np.ndarray,
    queries: np.ndarray,
    leave_out: Sequence[str | None],
    expand: int,
    names: Sequence[str] | None = None,
) -> np.ndarray:
    """Each query expanded with its ``expand`` nearest stored vectors (αQE, as a search does;
    the stored query itself left out), or the queries as they are."""
    if not expand:
        return queries
    out = np.empty_like(queries)
    for i, (q, left) in enumerate(zip(queries, leave_out)):
        scores = matrix @ q
        if left is not None:
            scores[np.argmax(scores)] = -np.inf  # its own stored vector (score 1)
        top = np.argsort(-scores)[:expand]
        out[i] = ranking.expand(q, matrix[top], scores[top])
    return out


def _labels(
    space: Space,
    matrix: np.ndarray,
    raw: np.ndarray,
    row: dict[str, int],
    queries: np.ndarray,
    keys: Sequence,
    hits: dict,
) -> dict:
    """For each query (``keys[i]`` is ``queries[i]``'s key in ``hits``), whether each of its
    ``hits`` (paths) is a close match, as a search labels it."""
    out = {}
    raw_queries = space.to_raw(queries) if space.whitened else queries
    for key, q, rq in zip(keys, queries, raw_queries):
        if key not in hits:
            continue
        idx = [row[p] for p in hits[key]]
        out[key] = [space.is_match(float(matrix[i] @ q), float(raw[i] @ rq)) for i in idx]
    return out


@dataclass
class EvalReport:
    """What :func:`evaluate` measured, with what; :meth:`to_dict` is the JSON of ``vitsearch eval
    --json`` (docs/guides/eval.md). ``whitening``: ``"whitened"`` or ``"raw"``, the space
    the collection searched in; ``expand``: query expansion's neighbours (0: none)."""

    dataset: str
    layout: str
    images: int
    failed: int
    model: str
    pooling: str
    dim: int
    image_size: str
    runtime: str
    whitening: str
    expand: int
    k: list[int]
    result: EvalResult
    images_per_s: float
    seconds: dict[str, float]
    uri: str | None
    collection: str | None

    def to_dict(self) -> dict[str, Any]:
        """The report as ``vitsearch eval --json`` prints it: the result's figures at the top
        level (``k`` keys as strings), timings under ``seconds``."""
        out = {k: v for k, v in asdict(self).items() if k != "result"}
        figures = self.result.to_dict()
        del figures["search_seconds"], figures["ann_seconds"]
        return {**out, "queries": self.result.queries, **figures}


def evaluate(
    dataset: str | os.PathLike,
    settings: Settings | None = None,
    ks: Sequence[int] = (1, 5, 10),
    *,
    uri: str | None = None,
    collection: str | None = None,
    progress: Progress | None = None,
    whitening: str | None = None,
    expand: int = 0,
    unrelated: str | os.PathLike | None = None,
) -> EvalReport:
    """Index a labelled set (:func:`~vitsearch.search.metrics.load_dataset`) and measure retrieval on it.

    Without ``uri`` the images go to a temporary Milvus Lite database (collection ``eval``, or
    ``collection``), deleted afterwards, whatever ``VITSEARCH_URI`` says; with one, into its
    ``collection`` (default: the settings'), incrementally (a collection already holding the set
    is not embedded again). The encoder is chosen as for indexing
    (:func:`~vitsearch.search.encoder.encoder_for`); batch size and workers come from ``settings``.
    The collection learns its whitening as any indexed collection does (``whitening`` ``"none"``:
    raw embeddings). A file that cannot be read or decoded is counted in ``failed`` and left out
    of the queries and of every relevant set.

    Args:
        expand: query expansion with this many neighbours (0: none).
        unrelated: a folder of images that match nothing in the set (searched recursively),
            for the share of queries answered "no close match".

    Raises:
        BadQueryError: not a dataset (neither layout), a k is not positive, or ``unrelated`` holds
            no images.
        VitsearchError: a model, Milvus or collection error (see :func:`~.runner.index_folder`).
    """
    settings = settings or Settings()
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise BadQueryError(f"k values must be positive integers, got {list(ks)}")
    started = time.perf_counter()
    data = load_dataset(dataset)
    others = unrelated_images(unrelated) if unrelated is not None else []
    scratch = None if uri else tempfile.mkdtemp(prefix="vitsearch-eval-")
    settings = settings.model_copy(
        update={
            "uri": uri or str(Path(scratch) / "eval.db"),
            "collection": collection or ("eval" if scratch else settings.collection),
        }
    )
    try:
        executor = LocalExecutor(settings.workers)
        with IndexJob.open(settings, executor, progress=progress, whitening=whitening, release=bool(scratch)) as job:
            report = job.run(str(data.root))
            data = data.without(path for path, _ in report.failures)  # counted in `failed`, never asked
            with SearchClient(settings=settings, encoder=job.encoder) as client:
                result = evaluate_collection(data, client, ks, expand=expand, unrelated=others)
                space = "whitened" if client.space.whitened else "raw"
    finally:
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    info = job.encoder.info
    return EvalReport(
        dataset=str(dataset),
        layout=data.kind,
        images=report.indexed + report.unchanged,
        failed=report.failed,
        model=info.model,
        pooling=info.pooling,
        dim=info.dim,
        image_size=info.size_text,
        runtime=info.runtime,
        whitening=space,
        expand=expand,
        k=ks,
        result=result,
        images_per_s=round(report.images_per_s, 2),
        seconds={
            "model": round(job.model_seconds, 2),
            "index": round(report.seconds, 2),
            "search": round(result.search_seconds, 2),
            "ann": round(result.ann_seconds, 2),
            "total": round(time.perf_counter() - started, 2),
        },
        uri=None if scratch else settings.uri,
        collection=None if scratch else settings.collection,
    )


def unrelated_images(folder: str | os.PathLike) -> list[str]:
    """The image files under ``folder`` (recursively, links to files followed, sorted).

    Raises:
        BadQueryError: not a folder, or no image file in it.
    """
    root = Path(os.path.abspath(folder))
    if not root.is_dir():
        raise BadQueryError(f"{root}: not a folder of unrelated images")
    files = sorted(str(p) for p in root.rglob("*") if is_image_file(p) and p.is_file())
    if not files:
        raise BadQueryError(f"{root}: no image files (unrelated queries)")
    return files
