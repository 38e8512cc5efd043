"""Contract of the HTTP API's guards (issue 29), with real requests to the real app on uvicorn over
a real Milvus Lite file: a filter too long or nested too deep is a 400 (not a 503), a JSON body
over its limit a 413 before it is read, a body that does not arrive a 408 after the timeout."""
from __future__ import annotations

import socket
import time

import httpx

from test_api import serving, upload


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


def test_a_filter_too_long_or_nested_too_deep_is_a_400_not_a_503(indexed):
    photos, uri = indexed
    cat = str(photos / "cat.jpg")
    data = (photos / "cat.jpg").read_bytes()

    def searches(filter: str) -> list[httpx.Response]:
        return [httpx.post(f"{base}/search/similar", json={"path": cat, "filter": filter}),
                httpx.post(f"{base}/search/vector", json={"vector": [1.0] * 32, "filter": filter}),
                upload(base, data, filter=filter)]

    def nested(depth: int) -> str:
        return "(" * depth + "width > 1" + ")" * depth

    with serving(uri, settings={"max_filter_chars": 3000, "max_filter_depth": 8}) as (base, _):
        refused = {nested(990): "nests deeper than the limit of 8", "not " * 500 + "width > 1": "limit of 8",
                   nested(9): "nests deeper than the limit of 8", "- " * 9 + "1 < width": "limit of 8",
                   "width > 1 or " * 231 + "width > 1": "3,012 characters long, over the limit of 3,000"}
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
        assert over.status_code == 413 and "over the limit of 4 KB for a request body that is not an upload " \
                                           "(VITSEARCH_API_MAX_JSON_KB)" in over.json()["detail"]
        streamed = httpx.post(f"{base}/search/vector", headers={"content-type": "application/json"},
                              content=iter([b'{"vector": [', b"1.0, " * 1000, b"1.0]}"]))
        assert "content-length" not in streamed.request.headers
        assert streamed.status_code == 413 and "VITSEARCH_API_MAX_JSON_KB" in streamed.json()["detail"]
        # 21 MB announced and none of it sent: refused at once, from the headers.
        status, text, took = raw(port, b"POST /search/vector HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                                       b"application/json\r\nContent-Length: 22020096\r\n\r\n")
        assert status.startswith("HTTP/1.1 413 ") and "request body is 21.0 MB, over the limit of 4 KB" in text
        assert took < 5
        # An image upload has its own limit (--max-upload-mb, 1 MB here), not the JSON one.
        image = (photos / "cat.jpg").read_bytes()
        assert len(image) > 8 * 1024 and upload(base, image).status_code == 200


def test_a_body_that_does_not_arrive_gets_408_after_the_timeout(indexed):
    _, uri = indexed
    with serving(uri, body_timeout_s=1.0) as (base, _):
        port = int(base.rsplit(":", 1)[1])
        # Announces 1,000 bytes, sends 10: answered 408 after the timeout, and the connection closed.
        status, text, took = raw(port, b"POST /search/vector HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                                       b"application/json\r\nContent-Length: 1000\r\n\r\n{\"vector\":")
        assert status.startswith("HTTP/1.1 408 ") and 1.0 <= took < 10, (status, took)
        assert "not received within 1 s (10 bytes of 1,000 bytes came; VITSEARCH_API_BODY_TIMEOUT_S)" in text
        status, _, took = raw(port, b"POST /search HTTP/1.1\r\nHost: localhost\r\nContent-Type: multipart/form-data; "
                                    b"boundary=xyz\r\nContent-Length: 500000\r\n\r\n--xyz\r\n")
        assert status.startswith("HTTP/1.1 408 ") and 1.0 <= took < 10
        # A trickle (a byte every 0.2 s) does not hold it longer: the timeout is for the whole body.
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /search/vector HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                      b"Content-Length: 100\r\n\r\n")
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
        # Meanwhile, and after, the server answers the others.
        assert httpx.get(f"{base}/stats").status_code == 200

