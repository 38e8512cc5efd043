"""``vitsearch server start|stop|status``: a real Milvus 2.3.5 standalone (the ``milvus``
package, ``vitsearch[server]``) started for the user in the test's own data folder, used by
the other commands without ``--uri``, stopped, started again on the same data, and found dead;
its first start never lets the built-in ``root:Milvus`` in, its files are the user's alone, and
what stops a start (a port taken, credentials that do not fit its data) is one line. Skipped,
saying why, where the package is not installed or another Milvus server holds the embedded
etcd's fixed ports (then run it in a network namespace of its own)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES
from test_cli import VITSEARCH, cli

from vitsearch.search.server import ETCD_PORTS

pytestmark = pytest.mark.server


def listening(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def one_line_error(out: subprocess.CompletedProcess) -> str:
    """The single ``error: ...`` line a failed command printed (nothing else on stderr, no traceback)."""
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    return lines[0]


@pytest.fixture
def data_dir(tmp_path, monkeypatch) -> Path:
    """A data folder whose name holds a space and a quote (written into Milvus's configuration)."""
    d = tmp_path / "John's vitsearch data"
    monkeypatch.setenv("VITSEARCH_DATA_DIR", str(d))
    return d


@pytest.fixture
def server_env(data_dir):
    pytest.importorskip("milvus", reason="the Milvus server is not installed: pip install 'vitsearch[server]'")
    if taken := [port for port in ETCD_PORTS if listening(port)]:
        pytest.skip(
            f"127.0.0.1:{taken[0]} is taken: another Milvus server runs here (run this file in a network "
            f"namespace of its own: ip netns exec NAME pytest ...)"
        )
    yield data_dir / "server"
    cli("server", "stop", "--grace", "0", ok=False)  # whatever the test left


@pytest.mark.parametrize("name", ["a #comment", "key: value", "line\nbreak"])
def test_a_folder_that_milvus_yaml_would_misread_is_refused_before_anything_starts(tmp_path, name):
    folder = tmp_path / name
    out = cli("server", "start", ok=False, VITSEARCH_DATA_DIR=str(folder))
    assert out.returncode == 1 and "VITSEARCH_DATA_DIR" in out.stderr and "Traceback" not in out.stderr
    assert not folder.exists()


def test_start_makes_the_server_every_command_default_until_stop_or_death(server_env, photos, tiny_model, data_dir):
    from pymilvus import MilvusClient, MilvusException

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
    with pytest.raises(MilvusException):
        MilvusClient(uri=uri, token="root:Milvus", timeout=5).list_collections()
    with pytest.raises(MilvusException):
        MilvusClient(uri=uri, timeout=5).list_collections()

    # no --uri: index, search and stats go to the server, with its credentials, never to Lite
    indexed = cli("index", photos, "--model", tiny_model, "--runtime", "torch", "--workers", "0")
    assert f"at {uri}" in indexed.stdout
    hits = json.loads(cli("search", EXAMPLES / "queries" / "cat-crop.jpg", "--json", "-k", "3").stdout)["hits"]
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
    again = json.loads(cli("search", EXAMPLES / "queries" / "cat-crop.jpg", "--json", "-k", "3").stdout)["hits"]
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


def test_the_first_start_never_accepts_the_built_in_password_and_keeps_its_files_private(server_env):
    """The issue's attack: root:Milvus tried in a loop over the server's port while `server start`
    makes a new server (it was accepted for ~0.3 s before the password was replaced)."""
    import grpc
    from pymilvus.grpc_gen import milvus_pb2, milvus_pb2_grpc

    default = [("authorization", base64.b64encode(b"root:Milvus").decode())]
    start = subprocess.Popen([*VITSEARCH, "server", "start"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    accepted, tried_open = [], 0
    while start.poll() is None:
        try:  # the port of the server being started (19530, or the next free one), once recorded
            port = json.loads((server_env / "vitsearch-server.json").read_text())["port"]
        except (OSError, ValueError):
            port = None
        if port is not None and listening(port):
            tried_open += 1
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                try:
                    reply = milvus_pb2_grpc.MilvusServiceStub(channel).ShowCollections(
                        milvus_pb2.ShowCollectionsRequest(), metadata=default, timeout=0.5
                    )
                    if reply.status.error_code == 0 and reply.status.code == 0:
                        accepted.append(time.monotonic())
                except grpc.RpcError:
                    pass  # refused: what should happen
        time.sleep(0.01)
    out, err = start.communicate()
    assert start.returncode == 0, err
    assert tried_open >= 10  # the port was up, and tried, for a while during the start
    assert accepted == []

    # the server's folder and data are this user's alone; Milvus's own files are 0600
    assert stat.S_IMODE(server_env.stat().st_mode) == 0o700
    assert stat.S_IMODE((server_env / "data").stat().st_mode) == 0o700
    made = [p for p in (server_env / "data" / "rocksmq").rglob("*") if p.is_file()]
    assert made and all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in made)
    assert not list(server_env.glob(".setup-*"))  # the setup's keys are gone


def test_kept_credentials_fit_a_new_data_folder_and_others_are_one_line(server_env):
    from pymilvus import MilvusClient, MilvusException

    cli("server", "start")
    token = (server_env / "credentials").read_text().strip()
    cli("server", "stop")
    shutil.rmtree(server_env / "data")  # started afresh, the credentials kept
    started = cli("server", "start", ok=False)
    assert started.returncode == 0 and "Traceback" not in started.stderr, started.stderr[-3000:]
    assert (server_env / "credentials").read_text().strip() == token  # the kept password, now the new data's
    uri = json.loads(cli("server", "status", "--json").stdout)["uri"]
    MilvusClient(uri=uri, token=token, timeout=10).list_collections()
    with pytest.raises(MilvusException):
        MilvusClient(uri=uri, token="root:Milvus", timeout=5).list_collections()
    cli("server", "stop")

    (server_env / "credentials").write_text("root:not-the-password\n")  # credentials of other data
    line = one_line_error(cli("server", "start", ok=False))
    assert "does not take the root password" in line and str(server_env / "credentials") in line
    assert cli("server", "status", ok=False).returncode == 3  # not left running


def test_a_taken_etcd_port_is_one_line_before_anything_starts(server_env):
    with socket.socket() as blocker:
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", 2379))
        blocker.listen()
        line = one_line_error(cli("server", "start", ok=False))
    assert "port 2379" in line and "embedded etcd" in line and "--uri" in line
    assert not (server_env / "logs" / "server.log").exists()  # nothing was started


def test_a_server_that_exits_while_starting_names_the_cause_from_its_log(server_env):
    """A port bound but not listening passes the check, and Milvus's embedded etcd then fails
    to bind it: the cause is in its log, between Go stack traces."""
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 2380))
        line = one_line_error(cli("server", "start", ok=False))
    assert "exited" in line and "port 2380 is taken" in line and "peer port" in line
    assert str(server_env / "logs" / "server.log") in line
    assert ".go:" not in line and "goroutine" not in line
    assert cli("server", "status", ok=False).returncode == 3
