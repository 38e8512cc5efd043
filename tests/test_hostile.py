"""Hostile and odd inputs (tests/hostile.py makes 40 cases): `vitsearch index` indexes each one
correctly or reports it with its path and a one-line reason, and the run goes on and exits 0;
--report writes the failures; animated and multi-page files give their first frame, an
EXIF-rotated photo its upright picture; a file that vanishes mid-run is reported."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import hostile
import pytest
from conftest import stored_vectors
from PIL import Image

from vitsearch.indexer import index_folder
from vitsearch.search.encoder import Encoder
from vitsearch.search.store import Store

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]


@pytest.fixture(scope="module")
def corpus_run(tmp_path_factory, tiny_model):
    """The corpus, indexed once by the CLI (as a user without root's file access)."""
    tmp = tmp_path_factory.mktemp("hostile")
    root = tmp / "corpus"
    root.mkdir()
    hostile.build(root)
    frame0 = tmp / "frames"  # references, outside the corpus: the first frame of each file
    frame0.mkdir()
    for name in ("animated.gif", "multipage.tif"):
        with Image.open(root / name) as img:
            img.seek(0)
            img.convert("RGB").save(frame0 / f"{name}.png")
    uri = str(tmp / "db.db")
    report = tmp / "failures.jsonl"
    # torch: the decode is under test here; int8's batch-dependent rounding is test_runtimes.py's
    out = subprocess.run(
        [
            *VITSEARCH,
            "index",
            root,
            "--model",
            tiny_model,
            "--uri",
            uri,
            "--report",
            report,
            "--runtime",
            "torch",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=hostile.without_root_file_access,
    )
    return root, frame0, uri, report, out


def test_every_case_is_indexed_or_reported_with_a_reason(corpus_run):
    root, _, uri, report, out = corpus_run
    assert out.returncode == 0, out.stderr
    assert len(hostile.CASES) >= 30
    summary = json.loads(out.stdout)
    failures = {f["path"]: f["reason"] for f in map(json.loads, report.read_text().splitlines())}
    assert failures == {f["path"]: f["reason"] for f in summary["failures"]}  # --report = the summary
    rows = stored_vectors(uri)
    seen = hostile.outcomes(root, set(rows), failures)
    expected = {name: outcome for name, _, outcome in hostile.CASES}
    if not hostile.permissions_apply(root / "no-permission.jpg"):  # root that cannot drop its access
        print("file permissions do not apply to this process: no-permission.jpg is readable here")
        expected["no-permission.jpg"] = hostile.INDEXED
    wrong = {
        name: (want, seen[name])
        for name, want in expected.items()
        if not (seen[name] == want if want == hostile.INDEXED else want in seen[name])
    }
    assert not wrong
    assert summary["indexed"] == len(rows) and summary["failed"] == len(failures)
    assert all("\n" not in reason and reason for reason in failures.values())  # one line each
    assert str(root / "link-outside.jpg") in rows  # a link to a file outside is followed, kept by its own path


def test_first_frames_are_embedded(corpus_run, tiny_model):
    root, frame0, uri, _, _ = corpus_run
    rows = stored_vectors(uri)
    encoder = Encoder.load(str(tiny_model), runtime="torch")
    for name in ("animated.gif", "multipage.tif"):
        reference = encoder.embed([str(frame0 / f"{name}.png")])[0]
        assert float(rows[str(root / name)] @ reference) > 0.99999, name


@pytest.mark.slow
def test_the_report_can_be_csv(tmp_path, photos, tiny_model):
    (photos / "bad.jpg").write_bytes(b"nope")
    report = tmp_path / "failures.csv"
    out = subprocess.run(
        [*VITSEARCH, "index", photos, "--model", tiny_model, "--uri", tmp_path / "db.db", "--report", report],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0 and "1 file could not be indexed (listed in" in out.stdout
    assert list(csv.reader(report.open())) == [
        ["path", "reason"],
        [str(photos / "bad.jpg"), "not a recognised image format"],
    ]


@pytest.mark.slow
def test_a_folder_without_images_is_not_an_error(tmp_path, tiny_model):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    out = subprocess.run(
        [*VITSEARCH, "index", tmp_path / "empty", "--model", tiny_model, "--uri", tmp_path / "db.db"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert f"no image files under {tmp_path / 'empty'} (extensions: .avif, .bmp, .gif" in out.stdout


@pytest.mark.slow
def test_an_exif_rotated_photo_is_embedded_upright(tmp_path, real_model):
    hostile.exif_rotated(tmp_path)
    encoder = Encoder.load(str(real_model))
    with Store(str(tmp_path / "db.db"), "images") as store:
        index_folder(str(tmp_path), encoder=encoder, store=store, workers=0)
    rows = stored_vectors(str(tmp_path / "db.db"))
    upright, rotated = rows[str(tmp_path / "upright.png")], rows[str(tmp_path / "rotated-exif6.jpg")]
    with Image.open(tmp_path / "rotated-exif6.jpg") as img:
        pixels_only = Image.new("RGB", img.size)
        pixels_only.paste(img)  # the stored pixels, without the EXIF orientation
    sideways = encoder.embed([pixels_only])[0]
    assert float(upright @ rotated) > 0.99
    assert float(upright @ sideways) < float(upright @ rotated) - 0.05  # the rotation matters to the model


def test_a_file_that_vanishes_between_scan_and_read_is_reported(photos, db_uri, tiny_model):
    from vitsearch.indexer import IndexJob, LocalExecutor
    from vitsearch.indexer.scan import scan

    def scan_then_delete(root, on_error, *rest):
        for entry in scan(root, on_error, *rest):
            if entry.path.endswith("cat.jpg"):
                os.unlink(entry.path)  # gone after the scan saw it, before a worker reads it
            yield entry

    with Store(db_uri, "images") as store:
        job = IndexJob(store, Encoder.load(str(tiny_model)), LocalExecutor(workers=2, lister=scan_then_delete), 32)
        report = job.run(str(photos))
    assert report.indexed == 10
    assert dict(report.failures) == {str(photos / "cat.jpg"): "No such file or directory"}


@pytest.fixture
def hostile_queries(tmp_path) -> list[tuple[str, str]]:
    root = tmp_path / "queries"
    root.mkdir()
    return hostile.build_queries(root)


def _check_permissions(queries: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The queries, without no-permission.jpg where this process keeps root's file access."""
    locked = next(p for p, _ in queries if p.endswith("no-permission.jpg"))
    if hostile.permissions_apply(Path(locked)):
        return queries
    print("file permissions do not apply to this process: no-permission.jpg is readable here")
    return [(p, r) for p, r in queries if p != locked]


@pytest.mark.slow
def test_every_bad_query_is_one_line_and_exit_2(indexed, hostile_queries, tmp_path):
    """`vitsearch search` with a folder, a FIFO, a device, a socket, an unreadable, empty,
    missing, non-image or damaged file: `error: PATH: reason` on one line, exit 2, no traceback;
    the plainly bad ones before Milvus is opened (a database that does not exist stays so)."""
    _, uri = indexed
    queries = _check_permissions(hostile_queries)
    damaged = {n for n, _, _ in hostile.DAMAGED_QUERIES}
    for path, reason in queries:
        early = os.path.basename(path) not in damaged
        db = str(tmp_path / "never.db") if early else uri
        out = subprocess.run(
            [*VITSEARCH, "search", path, "--uri", db],
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=hostile.without_root_file_access,
        )
        assert out.returncode == 2, (path, out.stderr)
        assert out.stderr.startswith(f"error: {path}: ") and reason in out.stderr, (path, out.stderr)
        assert out.stderr.count("\n") == 1 and out.stdout == "", (path, out.stderr)
        if early:
            assert not os.path.exists(db), path


def test_the_api_refuses_each_bad_query_with_the_same_reason(indexed, hostile_queries):
    """``SearchClient.search(path)`` (the library, the HTTP API and the page read queries through
    it) raises :class:`BadImageError` naming the path, with the CLI's reason."""
    from vitsearch.search.client import SearchClient
    from vitsearch.search.errors import BadImageError

    _, uri = indexed
    queries = hostile_queries
    if os.geteuid() == 0:  # this process has root's file access: a mode-000 file is readable
        queries = [(p, r) for p, r in queries if not p.endswith("no-permission.jpg")]
    with SearchClient(uri) as client:
        for path, reason in queries:
            with pytest.raises(BadImageError) as caught:
                client.search(path)
            assert caught.value.source == path and reason in caught.value.reason, (path, str(caught.value))
            assert "\n" not in str(caught.value)
