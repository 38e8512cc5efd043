"""Contract of :mod:`vitsearch.search.store.bulk`: bulk import is for a Milvus server only (a
store whose :class:`~vitsearch.search.store.profile.BackendProfile` has ``bulk_import``; a Milvus
Lite store is refused, naming its URI, and left as it was); on a server :func:`bulk_import` sends
one import task per file for the store's physical collection with the store's token, waits for
the job and returns the rows it imported, and a job that fails or does not finish in time is a
:class:`StoreError`; :func:`bulk_load` imports every Parquet file under a folder, in order.

Milvus's bulk import (REST ``/v2/vectordb/jobs/import/*``) needs a Milvus 2.4+ server with
object storage, which cannot run here: Milvus Lite has no import, and the server of ``vitsearch
server`` (Milvus 2.3.5, tests/test_local_server.py, tests/test_server.py) has no v2 REST API. So the
server here is one TCP port that carries the store's gRPC (HTTP/2) to a real ``milvus-lite
server`` process holding the real collection, and answers the import API's HTTP/1.1 calls itself,
as Milvus 2.4 documents them. Nothing in tests/test_server.py or tests/test_ray.py runs a bulk
import against a real server either: tests/test_ray.py checks the Parquet shards that ``--engine
ray --bulk-dir`` writes and the Lite refusal.
"""

from __future__ import annotations

import http.server
import json
import socket
import threading
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import MilvusProcess

from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.errors import StoreError
from vitsearch.search.store import Store
from vitsearch.search.store.bulk import bulk_import, bulk_load
from vitsearch.search.store.profile import LITE, SERVER, profile_for

INFO = EncoderInfo(model="m", weights_sha256="a" * 64, dim=4, pooling="cls", image_size="32x32")


class ImportApi:
    """One loopback port: gRPC (a connection that opens with the HTTP/2 preface) is piped to
    ``grpc_port``; HTTP/1.1 ``POST /v2/vectordb/jobs/import/{create,describe}`` are answered from
    :attr:`replies` (a list of ``(path, body)`` given in turn; the last is repeated) and recorded
    in :attr:`requests` as ``(path, headers, body)``."""

    def __init__(self, grpc_port: int):
        self.grpc_port = grpc_port
        self.replies: dict[str, list[dict]] = {}
        self.requests: list[tuple[str, dict, dict]] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.uri = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn, addr), daemon=True).start()

    def _serve(self, conn: socket.socket, addr) -> None:
        head = b""
        while len(head) < 3:
            head = conn.recv(3, socket.MSG_PEEK)
            if not head:
                conn.close()
                return
        if head == b"PRI":  # HTTP/2: gRPC
            backend = socket.create_connection(("127.0.0.1", self.grpc_port))
            threading.Thread(target=_pipe, args=(backend, conn), daemon=True).start()
            _pipe(conn, backend)
        else:
            api = self

            class Handler(http.server.BaseHTTPRequestHandler):
                def do_POST(self):
                    body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                    api.requests.append((self.path, dict(self.headers), body))
                    queue = api.replies.get(self.path) or [{"code": 404, "message": f"no route {self.path}"}]
                    reply = json.dumps(queue.pop(0) if len(queue) > 1 else queue[0]).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)

                def log_message(self, *args):
                    pass

            Handler(conn, addr, None)
            conn.close()

    def close(self) -> None:
        self.sock.close()


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


CREATE = "/v2/vectordb/jobs/import/create"
DESCRIBE = "/v2/vectordb/jobs/import/describe"


@pytest.fixture(scope="module")
def milvus(tmp_path_factory):
    """One ``milvus-lite server`` process for the module (its start costs seconds)."""
    folder = tmp_path_factory.mktemp("bulk-milvus")
    process = MilvusProcess(folder / "data", folder / "server.log").start()
    yield process
    process.kill()


@pytest.fixture
def server(milvus):
    api = ImportApi(milvus.port)
    yield api
    api.close()


@pytest.fixture
def store(server):
    with Store(server.uri, "images", token="root:pw", retry_s=5) as s:
        s.ensure(INFO)
        yield s


def job(state: str, **more) -> dict:
    return {"code": 0, "data": {"jobId": "job-7", "state": state, **more}}


# --- which backend imports ----------------------------------------------------------------------


