"""Contract of the HTTP API (api/, ``vitsearch serve``): httpx against the real app on uvicorn over
a real Milvus Lite file and the tiny ViT. Every route gives what SearchClient gives (also under
concurrent requests, whose forward passes are batched); every error is JSON ``{"detail": "..."}``
with its code (400, 401, 404, 413, 503 with Retry-After); the token guards every data route (not
/healthz nor the OpenAPI pages); a thumbnail is made only from a row's indexed bytes, and a path that is not a row is never
opened."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from hostile import png_claiming

from vitsearch.api.app import create_app
from vitsearch.api.batching import SearchBatcher, SearchQuery
from vitsearch.api.settings import ApiSettings
from vitsearch.search import SearchClient
from vitsearch.search.config import Settings
from vitsearch.search.errors import BadQueryError, NotIndexedError


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(uri: str, wait_ready: bool = True, settings: dict | None = None, **api):
    """The app on uvicorn in a thread on a free loopback port: yields its base URL and the app.
    ``settings``: the library's settings besides the URI (default: an upload limit of 1 MB)."""
    import uvicorn

    api = {"token": None, "cors_origins": [], "retry_s": 1.0, "retry_after_s": 7, **api}
    app = create_app(Settings(uri=uri, max_upload_mb=1, **(settings or {})), ApiSettings(**api))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    headers = {"Authorization": f"Bearer {api['token']}"} if api["token"] else {}
    while wait_ready and httpx.get(f"{base}/readyz", headers=headers).status_code != 200:
        assert time.monotonic() < deadline, httpx.get(f"{base}/readyz", headers=headers).text
        time.sleep(0.1)
    try:
        yield base, app
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def api(indexed):
    photos, uri = indexed
    with serving(uri, batch_window_ms=50) as (base, app):
        yield base, photos, uri, app


def paths_scores(hits) -> list[tuple[str, float]]:
    if hits and isinstance(hits[0], dict):
        return [(h["path"], h["score"]) for h in hits]
    return [(h.path, h.score) for h in hits]


def matches(hits) -> list[bool]:
    return [h["match"] if isinstance(h, dict) else h.match for h in hits]


def assert_same(got: list[dict], want) -> None:
    assert [p for p, _ in paths_scores(got)] == [p for p, _ in paths_scores(want)]
    assert matches(got) == matches(want)
    np.testing.assert_allclose([s for _, s in paths_scores(got)], [s for _, s in paths_scores(want)], atol=1e-5)


def upload(base: str, data: bytes, name: str = "query.jpg", **params) -> httpx.Response:
    return httpx.post(f"{base}/search", files={"image": (name, data, "image/jpeg")}, params=params, timeout=60)


def test_search_by_image_gives_what_search_client_gives(api):
    base, photos, uri, _ = api
    data = (photos / "cat.jpg").read_bytes()
    r = upload(base, data, k=5)
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"hits", "close_match", "took_ms"} and body["took_ms"] > 0 and body["close_match"] is True
    with SearchClient(uri=uri) as client:
        assert_same(body["hits"], client.search(data, k=5))
        hit = body["hits"][0]
        assert hit["path"] == str(photos / "cat.jpg") and hit["score"] == pytest.approx(1.0, abs=1e-4)
        assert set(hit) == {"path", "score", "match", "metadata"} and hit["match"] is True
        assert hit["metadata"]["sha256"] and hit["metadata"]["width"] > 0 and "path" not in hit["metadata"]
        sub = upload(base, data, k=20, folder=str(photos / "sub")).json()["hits"]
        assert [h["path"] for h in sub] == [str(photos / "sub" / "rocket.jpg")]
        assert_same(
            upload(base, data, k=20, filter="width > 400").json()["hits"],
            client.search(data, k=20, filter="width > 400"),
        )
        all_hits = upload(base, data, k=11).json()["hits"]
        cut = all_hits[4]["score"]
        kept = upload(base, data, k=11, min_score=cut).json()["hits"]
        assert kept == [h for h in all_hits if h["score"] >= cut] and len(kept) == 5


def test_a_hit_is_the_same_object_from_the_api_and_from_search_json(api):
    import json

    from typer.testing import CliRunner

    from vitsearch.cli import app as cli_app

    base, photos, uri, _ = api
    query = photos / "cat.jpg"
    served = upload(base, query.read_bytes(), k=4).json()
    printed = CliRunner().invoke(cli_app, ["search", str(query), "-k", "4", "--uri", uri, "--json"])
    assert printed.exit_code == 0, printed.stderr
    printed = json.loads(printed.stdout)
    assert printed["close_match"] == served["close_match"]
    for got, want in zip(printed["hits"], served["hits"], strict=True):
        assert got["score"] == pytest.approx(want["score"], abs=1e-5)
        assert {**got, "score": 0} == {**want, "score": 0}  # same keys, metadata and its order


