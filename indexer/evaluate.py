"""Measuring retrieval quality end to end (``vitsearch eval``): a labelled set is indexed with the
normal indexer, every query is searched through :class:`~vitsearch.search.client.SearchClient`
(its stored vector when it is indexed, else by image, the query left out of its own ranking),
and the index's top-10 is compared with exact search over the same vectors. The figures are
:mod:`vitsearch.search.metrics`'.

Rankings are ``min(N - 1, MAX_K)`` deep (``MAX_K`` 16384 is Milvus's top-k limit).
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
from vitsearch.search.metrics import Dataset, exact_ranking, load_dataset, ranking_figures
from vitsearch.search.store import Store

from .runner import Progress, index_folder


@dataclass
class EvalResult:
    """Retrieval figures of :mod:`vitsearch.search.metrics` (all in [0, 1]) and the search time.

    Attributes:
        queries: queries searched.
        map: mean average precision. recall, precision: by k.
        ann_recall_at_10: mean overlap of the index's top-10 with the exact top-10.
        search_seconds: wall time of the searches.
    """

    queries: int
    map: float
    recall: dict[int, float]
    precision: dict[int, float]
    ann_recall_at_10: float
    search_seconds: float

    def to_dict(self) -> dict:
        """JSON-ready; ``k`` keys become strings."""
        return {**asdict(self), "recall": {str(k): v for k, v in self.recall.items()},
                "precision": {str(k): v for k, v in self.precision.items()}}


def evaluate_collection(dataset: Dataset, client: SearchClient, ks: Sequence[int] = (1, 5, 10)) -> EvalResult:
    """Query every query of ``dataset`` against ``client``'s collection (which must hold the
    dataset's images; other rows act as distractors) and compute mAP, recall@k, precision@k and
    the index's recall@10 against exact search over all the collection's stored vectors (held in
    memory: ``(N, D) float32``).

    Raises:
        BadQueryError: the collection holds none of the dataset's images, or a k is not positive.
    """
    if not ks or min(ks) < 1:
        raise BadQueryError(f"k values must be positive integers, got {list(ks)}")
    vectors = {r["path"]: np.asarray(r["vector"], np.float32) for r in client.store.iter_rows(["vector"])}
    if not any(q in vectors for q in dataset.queries):
        raise BadQueryError(f"the collection holds none of the images under {dataset.root}: index them first")
    names = sorted(vectors)
    matrix = np.stack([vectors[p] for p in names])
    depth = min(len(names) - 1, MAX_K) or 1  # the whole ranking, the query left out
    rankings, ann = {}, []
    started = time.perf_counter()
    for query in dataset.queries:
        if query in vectors:
            hits = client.search_similar(query, k=depth)  # its stored vector; itself left out
        else:
            hits = [h for h in client.search(query, k=min(depth + 1, MAX_K)) if h.path != query]
        rankings[query] = ranking = [h.path for h in hits]
        if query in vectors:  # the exact top-10 over the same vectors, the query left out
            exact = exact_ranking(matrix, names, vectors[query], leave_out=query)[:10]
            ann.append(len(set(exact) & set(ranking[:10])) / max(1, min(10, len(exact))))
    seconds = time.perf_counter() - started
    figures = ranking_figures(rankings, dataset.queries, ks)
    return EvalResult(queries=len(rankings), map=figures.map, recall=figures.recall, precision=figures.precision,
                      ann_recall_at_10=float(np.mean(ann)) if ann else float("nan"), search_seconds=seconds)


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
    k: list[int]
    result: EvalResult
    images_per_s: float
    seconds: dict[str, float]
    uri: str | None
    collection: str | None

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "result"}
        figures = self.result.to_dict()
        del figures["search_seconds"]
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
        encoder = encoder_for(store.recorded_encoder(), settings, store.where)
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
        model=info.model, pooling=info.pooling, dim=info.dim, image_size=info.size_text, k=ks, result=result,
        images_per_s=round(report.images_per_s, 2),
        seconds={"index": round(report.seconds, 2), "search": round(result.search_seconds, 2),
                 "total": round(time.perf_counter() - started, 2)},
        uri=None if scratch else settings.uri, collection=None if scratch else settings.collection)
