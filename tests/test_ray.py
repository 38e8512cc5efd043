"""``--engine ray``: a real local Ray cluster (``ray.init(num_cpus=2)``, CPU only) indexes real
photos with the tiny test ViT into a real Milvus Lite collection, and must give the rows the
local engine gives; bad files are reported, lost workers are retried, re-runs are incremental."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'vitsearch[ray]'")

from typer.testing import CliRunner  # noqa: E402

from vitsearch.cli import app  # noqa: E402
from vitsearch.indexer import index_folder  # noqa: E402
from vitsearch.indexer.ray_engine import index_with_ray  # noqa: E402
from vitsearch.search.config import Settings  # noqa: E402
from vitsearch.search.encoder import Encoder  # noqa: E402
from vitsearch.search.errors import CollectionNotFoundError, StoreError  # noqa: E402
from vitsearch.search.store import META_FIELDS, Store  # noqa: E402
from vitsearch.search.store.bulk import bulk_import  # noqa: E402

pytestmark = pytest.mark.ray

#: The fields a row of the local and the Ray engine must agree on (``indexed_at``: the time of the write).
FIELDS = [*(f for f in META_FIELDS[2:] if f != "indexed_at"), "folder", "vector"]


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """One local Ray cluster of 2 CPUs for the module (its start costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny(tiny_model) -> Encoder:
    return Encoder.load(str(tiny_model))


def rows(uri: str) -> dict[str, dict]:
    with Store(uri, "images") as store:
        return {r["path"]: r for r in store.iter_rows(FIELDS)}


def ray_index(source, uri, encoder, **kw):
    with Store(uri, "images") as store:
        return index_with_ray(str(source), encoder=encoder, store=store, settings=Settings(), batch_size=4, **kw)


def test_same_rows_and_vectors_as_the_local_engine(photos, tmp_path, tiny):
    with Store(str(tmp_path / "local.db"), "images") as store:
        local = index_folder(str(photos), encoder=tiny, store=store, batch_size=4, workers=0)
    distributed = ray_index(photos, str(tmp_path / "ray.db"), tiny)
    assert (local.indexed, distributed.indexed, distributed.failed) == (11, 11, 0)
    want, got = rows(str(tmp_path / "local.db")), rows(str(tmp_path / "ray.db"))
    assert set(got) == set(want) and len(got) == 11
    for path, row in want.items():
        assert {k: got[path][k] for k in FIELDS[:-1]} == {k: row[k] for k in FIELDS[:-1]}, path
        cosine = float(np.dot(np.asarray(got[path]["vector"]), np.asarray(row["vector"])))
        assert cosine > 0.999, (path, cosine)
    assert distributed.embed_seconds > 0 and distributed.decode_seconds > 0

    again = ray_index(photos, str(tmp_path / "ray.db"), tiny)  # incremental, as the local engine
    assert (again.indexed, again.unchanged) == (0, 11)
    os.utime(photos / "cat.jpg", (1, 1))  # touched, the same bytes: hashed, not embedded, row refreshed
    touched = ray_index(photos, str(tmp_path / "ray.db"), tiny)
    assert (touched.indexed, touched.unchanged, touched.rehashed) == (0, 11, 1)
    assert rows(str(tmp_path / "ray.db"))[str(photos / "cat.jpg")]["mtime"] == 1
    st = os.stat(photos / "cat.jpg")
    (photos / "cat.jpg").write_bytes((photos / "coffee.jpg").read_bytes())  # new bytes
    changed = ray_index(photos, str(tmp_path / "ray.db"), tiny)
    assert (changed.indexed, changed.unchanged) == (1, 10)
    assert (
        rows(str(tmp_path / "ray.db"))[str(photos / "cat.jpg")]["size"]
        == (photos / "coffee.jpg").stat().st_size
        != st.st_size
    )


def test_a_uri_source_is_read_through_pyarrow(photos, tmp_path, tiny):
    report = ray_index(f"file://{photos}", str(tmp_path / "uri.db"), tiny)
    assert (report.indexed, report.failed) == (11, 0)
    got = rows(str(tmp_path / "uri.db"))
    cat = got[f"file://{photos}/cat.jpg"]
    assert cat["folder"] == f"file://{photos}" and cat["size"] == os.path.getsize(photos / "cat.jpg")
    by_path = tiny.embed([str(photos / "cat.jpg")])[0]
    assert float(np.dot(by_path, cat["vector"])) > 0.999


def test_cli_reports_a_corrupt_file_and_goes_on(photos, tmp_path, tiny_model):
    (photos / "corrupt.jpg").write_bytes((photos / "cat.jpg").read_bytes()[:300])  # truncated JPEG
    (photos / "text.png").write_text("not an image")
    uri = str(tmp_path / "cli.db")
    args = ["index", str(photos), "--engine", "ray", "--model", str(tiny_model), "--uri", uri, "--json"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout[out.stdout.index("{") :])
    assert (summary["indexed"], summary["failed"]) == (11, 2)
    reasons = {os.path.basename(f["path"]): f["reason"] for f in summary["failures"]}
    assert "truncated" in reasons["corrupt.jpg"] and "not a recognised image format" in reasons["text.png"]
    assert str(photos / "corrupt.jpg") not in rows(uri) and len(rows(uri)) == 11

    again = json.loads((out := CliRunner().invoke(app, args)).stdout[out.stdout.index("{") :])
    assert (again["indexed"], again["unchanged"], again["failed"]) == (0, 11, 2)


def test_cli_refuses_prune_and_a_missing_source(tmp_path):
    out = CliRunner().invoke(app, ["index", str(tmp_path), "--engine", "ray", "--prune"], env={"COLUMNS": "400"})
    assert out.exit_code == 2 and "--prune" in out.output
    out = CliRunner().invoke(app, ["index", str(tmp_path / "nowhere"), "--engine", "ray"], env={"COLUMNS": "400"})
    assert out.exit_code == 2 and "nowhere does not exist" in out.output


def test_a_local_cluster_that_does_not_start_in_time_is_one_line_that_says_what_to_do(photos, tmp_path, tiny_model):
    """Ray's own error is a 40-line traceback ending in "Timed out waiting for file ...
    gcs_server_port_..."; a start that takes longer than allowed (here 0 s) is tried twice, then
    reported in one line, with nothing written."""
    import subprocess
    import sys

    uri = str(tmp_path / "late.db")
    env = {**os.environ, "VITSEARCH_RAY_START_S": "0", "RAY_ADDRESS": ""}
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from vitsearch.cli import main; main()",
            "index",
            str(photos),
            "--engine",
            "ray",
            "--model",
            str(tiny_model),
            "--uri",
            uri,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert "trying once more" in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert "the local Ray cluster did not start within 0 s (Timed out waiting for file" in last
    assert "VITSEARCH_RAY_START_S" in last and "ray start --head" in last
    if os.path.exists(uri):  # the collection was never made
        with pytest.raises(CollectionNotFoundError):
            rows(uri)


def _encoder_actor_pids() -> list[int]:
    """Processes of the encoder actors (Ray titles them ``ray::MapWorker(MapBatches(EmbedAndWrite))``)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"EmbedAndWrite" in f.read():
                    pids.append(int(pid))
        except OSError:
            continue
    return pids


def test_a_killed_encoder_worker_is_restarted_and_nothing_is_lost(linked_photos, tmp_path, tiny):
    folder = linked_photos(30)  # 330 files, 83 batches of 4
    uri = str(tmp_path / "kill.db")
    killed: list[int] = []

    def kill_after_first_rows():
        deadline = time.monotonic() + 120
        with Store(uri, "images") as probe:
            while time.monotonic() < deadline and not killed:
                if probe.exists() and probe.count() > 0:
                    for pid in _encoder_actor_pids():
                        os.kill(pid, signal.SIGKILL)
                        killed.append(pid)
                time.sleep(0.05)

    with Store(uri, "images") as store:
        killer = threading.Thread(target=kill_after_first_rows, daemon=True)
        killer.start()
        report = index_with_ray(str(folder), encoder=tiny, store=store, settings=Settings(), batch_size=4)
        killer.join()
        assert killed, "the encoder actor was never seen running"
        assert (report.indexed, report.failed) == (330, 0)
        assert store.count() == 330
    assert set(rows(uri)) == {str(p) for p in folder.iterdir()}


def test_bulk_mode_writes_parquet_shards_of_the_same_rows(photos, tmp_path, tiny):
    import pyarrow.parquet as pq

    (photos / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a JPEG")
    with Store(str(tmp_path / "local.db"), "images") as store:
        index_folder(str(photos), encoder=tiny, store=store, batch_size=4, workers=0)
    want = rows(str(tmp_path / "local.db"))
    shards = tmp_path / "shards"
    report = ray_index(photos, str(tmp_path / "bulk.db"), tiny, bulk_dir=str(shards))
    assert (report.indexed, report.failed) == (11, 1) and "corrupt.jpg" in report.failures[0][0]
    files = sorted(shards.rglob("*.parquet"))
    assert files and all(f.parent.name == "wave-00000" for f in files)
    table = pq.read_table(shards)  # one column per field of the collection, as bulk import reads them
    assert set(table.column_names) == {"path", "vector", *FIELDS[:-1], "indexed_at"}
    got = {r["path"]: r for r in table.to_pylist()}
    assert set(got) == set(want)
    for path, row in want.items():
        assert {k: got[path][k] for k in FIELDS[:-1]} == {k: row[k] for k in FIELDS[:-1]}, path
        assert float(np.dot(got[path]["vector"], row["vector"])) > 0.999
    with Store(str(tmp_path / "bulk.db"), "images") as store:
        assert store.exists() and store.count() == 0  # rows went to the shards, not to Milvus
        with pytest.raises(StoreError, match="bulk import needs a Milvus server"):
            bulk_import(store, [str(f) for f in files])