def test_concurrent_image_searches_are_batched_and_answer_as_search_client(api):
    base, photos, uri, app = api
    queries = [p.read_bytes() for p in sorted(photos.rglob("*.jpg"))] * 2  # 22 requests at once
    before = app.state.backend.stats()

    async def all_at_once():
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            return await asyncio.gather(
                *(http.post("/search", params={"k": 4}, files={"image": ("q.jpg", q)}) for q in queries)
            )

    responses = asyncio.run(all_at_once())
    assert [r.status_code for r in responses] == [200] * len(queries)
    with SearchClient(uri=uri) as client:
        for data, r in zip(queries, responses):
            assert_same(r.json()["hits"], client.search(data, k=4))
    after = app.state.backend.stats()
    images = after["images_embedded"] - before["images_embedded"]
    passes = after["forward_passes"] - before["forward_passes"]
    assert images == len(queries) and passes < images  # several queries shared a forward pass
    stats = httpx.get(f"{base}/stats").json()
    assert stats["api"]["forward_passes"] == after["forward_passes"] and stats["api"]["pid"] == os.getpid()


def test_concurrent_similar_and_vector_searches_answer_as_search_client(api):
    """Requests that arrive together share Milvus calls; each with its own k, filter and folder
    still gets what SearchClient gives it, and a path that is not indexed gets its own 404."""
    base, photos, uri, app = api
    paths = [str(p) for p in sorted(photos.rglob("*.jpg"))]
    asks = [{"path": p, "k": 3} for p in paths] + [{"path": p, "k": 5, "filter": "width > 400"} for p in paths]
    asks += [{"path": p, "k": 4, "folder": str(photos / "sub")} for p in paths[:3]]
    asks += [{"path": str(photos / "nope.jpg"), "k": 3}]
    before = app.state.backend.stats()

    async def all_at_once():
        async with httpx.AsyncClient(base_url=base, timeout=60) as http:
            return await asyncio.gather(
                *(http.post("/search/similar", json=ask) for ask in asks),
                *(http.post("/search/vector", json={"vector": v, "k": 4}) for v in vectors),
            )

    with SearchClient(uri=uri) as client:
        vectors = [client.store.get([p], fields=["vector"])[p]["vector"] for p in paths[:4]]
        responses = asyncio.run(all_at_once())
        assert [r.status_code for r in responses] == [200] * (len(asks) - 1) + [404] + [200] * len(vectors)
        for ask, r in zip(asks[:-1], responses):
            assert_same(
                r.json()["hits"],
                client.search_similar(ask["path"], ask["k"], ask.get("filter"), folder=ask.get("folder")),
            )
        for v, r in zip(vectors, responses[len(asks) :]):
            assert_same(r.json()["hits"], client.search_vector(np.asarray(v, np.float32), k=4))
    assert "is not indexed" in responses[len(asks) - 1].json()["detail"]
    after = app.state.backend.stats()
    assert after["queries_searched"] - before["queries_searched"] == len(asks) - 1 + len(vectors)
    assert 4 <= after["milvus_searches"] - before["milvus_searches"] <= len(asks) - 1 + len(vectors)


def test_one_batch_of_searches_makes_one_milvus_search_per_k_filter_and_folder(indexed):
    photos, uri = indexed
    cat, coffee, nope = str(photos / "cat.jpg"), str(photos / "coffee.jpg"), str(photos / "nope.jpg")
    sub = str(photos / "sub")
    with SearchClient(uri=uri) as client:
        vector = client.stored_vectors([cat])[cat]
        batcher = SearchBatcher(client)
        try:
            queries = [
                SearchQuery(3, path=cat),
                SearchQuery(3, path=coffee),
                SearchQuery(3, vector=vector),
                SearchQuery(5, "width > 400", path=cat),
                SearchQuery(5, "width > 400", path=coffee),
                SearchQuery(5, folder=sub, path=cat),
                SearchQuery(3, path=nope),
                SearchQuery(3, "width >", path=cat),
            ]
            batcher.submit(queries)  # one entry: one batch
            want = [
                client.search_similar(cat, 3),
                client.search_similar(coffee, 3),
                client.search_vector(vector, 3),
                client.search_similar(cat, 5, "width > 400"),
                client.search_similar(coffee, 5, "width > 400"),
                client.search_similar(cat, 5, folder=sub),
            ]
            for query, hits in zip(queries, want):
                assert_same(query.future.result(30), hits)
            assert cat not in {h.path for h in queries[0].future.result()} and queries[2].future.result()[0].path == cat
            assert [h.path for h in queries[5].future.result()] == [str(photos / "sub" / "rocket.jpg")]
            with pytest.raises(NotIndexedError, match="is not indexed"):
                queries[6].future.result(30)
            with pytest.raises(BadQueryError, match="filter"):
                queries[7].future.result(30)
            assert (batcher.calls, batcher.queries) == (3, 6)  # the bad filter's call failed: not counted
        finally:
            batcher.close()


