"""Crash safety, with real processes: `vitsearch index` killed with SIGKILL at points of every
stage converges, once run again, to the collection a clean run makes (same paths, one row per
file, equal vectors) without redoing written work; Ctrl-C writes what was embedded, prints the
summary and exits 130; a second run on the same collection is refused while the first works;
a Milvus server that goes away stops the run with an error naming it, and a later run resumes."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import stored_vectors

from vitsearch.search.store import Store

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]


@pytest.fixture(scope="module")
def vit_ti(tmp_path_factory):
    """A ViT-Ti-sized model (random weights, 224 px, 12 blocks): slow enough on a CPU (~40
    images/s) for a run to last a few seconds, so that kills land inside each stage."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("vit-ti")
    torch.manual_seed(0)
    ViTModel(
        ViTConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768),
        add_pooling_layer=False,
    ).save_pretrained(folder)
    ViTImageProcessor().save_pretrained(folder)
    return folder


@pytest.fixture
def folder(linked_photos):
    """297 image files."""
    return linked_photos(27)


def index_cmd(folder, uri, model, *extra):
    """The indexing command, on torch: its pace (~40 images/s) is what lets kills land inside each
    stage, and its vectors do not depend on the batch (int8's do: test_runtimes.py)."""
    return [
        *VITSEARCH,
        "index",
        folder,
        "--model",
        model,
        "--uri",
        uri,
        "--batch-size",
        "4",
        "--workers",
        "2",
        "--runtime",
        "torch",
        "--verbose",
        *extra,
    ]


def start(cmd, **env) -> subprocess.Popen:
    """``cmd`` running, with Ctrl-C's default handling even where pytest itself runs with SIGINT
    ignored (a background job of a non-interactive shell), which children would inherit."""
    return subprocess.Popen(
        [str(c) for c in cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def wait_for(proc: subprocess.Popen, marker: str, timeout_s: float = 120) -> str:
    """Read the process's log (stderr) until a line containing ``marker``; return that line."""
    deadline = time.monotonic() + timeout_s
    for line in proc.stderr:
        if marker in line:
            return line
        if time.monotonic() > deadline:
            break
    proc.kill()
    pytest.fail(f"no {marker!r} in the log: {proc.communicate()}")


def contents(uri: str) -> tuple[dict[str, np.ndarray], int]:
    """Rows by path, and the collection's own row count (more than the paths if duplicated)."""
    rows = stored_vectors(uri)
    with Store(uri, "images") as store:
        return rows, store.count()


def run_json(cmd) -> dict:
    out = subprocess.run(
        [str(c) for c in cmd if c != "--verbose"] + ["--json"], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_killed_at_any_stage_then_rerun_equals_a_clean_run(folder, tmp_path, vit_ti):
    total = 297
    clean_uri, uri = str(tmp_path / "clean.db"), str(tmp_path / "killed.db")
    assert run_json(index_cmd(folder, clean_uri, vit_ti))["indexed"] == total

    rng = random.Random(5)
    # (stage, log line after which to kill, extra delay in s): the scan has begun; the paths are
    # looked up and the workers decode the first batches; batches are embedded; rows were just
    # written (the next write is in flight); and at random points further on.
    kills = [
        ("scan", "scanning", 0),
        ("decode", "looked up", 0),
        ("decode", "looked up", 0.05),
        ("embed", "batch 2:", 0.02),
        ("write", "wrote", 0),
        ("embed", "batch 4:", rng.uniform(0, 1)),
        ("write", "wrote", rng.uniform(0, 1)),
    ]
    log = []
    for stage, marker, delay in kills:
        proc = start(index_cmd(folder, uri, vit_ti))
        wait_for(proc, marker)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        log.append((stage, proc.returncode))
    assert all(code == -signal.SIGKILL for _, code in log), log  # each run died before finishing

    final = run_json(index_cmd(folder, uri, vit_ti))
    rows, count = contents(uri)
    clean, clean_count = contents(clean_uri)
    assert final["failed"] == 0 and final["indexed"] + final["unchanged"] == total
    assert final["unchanged"] > 0  # work written before the kills was not redone
    assert set(rows) == set(clean) and count == len(rows) == total == clean_count  # no duplicates, none missing
    cosines = [float(rows[p] @ clean[p]) for p in rows]
    assert min(cosines) > 0.999


@pytest.mark.slow
def test_ctrl_c_writes_what_was_embedded_and_exits_130(folder, tmp_path, vit_ti):
    uri = str(tmp_path / "db.db")
    proc = start(index_cmd(folder, uri, vit_ti))
    wait_for(proc, "wrote")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted: every image embedded so far is written" in err
    indexed = int(out.split("indexed ")[1].split(",")[0])  # the summary line is printed
    rows, count = contents(uri)
    assert 0 < indexed < 297 and len(rows) == count == indexed
    again = run_json(index_cmd(folder, uri, vit_ti))
    assert (again["indexed"], again["unchanged"]) == (297 - indexed, indexed)


@pytest.mark.slow
def test_a_second_run_on_the_same_collection_is_refused(folder, tmp_path, vit_ti):
    uri = str(tmp_path / "db.db")
    first = start(index_cmd(folder, uri, vit_ti))
    wait_for(first, "batch 1:")
    second = subprocess.run(
        [str(c) for c in index_cmd(folder, uri, vit_ti)], capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 1
    assert f"is being indexed by another run (pid {first.pid}" in second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    rows, count = contents(uri)
    assert len(rows) == count == 297
    assert run_json(index_cmd(folder, uri, vit_ti))["unchanged"] == 297  # the lease was given back


@pytest.mark.slow
def test_a_milvus_server_that_goes_away_stops_the_run_and_a_later_run_resumes(folder, vit_ti, milvus_process):
    uri = milvus_process.uri
    proc = start(index_cmd(folder, uri, vit_ti), VITSEARCH_RETRY_S="3")
    wait_for(proc, "wrote")
    milvus_process.kill()
    started = time.monotonic()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and time.monotonic() - started < 60
    assert f"error: Milvus at {uri} did not answer for 3 s" in err
    milvus_process.start()
    rows_before, _ = contents(uri)
    again = run_json(index_cmd(folder, uri, vit_ti))
    rows, count = contents(uri)
    assert again["unchanged"] == len(rows_before) > 0 and again["indexed"] == 297 - len(rows_before)
    assert len(rows) == count == 297
