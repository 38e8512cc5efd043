"""Contract of search/store/ (the `Store`) on a real Milvus Lite database: the collection records its
encoder and refuses another; rows are upserted, read, iterated and deleted by path; search
agrees with an exact numpy cosine reference."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from conftest import examples, milvus_client
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pymilvus import MilvusClient

from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.errors import BadQueryError, CollectionNotFoundError, EncoderMismatchError, StoreError
from vitsearch.search.store import Store

INFO = EncoderInfo(model="m", weights_sha256="a" * 64, dim=16, pooling="cls", image_size="32x32")


def make_rows(n: int, seed: int = 0) -> tuple[list[dict], np.ndarray]:
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(n, INFO.dim)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    rows = [
        {
            "path": f"/photos/{i % 3}/img_{i}.jpg",
            "vector": v[i],
            "folder": f"/photos/{i % 3}",
            "size": 1000 + i,
            "mtime": 1.7e9 + i / 7,
            "ctime_ns": 1_700_000_000_000_000_000 + i,
            "inode": 2**63 - 1 - i,
            "width": 100 + i,
            "height": 50,
            "sha256": f"{i:064x}",
            "indexed_at": 1.8e9,
            "taken_at": 1.6e9 + 86400 * i,
            "date_source": "exif",
            "camera": f"Camera {i % 2}",
        }
        for i in range(n)
    ]
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
        names, matrix = store.vectors(batch_size=7)  # all vectors in one pass, row i being names[i]
        assert sorted(names) == names and set(names) == paths and matrix.dtype == np.float32
        np.testing.assert_allclose(matrix, v[[int(p.rsplit("_", 1)[1][:-4]) for p in names]], rtol=1e-6)
        assert store.vectors(folder="/photos/1")[0] == sorted(p for p in paths if p.startswith("/photos/1/"))
        store.delete(names)
        assert store.vectors()[1].shape == (0, INFO.dim)


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
        assert qhits[0].metadata["width"] == rows[top[0]]["width"]


def test_search_filter(db_uri):
    rows, _ = make_rows(30)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        hits = store.search(rows[0]["vector"][None, :], k=30, filter='folder == "/photos/1"')[0]
        assert len(hits) == 10 and all(h.metadata["folder"] == "/photos/1" for h in hits)
        with pytest.raises(BadQueryError, match="not a valid Milvus expression.*nonsense"):
            store.search(rows[0]["vector"][None, :], k=3, filter="nonsense > 1")


def test_a_path_given_twice_in_one_upsert_is_one_row_holding_the_last(db_uri):
    rows, _ = make_rows(3)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert([rows[0], rows[1], {**rows[0], "size": 7}, {**rows[0], "size": 9}])
        assert store.count() == 2
        assert store.get([rows[0]["path"]])[rows[0]["path"]]["size"] == 9


def test_large_upserts_are_split(db_uri, monkeypatch):
    from dataclasses import replace

    from vitsearch.search.store import profile_for

    rows, _ = make_rows(25)
    with Store(db_uri, "images", profile=replace(profile_for(db_uri), upsert_bytes=1000)) as store:  # ~4 rows a request
        store.ensure(INFO)
        calls = []
        real = MilvusClient.upsert  # every upsert request, as the store sends them
        monkeypatch.setattr(
            MilvusClient, "upsert", lambda c, name, batch: calls.append(len(batch)) or real(c, name, batch)
        )
        store.upsert(rows)
        assert sum(calls) == 25 and len(calls) > 1 and max(calls) * 150 < 1500
        assert store.count() == 25


@pytest.mark.slow
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


# --- expressions: the one escaping function, against the real parser of each backend -----------


@settings(
    max_examples=examples(lite=60, server=6), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    names=st.lists(
        st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=30)
        .map(lambda s: s.replace("\0", "").replace("/", ""))
        .filter(bool),
        min_size=2,
        max_size=8,
        unique=True,
    )
)
@pytest.mark.slow
def test_any_path_is_stored_found_and_deleted_by_itself(names, db_uri):
    prefix = f"/example-{abs(hash(tuple(names)))}"  # one collection for every example, a folder each
    paths = [f"{prefix}/{n}" for n in names]
    rows, _ = make_rows(len(paths))
    rows = [{**r, "path": p, "folder": prefix} for r, p in zip(rows, paths)]
    with Store(db_uri, "names") as store:
        store.ensure(INFO)
        store.upsert(rows)
        assert set(store.get(paths)) == set(paths)
        assert {r["path"] for r in store.iter_rows(folder=prefix, batch_size=3)} == set(paths)
        store.delete(paths[:1])
        assert {r["path"] for r in store.iter_rows(folder=prefix)} == set(paths[1:])
        store.delete(paths[1:])
        assert list(store.iter_rows(folder=prefix)) == []


@pytest.mark.parametrize(
    "bad",
    [
        "1==1) or (1==1",
        "(width > 1",
        "width > 1)",
        'folder == "x',
        "folder == 'x",
        "]",
        'path in ["a"',
        'width > 1) or path != ("x"',
    ],
)
def test_a_filter_that_is_not_one_balanced_expression_is_refused(db_uri, bad):
    rows, v = make_rows(6)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        with pytest.raises(BadQueryError, match="one boolean expression"):
            store.search(v[:1], k=3, filter=bad)
        ok = store.search(v[:1], k=6, filter='(width > 100) and folder != ")"', exclude=[rows[0]["path"]])[0]
        assert {h.path for h in ok} == {r["path"] for r in rows[1:]}  # parentheses inside a literal are fine


def make_old_collection(db_uri: str, version: str, rows: list[dict], generation: bool = False) -> None:
    """A collection exactly as vitsearch made it at schema ``version`` ("1": vitsearch 0.1; "2":
    before the capture facts), holding ``rows``: a plain collection ``images``, or with
    ``generation`` (as vitsearch made schema 2) the name an alias of ``images__vitsearch_5``."""
    from pymilvus import DataType

    lacks = {
        "1": ("ctime_ns", "inode", "taken_at", "date_source", "camera"),
        "2": ("taken_at", "date_source", "camera"),
    }
    with milvus_client(db_uri) as client:
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("path", DataType.VARCHAR, is_primary=True, max_length=4096)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=INFO.dim)
        schema.add_field("folder", DataType.VARCHAR, max_length=4096)
        ints = ("size", "width", "height") if version == "1" else ("size", "ctime_ns", "inode", "width", "height")
        for name in ints:
            schema.add_field(name, DataType.INT64)
        for name in ("mtime", "indexed_at"):
            schema.add_field(name, DataType.DOUBLE)
        schema.add_field("sha256", DataType.VARCHAR, max_length=64)
        index = client.prepare_index_params()
        index.add_index(
            field_name="vector", index_type="HNSW", metric_type="COSINE", params={"M": 16, "efConstruction": 200}
        )
        name = "images__vitsearch_5" if generation else "images"
        client.create_collection(
            name,
            schema=schema,
            index_params=index,
            consistency_level="Strong",
            properties={"vitsearch.encoder": INFO.to_json(), "vitsearch.schema_version": version},
        )
        if generation:
            client.create_alias(name, "images")
        client.insert(
            name,
            [
                {
                    k: (np.asarray(val).tolist() if k == "vector" else val)
                    for k, val in r.items()
                    if k not in lacks[version]
                }
                for r in rows
            ],
        )


def dated(rows: list[dict]) -> list[dict]:
    """What the indexer's upgrade fills in (here: a date from the mtime, a made-up camera)."""
    return [{**r, "taken_at": r["mtime"] + 1, "date_source": "exif", "camera": "Upgraded"} for r in rows]