def test_similar_vector_stats_health_and_docs(api):
    base, photos, uri, _ = api
    cat = str(photos / "cat.jpg")
    with SearchClient(uri=uri) as client:
        r = httpx.post(f"{base}/search/similar", json={"path": cat, "k": 3})
        assert r.status_code == 200
        assert_same(r.json()["hits"], client.search_similar(cat, k=3))
        assert cat not in [h["path"] for h in r.json()["hits"]]
        vector = client.store.get([cat], fields=["vector"])[cat]["vector"]
        r = httpx.post(f"{base}/search/vector", json={"vector": vector, "k": 4, "folder": str(photos)})
        assert_same(r.json()["hits"], client.search_vector(np.asarray(vector, np.float32), k=4))
        assert r.json()["hits"][0]["path"] == cat
        stats = httpx.get(f"{base}/stats").json()
        assert {k: v for k, v in stats.items() if k != "api"} == client.stats()
    assert stats["count"] == 11 and stats["dim"] == 32
    assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{base}/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready" and ready.json()["uri"] == uri
    assert httpx.get(f"{base}/docs").status_code == 200
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    assert {"/search", "/search/similar", "/search/vector", "/stats", "/healthz", "/readyz", "/thumbnail"} <= set(paths)


@pytest.mark.slow
def test_every_bad_input_is_a_json_400_404_or_413(api):
    base, photos, _, _ = api
    data = (photos / "cat.jpg").read_bytes()
    cat = str(photos / "cat.jpg")

    def expect(r: httpx.Response, status: int, words: str) -> None:
        assert r.status_code == status, r.text
        detail = r.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and words in detail, detail

    for k in (0, -1, 16385, "two"):
        expect(upload(base, data, k=k), 400, "k")
        expect(httpx.post(f"{base}/search/similar", json={"path": cat, "k": k}), 400, "k")
        expect(httpx.post(f"{base}/search/vector", json={"vector": [1.0] * 32, "k": k}), 400, "k")
    for bad in ("width >", 'folder == "unterminated', "colour == 3"):
        expect(upload(base, data, filter=bad), 400, "filter")
        expect(httpx.post(f"{base}/search/similar", json={"path": cat, "filter": bad}), 400, "filter")
    expect(upload(base, b"definitely not an image"), 400, "not a recognised image format")
    expect(upload(base, data[:2000]), 400, "corrupt or truncated")
    expect(upload(base, b"", name="empty.jpg"), 400, "empty.jpg: empty file (0 bytes)")
    expect(httpx.post(f"{base}/search", params={"k": 3}), 400, "image")  # no upload at all
    expect(httpx.post(f"{base}/search/vector", json={"vector": [1.0] * 31}), 400, "31 dimensions")
    expect(httpx.post(f"{base}/search/vector", json={"vector": [0.0] * 32}), 400, "not all zeros")
    expect(
        httpx.post(f"{base}/search/vector", content=b'{"vector": [NaN]}', headers={"content-type": "application/json"}),
        400,
        "finite",
    )
    expect(httpx.post(f"{base}/search/similar", json={"path": str(photos / "nope.jpg")}), 404, "is not indexed")
    expect(httpx.get(f"{base}/no-such-route"), 404, "Not Found")
    # Too large: the server's limit here is 1 MB (--max-upload-mb 1).
    big = os.urandom(3 * 2**20)
    expect(upload(base, big), 413, "over the upload limit of 1 MB")

    def multipart_stream():  # sent chunked, without a Content-Length
        yield b'--xyz\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n\r\n'
        yield from (big[i : i + 65536] for i in range(0, len(big), 65536))
        yield b"\r\n--xyz--\r\n"

    streamed = httpx.post(
        f"{base}/search", content=multipart_stream(), headers={"content-type": "multipart/form-data; boundary=xyz"}
    )
    assert "content-length" not in streamed.request.headers
    expect(streamed, 413, "over the upload limit")
    just_over = os.urandom(2**20 + 10)  # the body fits the allowance for headers; the image does not
    expect(upload(base, just_over), 413, "over the limit of 1 MB")
    # A decompression bomb: 169 megapixels claimed in a PNG of a few dozen bytes, refused from its header.
    bomb = png_claiming(13000, 13000)
    assert len(bomb) < 200
    started = time.perf_counter()
    expect(upload(base, bomb, name="bomb.png"), 413, "13000x13000 = 169 megapixels")
    assert time.perf_counter() - started < 5
    assert httpx.get(f"{base}/healthz").status_code == 200  # still serving


