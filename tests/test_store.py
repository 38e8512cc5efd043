"""Contract of search/store.py on a real Milvus Lite database: the collection records its
encoder and refuses another; rows are upserted, read, iterated and deleted by path; search
agrees with an exact numpy cosine reference."""
from __future__ import annotations

import numpy as np
import pytest

from vitsearch.search.encoder import EncoderInfo
from vitsearch.search.errors import BadQueryError, CollectionNotFoundError, EncoderMismatchError, StoreError
from vitsearch.search.store import Store

INFO = EncoderInfo(model="m", weights_sha256="a" * 64, dim=16, pooling="cls", image_size="32x32")


def make_rows(n: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, INFO.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = [{"path": f"/photos/{i % 3}/img_{i}.jpg", "vector": v[i], "folder": f"/photos/{i % 3}",
             "size": 1000 + i, "mtime": 1.7e9 + i / 7, "width": 100 + i, "height": 50,
             "sha256": f"{i:064x}", "indexed_at": 1.8e9} for i in range(n)]
    return rows, v


def test_missing_collection(db_uri):
    with Store(db_uri, "images") as store:
        assert not store.exists()
        with pytest.raises(CollectionNotFoundError, match="vitsearch index DIR"):
            store.encoder_info()


def test_encoder_record_survives_reopen_and_mismatch_is_refused(db_uri):
    with Store(db_uri, "images") as store:
        assert store.ensure(INFO) is True
        assert store.ensure(INFO) is False
    with Store(db_uri, "images") as store:
        assert store.encoder_info() == INFO
        other = EncoderInfo(**{**INFO.__dict__, "weights_sha256": "b" * 64})
        with pytest.raises(EncoderMismatchError):
            store.ensure(other)


def test_rows_round_trip_upsert_replaces_and_delete(db_uri):
    rows, v = make_rows(30)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        assert store.count() == 30
        got = store.get([rows[4]["path"], "/not/there.jpg"], fields=["size", "mtime", "vector"])
        assert list(got) == [rows[4]["path"]]
        assert got[rows[4]["path"]]["size"] == 1004
        assert got[rows[4]["path"]]["mtime"] == rows[4]["mtime"]  # DOUBLE is exact
        np.testing.assert_allclose(got[rows[4]["path"]]["vector"], v[4], rtol=1e-6)
        store.upsert([{**rows[4], "size": 1}])
        assert store.count() == 30 and store.get([rows[4]["path"]])[rows[4]["path"]]["size"] == 1
        store.delete([rows[0]["path"], rows[1]["path"], "/not/there.jpg"])
        assert store.count() == 28
        paths = {r["path"] for r in store.iter_rows(batch_size=7)}
        assert paths == {r["path"] for r in rows[2:]}


def test_search_agrees_with_exact_numpy_cosine(db_uri):
    rows, v = make_rows(200, seed=3)
    queries = np.random.default_rng(4).normal(size=(5, INFO.dim)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        hits = store.search(queries, k=10)
    exact = queries @ v.T
    for q, qhits in enumerate(hits):
        top = np.argsort(-exact[q])[:10]
        assert [h.path for h in qhits] == [rows[i]["path"] for i in top]
        np.testing.assert_allclose([h.score for h in qhits], exact[q, top], atol=1e-5)
        assert qhits[0].fields["width"] == rows[top[0]]["width"]


def test_search_filter(db_uri):
    rows, _ = make_rows(30)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        hits = store.search(rows[0]["vector"][None, :], k=30, filter='folder == "/photos/1"')[0]
        assert len(hits) == 10 and all(h.fields["folder"] == "/photos/1" for h in hits)
        with pytest.raises(BadQueryError, match="not a valid Milvus expression.*nonsense"):
            store.search(rows[0]["vector"][None, :], k=3, filter="nonsense > 1")


def test_large_upserts_are_split(db_uri, monkeypatch):
    import vitsearch.search.store as store_mod

    monkeypatch.setattr(store_mod, "UPSERT_BYTES", 1000)  # ~4 rows per request
    rows, _ = make_rows(25)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        calls = []
        real = store._client.upsert
        monkeypatch.setattr(store._client, "upsert", lambda name, batch: calls.append(len(batch)) or real(name, batch))
        store.upsert(rows)
        assert sum(calls) == 25 and len(calls) > 1 and max(calls) * 150 < 1500
        assert store.count() == 25


def test_an_unreachable_server_is_retried_with_backoff_then_reported(milvus_process):
    import threading
    import time

    rows, _ = make_rows(12)
    store = Store(milvus_process.uri, "images", retry_s=30)
    store.ensure(INFO)
    store.upsert(rows)
    milvus_process.kill()
    restart = threading.Timer(2.0, milvus_process.start)  # back after 2 s: the call waits for it
    restart.start()
    started = time.monotonic()
    assert store.count() == 12
    assert 2.0 <= time.monotonic() - started < 30
    restart.join()

    short = Store(milvus_process.uri, "images", retry_s=1.5)
    milvus_process.kill()  # gone for good: a clear error naming the URI, within the bound
    started = time.monotonic()
    with pytest.raises(StoreError, match=f"Milvus at {milvus_process.uri} did not answer for 1.5 s"):
        short.count()
    assert time.monotonic() - started < 5


def test_the_token_is_never_shown(monkeypatch):
    from vitsearch.search.config import Settings

    monkeypatch.setenv("VITSEARCH_TOKEN", "root:s3cret-token")
    settings = Settings(uri="http://127.0.0.1:9")  # nothing listens there
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())
    with pytest.raises(StoreError) as error:
        Store.from_settings(settings)
    assert "127.0.0.1:9" in str(error.value) and "s3cret" not in str(error.value)