@pytest.mark.slow
@pytest.mark.parametrize("version, generation", [("1", False), ("2", False), ("2", True)])
def test_an_older_collection_is_searchable_and_upgraded_without_losing_rows(db_uri, version, generation):
    from vitsearch.search.store import SCHEMA_VERSION

    rows, v = make_rows(40)
    make_old_collection(db_uri, version, rows, generation)
    with Store(db_uri, "images") as store:
        before = store.search(v[:1], k=5)[0]
        assert before[0].path == rows[0]["path"]  # readable as it is, what it lacks unknown
        assert before[0].metadata["taken_at"] == -1 and before[0].metadata["date_source"] == ""
        assert (before[0].metadata["inode"] == -1) == (version == "1")
        assert store.upgrade(complete=dated) == 40
        assert store.properties()["vitsearch.schema_version"] == SCHEMA_VERSION
        got = store.get([r["path"] for r in rows], fields=["vector", "size", "ctime_ns", "taken_at", "camera"])
        assert len(got) == 40 and store.count() == 40
        for r in rows:
            np.testing.assert_allclose(got[r["path"]]["vector"], r["vector"], rtol=1e-6)
            assert got[r["path"]]["size"] == r["size"]
            assert got[r["path"]]["ctime_ns"] == (-1 if version == "1" else r["ctime_ns"])
            assert (got[r["path"]]["taken_at"], got[r["path"]]["camera"]) == (r["mtime"] + 1, "Upgraded")
        assert [h.path for h in store.search(v[:1], k=5)[0]] == [h.path for h in before]
        assert store.upgrade() == 0  # already current
    with milvus_client(db_uri) as client:  # one generation left, under the name
        assert [n for n in client.list_collections() if n.startswith("images")] == [store.physical]