@pytest.mark.slow
def test_the_token_guards_every_data_route_and_not_health_or_the_api_description(indexed):
    photos, uri = indexed
    with serving(uri, token="s3cret-token") as (base, _):
        data = (photos / "cat.jpg").read_bytes()
        for name, call in {
            "search": lambda h: httpx.post(f"{base}/search", files={"image": ("q.jpg", data)}, headers=h),
            "similar": lambda h: httpx.post(
                f"{base}/search/similar", json={"path": str(photos / "cat.jpg")}, headers=h
            ),
            "vector": lambda h: httpx.post(f"{base}/search/vector", json={"vector": [1.0] * 32}, headers=h),
            "stats": lambda h: httpx.get(f"{base}/stats", headers=h),
            "readyz": lambda h: httpx.get(f"{base}/readyz", headers=h),
            "thumbnail": lambda h: httpx.get(f"{base}/thumbnail", params={"path": str(photos / "cat.jpg")}, headers=h),
        }.items():
            for headers in (
                {},
                {"Authorization": "Bearer wrong"},
                {"Authorization": "Bearer s3cret-tokenX"},
                {"Authorization": "Basic s3cret-token"},
                {"Authorization": "s3cret-token"},
            ):
                r = call(headers)
                assert r.status_code == 401, (name, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer" and "bearer token" in r.json()["detail"]
            assert call({"Authorization": "Bearer s3cret-token"}).status_code == 200, name
            assert call({"Authorization": "bearer s3cret-token"}).status_code == 200, name
        # Open: liveness, and the API's description, which holds no data (issue 30, item 4).
        assert httpx.get(f"{base}/healthz").status_code == 200
        for page in ("/docs", "/redoc"):
            r = httpx.get(f"{base}{page}")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), page
        schema = httpx.get(f"{base}/openapi.json")
        assert schema.status_code == 200 and "/search/vector" in schema.json()["paths"]
        # ... and it says that the routes take the token, so that /docs can send it ("Authorize").
        assert schema.json()["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
        assert schema.json()["security"] == [{"bearer": []}]
        assert str(photos) not in schema.text
        # Open to the token, not to the Host check: a page rebinding its name gets none of them.
        for page in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
            r = httpx.get(f"{base}{page}", headers={"Host": "rebind.attacker.example"})
            assert r.status_code == 400 and "is not a name this server is served on" in r.json()["detail"], page


def test_cors_origins_are_configurable(indexed):
    _, uri = indexed
    with serving(uri, cors_origins=["https://shop.example"]) as (base, _):
        preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
        ok = httpx.options(f"{base}/search", headers={"Origin": "https://shop.example", **preflight})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "https://shop.example"
        other = httpx.options(f"{base}/search", headers={"Origin": "https://evil.example", **preflight})
        assert "access-control-allow-origin" not in other.headers
        r = httpx.get(f"{base}/stats", headers={"Origin": "https://shop.example"})
        assert r.headers["access-control-allow-origin"] == "https://shop.example"
    with serving(uri) as (base, _):  # default: no CORS headers at all
        r = httpx.get(f"{base}/stats", headers={"Origin": "https://shop.example"})
        assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_a_thumbnail_is_only_of_a_row_and_of_its_indexed_bytes(api, tmp_path, monkeypatch):
    import io

    from PIL import Image

    base, photos, _, _ = api
    secret = tmp_path / "outside" / "secret.jpg"  # a real image, outside the collection
    secret.parent.mkdir()
    shutil.copy(photos / "coffee.jpg", secret)
    opened: list[str] = []
    real_open = os.open

    def recording_open(path, *args, **kwargs):
        opened.append(os.fsdecode(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)  # the server runs in this process
    r = httpx.get(f"{base}/thumbnail", params={"path": str(photos / "cat.jpg")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 320
    assert str(photos / "cat.jpg") in opened  # the recording sees what the route opens
    for path in (str(secret), f"{photos}/../outside/secret.jpg", "/etc/passwd", str(photos), "relative.jpg"):
        r = httpx.get(f"{base}/thumbnail", params={"path": path})
        assert r.status_code == 404 and "is not indexed" in r.json()["detail"], path
    assert not [p for p in opened if "secret" in p or p in ("/etc/passwd", str(photos))]
    # A row whose file was swapped for a link to the outside image: opened, hashed, refused.
    (photos / "grass.jpg").unlink()
    (photos / "grass.jpg").symlink_to(secret)
    r = httpx.get(f"{base}/thumbnail", params={"path": str(photos / "grass.jpg")})
    assert r.status_code == 404 and "changed since it was indexed" in r.json()["detail"]
    assert httpx.get(f"{base}/thumbnail").status_code == 400  # no path


@pytest.mark.slow
def test_a_path_that_is_not_utf8_comes_back_exactly(photos, db_uri, tiny_model):
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    name = os.fsdecode(b'caf\xe9 "q"\n\\x.jpg')  # Latin-1, a quote, a newline, a backslash
    shutil.copy(photos / "cat.jpg", photos / name)
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    with serving(db_uri) as (base, _):
        hits = upload(base, (photos / "cat.jpg").read_bytes(), k=2).json()["hits"]
        odd = str(photos / name)
        assert odd in [h["path"] for h in hits]  # the JSON escape \udce9 gives the same str back
        assert os.fsencode(odd).endswith(b'caf\xe9 "q"\n\\x.jpg')
        import json

        r = httpx.post(
            f"{base}/search/similar",
            content=json.dumps({"path": odd, "k": 1}),
            headers={"content-type": "application/json"},
        )  # ASCII JSON: \udce9 escapes
        assert r.status_code == 200 and r.json()["hits"][0]["path"] == str(photos / "cat.jpg")
        from urllib.parse import quote_from_bytes

        thumb = httpx.get(f"{base}/thumbnail?path={quote_from_bytes(os.fsencode(odd))}")
        assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"


def test_collapse_shows_exact_duplicates_as_one_hit(photos, db_uri, tiny_model):
    """Needs SearchClient's ``collapse_duplicates`` (issue 16)."""
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    shutil.copy(photos / "cat.jpg", photos / "cat-copy.jpg")  # the same bytes: the same sha256
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    with serving(db_uri) as (base, _):
        data = (photos / "cat.jpg").read_bytes()
        plain = upload(base, data, k=12).json()["hits"]
        assert {str(photos / "cat.jpg"), str(photos / "cat-copy.jpg")} <= {h["path"] for h in plain[:2]}
        r = upload(base, data, k=12, collapse="true")
        assert r.status_code == 200, r.text
        collapsed = r.json()["hits"]
        paths = [h["path"] for h in collapsed]
        assert len({str(photos / "cat.jpg"), str(photos / "cat-copy.jpg")} & set(paths)) == 1
        assert len(paths) == len(plain) - 1 and len(set(paths)) == len(paths)
        kept = next(h for h in collapsed if h["path"] in (str(photos / "cat.jpg"), str(photos / "cat-copy.jpg")))
        assert len(kept["copies"]) == 1 and kept["copies"][0] != kept["path"]  # issue 16's Hit.copies


@pytest.mark.slow
def test_503_with_retry_after_while_milvus_is_unreachable(indexed, milvus_process, tiny_model):
    # Nobody listens: the server starts, answers /healthz, and 503 everywhere else.
    with serving(f"http://127.0.0.1:{free_port()}", wait_ready=False) as (base, _):
        assert httpx.get(f"{base}/healthz").status_code == 200
        for r in (
            httpx.get(f"{base}/readyz"),
            httpx.get(f"{base}/stats"),
            upload(base, (indexed[0] / "cat.jpg").read_bytes()),
            httpx.post(f"{base}/search/similar", json={"path": "/x.jpg"}),
        ):
            assert r.status_code == 503 and r.headers["retry-after"] == "7", r.text
            assert "cannot open Milvus" in r.json()["detail"]
    # A Milvus that goes away while serving, and comes back.
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    photos = indexed[0]
    with Store(milvus_process.uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    with serving(milvus_process.uri) as (base, _):
        cat = {"path": str(photos / "cat.jpg"), "k": 2}
        assert httpx.post(f"{base}/search/similar", json=cat).status_code == 200
        milvus_process.kill()
        r = httpx.post(f"{base}/search/similar", json=cat, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "7" and "did not answer" in r.json()["detail"]
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 503
        milvus_process.start()
        r = httpx.post(f"{base}/search/similar", json=cat, timeout=30)
        assert r.status_code == 200 and len(r.json()["hits"]) == 2, r.text


@pytest.mark.slow
def test_not_indexed_yet_is_503_until_it_is(photos, db_uri, tiny_model):
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    with serving(db_uri, wait_ready=False, retry_after_s=1) as (base, _):
        r = httpx.get(f"{base}/readyz")
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "index a folder first" in r.json()["detail"]
        with Store(db_uri, "images") as store:  # a Lite file the server's process shares
            index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
        time.sleep(1.1)  # the remembered failure expires
        assert httpx.get(f"{base}/stats").json()["count"] == 11


@pytest.mark.slow
def test_vitsearch_serve_with_two_workers_shares_the_lite_file(indexed, tmp_path):
    photos, uri = indexed
    port = free_port()
    env = {**os.environ, "VITSEARCH_API_TOKEN": "tok"}
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from vitsearch.cli import main; main()",
            "serve",
            "--uri",
            uri,
            "--port",
            str(port),
            "--workers",
            "2",
            "--max-upload-mb",
            "1",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer tok"}
    try:
        deadline = time.monotonic() + 120
        pids: set[int] = set()
        while len(pids) < 2:  # each worker answers once it has opened the database and loaded the model
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                with httpx.Client(headers=auth, timeout=30) as http:
                    r = http.get(f"{base}/readyz", headers={"Connection": "close"})
                    if r.status_code == 200:
                        pids.add(http.get(f"{base}/stats", headers={"Connection": "close"}).json()["api"]["pid"])
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        with SearchClient(uri=uri) as client:
            want = client.search_similar(str(photos / "cat.jpg"), k=3)
        for _ in range(6):
            r = httpx.post(f"{base}/search/similar", json={"path": str(photos / "cat.jpg"), "k": 3}, headers=auth)
            assert_same(r.json()["hits"], want)
        big = httpx.post(f"{base}/search", files={"image": ("big.jpg", os.urandom(2**21))}, headers=auth)
        assert big.status_code == 413  # --max-upload-mb reaches the workers
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
        log.close()
    assert proc.returncode == 0, (tmp_path / "serve.log").read_text()
    assert "2 workers, token required" in (tmp_path / "serve.log").read_text()


@pytest.mark.slow
def test_the_real_model_finds_the_photo_a_crop_was_cut_from(tmp_path, db_uri, real_model):
    from conftest import EXAMPLES

    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    encoder = Encoder.load(str(real_model))
    with Store(db_uri, "images") as store:
        index_folder(str(EXAMPLES / "images"), encoder=encoder, store=store, workers=0)
    with serving(db_uri) as (base, _), SearchClient(uri=db_uri, encoder=encoder) as client:
        for crop, source in (("cat-crop.jpg", "cat.jpg"), ("rocket-crop.jpg", "rocket.jpg")):
            data = (EXAMPLES / "queries" / crop).read_bytes()
            hits = upload(base, data, k=3).json()["hits"]
            assert hits[0]["path"] == str(EXAMPLES / "images" / source)
            assert_same(hits, client.search(data, k=3))


# --- capture dates: after, before, sort --------------------------------------------------------


def local(*args) -> float:
    """Unix seconds of a wall-clock time in this process's (and so the server's) time zone."""
    import datetime as dt

    return dt.datetime(*args).timestamp()


def date_photos(photos) -> dict[str, float]:
    """The example photos saved again with an EXIF ``DateTimeOriginal`` (no offset: local time),
    one a month from 2021-01-15 12:00 in name order, and a camera whose model is hostile text;
    ``cat-2019.jpg`` and ``cat-2023.jpg``, the cat's pixels dated 2019-06-01 and 2023-06-01 (three
    close matches of the cat, one per year); ``sub/rocket.jpg`` left without EXIF, its mtime
    2018-03-01. Returns each file's name and the capture time it should get."""
    from PIL import Image

    def save(img, path, date: str) -> None:
        exif = Image.Exif()
        exif[0x010F], exif[0x0110] = "Acme", "<b>x</b> [a](javascript:x)"
        exif.get_ifd(0x8769)[0x9003] = date
        img.save(path, "JPEG", quality=95, exif=exif)

    taken = {}
    for i, path in enumerate(sorted(photos.glob("*.jpg"))):
        img = Image.open(path).convert("RGB")
        save(img, path, f"2021:{i + 1:02d}:15 12:00:00")
        taken[path.name] = local(2021, i + 1, 15, 12)
        if path.name == "cat.jpg":
            for year in (2019, 2023):
                save(img, photos / f"cat-{year}.jpg", f"{year}:06:01 08:00:00")
                taken[f"cat-{year}.jpg"] = local(year, 6, 1, 8)
    os.utime(photos / "sub" / "rocket.jpg", (local(2018, 3, 1), local(2018, 3, 1)))
    taken["rocket.jpg"] = local(2018, 3, 1)
    return taken


@pytest.fixture
def dated_api(photos, db_uri, tiny_model):
    """The dated photos (:func:`date_photos`) indexed with the tiny ViT and served:
    ``(base URL, photos folder, URI, {name: taken_at})``."""
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    taken = date_photos(photos)
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model), runtime="torch"), store=store, workers=0)
    with serving(db_uri, batch_window_ms=20) as (base, _):
        yield base, photos, db_uri, taken


def names(hits: list[dict]) -> list[str]:
    return [os.path.basename(h["path"]) for h in hits]


def test_every_search_route_keeps_only_the_photos_taken_between_after_and_before(dated_api):
    base, photos, uri, taken = dated_api
    cat = photos / "cat.jpg"
    data = cat.read_bytes()
    spring = {"after": "2021-03", "before": "2021-06-01"}  # March, April, May 2021
    low, high = local(2021, 3, 1), local(2021, 6, 1)
    want = {name for name, t in taken.items() if low <= t < high}
    assert len(want) == 3
    r = upload(base, data, k=20, **spring)
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert set(names(hits)) == want and all(low <= h["metadata"]["taken_at"] < high for h in hits)
    meta = hits[0]["metadata"]
    assert meta["date_source"] == "exif-local" and meta["camera"] == "Acme <b>x</b> [a](javascript:x)"
    with SearchClient(uri=uri) as client:
        assert_same(hits, client.search(data, k=20, **spring))
        vector = client.stored_vectors([str(cat)])[str(cat)]
        similar = httpx.post(f"{base}/search/similar", json={"path": str(cat), "k": 20, **spring}).json()["hits"]
        assert set(names(similar)) == want - {"cat.jpg"}
        assert_same(similar, client.search_similar(str(cat), k=20, **spring))
        old = httpx.post(f"{base}/search/vector", json={"vector": vector.tolist(), "k": 20, "before": "2021"})
        assert sorted(names(old.json()["hits"])) == ["cat-2019.jpg", "rocket.jpg"]
        rocket = next(h for h in old.json()["hits"] if h["path"].endswith("rocket.jpg"))["metadata"]
        assert (rocket["date_source"], rocket["taken_at"], rocket["camera"]) == ("mtime", local(2018, 3, 1), "")
        later = httpx.post(
            f"{base}/search/examples",
            params={"k": 20, "after": "2022-01-01T00:00", "folder": str(photos)},
            data={"positive_path": [str(cat)]},
        )
        assert later.status_code == 200, later.text
        assert names(later.json()["hits"]) == ["cat-2023.jpg"]
        # an empty value is no bound (what an HTML form sends for a field left blank)
        assert len(upload(base, data, k=20, after="", before="").json()["hits"]) == len(taken)


def test_a_bad_date_or_sort_is_a_400_naming_it_before_anything_is_embedded(dated_api):
    base, photos, _, _ = dated_api
    data = (photos / "cat.jpg").read_bytes()
    cat = str(photos / "cat.jpg")
    embedded = httpx.get(f"{base}/stats").json()["api"]["images_embedded"]

    def expect(r: httpx.Response, words: str) -> None:
        assert r.status_code == 400, r.text
        assert words in r.json()["detail"], r.json()["detail"]

    expect(upload(base, data, after="last spring"), "after 'last spring' is not a date")
    expect(upload(base, data, before="2021-13-01"), "before '2021-13-01' is not a date")
    expect(upload(base, data, after="2022", before="2021"), "after (2022) must be earlier than before (2021)")
    expect(upload(base, data, sort="newest"), "sort")
    expect(
        httpx.post(f"{base}/search/examples", params={"after": "soon"}, data={"positive_path": [cat]}),
        "after 'soon' is not a date",
    )
    assert httpx.get(f"{base}/stats").json()["api"]["images_embedded"] == embedded  # refused before the model ran
    expect(httpx.post(f"{base}/search/similar", json={"path": cat, "before": "31/12/2021"}), "before '31/12/2021'")
    expect(httpx.post(f"{base}/search/similar", json={"path": cat, "sort": "date-desc"}), "sort")
    expect(httpx.post(f"{base}/search/vector", json={"vector": [1.0] * 32, "after": "2021-02-30"}), "after")
    expect(httpx.post(f"{base}/search/vector", json={"vector": [1.0] * 32, "before": 2021}), "before")


def test_sort_by_date_lists_the_close_matches_newest_first_then_the_rest_by_score(dated_api):
    base, photos, uri, taken = dated_api
    data = (photos / "cat.jpg").read_bytes()
    by_score = upload(base, data, k=20).json()["hits"]
    newest = upload(base, data, k=20, sort="date").json()["hits"]
    oldest = upload(base, data, k=20, sort="date-asc").json()["hits"]
    cats = ["cat-2023.jpg", "cat.jpg", "cat-2019.jpg"]  # the same pixels: three close matches
    matched = [h for h in newest if h["match"]]
    assert names(newest)[: len(matched)] == names(matched) and set(cats) <= set(names(matched))
    dates = [h["metadata"]["taken_at"] for h in matched]
    assert dates == sorted(dates, reverse=True) and dates == [taken[n] for n in names(matched)]
    assert names(oldest)[: len(matched)] == names(matched)[::-1]
    assert [h for h in newest if not h["match"]] == [h for h in by_score if not h["match"]]  # the rest by score
    assert sorted(names(newest)) == sorted(names(by_score))
    cat = str(photos / "cat.jpg")
    similar = httpx.post(f"{base}/search/similar", json={"path": cat, "k": 20, "sort": "date"}).json()["hits"]
    with SearchClient(uri=uri) as client:
        assert_same(newest, client.search(data, k=20, sort="date"))
        assert_same(similar, client.search_similar(cat, k=20, sort="date"))
    assert [n for n in names(similar) if n.startswith("cat")] == ["cat-2023.jpg", "cat-2019.jpg"]


def test_one_batch_makes_one_milvus_search_per_date_range_and_sort(dated_api):
    """Queries of the same k, filter and folder but other dates or another sort are searched
    apart, and each gets what SearchClient gives it."""
    _, photos, uri, _ = dated_api
    cat, coffee = str(photos / "cat.jpg"), str(photos / "coffee.jpg")
    with SearchClient(uri=uri) as client:
        batcher = SearchBatcher(client)
        try:
            asks = [
                {},
                {"after": "2021-03"},
                {"after": "2021-03", "before": "2021-09"},
                {"sort": "date"},
                {"sort": "date-asc", "before": "2022"},
            ]
            asked = [(ask, SearchQuery(5, path=p, **ask)) for ask in asks for p in (cat, coffee)]
            queries = [query for _, query in asked]
            batcher.submit(queries)
            for ask, query in asked:
                got, want = query.future.result(30), client.search_similar(query.path, 5, **ask)
                if query.sort == "score":  # the cat's copies score the same: Milvus may list them either way
                    got, want = (sorted(hits, key=lambda h: (round(-h.score, 5), h.path)) for hits in (got, want))
                assert_same(got, want)
            assert (batcher.calls, batcher.queries) == (len(asks), len(queries))
        finally:
            batcher.close()


def test_dates_asked_of_a_collection_not_yet_upgraded_are_a_400_saying_what_to_do(db_uri):
    from test_store import make_old_collection, make_rows

    rows, v = make_rows(5)
    make_old_collection(db_uri, "2", rows)  # schema 2: no capture facts
    with serving(db_uri, wait_ready=False) as (base, _):  # its model is made up: never "ready"
        vector = v[0].tolist()
        plain = httpx.post(f"{base}/search/vector", json={"vector": vector, "k": 2})
        assert plain.status_code == 200 and plain.json()["hits"][0]["path"] == rows[0]["path"]
        for ask in ({"after": "2020"}, {"sort": "date"}):
            for route, body in (("vector", {"vector": vector}), ("similar", {"path": rows[0]["path"]})):
                r = httpx.post(f"{base}/search/{route}", json={**body, **ask})
                assert r.status_code == 400 and "vitsearch index" in r.json()["detail"], (route, ask, r.text)
