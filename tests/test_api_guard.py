"""Contract of the HTTP API's guards (issue 29), with real requests to the real app on uvicorn over
a real Milvus Lite file: a request for a Host the server is not served on gets 400 whatever the
route (DNS rebinding), `vitsearch serve` answers its --host and --allowed-hosts too; a filter
too long or nested too deep is a 400 (not a 503), a JSON body over its limit a 413 before it
is read, a body that does not arrive a 408 after the timeout; /search/vector gives the same
hits for any scale of its vector."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from test_api import assert_same, free_port, serving, upload

from vitsearch.search import SearchClient
from vitsearch.search.config import Settings, host_name, served_hosts

VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]
#: Host headers a rebinding page, or a confused client, sends; none names this server.
HOSTILE_HOSTS = [
    "rebind.attacker.example:8101",
    "rebind.attacker.example",
    "localhost.attacker.example",
    "127.0.0.1.nip.io:8000",
    "attacker.example@localhost",
    "localhost:8000/x",
    "localhost:99999",
    "[::2]:8000",
    "0.0.0.0:8000",
    "",
    "loca\u0142host".encode(),
    "x" * 5000,
]


def raw(port: int, request: bytes, wait_s: float = 30.0) -> tuple[str, str, float]:
    """Send ``request`` as it is on a new connection; the status line, the whole answer (until
    the server closes the connection) and the seconds it took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    text = data.decode("latin-1")
    return text.split("\r\n", 1)[0], text, time.monotonic() - started


def test_host_names_are_read_as_a_browser_sends_them():
    assert [host_name(h) for h in ("LocalHost.:8501", "[0:0:0:0:0:0:0:1]:80", "::1", "photos.lan")] == [
        "localhost",
        "[::1]",
        "[::1]",
        "photos.lan",
    ]
    assert [host_name(h) for h in ("http://x", "a@b", "x:99999", "[zz]", "", "a/b", "[::1")] == [None] * 7
    loopback = ["localhost", "127.0.0.1", "[::1]"]
    assert served_hosts("127.0.0.1") == served_hosts("0.0.0.0") == served_hosts("::") == loopback
    assert served_hosts("192.168.1.20", ["Photos.Lan:8501"]) == [*loopback, "192.168.1.20", "photos.lan"]
    assert served_hosts("fe80::1") == [*loopback, "[fe80::1]"]


def test_allowed_hosts_setting_is_comma_separated_and_checked(monkeypatch):
    monkeypatch.setenv("VITSEARCH_ALLOWED_HOSTS", "photos.lan, 192.168.1.20:8501,,")
    assert Settings().allowed_hosts == ["photos.lan", "192.168.1.20"]
    monkeypatch.setenv("VITSEARCH_ALLOWED_HOSTS", "photos.lan,https://evil.example/")
    with pytest.raises(ValueError, match="'https://evil.example/' is not a host name or address"):
        Settings()