@pytest.mark.slow
def test_an_upgrade_stopped_half_way_goes_on_where_it_stopped(db_uri, monkeypatch):
    """A crash while the rows are copied (here: reading a batch's capture facts fails) leaves
    the old collection searchable under its name; the next upgrade copies only the rows after
    those the copy holds, and the result holds every row once."""
    from vitsearch.search.store import space

    monkeypatch.setattr(space, "COPY_BATCH", 10)
    rows, v = make_rows(35)
    make_old_collection(db_uri, "2", rows, generation=True)
    seen: list[str] = []
    crash = [True]

    def crash_on_third_batch(batch):
        if len(seen) == 20 and crash.pop():
            raise OSError("disk gone")
        seen.extend(r["path"] for r in batch)
        return dated(batch)

    with Store(db_uri, "images") as store:
        with pytest.raises(OSError, match="disk gone"):
            store.upgrade(complete=crash_on_third_batch)
    with Store(db_uri, "images") as store:
        assert store.schema_version() == "2" and store.count() == 35
        crash.append(False)
        assert store.search(v[:1], k=1)[0][0].path == rows[0]["path"]
        copied = len(seen)
        assert store.upgrade(complete=crash_on_third_batch) == 35 - copied  # only the rest
        assert len(seen) == 35 and len(set(seen)) == 35
        assert store.schema_version() == "3" and store.count() == 35
        got = store.get([r["path"] for r in rows], fields=["taken_at"])
        assert {p: g["taken_at"] for p, g in got.items()} == {r["path"]: r["mtime"] + 1 for r in rows}


def test_neighbours_are_batched_searches_of_the_stored_vectors(db_uri):
    """Every pair at the threshold, found from both ends, in batches (several queries per
    search), also where the rows are read in several queries that do not divide into the
    batches; a folder limits queries and neighbours; ``copies`` finds rows by sha256."""
    from dataclasses import replace

    from vitsearch.search.duplicates import neighbours

    rows, v = make_rows(30)
    planted = ((0, 10), (1, 20))  # near copies of rows 0 and 1, in other folders
    for src, dst in planted:
        near = v[src] + 0.05 * v[dst]
        rows[dst]["vector"] = near / np.linalg.norm(near)
    rows[29]["sha256"] = rows[3]["sha256"]
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        batches = list(neighbours(store, 0.95, batch_size=8, fields=("sha256", "folder")))
        with Store(db_uri, "images", profile=replace(store.profile, read_rows=12)) as small:  # reads of 12, 12, 6
            small_reads = list(neighbours(small, 0.95, batch_size=8, fields=("sha256", "folder")))
        inside = [p for _, pairs in neighbours(store, 0.95, folder="/photos/1") for p in pairs]
        copies = store.copies([rows[3]["sha256"], "no such digest"], exclude=[rows[3]["path"]])
        assert store.count() == 30 and store.count("/photos/1") == 10
    assert [len(r) for r, _ in batches] == [8, 8, 8, 6] and {"sha256", "folder"} <= set(batches[0][0][0])
    pairs = {(a, b) for _, found in batches for a, b, score in found if score >= 0.95}
    expected = {(rows[src]["path"], rows[dst]["path"]) for src, dst in planted}
    assert pairs == expected | {(b, a) for a, b in expected}
    assert [len(r) for r, _ in small_reads] == [8, 4, 8, 4, 6]
    assert [r["path"] for b, _ in small_reads for r in b] == [r["path"] for b, _ in batches for r in b]
    assert {(a, b) for _, found in small_reads for a, b, score in found if score >= 0.95} == pairs
    assert inside == [] and copies == {rows[3]["sha256"]: [rows[29]["path"]]}  # each pair spans two folders


class _TooLarge(grpc.RpcError):
    """What pymilvus lets through when a reply is over gRPC's message limit."""

    def code(self):
        return grpc.StatusCode.RESOURCE_EXHAUSTED

    def details(self):
        return "grpc: trying to send message larger than max (98104627 vs. 67108864)"


def test_a_reply_over_the_grpc_limit_halves_the_rows_a_query_asks(db_uri, monkeypatch):
    """A Milvus 2.3 server refused a 4,096-row read of a 1M collection (98 MB over its 64 MB);
    a real store here, pymilvus' ``query`` refusing more than 5 rows as that server did."""
    rows, _ = make_rows(23)
    with Store(db_uri, "images") as store:
        store.ensure(INFO)
        store.upsert(rows)
        asked, real = [], MilvusClient.query

        def query(client, *args, limit, **kwargs):
            asked.append(limit)
            if limit > 5:
                raise _TooLarge()
            return real(client, *args, limit=limit, **kwargs)

        monkeypatch.setattr(MilvusClient, "query", query)
        read = [r["path"] for r in store.iter_rows(batch_size=20)]
        monkeypatch.setattr(MilvusClient, "query", lambda *a, **k: (_ for _ in ()).throw(_TooLarge()))
        with pytest.raises(StoreError, match="RESOURCE_EXHAUSTED"):
            list(store.iter_rows(batch_size=1))
        monkeypatch.setattr(MilvusClient, "query", real)
    assert sorted(read) == sorted(r["path"] for r in rows) and len(read) == 23
    assert asked[:3] == [20, 10, 5] and set(asked[3:]) == {5}  # halved once, then kept
