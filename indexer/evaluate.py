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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vitsearch.search.client import SearchClient
from vitsearch.search.config import MAX_K, Settings
from vitsearch.search.encoder import batch_size_for, encoder_for
from vitsearch.search.errors import BadQueryError
from vitsearch.search.metrics import Dataset, exact_rankings, load_dataset, ranking_figures
from vitsearch.search.store import Store

from .runner import Progress, index_folder


#: Queries whose top-10 through Milvus is compared with the exact top-10 (ANN recall@10): a
#: fixed-seed sample, every stored query where there are fewer. 200 queries measure a recall near
#: 1 to about +-0.01 (binomial standard error over 2,000 neighbours).
ANN_SAMPLE = 200


@dataclass
class EvalResult:
    """Retrieval figures of :mod:`vitsearch.search.metrics` (all in [0, 1]) and the time they took.

    Attributes:
        queries: queries ranked.
        map: mean average precision. recall, precision: by k.
        ann_recall_at_10: mean overlap of the index's top-10 (a search through Milvus, as
            ``vitsearch search -k 10`` does it) with the exact top-10, over ``ann_queries`` queries.
        ann_queries: how many queries that sample holds.
        search_seconds: wall time of the ranking: reading the stored vectors, the exact ranking
            of every query, the ANN sample (``ann_seconds`` of it).
    """

    queries: int
    map: float
    recall: dict[int, float]
    precision: dict[int, float]
    ann_recall_at_10: float
    ann_queries: int
    search_seconds: float
    ann_seconds: float

    def to_dict(self) -> dict:
        """JSON-ready; ``k`` keys become strings."""
        return {**asdict(self), "recall": {str(k): v for k, v in self.recall.items()},
                "precision": {str(k): v for k, v in self.precision.items()}}


def evaluate_collection(dataset: Dataset, client: SearchClient, ks: Sequence[int] = (1, 5, 10), *,
                        ann_sample: int = ANN_SAMPLE, seed: int = 0) -> EvalResult:
    """Rank every query of ``dataset`` against ``client``'s collection (which must hold the
    dataset's images; other rows act as distractors) and compute mAP, recall@k, precision@k, and
    the index's recall@10 on a sample of the queries.

    The rankings are exact: the collection's stored vectors are read once (``(N, D) float32``, held
    in memory) and ranked by cosine in NumPy
    (:func:`~vitsearch.search.metrics.exact_rankings`), a query that is indexed by its stored
    vector and left out of its own ranking, any other embedded with the collection's encoder.
    ``ann_sample`` indexed queries (chosen with ``seed``) are also searched through Milvus with
    k = 10, as a user's search runs, to measure what the index costs (ANN recall@10).

    Raises:
        BadQueryError: the collection holds none of the dataset's images, or a k is not positive.
        BadImageError: a query that is not indexed cannot be decoded.
    """
    if not ks or min(ks) < 1:
        raise BadQueryError(f"k values must be positive integers, got {list(ks)}")
    started = time.perf_counter()
    names, matrix = client.store.vectors()
    row = {p: i for i, p in enumerate(names)}
    stored = [q for q in dataset.queries if q in row]
    if not stored:
        raise BadQueryError(f"the collection holds none of the images under {dataset.root}: index them first")
    others = [q for q in dataset.queries if q not in row]
    depth = min(len(names) - 1, MAX_K) or 1  # the whole ranking, the query left out
    rankings = dict(zip(stored, exact_rankings(matrix, names, matrix[[row[q] for q in stored]], stored, depth)))
    if others:
        rankings.update(zip(others, exact_rankings(matrix, names, client.encoder.embed(others),
                                                   depth=min(len(names), MAX_K))))
    rankings = {q: rankings[q] for q in dataset.queries}
    figures = ranking_figures(rankings, dataset.queries, ks)
    ann_started = time.perf_counter()
    rng = np.random.default_rng(seed)
    sample = [stored[i] for i in sorted(rng.choice(len(stored), min(ann_sample, len(stored)), replace=False))]
    ann = []
    for start in range(0, len(sample), 100):
        chunk = sample[start:start + 100]
        found = client.store.search(matrix[[row[q] for q in chunk]], k=min(11, len(names)), fields=())
        for query, hits in zip(chunk, found):
            exact, index = rankings[query][:10], [h.path for h in hits if h.path != query][:10]
            ann.append(len(set(exact) & set(index)) / max(1, len(exact)))
    now = time.perf_counter()
    return EvalResult(queries=len(rankings), map=figures.map, recall=figures.recall, precision=figures.precision,
                      ann_recall_at_10=float(np.mean(ann)) if ann else float("nan"), ann_queries=len(ann),
                      search_seconds=now - started, ann_seconds=now - ann_started)