@pytest.mark.slow
def test_a_request_for_another_host_is_refused_on_every_route(indexed):
    photos, uri = indexed
    cat, data = str(photos / "cat.jpg"), (photos / "cat.jpg").read_bytes()
    with serving(uri, settings={"allowed_hosts": ["photos.lan"]}) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        routes = {  # what the attacker read: the stats, a thumbnail, every path (k = 1000)
            "stats": lambda h: httpx.get(f"{base}/stats", headers=h),
            "thumbnail": lambda h: httpx.get(f"{base}/thumbnail", params={"path": cat}, headers=h),
            "vector": lambda h: httpx.post(f"{base}/search/vector", json={"vector": [1.0] * 32, "k": 1000}, headers=h),
            "similar": lambda h: httpx.post(f"{base}/search/similar", json={"path": cat}, headers=h),
            "search": lambda h: httpx.post(f"{base}/search", files={"image": ("q.jpg", data)}, headers=h),
            "readyz": lambda h: httpx.get(f"{base}/readyz", headers=h),
            "docs": lambda h: httpx.get(f"{base}/docs", headers=h),
            "openapi": lambda h: httpx.get(f"{base}/openapi.json", headers=h),
            "preflight": lambda h: httpx.options(
                f"{base}/search",
                headers={"Origin": "http://rebind.attacker.example:8101", "Access-Control-Request-Method": "POST", **h},
            ),
        }
        for name, call in routes.items():
            for host in HOSTILE_HOSTS:
                r = call({"Host": host})
                assert r.status_code == 400, (name, host, r.status_code, r.text[:200])
                detail = r.json()["detail"]
                assert "is not a name this server is served on" in detail and "--allowed-hosts" in detail
                assert "\n" not in detail and len(detail) < 500 and str(photos) not in r.text
            if name != "preflight":  # the names it is served on: loopback (any port, any case) and the allowed
                for host in (f"127.0.0.1:{port}", f"localhost:{port}", "LOCALHOST", f"[::1]:{port}", "photos.lan:80"):
                    assert call({"Host": host}).status_code == 200, (name, host)
        # A liveness probe sends the address it probes, and learns only "ok".
        assert httpx.get(f"{base}/healthz", headers={"Host": "10.1.2.3:8000"}).json() == {"status": "ok"}
        # Two Host headers (h11 refuses them itself; httptools passes them on), or none (HTTP/1.0), are refused too.
        status, text, _ = raw(
            port,
            b"GET /stats HTTP/1.1\r\nHost: localhost\r\nHost: rebind.attacker.example\r\nConnection: close\r\n\r\n",
        )
        assert status.startswith("HTTP/1.1 400 ") and '"count"' not in text
        status, text, _ = raw(port, b"GET /stats HTTP/1.0\r\n\r\n")
        assert status.startswith("HTTP/1.1 400 ") and "exactly one Host header, this one has 0" in text


