"""Contract of :mod:`vitsearch.search.config`: where the Milvus URI and token come from
(:meth:`Settings.resolved_uri`, :meth:`Settings.token_for`: an explicit URI, else the server that
``vitsearch server start`` recorded in the data folder while its process runs, else the Lite
file in the data folder; a recorded server that is gone is an error that says what to do), that
an explicit argument beats its ``VITSEARCH_*`` variable, which beats the default, what the
settings refuse, and how :func:`host_name` and :func:`served_hosts` read host names.

A recorded server is written in its documented format (``<data_dir>/server/vitsearch-server.json``
holding a :class:`~vitsearch.search.server.ServerState`, ``credentials`` holding
``root:<password>``) and read back through :class:`~vitsearch.search.server.LocalServer`; its
process is a real one: a copy of ``sleep`` run as the server's ``bin/milvus``, alive, or killed
and reaped (a pid that is gone).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from pydantic import ValidationError

from vitsearch.search.config import (
    LOOPBACK_HOSTS,
    Settings,
    host_name,
    served_hosts,
)
from vitsearch.search.errors import ServerError
from vitsearch.search.server import LocalServer, ServerState

SERVER_URI = "http://127.0.0.1:19777"


def record_server(data_dir: Path, pid: int, uri: str = SERVER_URI) -> ServerState:
    """Record a started server in ``data_dir`` as ``vitsearch server start`` does (its JSON file)."""
    state = ServerState(
        pid=pid, uri=uri, port=int(uri.rsplit(":", 1)[1]), health_port=9091, started=0.0, version="2.3.5"
    )
    root = data_dir / "server"
    root.mkdir(parents=True, exist_ok=True)
    (root / "vitsearch-server.json").write_text(json.dumps(asdict(state)))
    assert LocalServer.for_data_dir(data_dir).state() == state  # the format is the one the product reads
    return state


def run_as_server_binary(data_dir: Path) -> subprocess.Popen:
    """A real process whose program is the data folder's server binary (``server/bin/milvus``,
    here a copy of ``sleep``), as ``LocalServer.alive`` looks for it."""
    binary = data_dir / "server" / "bin" / "milvus"
    binary.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(shutil.which("sleep"), binary)
    proc = subprocess.Popen([str(binary), "60"])
    cmdline = Path(f"/proc/{proc.pid}/cmdline")
    deadline = time.monotonic() + 10
    while str(binary).encode() not in cmdline.read_bytes():  # the exec may not have happened yet
        assert time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.01)
    return proc


@pytest.fixture
def server_process(data_dir):
    proc = run_as_server_binary(data_dir)
    yield proc
    proc.kill()
    proc.wait()


@pytest.fixture
def gone_pid(data_dir) -> int:
    """The pid of a server process that was started, killed and reaped."""
    proc = run_as_server_binary(data_dir)
    proc.kill()
    proc.wait()
    return proc.pid


# --- resolved_uri -------------------------------------------------------------------------------


def test_without_a_server_the_uri_is_the_lite_file_in_the_data_folder(data_dir):
    assert Settings().resolved_uri() == str(data_dir / "milvus.db")
    other = data_dir / "elsewhere"
    assert Settings(data_dir=other).resolved_uri() == str(other / "milvus.db")


def test_a_running_recorded_server_is_the_default_uri(data_dir, server_process):
    record_server(data_dir, server_process.pid)
    assert Settings().resolved_uri() == SERVER_URI


def test_an_explicit_uri_wins_over_a_running_server_and_a_gone_one(data_dir, server_process, tmp_path):
    record_server(data_dir, server_process.pid)
    mine = str(tmp_path / "mine.db")
    assert Settings(uri=mine).resolved_uri() == mine
    server_process.kill()
    server_process.wait()
    assert Settings(uri=mine).resolved_uri() == mine  # no error: the recorded server is not used


def test_a_recorded_server_whose_process_is_gone_is_an_error_saying_what_to_do(data_dir, gone_pid):
    record_server(data_dir, gone_pid)
    with pytest.raises(ServerError) as err:
        Settings().resolved_uri()
    message = str(err.value)
    assert SERVER_URI in message and str(gone_pid) in message
    assert "vitsearch server start" in message and "vitsearch server stop" in message
    assert str(LocalServer.for_data_dir(data_dir).log) in message
    assert not (data_dir / "milvus.db").exists()  # it did not fall back to Lite behind the user's back


def test_a_recorded_pid_taken_by_another_program_is_a_gone_server(data_dir):
    """A live process that is not the server's ``bin/milvus`` (here: this test's own) does not count."""
    record_server(data_dir, os.getpid())
    with pytest.raises(ServerError, match="is not running"):
        Settings().resolved_uri()


def test_a_stopped_server_goes_back_to_lite(data_dir, gone_pid):
    record_server(data_dir, gone_pid)
    assert LocalServer.for_data_dir(data_dir).stop(grace_s=0) is not None  # removes the record
    assert Settings().resolved_uri() == str(data_dir / "milvus.db")


def test_an_unreadable_server_record_is_an_error_naming_the_file(data_dir):
    record = data_dir / "server" / "vitsearch-server.json"
    record.parent.mkdir(parents=True)
    record.write_text('{"pid": 1')
    with pytest.raises(ServerError, match="unreadable") as err:
        Settings().resolved_uri()
    assert str(record) in str(err.value)


# --- token_for ----------------------------------------------------------------------------------


def write_credentials(data_dir: Path, token: str) -> None:
    path = data_dir / "server" / "credentials"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(token + "\n")


def test_the_token_of_the_recorded_server_is_used_for_its_uri_only(data_dir, server_process):
    record_server(data_dir, server_process.pid)
    write_credentials(data_dir, "root:s3cret")
    settings = Settings()
    assert settings.token_for(settings.resolved_uri()) == "root:s3cret"
    assert settings.token_for("http://127.0.0.1:19530") is None  # another server: not its password
    assert settings.token_for(str(data_dir / "milvus.db")) is None


def test_no_token_without_a_recorded_server(data_dir):
    write_credentials(data_dir, "root:s3cret")  # kept across stops, but no server is recorded
    assert Settings().token_for(SERVER_URI) is None


def test_an_explicit_token_wins_and_is_never_shown(data_dir, server_process, monkeypatch):
    record_server(data_dir, server_process.pid)
    write_credentials(data_dir, "root:s3cret")
    assert Settings(token="alice:pw").token_for(SERVER_URI) == "alice:pw"
    monkeypatch.setenv("VITSEARCH_TOKEN", "bob:pw")
    settings = Settings()
    assert settings.token_for(SERVER_URI) == "bob:pw"
    assert settings.token_for("http://elsewhere:19530") == "bob:pw"
    assert "bob:pw" not in repr(settings) and "bob:pw" not in str(settings.model_dump())


# --- environment versus arguments ---------------------------------------------------------------


def test_an_argument_beats_its_environment_variable_which_beats_the_default(monkeypatch, tmp_path):
    default = Settings()
    monkeypatch.setenv("VITSEARCH_URI", str(tmp_path / "env.db"))
    monkeypatch.setenv("VITSEARCH_COLLECTION", "from_env")
    monkeypatch.setenv("VITSEARCH_WORKERS", str(default.workers + 3))
    monkeypatch.setenv("VITSEARCH_COMPILE", "true")
    monkeypatch.setenv("VITSEARCH_RUNTIME", "onnx")
    from_env = Settings()
    assert from_env.resolved_uri() == str(tmp_path / "env.db")
    assert (from_env.collection, from_env.workers, from_env.compile, from_env.runtime) == (
        "from_env",
        default.workers + 3,
        True,
        "onnx",
    )
    given = Settings(uri=str(tmp_path / "arg.db"), collection="from_arg", workers=0, compile=False, runtime="torch")
    assert given.resolved_uri() == str(tmp_path / "arg.db")
    assert (given.collection, given.workers, given.compile, given.runtime) == ("from_arg", 0, False, "torch")


def test_the_data_folder_comes_from_the_environment(data_dir, monkeypatch, tmp_path):
    assert Settings().data_dir == data_dir  # conftest's VITSEARCH_DATA_DIR
    assert Settings().models_dir == data_dir / "models"
    monkeypatch.setenv("VITSEARCH_DATA_DIR", str(tmp_path / "other"))
    assert Settings().resolved_uri() == str(tmp_path / "other" / "milvus.db")


def test_an_environment_value_out_of_range_is_refused(monkeypatch):
    monkeypatch.setenv("VITSEARCH_WORKERS", "-1")
    with pytest.raises(ValidationError, match="workers"):
        Settings()


def test_allowed_hosts_from_the_environment_are_comma_separated(monkeypatch):
    monkeypatch.setenv("VITSEARCH_ALLOWED_HOSTS", " Photos.LAN:8501 ,, [::1] , nas. ,")
    assert Settings().allowed_hosts == ["photos.lan", "[::1]", "nas"]
    assert Settings(allowed_hosts=["given"]).allowed_hosts == ["given"]


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["", "   ", "\t\n"])
def test_an_empty_uri_is_refused_saying_what_to_give(uri, monkeypatch):
    with pytest.raises(ValidationError, match="the Milvus URI is empty"):
        Settings(uri=uri)
    monkeypatch.setenv("VITSEARCH_URI", uri)
    with pytest.raises(ValidationError, match="the Milvus URI is empty"):
        Settings()


@pytest.mark.parametrize("bad", ["http://photos.lan", "user@photos.lan", "photos.lan/x", "x:70000", "[::1", "a b"])
def test_an_allowed_host_that_is_not_a_host_is_refused_naming_it(bad):
    with pytest.raises(ValidationError, match="is not a host name or address") as err:
        Settings(allowed_hosts=["fine.lan", bad])
    assert repr(bad) in str(err.value)


def test_a_long_bad_allowed_host_is_shortened_in_the_message():
    bad = "/" + "x" * 500
    with pytest.raises(ValidationError) as err:
        Settings(allowed_hosts=[bad])
    assert bad[:77] in str(err.value) and bad not in str(err.value)


@pytest.mark.parametrize(
    ("field", "lowest", "too_low"),
    [
        ("image_size", 8, 7),
        ("batch_size", 1, 0),
        ("workers", 0, -1),
        ("lite_wait_s", 0, -0.5),
        ("max_upload_mb", 1, 0),
        ("retry_s", 0, -1),
        ("ray_start_s", 0, -1),
        ("max_image_pixels", 1, 0),
        ("max_filter_chars", 1, 0),
        ("max_filter_depth", 1, 0),
    ],
)
def test_numbers_have_a_lowest_accepted_value(field, lowest, too_low):
    assert getattr(Settings(**{field: lowest}), field) == lowest
    with pytest.raises(ValidationError, match=field):
        Settings(**{field: too_low})


def test_the_largest_file_is_a_positive_size_in_megabytes():
    assert Settings(max_file_mb=0.5).max_file_bytes == 2**19
    assert Settings(max_file_mb=3).max_file_bytes == 3 * 2**20
    for bad in (0, -1):
        with pytest.raises(ValidationError, match="max_file_mb"):
            Settings(max_file_mb=bad)


def test_pooling_and_runtime_are_one_of_their_names():
    assert Settings(pooling="mean", runtime="onnx-int8").runtime == "onnx-int8"
    assert Settings().runtime is None
    with pytest.raises(ValidationError, match="pooling"):
        Settings(pooling="max")
    with pytest.raises(ValidationError, match="runtime"):
        Settings(runtime="tensorrt")


# --- host_name and served_hosts -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "host"),
    [
        ("[2001:DB8:0:0:0:0:0:1]:443", "[2001:db8::1]"),  # short form, lower case, port dropped
        ("2001:db8::1", "[2001:db8::1]"),  # bare IPv6, as --host gives it
        ("[::1]", "[::1]"),
        ("photos.lan.", "photos.lan"),  # trailing dot of a fully qualified name
        ("photos.lan.:8501", "photos.lan"),
        ("  NAS_1.home  ", "nas_1.home"),
        ("10.0.0.7:65535", "10.0.0.7"),  # the highest port
        ("host:0", "host"),
    ],
)
def test_host_name_reads_a_host_as_a_browser_sends_it(value, host):
    assert host_name(value) == host


@pytest.mark.parametrize(
    "value",
    ["", ".", "...", "host:65536", "host:123456", "host:", "1::2::3", "[fe80::1%eth0]", "[photos.lan]", "héllo.lan"],
)
def test_host_name_is_none_for_what_is_not_a_host(value):
    assert host_name(value) is None


@pytest.mark.parametrize("bind", ["0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0", "", "localhost", "::1", "127.0.0.1"])
def test_a_wildcard_or_loopback_bind_serves_the_loopback_names_only(bind):
    assert served_hosts(bind) == list(LOOPBACK_HOSTS)


def test_served_hosts_adds_the_bind_then_the_allowed_names_once_each_in_order():
    assert served_hosts("Photos.Lan.", ["nas:8501", "PHOTOS.LAN", "[::1]:80", "nas.", "192.168.1.20"]) == [
        *LOOPBACK_HOSTS,
        "photos.lan",
        "nas",
        "192.168.1.20",
    ]
    assert served_hosts("fe80::1", []) == [*LOOPBACK_HOSTS, "[fe80::1]"]


def test_served_hosts_refuses_an_allowed_entry_that_is_not_a_host():
    with pytest.raises(ValueError, match="'http://nas' is not a host name or address"):
        served_hosts("0.0.0.0", ["nas", "http://nas"])
