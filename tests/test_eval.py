"""Contract of `vitsearch eval`, indexer/evaluate.py and search/metrics.py: on INRIA Holidays (dev) with the real
DINOv2, CLS mAP within 0.005 of a brute-force numpy reference over the same embeddings, and at
least 0.75; on class folders made here from real photos, mAP and recall@k equal a reference
implementation and recall@k never falls as k grows; the JSON is stable; bad datasets are clear."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import shared_path, stored_vectors

from vitsearch.indexer import index_folder
from vitsearch.indexer.evaluate import evaluate, evaluate_collection
from vitsearch.search import SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.metrics import load_dataset
from vitsearch.search.store import Store

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]
JSON_KEYS = {
    "dataset",
    "layout",
    "images",
    "failed",
    "queries",
    "model",
    "pooling",
    "dim",
    "image_size",
    "runtime",
    "k",
    "map",
    "recall",
    "precision",
    "ann_recall_at_10",
    "ann_queries",
    "images_per_s",
    "seconds",
    "uri",
    "collection",
    "whitening",
    "expand",
    "p_at_10",
    "match_precision",
    "match_recall",
    "unrelated",
    "unrelated_rejected",
}


def reference(vectors: dict[str, np.ndarray], queries: dict[str, set[str]], ks) -> tuple[float, dict, dict]:
    """Exact cosine ranking of all stored vectors, the query left out: (mAP, recall@k, precision@k),
    written independently of search/metrics.py (AP by cumulative sums)."""
    names = sorted(vectors)
    matrix = np.stack([vectors[n] for n in names])
    aps, rec, prec = [], {k: [] for k in ks}, {k: [] for k in ks}
    for q, relevant in queries.items():
        order = [names[i] for i in np.argsort(-(matrix @ vectors[q]), kind="stable") if names[i] != q]
        hit = np.array([n in relevant for n in order], dtype=float)
        aps.append(float((np.cumsum(hit) / np.arange(1, len(hit) + 1) * hit).sum() / len(relevant)))
        for k in ks:
            rec[k].append(hit[:k].sum() / len(relevant))
            prec[k].append(hit[:k].sum() / k)
    return (
        float(np.mean(aps)),
        {k: float(np.mean(v)) for k, v in rec.items()},
        {k: float(np.mean(v)) for k, v in prec.items()},
    )


@pytest.mark.slow
def test_holidays_map_matches_a_brute_force_reference(real_model, tmp_path):
    root = shared_path("data", "holidays-dev")
    uri = str(tmp_path / "eval.db")
    out = subprocess.run(
        [*VITSEARCH, "eval", root, "--model", real_model, "--uri", uri, "--collection", "h", "--json"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result) == JSON_KEYS
    assert (result["layout"], result["images"], result["queries"], result["pooling"]) == (
        "groundtruth",
        405,
        150,
        "cls",
    )
    ref_map, ref_recall, ref_precision = reference(stored_vectors(uri, "h"), load_dataset(root).queries, (1, 5, 10))
    print(
        f"Holidays-dev CLS mAP {result['map']:.4f} (brute force {ref_map:.4f}), recall {result['recall']}, "
        f"ANN recall@10 {result['ann_recall_at_10']:.4f}"
    )
    assert abs(result["map"] - ref_map) <= 0.005 and result["map"] >= 0.75
    for k in (1, 5, 10):
        assert abs(result["recall"][str(k)] - ref_recall[k]) <= 0.005
        assert abs(result["precision"][str(k)] - ref_precision[k]) <= 0.005
    assert result["ann_recall_at_10"] >= 0.95


@pytest.fixture
def classes(tmp_path):
    """Class folders from 60 catalogue photos, by a rule of this test: item number // 5 % 4."""
    catalog = sorted(shared_path("data", "catalog").glob("item-*.jpg"))[:60]
    root = tmp_path / "classes"
    for p in catalog:
        cls = root / f"class-{int(p.stem.split('-')[1]) // 5 % 4}"
        cls.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, cls / p.name)
    return root


