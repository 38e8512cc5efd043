"""Contract of search/lite.py: one Milvus Lite database used by several processes at once.

The first process serves the database, the others connect to it; rows written by either are
seen by both; when the serving process exits (cleanly or killed), the next call of another
process takes the database over without losing rows; a process that holds the database without
sharing it (plain pymilvus) gives a clear error after the wait. Only the user who owns the
database gets in: it is served on a Unix socket of mode 0600 (also where its path is too long
for a socket address), in a folder of mode 0700, and another user (a real other uid) can
neither read the endpoint nor connect.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from test_store import INFO, make_rows

from vitsearch.search.errors import StoreError
from vitsearch.search.store import Store
from vitsearch.search.store.lite import ENDPOINT_FILE, release

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
                   "mtime": 0.0, "ctime_ns": 0, "inode": i, "width": 1, "height": 1, "sha256": "0" * 64, "indexed_at": 0.0,
                   "taken_at": 0.0, "date_source": "mtime", "camera": ""}
                  for i in range(n)])
    print(json.dumps({"served_here": store.served_here, "count": store.count()}), flush=True)
    sys.stdin.readline()
""")


def start_other(db_uri: str, n: int) -> tuple[subprocess.Popen, dict]:
    proc = subprocess.Popen(
        [sys.executable, "-c", OTHER, db_uri, INFO.to_json(), str(n)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        pytest.fail(f"second process failed: {proc.stderr.read()}")
    return proc, json.loads(line)


@pytest.mark.slow
def test_a_second_process_shares_the_database_both_ways(db_uri):
    rows, v = make_rows(12)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        assert store.served_here
        proc, seen = start_other(db_uri, 5)
        try:
            assert seen == {"served_here": False, "count": 17}  # it saw our 12 rows and wrote 5
            assert store.count() == 17  # and we see its rows
            hits = store.search(v[:1], k=1)[0]
            assert hits[0].path == rows[0]["path"] and hits[0].score == pytest.approx(1, abs=1e-5)
        finally:
            proc.communicate("\n", timeout=60)
        assert proc.returncode == 0


IDLE = textwrap.dedent("""
    import sys, time
    from vitsearch.search.store import Store
    store = Store(sys.argv[1], "images")
    store.exists()
    time.sleep(11.5)  # pymilvus' keepalive interval is 10 s
    print(store.exists())
""")


@pytest.mark.slow
def test_an_idle_lite_client_sends_no_keepalive_pings(tmp_path):
    """Lite's Python gRPC server answers a client that pings an idle connection every 10 s (pymilvus'
    default) with GOAWAY "too_many_pings" after a few pings; under load the next connection then
    failed ("Fail connecting to server"). grpc core's keepalive trace shows every ping sent."""
    env = {**os.environ, "GRPC_VERBOSITY": "debug", "GRPC_TRACE": "http_keepalive"}
    out = subprocess.run(
        [sys.executable, "-c", IDLE, str(tmp_path / "milvus.db")], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr[-2000:]
    assert "keepalive" in out.stderr.lower()  # the trace is on: a missing ping below means something
    assert "Finish keepalive ping" not in out.stderr


@pytest.mark.parametrize("how", ["exit", "sigkill"])
@pytest.mark.slow
def test_when_the_serving_process_goes_the_next_call_takes_over(db_uri, how):
    proc, seen = start_other(db_uri, 6)
    try:
        assert seen["served_here"] is True
        store = Store(db_uri, "images")
        assert not store.served_here and store.count() == 6
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
    assert store.served_here
    assert sorted(store.get(["/other/0.jpg", rows[0]["path"]])) == sorted(["/other/0.jpg", rows[0]["path"]])
    store.close()


@pytest.mark.slow
def test_a_process_that_does_not_share_the_database_gives_a_clear_error(db_uri):
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfrom pymilvus import MilvusClient\n"
            "MilvusClient(sys.argv[1]).list_collections()\nprint('open', flush=True)\nsys.stdin.readline()",
            db_uri,
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(StoreError, match="open in another process that does not share it"):
            Store(db_uri, "images", lite_wait_s=0.5)
    finally:
        holder.communicate("\n", timeout=60)


# Holds the database (Lite's lock) and publishes an endpoint nothing answers on, for a few seconds.
SILENT_HOLDER = textwrap.dedent("""
    import json, os, sys, time
    from milvus_lite.db import MilvusLite
    lite = MilvusLite(sys.argv[1])
    endpoint = {"pid": os.getpid(), "uri": "unix:" + sys.argv[1] + "/nobody.sock"}
    open(sys.argv[1] + "/vitsearch-endpoint.json", "w").write(json.dumps(endpoint))
    print("holding", flush=True)
    time.sleep(float(sys.argv[2]))
""")


@pytest.mark.slow
def test_a_first_connection_that_is_not_answered_is_tried_again(tmp_path):
    """A published endpoint that does not answer (a sharing process exiting, or one too busy to
    answer within pymilvus' 10 s) is tried again, and the database is served from here once its
    holder has gone, instead of failing the first open."""
    db = tmp_path / "milvus.db"
    db.mkdir(mode=0o700)
    holder = subprocess.Popen([sys.executable, "-c", SILENT_HOLDER, str(db), "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with Store(str(db), "images") as store:  # its first tries find no one at the endpoint
            assert holder.poll() is not None  # it answered only after the holder had gone
            assert store.served_here and not store.exists()
    finally:
        holder.kill()
        holder.wait(timeout=60)


def test_a_stale_endpoint_file_is_replaced(db_uri, tmp_path):
    from pathlib import Path

    db = Path(db_uri)
    db.mkdir()
    (db / ENDPOINT_FILE).write_text(json.dumps({"pid": 999_999_999, "uri": "http://127.0.0.1:1"}))
    with Store(db_uri, "images") as store:
        assert store.served_here and not store.exists()
    record = json.loads((db / ENDPOINT_FILE).read_text())
    assert record["uri"] != "http://127.0.0.1:1" and record["pid"] > 0


def test_an_old_single_file_database_is_refused_clearly(tmp_path):
    old = tmp_path / "old.db"
    old.write_bytes(b"SQLite format 3\0")
    with pytest.raises(StoreError, match="not a Milvus Lite database directory"):
        Store(str(old), "images")
    assert old.read_bytes() == b"SQLite format 3\0"  # untouched


# --- a --uri that cannot be a database gets its real reason, and nothing is written ------------


def test_a_uri_under_a_regular_file_is_refused(tmp_path):
    (tmp_path / "photo.jpg").write_bytes(b"x")
    with pytest.raises(StoreError, match=r"photo.jpg is a file, not a folder"):
        Store(str(tmp_path / "photo.jpg" / "milvus.db"), "images")


def test_a_folder_that_is_not_a_lite_database_is_refused_untouched(photos):
    before = sorted(p.name for p in photos.iterdir())
    with pytest.raises(StoreError, match="is a folder that is not a Milvus Lite database"):
        Store(str(photos), "images")
    assert sorted(p.name for p in photos.iterdir()) == before  # no LOCK, no collections/ written into it


def test_an_empty_uri_is_refused():
    from vitsearch.search.config import Settings

    with pytest.raises(ValueError, match="empty"):
        Settings(uri="")
    with pytest.raises(StoreError, match="empty"):
        Store("", "images")


def run_without_root_file_access(code: str, *args: str) -> subprocess.CompletedProcess:
    """``python -c code args`` where file permissions apply also to root: under util-linux's
    ``setpriv`` without CAP_DAC_OVERRIDE (no Python runs between fork and exec, unlike a
    ``preexec_fn`` in this process full of gRPC threads), else with hostile.py's ``preexec_fn``."""
    import shutil

    from hostile import without_root_file_access

    cmd = [sys.executable, "-c", code, *args]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        return subprocess.run(
            ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd],
            capture_output=True,
            text=True,
            timeout=120,
        )
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, preexec_fn=without_root_file_access)


@pytest.mark.slow
def test_a_read_only_database_says_why(db_uri):
    import os
    from pathlib import Path

    from vitsearch.search.store.lite import release

    with Store(db_uri, "images") as store:
        store.ensure(INFO)
    release(Path(db_uri))  # this process no longer serves it: the next one opens it itself
    for p in [Path(db_uri), *Path(db_uri).rglob("*")]:
        p.chmod(p.stat().st_mode & ~0o222)
    try:
        if run_without_root_file_access("import sys; open(sys.argv[1], 'r+b')", db_uri + "/LOCK").returncode == 0:
            pytest.skip("file permissions do not apply to this process (root that cannot drop its access)")
        out = run_without_root_file_access(
            "import sys\nfrom vitsearch.search.store import Store\n"
            "try:\n    Store(sys.argv[1], 'images')\nexcept Exception as e:\n    print(type(e).__name__, e)",
            db_uri,
        )
        assert "StoreError" in out.stdout and "Permission denied" in out.stdout, (
            out.stdout,
            out.stderr[-3000:],
            out.returncode,
        )
        assert "read-only" in out.stdout and "unknown error" not in out.stdout
    finally:
        for p in [Path(db_uri), *Path(db_uri).rglob("*")]:
            p.chmod(p.stat().st_mode | 0o200)
    assert os.access(db_uri, os.W_OK)


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MB filesystem (tmpfs), to fill up; skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if made.returncode:
        pytest.skip(f"cannot mount a small tmpfs to fill up here: {made.stderr.strip()} (needs root)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.mark.slow
def test_a_full_disk_leaves_no_temp_files_and_reads_still_work(small_disk, photos, tiny_model):
    vitsearch = [sys.executable, "-c", "from vitsearch.cli import main; main()"]
    db = small_disk / "milvus.db"

    def cli(*args):
        return subprocess.run([*vitsearch, *map(str, args), "--uri", db], capture_output=True, text=True, timeout=300)

    assert cli("index", photos, "--model", tiny_model, "--workers", 0).returncode == 0
    fill = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)  # fill the disk to the last byte
    for block in (65536, 512, 1):
        try:
            while True:
                os.write(fill, b"\0" * block)
        except OSError:
            pass
    os.close(fill)
    stats = cli("stats", "--json")  # a new process that serves the database and cannot publish its endpoint
    assert stats.returncode == 0 and json.loads(stats.stdout)["count"] == 11, stats.stderr
    assert "Traceback" not in stats.stderr
    found = cli("search", photos / "cat.jpg", "-k", 1, "--json")  # loading the collection writes nothing
    assert found.returncode == 0 and json.loads(found.stdout)["hits"][0]["path"] == str(photos / "cat.jpg")
    leftovers = [p.name for p in db.iterdir() if p.name.startswith(".") and "endpoint" in p.name]
    assert leftovers == []
    more = photos / "more"
    more.mkdir()
    (more / "again.jpg").write_bytes((photos / "cat.jpg").read_bytes())
    full = cli("index", more)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    assert "error: Milvus at" in full.stderr and "No space left on device" in full.stderr
    stats = cli("stats", "--json")
    assert stats.returncode == 0 and json.loads(stats.stdout)["count"] >= 11  # nothing indexed was lost


# --- only the owner gets in ---------------------------------------------------------------------

NOBODY = 65534
# Another user's attempt: read the endpoint, then list the collections over it.
INTRUDER = textwrap.dedent("""
    import json, sys
    from pymilvus import MilvusClient
    try:
        uri = json.load(open(sys.argv[1]))["uri"]
    except OSError as e:
        print("endpoint:", type(e).__name__); sys.exit()
    try:
        print("listed:", MilvusClient(uri=uri, timeout=5).list_collections())
    except Exception as e:
        print("connect:", type(e).__name__)
""")


def as_other_user(code: str, *args: str) -> str:
    """``python -c code args`` as the user ``nobody`` (uid 65534), its output."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("running as another user needs root and util-linux's setpriv")
    out = subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            "--",
            sys.executable,
            "-c",
            code,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip()


@pytest.fixture
def shared_tmp():
    """A temporary folder every user can enter (pytest's own is its user's alone), removed after."""
    folder = Path(tempfile.mkdtemp(prefix="vitsearch-share-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder)


@pytest.mark.slow
def test_another_user_can_neither_read_the_endpoint_nor_connect(shared_tmp):
    db = shared_tmp / "milvus.db"
    with Store(str(db), "images") as store:
        store.ensure(INFO)
        store.upsert(make_rows(3)[0])
        record = json.loads((db / ENDPOINT_FILE).read_text())
        socket = Path(record["uri"].removeprefix("unix:"))
        assert record["uri"].startswith("unix:") and socket == db / "vitsearch.sock"  # no TCP port to reach
        assert stat.S_ISSOCK(socket.stat().st_mode) and stat.S_IMODE(socket.stat().st_mode) == 0o600
        assert stat.S_IMODE(db.stat().st_mode) == 0o700
        assert stat.S_IMODE((db / ENDPOINT_FILE).stat().st_mode) == 0o600

        assert as_other_user(INTRUDER, str(db / ENDPOINT_FILE)) == "endpoint: PermissionError"
        db.chmod(0o755)  # a folder opened to others (as an older vitsearch made them): the socket still refuses
        (db / ENDPOINT_FILE).chmod(0o644)
        assert as_other_user(INTRUDER, str(db / ENDPOINT_FILE)) == "connect: MilvusException"
        assert store.count() == 3  # nobody deleted anything
    release(db)  # closed before the folder is removed (Lite writes at close)


@pytest.mark.slow
def test_a_second_process_of_the_owner_still_connects_over_the_socket(db_uri):
    """The same check's positive side: the owner's other process, given the same endpoint."""
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        out = subprocess.run(
            [sys.executable, "-c", INTRUDER, str(Path(db_uri) / ENDPOINT_FILE)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.stdout.strip().startswith("listed: ["), out.stderr[-3000:]
        assert "images" in out.stdout


def test_a_database_folder_opened_to_others_is_made_private_again(db_uri):
    db = Path(db_uri)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
    release(db)
    db.chmod(0o755)
    with Store(db_uri, "images") as store:
        assert store.exists()
    assert stat.S_IMODE(db.stat().st_mode) == 0o700


@pytest.mark.slow
def test_a_path_too_long_for_a_socket_serves_from_a_private_temporary_folder(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)  # over the ~107 bytes of a socket address
    db = deep / "milvus.db"
    rows, _ = make_rows(4)
    with Store(str(db), "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        socket = Path(json.loads((db / ENDPOINT_FILE).read_text())["uri"].removeprefix("unix:"))
        assert socket.parent != db and stat.S_IMODE(socket.parent.stat().st_mode) == 0o700
        assert stat.S_IMODE(socket.stat().st_mode) == 0o600
        proc, seen = start_other(str(db), 2)  # shared all the same
        try:
            assert seen == {"served_here": False, "count": 6}
        finally:
            proc.communicate("\n", timeout=60)
    release(db)
    assert not socket.parent.exists()  # the private folder goes with the server