def test_bulk_import_is_a_server_switch_of_the_backend_profile():
    assert profile_for("http://milvus:19530").bulk_import and SERVER.bulk_import
    assert not profile_for("/data/milvus.db").bulk_import and not LITE.bulk_import


def test_a_lite_store_is_refused_naming_its_uri_and_left_unchanged(tmp_path):
    uri = str(tmp_path / "milvus.db")
    shards = tmp_path / "shards"
    shards.mkdir()
    pq.write_table(pa.table({"path": ["/a.jpg"], "vector": [[0.0, 0.0, 0.0, 1.0]]}), shards / "part-0.parquet")
    with Store(uri, "images") as store:
        store.ensure(INFO)
        with pytest.raises(StoreError, match="needs a Milvus server") as err:
            bulk_import(store, ["part-0.parquet"])
        assert uri in str(err.value)
        with pytest.raises(StoreError, match="needs a Milvus server"):
            bulk_load(store, str(shards))
        assert store.count() == 0


# --- on a server --------------------------------------------------------------------------------


def test_one_task_per_file_for_the_physical_collection_with_the_token(server, store):
    server.replies = {CREATE: [job("Pending")], DESCRIBE: [job("Importing"), job("Completed", importedRows=1234)]}
    assert bulk_import(store, ["wave-0/a.parquet", "wave-1/b.parquet"], poll_s=0.01) == 1234
    (path, headers, body), *polls = server.requests
    assert path == CREATE
    assert body["collectionName"] == store.physical and store.physical is not None
    assert body["files"] == [["wave-0/a.parquet"], ["wave-1/b.parquet"]]
    assert headers["Authorization"] == "Bearer root:pw"
    assert [p for p, _, _ in polls] == [DESCRIBE, DESCRIBE]  # asked until it completed
    assert all(b["jobId"] == "job-7" and h["Authorization"] == "Bearer root:pw" for _, h, b in polls)


def test_a_failed_job_is_a_store_error_with_its_reason(server, store):
    server.replies = {CREATE: [job("Pending")], DESCRIBE: [job("Failed", reason="field vector: dim 3, want 4")]}
    with pytest.raises(StoreError, match="failed: field vector: dim 3, want 4") as err:
        bulk_import(store, ["a.parquet"], poll_s=0.01)
    assert "job-7" in str(err.value) and server.uri in str(err.value)


@pytest.mark.slow
def test_a_job_that_does_not_finish_in_time_is_a_store_error(server, store):
    server.replies = {CREATE: [job("Pending")], DESCRIBE: [job("Importing", progress=10)]}
    started = time.monotonic()
    with pytest.raises(StoreError, match="did not finish in 1 s"):
        bulk_import(store, ["a.parquet"], timeout_s=1.0, poll_s=0.1)
    assert time.monotonic() - started < 5
    assert len(server.requests) > 2  # polled meanwhile


def test_a_reply_without_a_job_is_a_store_error(server, store):
    server.replies = {CREATE: [{"code": 0, "data": {}, "message": "no job"}]}
    with pytest.raises(StoreError, match="refused the bulk import of 1 files"):
        bulk_import(store, ["a.parquet"], poll_s=0.01)


def test_a_server_that_refuses_the_job_is_a_store_error(server, store):
    server.replies = {CREATE: [{"code": 1100, "message": "collection not loaded"}]}
    with pytest.raises(StoreError, match="collection not loaded"):
        bulk_import(store, ["a.parquet"], poll_s=0.01)


def test_bulk_load_imports_every_parquet_file_under_the_folder_in_order(server, store, tmp_path):
    shards = tmp_path / "shards"
    for name in ("wave-00001/part-1.parquet", "wave-00000/part-0.parquet", "wave-00000/part-2.parquet"):
        (shards / name).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"path": [name]}), shards / name)
    (shards / "wave-00000" / "_SUCCESS").write_text("")
    (shards / "notes.txt").write_text("not a shard")
    server.replies = {CREATE: [job("Pending")], DESCRIBE: [job("Completed", importedRows=3)]}
    assert bulk_load(store, f"file://{shards}") == 3
    sent = [f for [f] in server.requests[0][2]["files"]]
    # A local folder has no bucket: each key is the file's path from the file system's root.
    assert sent == [
        str(shards / n).lstrip("/")
        for n in ("wave-00000/part-0.parquet", "wave-00000/part-2.parquet", "wave-00001/part-1.parquet")
    ]