@dataclass
class EvalReport:
    """What :func:`evaluate` measured, with what; :meth:`to_dict` is the JSON of ``vitsearch eval
    --json`` (documented in the README)."""

    dataset: str
    layout: str
    images: int
    failed: int
    model: str
    pooling: str
    dim: int
    image_size: str
    runtime: str
    k: list[int]
    result: EvalResult
    images_per_s: float
    seconds: dict[str, float]
    uri: str | None
    collection: str | None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "result"}
        figures = self.result.to_dict()
        del figures["search_seconds"], figures["ann_seconds"]
        return {**out, "queries": self.result.queries, **figures}


def evaluate(dataset: str | os.PathLike, settings: Settings | None = None, ks: Sequence[int] = (1, 5, 10), *,
             uri: str | None = None, collection: str | None = None, progress: Progress | None = None) -> EvalReport:
    """Index a labelled set (:func:`~vitsearch.search.metrics.load_dataset`) and measure retrieval on it.

    Without ``uri`` the images go to a temporary Milvus Lite database (collection ``eval``, or
    ``collection``), deleted afterwards, whatever ``VITSEARCH_URI`` says; with one, into its
    ``collection`` (default: the settings'), incrementally (a collection already holding the set
    is not embedded again). The encoder is chosen as for indexing
    (:func:`~vitsearch.search.encoder.encoder_for`); batch size and workers come from ``settings``.

    Raises:
        BadQueryError: not a dataset (neither layout), or a k is not positive.
        VitsearchError: a model, Milvus or collection error (see :func:`~.runner.index_folder`).
    """
    settings = settings or Settings()
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise BadQueryError(f"k values must be positive integers, got {list(ks)}")
    started = time.perf_counter()
    data = load_dataset(dataset)
    scratch = None if uri else tempfile.mkdtemp(prefix="vitsearch-eval-")
    settings = settings.model_copy(update={"uri": uri or str(Path(scratch) / "eval.db"),
                                           "collection": collection or ("eval" if scratch else settings.collection)})
    store = Store.from_settings(settings)
    try:
        loading = time.perf_counter()
        encoder = encoder_for(store.recorded_encoder(), settings, store.where)
        model_seconds = time.perf_counter() - loading
        report = index_folder(str(data.root), encoder=encoder, store=store,
                              batch_size=settings.batch_size or batch_size_for(encoder), workers=settings.workers,
                              progress=progress)
        with SearchClient(settings=settings, encoder=encoder) as client:
            result = evaluate_collection(data, client, ks)
    finally:
        store.close(release=bool(scratch))
        if scratch:
            shutil.rmtree(scratch, ignore_errors=True)
    info = encoder.info
    return EvalReport(
        dataset=str(dataset), layout=data.kind, images=report.indexed + report.unchanged, failed=report.failed,
        model=info.model, pooling=info.pooling, dim=info.dim, image_size=info.size_text, runtime=info.runtime, k=ks, result=result,
        images_per_s=round(report.images_per_s, 2),
        seconds={"model": round(model_seconds, 2), "index": round(report.seconds, 2), "search": round(result.search_seconds, 2),
                 "ann": round(result.ann_seconds, 2),
                 "total": round(time.perf_counter() - started, 2)},
        uri=None if scratch else settings.uri, collection=None if scratch else settings.collection)