@pytest.mark.slow
def test_vitsearch_serve_answers_its_host_and_allowed_hosts_only(db_uri, tmp_path):
    bad = subprocess.run(
        [*VITSEARCH, "serve", "--uri", db_uri, "--allowed-hosts", "photos.lan,http://evil.example"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and "'http://evil.example' is not a host name or address" in bad.stderr
    assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [
            *VITSEARCH,
            "serve",
            "--uri",
            db_uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--allowed-hosts",
            "photos.lan",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "VITSEARCH_API_TOKEN": "tok"},
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        for host, status in (
            ("photos.lan", 200),
            (f"photos.lan:{port}", 200),
            (f"127.0.0.1:{port}", 200),
            ("rebind.attacker.example", 400),
            ("other.lan", 400),
        ):
            assert httpx.get(f"{base}/openapi.json", headers={"Host": host}).status_code == status, host  # no token
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.close()
    assert "answers to Host localhost, 127.0.0.1, [::1], photos.lan" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_a_filter_too_long_or_nested_too_deep_is_a_400_not_a_503(indexed):
    photos, uri = indexed
    cat = str(photos / "cat.jpg")
    data = (photos / "cat.jpg").read_bytes()

    def searches(filter: str) -> list[httpx.Response]:
        return [
            httpx.post(f"{base}/search/similar", json={"path": cat, "filter": filter}),
            httpx.post(f"{base}/search/vector", json={"vector": [1.0] * 32, "filter": filter}),
            upload(base, data, filter=filter),
        ]

    def nested(depth: int) -> str:
        return "(" * depth + "width > 1" + ")" * depth

    with serving(uri, settings={"max_filter_chars": 3000, "max_filter_depth": 8}) as (base, _):
        refused = {
            nested(990): "nests deeper than the limit of 8",
            "not " * 500 + "width > 1": "limit of 8",
            nested(9): "nests deeper than the limit of 8",
            "- " * 9 + "1 < width": "limit of 8",
            "width > 1 or " * 231 + "width > 1": "3,012 characters long, over the limit of 3,000",
        }
        for filter, words in refused.items():
            for r in searches(filter):
                assert r.status_code == 400 and "retry-after" not in r.headers, (filter[:20], r.status_code, r.text)
                detail = r.json()["detail"]
                assert words in detail and len(detail) < 400, detail
        for filter in (nested(8), "not " * 7 + "width > 1", "width > 1 or " * 229 + "width>1"):  # at the limits
            assert len(filter) <= 3000
            assert [r.status_code for r in searches(filter)] == [200, 200, 200], filter
    with serving(uri) as (base, _):  # the defaults: 16,384 characters, 32 deep
        assert [r.status_code for r in searches(nested(32))] == [200, 200, 200]
        assert [r.status_code for r in searches(nested(33))] == [400, 400, 400]
        assert [r.status_code for r in searches(nested(1000))] == [400, 400, 400]


def test_a_json_body_over_the_limit_is_413_before_it_is_read(indexed):
    photos, uri = indexed
    with serving(uri, max_json_kb=4) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        under = httpx.post(f"{base}/search/similar", json={"path": "/" + "p" * 4000})
        assert under.status_code == 404 and "is not indexed" in under.json()["detail"]  # read, parsed, answered
        over = httpx.post(f"{base}/search/similar", json={"path": "/" + "p" * 4100})
        assert (
            over.status_code == 413
            and "over the limit of 4 KB for a request body that is not an upload (VITSEARCH_API_MAX_JSON_KB)"
            in over.json()["detail"]
        )
        streamed = httpx.post(
            f"{base}/search/vector",
            headers={"content-type": "application/json"},
            content=iter([b'{"vector": [', b"1.0, " * 1000, b"1.0]}"]),
        )
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and "VITSEARCH_API_MAX_JSON_KB" in streamed.json()["detail"]
        # 21 MB announced and none of it sent: refused at once, from the headers.
        status, text, took = raw(
            port,
            b"POST /search/vector HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
            b"application/json\r\nContent-Length: 22020096\r\n\r\n",
        )
        assert status.startswith("HTTP/1.1 413 ") and "request body is 21.0 MB, over the limit of 4 KB" in text
        assert took < 5
        # An image upload has its own limit (--max-upload-mb, 1 MB here), not the JSON one.
        image = (photos / "cat.jpg").read_bytes()
        assert len(image) > 8 * 1024 and upload(base, image).status_code == 200


@pytest.mark.slow
def test_a_body_that_does_not_arrive_gets_408_after_the_timeout(indexed):
    _, uri = indexed
    with serving(uri, body_timeout_s=1.0) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        # Announces 1,000 bytes, sends 10: answered 408 after the timeout, and the connection closed.
        status, text, took = raw(
            port,
            b"POST /search/vector HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
            b'application/json\r\nContent-Length: 1000\r\n\r\n{"vector":',
        )
        assert status.startswith("HTTP/1.1 408 ") and 1.0 <= took < 10, (status, took)
        assert "not received within 1 s (10 bytes of 1,000 bytes came; VITSEARCH_API_BODY_TIMEOUT_S)" in text
        status, _, took = raw(
            port,
            b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
            b"boundary=xyz\r\nContent-Length: 500000\r\n\r\n--xyz\r\n",
        )
        assert status.startswith("HTTP/1.1 408 ") and 1.0 <= took < 10
        # A trickle (a byte every 0.2 s) does not hold it longer: the timeout is for the whole body.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(
                b"POST /search/vector HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n"
            )
            answer = b""
            for _ in range(100):
                try:
                    s.sendall(b" ")
                except OSError:  # closed by the server
                    break
                time.sleep(0.2)
                s.setblocking(False)
                try:
                    answer += s.recv(65536)
                except BlockingIOError:
                    pass
                s.setblocking(True)
                if answer:
                    break
        assert answer.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 5, answer[:100]
        # The server still answers the others.
        assert httpx.get(f"{base}/stats").status_code == 200


def test_search_vector_gives_the_same_hits_and_scores_at_any_scale(indexed):
    photos, uri = indexed
    with SearchClient(uri=uri) as client:
        vector = np.asarray(
            client.store.get([str(photos / "cat.jpg")], fields=["vector"])[str(photos / "cat.jpg")]["vector"],
            np.float64,
        )
    with serving(uri) as (base, _):
        want = httpx.post(f"{base}/search/vector", json={"vector": vector.tolist(), "k": 11}).json()["hits"]
        assert want[0]["path"] == str(photos / "cat.jpg") and want[0]["score"] == pytest.approx(1, abs=1e-5)
        assert len({h["score"] for h in want}) > 5  # distinct scores: an order to keep
        for scale in (1e-30, 3e38):
            scaled = vector * scale
            assert np.all(np.isfinite(scaled.astype(np.float32))) and np.any(scaled.astype(np.float32))
            r = httpx.post(f"{base}/search/vector", json={"vector": scaled.tolist(), "k": 11})
            assert r.status_code == 200, r.text
            assert_same(r.json()["hits"], want)