@pytest.mark.slow
def test_class_folders_match_the_reference_and_recall_grows_with_k(classes, tmp_path, tiny_model):
    ks = (1, 2, 5, 10, 20, 40)
    data = load_dataset(classes)
    assert data.kind == "classes" and len(data.queries) == 60
    assert all(len(rel) == 14 for rel in data.queries.values())  # 15 per class, the query left out
    uri = str(tmp_path / "db.db")
    with Store(uri, "images") as store:
        index_folder(str(classes), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    with SearchClient(uri=uri) as client:
        result = evaluate_collection(data, client, ks)
    recalls = [result.recall[k] for k in ks]
    assert recalls == sorted(recalls) and recalls[-1] > recalls[0]
    assert result.ann_recall_at_10 == 1.0  # so the index's ranking is the exact one here
    ref_map, ref_recall, ref_precision = reference(stored_vectors(uri, "images"), data.queries, ks)
    assert result.map == pytest.approx(ref_map, abs=1e-9)
    assert all(result.recall[k] == pytest.approx(ref_recall[k], abs=1e-9) for k in ks)
    assert all(result.precision[k] == pytest.approx(ref_precision[k], abs=1e-9) for k in ks)


def test_evaluate_is_callable_from_python_and_leaves_nothing_behind(classes, tiny_model, tmp_path, monkeypatch):
    from vitsearch.search.config import Settings

    monkeypatch.setenv("TMPDIR", str(tmp_path))  # where the temporary database goes
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    (tmp_path / "elsewhere").mkdir()
    dotted = tmp_path / "elsewhere" / ".." / classes.name  # named as a user types it: the indexer collapses ".."
    report = evaluate(dotted, Settings(model=str(tiny_model), workers=0), (1, 10))
    assert (report.layout, report.images, report.result.queries, report.k) == ("classes", 60, 60, [1, 10])
    assert set(report.to_dict()) == JSON_KEYS and report.uri is None and report.collection is None
    assert 0 < report.result.map <= 1 and report.result.recall[1] <= report.result.recall[10]
    assert not list(tmp_path.glob("vitsearch-eval-*"))  # the temporary database is gone


@pytest.mark.slow
def test_linked_class_folders_are_not_classes_and_undecodable_files_are_counted_failed(classes, tiny_model, tmp_path):
    """`all -> .` and `c2link -> class-2` are not read as classes (the indexer does not follow links
    to folders either); a truncated JPEG and a text file named .jpg are counted in `failed` and
    are neither queries nor relevant items."""
    from vitsearch.search.config import Settings

    before = evaluate(classes, Settings(model=str(tiny_model), workers=0), (1, 10))
    (classes / "all").symlink_to(".")
    (classes / "c2link").symlink_to("class-2")
    assert len(load_dataset(classes).queries) == 60
    good = next((classes / "class-0").iterdir())
    (classes / "class-0" / "truncated.jpg").write_bytes(good.read_bytes()[:300])
    (classes / "class-1" / "notes.jpg").write_text("not a picture")
    report = evaluate(classes, Settings(model=str(tiny_model), workers=0), (1, 10))
    assert (report.images, report.failed, report.result.queries) == (60, 2, 60)
    assert report.result.map == pytest.approx(before.result.map)  # the same 60 images, the same figures
    out = subprocess.run(
        [*VITSEARCH, "eval", str(classes), "--model", str(tiny_model), "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert (json.loads(out.stdout)["failed"], json.loads(out.stdout)["queries"]) == (2, 60)


@pytest.mark.parametrize(
    "layout, args, message",
    [
        ("flat", [], "expected groundtruth.json and images/, or one subfolder of images per class"),
        ("bad-truth", [], "names 1 files not in"),
        ("flat", ["--k", "0,5"], "--k takes positive integers"),
        ("flat", ["--pooling", "max"], "Invalid value for '--pooling'"),
    ],
)
@pytest.mark.slow
def test_bad_datasets_and_options_are_one_clear_line(layout, args, message, tmp_path, photos, tiny_model):
    root = tmp_path / layout
    if layout == "flat":
        shutil.copytree(photos, root)
    else:
        (root / "images").mkdir(parents=True)
        shutil.copy(photos / "cat.jpg", root / "images")
        (root / "groundtruth.json").write_text(json.dumps({"cat.jpg": ["missing.jpg"]}))
    out = subprocess.run(
        [*VITSEARCH, "eval", root, "--model", tiny_model, *args], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr
