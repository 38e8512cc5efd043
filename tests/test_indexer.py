"""Contract of indexer/: a folder of real photos indexed into a real Milvus Lite collection;
incremental re-runs, changed files, --prune, failures reported and skipped, the encoder
record enforced, and vectors equal to a plain transformers forward pass."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
from conftest import EXAMPLES

from vitsearch.indexer import IndexInterrupted, index_folder
from vitsearch.indexer.scan import scan
from vitsearch.search.config import Settings
from vitsearch.search.encoder import Encoder, encoder_for
from vitsearch.search.errors import EncoderMismatchError
from vitsearch.search.store import META_FIELDS, Store, profile_for


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Encoder:
    return Encoder.load(str(tiny_model))


def run(folder, uri, encoder, **kw):
    with Store(uri, "images") as store:
        return index_folder(str(folder), encoder=encoder, store=store, batch_size=4, **kw)


def rows(uri) -> dict[str, dict]:
    with Store(uri, "images") as store:
        return {
            r["path"]: r
            for r in store.iter_rows(
                ["size", "mtime", "ctime_ns", "inode", "width", "height", "sha256", "folder", "vector"]
            )
        }


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
        assert encoder_for(store.recorded_encoder(), Settings(uri=db_uri, model=str(tiny_model))).info.dim == 32
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
        assert "model" not in settings.model_fields_set
        assert encoder_for(store.recorded_encoder(), settings).info.model == str(tiny_model)


@pytest.mark.slow
def test_indexed_vectors_equal_plain_transformers(photos, db_uri, real_model):
    from test_encoder import plain_cls

    run(photos, db_uri, Encoder.load(str(real_model), runtime="torch"), workers=2)
    stored = rows(db_uri)
    paths = sorted(stored)
    ref = plain_cls(real_model, paths)
    ours = np.array([stored[p]["vector"] for p in paths])
    assert (ours * ref).sum(axis=1).min() > 0.999


@pytest.fixture
def many(linked_photos):
    """330 image files."""
    return linked_photos(30)


@pytest.mark.slow
def test_the_scan_streams_and_memory_stays_bounded(many, db_uri, tiny, monkeypatch):
    from vitsearch.indexer import IndexJob, LocalExecutor, reader, writer
    from vitsearch.indexer.scan import scan

    scanned = [0]

    def counting_scan(root, on_error, *rest):
        for entry in scan(root, on_error, *rest):
            scanned[0] += 1
            yield entry

    at_first_write = []
    with Store(db_uri, "images", profile=replace(profile_for(db_uri), lookup_paths=20)) as store:
        real_upsert = store.upsert
        monkeypatch.setattr(store, "upsert", lambda rows: at_first_write.append(scanned[0]) or real_upsert(rows))
        report = IndexJob(store, tiny, LocalExecutor(workers=2, lister=counting_scan), 4).run(str(many))
    assert report.indexed == 330 and scanned[0] == 330
    # Files in flight are bounded: a lookup chunk, the workers' queue, their prefetched batches,
    # the batch being embedded and the writer's pending batches.
    bound = 20 + reader.QUEUED_BATCHES * 4 * 2 + reader.PREFETCH * 2 * 4 + 4 * (writer.MAX_PENDING + 2)
    assert at_first_write[0] <= bound < 330, (at_first_write[0], bound)


def test_stage_times_are_reported(photos, db_uri, tiny):
    report = run(photos, db_uri, tiny, workers=2)
    assert report.indexed == 11
    assert report.decode_seconds > 0 and report.embed_seconds > 0 and report.write_seconds > 0
    assert report.embed_seconds < report.seconds
    assert "embed" in report.stages() and "waited for input" in report.stages()


def test_a_failing_write_stops_the_run_and_keeps_what_was_written(photos, db_uri, tiny, monkeypatch):
    from vitsearch.search.errors import StoreError

    with Store(db_uri, "images") as store:
        real_upsert, calls = store.upsert, []

        def flaky(rows):
            calls.append(len(rows))
            if len(calls) == 2:
                raise StoreError("Milvus at test: upsert failed: injected")
            real_upsert(rows)

        monkeypatch.setattr(store, "upsert", flaky)
        with pytest.raises(StoreError, match="injected"):
            index_folder(str(photos), encoder=tiny, store=store, batch_size=4, workers=0)
    assert len(rows(db_uri)) == calls[0] == 4  # the first batch stays; nothing after the failure


def test_an_interrupted_run_writes_what_it_embedded(photos, db_uri, tiny, monkeypatch):
    embedded = []
    real_embed = tiny.embed_pixels

    def interrupted(pixels):
        if len(embedded) == 2:
            raise KeyboardInterrupt
        embedded.append(len(pixels))
        return real_embed(pixels)

    monkeypatch.setattr(tiny, "embed_pixels", interrupted)
    with pytest.raises(IndexInterrupted) as stop:  # a KeyboardInterrupt, with the report
        run(photos, db_uri, tiny, workers=2)
    assert 0 < sum(embedded) < 11
    assert len(rows(db_uri)) == stop.value.report.indexed == sum(embedded)  # all flushed before stopping
    monkeypatch.undo()
    again = run(photos, db_uri, tiny, workers=2)
    assert (again.indexed, again.unchanged) == (11 - sum(embedded), sum(embedded))


@pytest.mark.slow
def test_an_error_while_scanning_reaches_the_caller(photos, db_uri, tiny, monkeypatch):
    from vitsearch.search.errors import StoreError

    with Store(db_uri, "images", profile=replace(profile_for(db_uri), lookup_paths=4)) as store:
        real_get, calls = store.get, []

        def failing_get(paths, fields):
            calls.append(1)
            if len(calls) == 2:
                raise StoreError("Milvus at test: get failed: injected")
            return real_get(paths, fields)

        monkeypatch.setattr(store, "get", failing_get)
        with pytest.raises(StoreError, match="injected"):
            index_folder(str(photos), encoder=tiny, store=store, batch_size=4, workers=2)
    assert len(rows(db_uri)) == 4  # the files looked up before the error were indexed


def test_batch_size_for_memory():
    from vitsearch.search.encoder import DEFAULT_BATCH_SIZE, batch_size_for, fit_batch

    assert fit_batch(budget_bytes=10 * 2**30, per_image_bytes=20 * 2**20) == 512
    assert fit_batch(budget_bytes=10 * 2**30, per_image_bytes=1 * 2**20) == 1024  # capped
    assert fit_batch(budget_bytes=100 * 2**20, per_image_bytes=20 * 2**20) == 32  # floor
    assert batch_size_for(type("E", (), {"device": __import__("torch").device("cpu")})()) == DEFAULT_BATCH_SIZE


# --- bytes you can trust: what a user (or a sync tool) can set back is not trusted --------------


@pytest.mark.slow
def test_a_file_swapped_keeping_size_and_mtime_is_re_embedded(tmp_path, db_uri, tiny):
    folder = tmp_path / "swap"
    folder.mkdir()
    a, b = hostile_pair(folder)
    run(folder, db_uri, tiny, workers=0)
    before = rows(db_uri)
    st_a = os.stat(a)
    os.replace(b, a)  # b's bytes (same size) now under a's name, mtime set back: `cp -p`, `touch -r`
    os.utime(a, ns=(st_a.st_atime_ns, st_a.st_mtime_ns))
    assert os.stat(a).st_size == st_a.st_size and os.stat(a).st_mtime_ns == st_a.st_mtime_ns
    again = run(folder, db_uri, tiny, workers=0)
    assert again.indexed == 1
    after = rows(db_uri)[str(a)]
    import hashlib

    assert after["sha256"] == hashlib.sha256(a.read_bytes()).hexdigest() != before[str(a)]["sha256"]
    assert not np.allclose(after["vector"], before[str(a)]["vector"])


def hostile_pair(folder):
    """Two different images of exactly the same size in bytes (BMPs of equal dimensions)."""
    from PIL import Image

    a, b = folder / "a.bmp", folder / "b.bmp"
    Image.open(EXAMPLES / "images" / "cat.jpg").convert("RGB").resize((40, 30)).save(a)
    Image.open(EXAMPLES / "images" / "coffee.jpg").convert("RGB").resize((40, 30)).save(b)
    assert a.stat().st_size == b.stat().st_size
    return a, b


def test_a_changed_ctime_with_the_same_bytes_is_rehashed_not_re_embedded(photos, db_uri, tiny, monkeypatch):
    run(photos, db_uri, tiny, workers=0)
    before = rows(db_uri)
    os.chmod(photos / "cat.jpg", 0o600)  # ctime changes, bytes do not
    embedded = []
    real = tiny.embed_pixels
    monkeypatch.setattr(tiny, "embed_pixels", lambda px: embedded.append(len(px)) or real(px))
    again = run(photos, db_uri, tiny, workers=0)
    assert (again.indexed, again.unchanged, again.rehashed) == (0, 11, 1) and embedded == []
    after = rows(db_uri)[str(photos / "cat.jpg")]
    assert after["ctime_ns"] == os.stat(photos / "cat.jpg").st_ctime_ns != before[str(photos / "cat.jpg")]["ctime_ns"]
    np.testing.assert_allclose(after["vector"], before[str(photos / "cat.jpg")]["vector"])
    assert run(photos, db_uri, tiny, workers=0).rehashed == 0  # the row now matches


def test_verify_rehashes_every_file_and_re_embeds_only_what_changed(photos, db_uri, tiny):
    run(photos, db_uri, tiny, workers=0)
    with Store(db_uri, "images") as store:  # a stale row: its sha256 no longer matches the bytes
        row = store.get([str(photos / "coffee.jpg")], fields=[*META_FIELDS, "vector"])[str(photos / "coffee.jpg")]
        store.upsert([{**row, "sha256": "0" * 64}])
    plain = run(photos, db_uri, tiny, workers=0)
    assert plain.indexed == 0  # metadata all match: not read
    verified = run(photos, db_uri, tiny, workers=2, verify=True)
    assert (verified.indexed, verified.unchanged, verified.rehashed) == (1, 10, 11)


def test_prune_removes_rows_of_paths_that_are_no_longer_regular_files(photos, db_uri, tiny):
    run(photos, db_uri, tiny, workers=0)
    (photos / "cat.jpg").unlink()
    (photos / "cat.jpg").mkdir()  # a folder of the same name
    import socket

    (photos / "coffee.jpg").unlink()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(photos / "coffee.jpg"))  # a socket of the same name
        report = run(photos, db_uri, tiny, workers=0, prune=True)
    assert report.removed == 2
    assert str(photos / "cat.jpg") not in rows(db_uri) and str(photos / "coffee.jpg") not in rows(db_uri)
    assert len(rows(db_uri)) == 9


def test_a_crafted_name_cannot_widen_prune(tmp_path, db_uri, tiny):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for d in (mine, theirs):
        d.mkdir()
        shutil.copy(EXAMPLES / "images" / "cat.jpg", d / "cat.jpg")
    crafted = mine / "x'] or path like '%' or path in ['y.jpg"
    shutil.copy(EXAMPLES / "images" / "coffee.jpg", crafted)
    run(mine, db_uri, tiny, workers=0)
    run(theirs, db_uri, tiny, workers=0)
    crafted.unlink()
    assert run(mine, db_uri, tiny, workers=0, prune=True).removed == 1
    assert set(rows(db_uri)) == {str(mine / "cat.jpg"), str(theirs / "cat.jpg")}


def test_a_file_over_the_size_limit_is_refused_unread(photos, db_uri, tiny):
    big = photos / "sparse.jpg"
    with open(big, "wb") as f:  # 3 GB on paper, a few bytes on disk
        f.write((photos / "cat.jpg").read_bytes()[:100])
        f.truncate(3 * 2**30)
    report = run(photos, db_uri, tiny, workers=0)
    assert report.indexed == 11
    assert dict(report.failures) == {str(big): "file is 3072.0 MB, over the limit of 200 MB (VITSEARCH_MAX_FILE_MB)"}


def test_a_bug_in_preprocessing_stops_the_run_instead_of_failing_every_file(photos, db_uri, tiny, monkeypatch):
    """Only a bad file is a per-file failure; a bug (here a TypeError from the preprocess) is raised,
    not turned into a "successful" run with 0 images indexed."""

    def broken(self, image):
        raise TypeError("a bug in Preprocess.__call__")

    monkeypatch.setattr(type(tiny.preprocessor), "__call__", broken)
    with pytest.raises(TypeError, match="a bug in Preprocess"):
        run(photos, db_uri, tiny, workers=0)
