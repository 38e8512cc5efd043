"""Retrieval quality on real data: INRIA Holidays (dev part, 405 photos, 150 queries) indexed by
the indexer with the pretrained DINOv2 and queried through SearchClient, mAP computed as the field
does (Jegou et al. 2008): the query is left out of its own ranking, AP averaged over queries."""
from __future__ import annotations

import json

import numpy as np

from vitsearch.indexer import index_folder
from vitsearch.search import SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.store import Store

from conftest import shared_path


def average_precision(ranking: list[str], relevant: set[str]) -> float:
    """Non-interpolated AP: mean over the relevant items of precision at their rank."""
    hits, total = 0, 0.0
    for rank, name in enumerate(ranking, 1):
        if name in relevant:
            hits += 1
            total += hits / rank
    return total / len(relevant)


def test_holidays_map(real_model, db_uri):
    root = shared_path("data", "holidays-dev")
    truth = json.loads((root / "groundtruth.json").read_text())
    images = root / "images"
    with Store(db_uri, "images") as store:
        report = index_folder(str(images), encoder=Encoder.load(str(real_model)), store=store,
                              batch_size=32, workers=2)
    n = report.indexed
    assert n == 405 and report.failed == 0

    aps, exact_aps = [], []
    with SearchClient(uri=db_uri) as client:
        vectors = {r["path"]: np.asarray(r["vector"]) for r in client.store.iter_rows(["vector"])}
        names = sorted(vectors)
        matrix = np.stack([vectors[p] for p in names])
        for query, relevant in truth.items():
            qpath = str(images / query)
            hits = client.search(qpath, k=n)
            ranking = [h.path.rsplit("/", 1)[1] for h in hits if h.path != qpath]
            aps.append(average_precision(ranking, set(relevant)))
            # Exact reference from the stored vectors: the index must not cost quality here.
            order = np.argsort(-(matrix @ vectors[qpath]))
            exact = [names[i].rsplit("/", 1)[1] for i in order if names[i] != qpath]
            exact_aps.append(average_precision(exact, set(relevant)))
    m, exact_m = float(np.mean(aps)), float(np.mean(exact_aps))
    print(f"Holidays-dev mAP {m:.4f} (exact search {exact_m:.4f}) over {len(aps)} queries")
    assert len(aps) == 150
    assert abs(m - exact_m) < 0.005
    assert m >= 0.75


def test_average_precision_reference():
    assert average_precision(["a", "x", "b"], {"a", "b"}) == (1 + 2 / 3) / 2
    assert average_precision(["x", "y"], {"a"}) == 0.0
