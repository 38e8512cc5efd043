"""Contract of search/lite.py: one Milvus Lite database used by several processes at once.

The first process serves the database, the others connect to it; rows written by either are
seen by both; when the serving process exits (cleanly or killed), the next call of another
process takes the database over without losing rows; a process that holds the database without
sharing it (plain pymilvus) gives a clear error after the wait.
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import pytest

from vitsearch.search.errors import StoreError
from vitsearch.search.lite import ENDPOINT_FILE
from vitsearch.search.store import Store

from test_store import INFO, make_rows

# A second process: open the store, add rows /other/0..n-1, print a JSON line, wait for stdin.
OTHER = textwrap.dedent("""
    import json, sys
    import numpy as np
    from vitsearch.search.encoder import EncoderInfo
    from vitsearch.search.store import Store
    info = EncoderInfo.from_json(sys.argv[2])
    n = int(sys.argv[3])
    store = Store(sys.argv[1], "images")
    store.ensure(info)
    v = np.random.default_rng(7).normal(size=(n, info.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    store.upsert([{"path": f"/other/{i}.jpg", "vector": v[i], "folder": "/other", "size": i,
                   "mtime": 0.0, "width": 1, "height": 1, "sha256": "0" * 64, "indexed_at": 0.0}
                  for i in range(n)])
    print(json.dumps({"served_here": store._served_here, "count": store.count()}), flush=True)
    sys.stdin.readline()
""")


def start_other(db_uri: str, n: int) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen([sys.executable, "-c", OTHER, db_uri, INFO.to_json(), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"second process failed: {proc.stderr.read()}")
    return proc, json.loads(line)


def test_a_second_process_shares_the_database_both_ways(db_uri):
    rows, v = make_rows(12)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        assert store._served_here
        proc, seen = start_other(db_uri, 5)
        try:
            assert seen == {"served_here": False, "count": 17}  # it saw our 12 rows and wrote 5
            assert store.count() == 17  # and we see its rows
            hits = store.search(v[:1], k=1)[0]
            assert hits[0].path == rows[0]["path"] and hits[0].score == pytest.approx(1, abs=1e-5)
        finally:
            proc.communicate("\n", timeout=60)
        assert proc.returncode == 0


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_when_the_serving_process_goes_the_next_call_takes_over(db_uri, how):
    proc, seen = start_other(db_uri, 6)
    try:
        assert seen["served_here"] is True
        store = Store(db_uri, "images")
        assert not store._served_here and store.count() == 6
        rows, _ = make_rows(4)
        store.upsert(rows)
    finally:
        if how == "exit":
            proc.communicate("\n", timeout=60)
        else:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
    # The server is gone with its process: this call reconnects, now serving from here.
    assert store.count() == 10
    assert store._served_here
    assert sorted(store.get(["/other/0.jpg", rows[0]["path"]])) == sorted(["/other/0.jpg", rows[0]["path"]])
    store.close()


def test_a_process_that_does_not_share_the_database_gives_a_clear_error(db_uri):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom pymilvus import MilvusClient\n"
         "MilvusClient(sys.argv[1]).list_collections()\nprint('open', flush=True)\nsys.stdin.readline()",
         db_uri], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="open in another process that does not share it"):
            Store(db_uri, "images", lite_wait_s=0.5)
    finally:
        holder.communicate("\n", timeout=60)


def test_a_stale_endpoint_file_is_replaced(db_uri, tmp_path):
    from pathlib import Path

    db = Path(db_uri)
    db.mkdir()
    (db / ENDPOINT_FILE).write_text(json.dumps({"pid": 999_999_999, "uri": "http://127.0.0.1:1"}))
    with Store(db_uri, "images") as store:
        assert store._served_here and not store.exists()
    record = json.loads((db / ENDPOINT_FILE).read_text())
    assert record["uri"] != "http://127.0.0.1:1" and record["pid"] > 0


def test_an_old_single_file_database_is_refused_clearly(tmp_path):
    old = tmp_path / "old.db"
    old.write_bytes(b"SQLite format 3\0")
    with pytest.raises(StoreError, match="not a Milvus Lite database directory"):
        Store(str(old), "images")
    assert old.read_bytes() == b"SQLite format 3\0"  # untouched
