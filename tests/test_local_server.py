"""``vitsearch server start|stop|status``: a real Milvus 2.3.5 standalone (the ``milvus``
package, ``vitsearch[server]``) started for the user in the test's own data folder, used by
the other commands without ``--uri``, stopped, started again on the same data, and found dead.
Skipped, saying why, where the package is not installed or another Milvus server holds the
embedded etcd's fixed port."""
from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from conftest import EXAMPLES
from test_cli import cli


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A data folder whose name holds a space and a quote (written into Milvus's configuration)."""
    d = tmp_path / "John's vitsearch data"
    monkeypatch.setenv("VITSEARCH_DATA_DIR", str(d))
    return d


@pytest.fixture
def server_env(data_dir):
    pytest.importorskip("milvus", reason="the Milvus server is not installed: pip install 'vitsearch[server]'")
    from vitsearch.search.server import _ETCD_PEER_PORT, _listening

    if _listening(_ETCD_PEER_PORT):
        pytest.skip(f"127.0.0.1:{_ETCD_PEER_PORT} is taken: another Milvus server runs here")
    yield data_dir / "server"
    cli("server", "stop", "--grace", "0", ok=False)  # whatever the test left


@pytest.mark.parametrize("name", ["a #comment", "key: value", "line\nbreak"])
def test_a_folder_that_milvus_yaml_would_misread_is_refused_before_anything_starts(tmp_path, name):
    folder = tmp_path / name
    out = cli("server", "start", ok=False, VITSEARCH_DATA_DIR=str(folder))
    assert out.returncode == 1 and "VITSEARCH_DATA_DIR" in out.stderr and "Traceback" not in out.stderr
    assert not folder.exists()


def test_start_makes_the_server_every_command_default_until_stop_or_death(server_env, photos, tiny_model,
                                                                          data_dir):
    from pymilvus import MilvusClient

    out = cli("server", "status", ok=False)
    assert out.returncode == 3 and "not running" in out.stdout

    started = cli("server", "start")
    status = json.loads(cli("server", "status", "--json").stdout)
    assert status["running"] and status["healthy"] and status["folder"] == str(server_env)
    uri = status["uri"]
    assert uri.startswith("http://127.0.0.1:") and uri in started.stdout
    assert "all network interfaces" in started.stderr  # the warning about Milvus's listeners
    assert "already running" in cli("server", "start").stdout

    # authentication is on, and the built-in root:Milvus no longer logs in
    credentials = server_env / "credentials"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    with pytest.raises(Exception):
        MilvusClient(uri=uri, token="root:Milvus", timeout=5).list_collections()
    with pytest.raises(Exception):
        MilvusClient(uri=uri, timeout=5).list_collections()

    # no --uri: index, search and stats go to the server, with its credentials, never to Lite
    indexed = cli("index", photos, "--model", tiny_model, "--runtime", "torch", "--workers", "0")
    assert f"at {uri}" in indexed.stdout
    hits = json.loads(cli("search", EXAMPLES / "queries" / "cat-crop.jpg", "--json", "-k", "3").stdout)
    assert hits[0]["path"] == str(photos / "cat.jpg")
    assert json.loads(cli("stats", "--json").stdout)["uri"] == uri
    assert not (data_dir / "milvus.db").exists()
    client = MilvusClient(uri=uri, token=credentials.read_text().strip(), timeout=10)
    assert client.query("images", filter="", output_fields=["count(*)"])[0]["count(*)"] == 11
    client.close()

    # stop: back to Milvus Lite, where nothing was indexed
    assert "stopped" in cli("server", "stop").stdout
    assert cli("server", "status", ok=False).returncode == 3
    lite = cli("stats", ok=False)
    assert lite.returncode == 1 and str(data_dir / "milvus.db") in lite.stderr

    # started again on the same data: the rows are there, searchable at once
    cli("server", "start")
    again = json.loads(cli("search", EXAMPLES / "queries" / "cat-crop.jpg", "--json", "-k", "3").stdout)
    assert [h["path"] for h in again] == [h["path"] for h in hits]

    # the server dies (killed, a crash, a reboot): commands name it, they do not fall back to Lite
    state = json.loads((server_env / "vitsearch-server.json").read_text())
    os.killpg(state["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while json.loads(cli("server", "status", "--json", ok=False).stdout)["running"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    t = time.monotonic()
    out = cli("stats", ok=False)
    assert out.returncode == 1 and "is not running" in out.stderr and "vitsearch server start" in out.stderr
    assert time.monotonic() - t < 30  # at once, not after Milvus's retries (VITSEARCH_RETRY_S is 60 s)
    assert "Traceback" not in out.stderr and "milvus.db" not in out.stderr
    status = cli("server", "status", ok=False)
    assert status.returncode == 3 and "gone" in status.stdout

    assert "already exited" in cli("server", "stop").stdout
    assert cli("stats", ok=False).stderr.count(str(data_dir / "milvus.db")) == 1  # Lite again
