"""The store, client, names, duplicates and space test suites against a real Milvus server: the ``milvus`` 2.3.5
package's standalone server (embedded etcd, local storage), started in a network namespace that
has only loopback (it listens on all interfaces), with the suites run again inside that
namespace (``VITSEARCH_TEST_MILVUS_URI`` makes their ``db_uri`` the server). Skipped, saying
why, only where a namespace cannot be made or the server is not installed (the ``test`` extra
installs it: ``vitsearch[server]``)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = [pytest.mark.server, pytest.mark.network]

SERVER = Path(os.environ.get("VITSEARCH_MILVUS_SERVER", Path(sys.executable).parent / "milvus-server"))
# The suites whose Milvus calls differ by backend (expressions parsed by Milvus's own parser,
# search hits keyed `id`, iterator queries, consistency). tests/test_indexer.py is not rerun
# here (~100 s on the server): its Milvus calls are the store's, which tests/test_store.py covers.
SUITES = [
    "tests/test_store.py",
    "tests/test_store_contract.py",
    "tests/test_client.py",
    "tests/test_names.py",
    "tests/test_duplicates.py",
    "tests/test_space.py",
]


def netns(name: str, *cmd: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", "netns", "exec", name, *cmd], **kw)


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory):
    """``(namespace, uri)`` of a Milvus 2.3.5 standalone server, healthy, in its own namespace."""
    if not SERVER.exists():
        pytest.skip(f"{SERVER} not found: pip install 'vitsearch[server]' (the test extra does)")
    if shutil.which("ip") is None or os.geteuid() != 0:
        pytest.skip("network namespaces need root and iproute2's `ip` (CI runs as root)")
    name = f"vitsearch-test-{os.getpid()}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot make a network namespace here: {made.stderr.strip()}")
    data = tmp_path_factory.mktemp("milvus-server")
    log = open(data / "server.log", "w")
    server = None
    try:
        netns(name, "ip", "link", "set", "lo", "up", check=True)
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, str(SERVER), "--data", str(data / "data")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 120
        probe = "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9091/healthz', timeout=2)"
        while netns(name, sys.executable, "-c", probe, capture_output=True).returncode:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"Milvus server did not become healthy: {(data / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield name, "http://127.0.0.1:19530"
    finally:
        # The server ignores SIGTERM and runs `milvus` in a session of its own: after a grace
        # period, SIGKILL every process in the namespace, then remove it.
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
        for pid in map(int, pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if server is not None:
            server.wait()
        log.close()
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_store_indexer_and_search_suites_pass_against_a_milvus_server(milvus_server):
    name, uri = milvus_server
    env = {**os.environ, "VITSEARCH_TEST_MILVUS_URI": uri}
    out = netns(
        name,
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:warnings",
        *SUITES,
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = out.stdout.strip().splitlines()[-1] if out.stdout.strip() else out.stderr[-2000:]
    print(f"server leg: {summary}")
    assert out.returncode == 0, out.stdout[-5000:] + out.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", summary).group(1))
    assert passed >= 25 and "skipped" not in summary, summary
