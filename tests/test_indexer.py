"""Contract of indexer/: a folder of real photos indexed into a real Milvus Lite collection;
incremental re-runs, changed files, --prune, failures reported and skipped, the encoder
record enforced, and vectors equal to a plain transformers forward pass."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from vitsearch.indexer import encoder_for, index_folder
from vitsearch.indexer.scan import scan
from vitsearch.search.config import Settings
from vitsearch.search.encoder import Encoder
from vitsearch.search.errors import EncoderMismatchError
from vitsearch.search.store import Store

from conftest import EXAMPLES


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Encoder:
    return Encoder.load(str(tiny_model))


def run(folder, uri, encoder, **kw):
    with Store(uri, "images") as store:
        return index_folder(str(folder), encoder=encoder, store=store, batch_size=4, **kw)


def rows(uri) -> dict[str, dict]:
    with Store(uri, "images") as store:
        return {r["path"]: r for r in store.iter_rows(["size", "mtime", "width", "height", "sha256",
                                                        "folder", "vector"])}


def test_scan_is_recursive_sorted_and_filters_extensions(photos):
    (photos / "notes.txt").write_text("not an image")
    (photos / "UPPER.JPG").write_bytes((photos / "cat.jpg").read_bytes())
    found = [e.path for e in scan(str(photos), lambda p, r: None)]
    assert str(photos / "sub" / "rocket.jpg") in found
    assert str(photos / "UPPER.JPG") in found
    assert not any(p.endswith(".txt") for p in found)
    assert len(found) == 12


def test_index_rerun_change_and_prune(photos, db_uri, tiny):
    first = run(photos, db_uri, tiny, workers=2)
    assert (first.indexed, first.unchanged, first.failed) == (11, 0, 0)
    stored = rows(db_uri)
    cat = str(photos / "cat.jpg")
    assert set(stored) == {str(p) for p in photos.rglob("*.jpg")}
    assert stored[cat]["folder"] == str(photos) and stored[cat]["size"] == os.path.getsize(cat)
    assert (stored[cat]["width"], stored[cat]["height"]) == (451, 300)
    import hashlib
    assert stored[cat]["sha256"] == hashlib.sha256((photos / "cat.jpg").read_bytes()).hexdigest()

    again = run(photos, db_uri, tiny, workers=0)
    assert (again.indexed, again.unchanged) == (0, 11)  # a re-run embeds nothing

    shutil.copy(EXAMPLES / "images" / "coffee.jpg", photos / "cat.jpg")  # same path, new content
    (photos / "astronaut.jpg").unlink()
    changed = run(photos, db_uri, tiny, workers=0)
    assert (changed.indexed, changed.unchanged, changed.removed) == (1, 9, 0)
    after = rows(db_uri)
    assert str(photos / "astronaut.jpg") in after  # not pruned without --prune
    assert after[cat]["sha256"] != stored[cat]["sha256"]
    assert not np.allclose(after[cat]["vector"], stored[cat]["vector"])

    pruned = run(photos, db_uri, tiny, workers=0, prune=True)
    assert (pruned.indexed, pruned.removed) == (0, 1)
    assert str(photos / "astronaut.jpg") not in rows(db_uri)


def test_prune_only_touches_the_indexed_folder(tmp_path, db_uri, tiny):
    a, b = tmp_path / "a", tmp_path / "ab"
    for d in (a, b):
        d.mkdir()
        shutil.copy(EXAMPLES / "images" / "cat.jpg", d / "cat.jpg")
    run(a, db_uri, tiny, workers=0)
    run(b, db_uri, tiny, workers=0)
    (b / "cat.jpg").unlink()
    assert run(a, db_uri, tiny, workers=0, prune=True).removed == 0  # "ab" is not under "a"
    assert run(b, db_uri, tiny, workers=0, prune=True).removed == 1
    assert set(rows(db_uri)) == {str(a / "cat.jpg")}


def test_bad_files_are_reported_skipped_and_retried_later(photos, db_uri, tiny):
    (photos / "empty.png").write_bytes(b"")
    (photos / "page.jpg").write_text("<html>hello</html>")
    (photos / "cut.jpg").write_bytes((photos / "cat.jpg").read_bytes()[:3000])
    seen = []
    report = run(photos, db_uri, tiny, workers=2, on_failure=lambda p, r: seen.append(p))
    assert report.indexed == 11 and report.failed == 3
    reasons = dict(report.failures)
    assert "empty file" in reasons[str(photos / "empty.png")]
    assert "not a recognised image format" in reasons[str(photos / "page.jpg")]
    assert "truncated" in reasons[str(photos / "cut.jpg")]
    assert sorted(seen) == sorted(reasons)
    assert len(rows(db_uri)) == 11
    (photos / "page.jpg").unlink()
    (photos / "cut.jpg").unlink()
    shutil.copy(EXAMPLES / "images" / "coffee.jpg", photos / "empty.png")  # fixed: indexed next run
    fixed = run(photos, db_uri, tiny, workers=0)
    assert (fixed.indexed, fixed.failed, fixed.unchanged) == (1, 0, 11)


def test_another_encoder_is_refused_and_nothing_is_lost(photos, db_uri, tiny, other_tiny_model):
    run(photos, db_uri, tiny, workers=0)
    before = rows(db_uri)
    with pytest.raises(EncoderMismatchError, match="--collection"):
        run(photos, db_uri, Encoder.load(str(other_tiny_model)), workers=0)
    assert rows(db_uri).keys() == before.keys()


def test_rerun_without_model_uses_the_collections_model(photos, db_uri, tiny_model):
    settings = Settings(uri=db_uri)
    with Store(db_uri, "images") as store:
        assert encoder_for(store, Settings(uri=db_uri, model=str(tiny_model))).info.dim == 32
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
        assert "model" not in settings.model_fields_set
        assert encoder_for(store, settings).info.model == str(tiny_model)


def test_indexed_vectors_equal_plain_transformers(photos, db_uri, real_model):
    from test_encoder import plain_cls

    run(photos, db_uri, Encoder.load(str(real_model)), workers=2)
    stored = rows(db_uri)
    paths = sorted(stored)
    ref = plain_cls(real_model, paths)
    ours = np.array([stored[p]["vector"] for p in paths])
    assert (ours * ref).sum(axis=1).min() > 0.999
