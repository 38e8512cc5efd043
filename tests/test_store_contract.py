"""The store's contract against a reference: any sequence of upserts and deletes leaves a `Store`
answering ``count``, ``get``, ``search`` (top-k, ``folder``, ``exclude``) and ``copies`` exactly as
a plain dict of rows with exact NumPy cosine search does.

The backend is the test's ``db_uri``: Milvus Lite here, the Milvus server in the server leg
(tests/test_server.py re-runs this file against one). Folders are chosen so that a prefix match
by text would be wrong (``/p/a`` and ``/p/ab``), with names holding quotes, backslashes, spaces and
the characters of Milvus's ``like`` patterns."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from conftest import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store import INFO

from vitsearch.search.store import Store

FOLDERS = ["/p", "/p/a", "/p/ab", "/p/a b", '/p/q"\\', "/p/é"]
NAMES = ["x.jpg", "y*.jpg", "%_.png", "it's"]
PATHS = [f"{f}/{n}" for f in FOLDERS for n in NAMES]
#: Files share bytes: a few digests only, so that ``copies`` has groups to find.
DIGESTS = [f"{i:064x}" for i in range(4)]
_collections = itertools.count()


def vector(*seed: int) -> np.ndarray:
    """A unit ``(D,) float32`` vector, the same for the same seed (no two alike otherwise)."""
    v = np.random.default_rng(seed).normal(size=INFO.dim).astype(np.float32)
    return v / np.linalg.norm(v)


class Reference:
    """What the store must answer: the rows as a dict by path, searched by exact cosine."""

    def __init__(self):
        self.rows: dict[str, dict] = {}

    def upsert(self, rows: list[dict]) -> None:
        self.rows.update((r["path"], r) for r in rows)

    def delete(self, paths: list[str]) -> None:
        for p in paths:
            self.rows.pop(p, None)

    def selected(self, folder: str | None, exclude: list[str]) -> list[dict]:
        return [
            r
            for p, r in sorted(self.rows.items())
            if (folder is None or p.startswith(folder + "/")) and p not in exclude
        ]

    def search(self, query: np.ndarray, k: int, folder: str | None, exclude: list[str]) -> list[str]:
        rows = self.selected(folder, exclude)
        if not rows:
            return []
        scores = np.stack([r["vector"] for r in rows]) @ query
        return [rows[i]["path"] for i in np.argsort(-scores, kind="stable")[:k]]

    def copies(self, digests: list[str], folder: str | None, exclude: list[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for r in self.selected(folder, exclude):
            if r["sha256"] in digests:
                found.setdefault(r["sha256"], []).append(r["path"])
        return {d: sorted(p) for d, p in found.items()}


def row(path: str, seed: int, digest: int) -> dict:
    folder = path.rsplit("/", 1)[0]
    return {
        "path": path,
        "vector": vector(seed, PATHS.index(path)),  # two paths never tie
        "folder": folder,
        "size": seed,
        "mtime": 1.7e9 + seed,
        "ctime_ns": seed,
        "inode": seed,
        "width": 10,
        "height": 10,
        "sha256": DIGESTS[digest],
        "indexed_at": 1.8e9,
        "taken_at": 1.7e9 + seed,
        "date_source": "mtime",
        "camera": "",
    }


upserts = st.lists(
    st.tuples(st.sampled_from(PATHS), st.integers(0, 10**6), st.integers(0, len(DIGESTS) - 1)), min_size=1, max_size=8
).map(lambda items: ("upsert", [row(*item) for item in items]))
deletes = st.lists(st.sampled_from(PATHS + ["/p/never.jpg"]), min_size=1, max_size=5).map(lambda p: ("delete", p))
questions = st.tuples(
    st.integers(0, 10**6),  # query vector seed
    st.integers(1, 8),  # k
    st.sampled_from([None, *FOLDERS]),  # folder
    st.lists(st.sampled_from(PATHS), max_size=3),  # exclude
)


def check(store: Store, ref: Reference, question: tuple) -> None:
    """Every read of the store against the reference."""
    seed, k, folder, exclude = question
    assert store.count() == len(ref.rows)
    for f in FOLDERS:
        assert store.count(f) == len(ref.selected(f, [])), f
    assert set(store.get(PATHS)) == set(ref.rows)
    assert {r["path"] for r in store.iter_rows(folder=folder)} == {r["path"] for r in ref.selected(folder, [])}
    query = vector(seed)
    hits = store.search(query[None, :], k, folder=folder, exclude=exclude)[0]
    assert [h.path for h in hits] == ref.search(query, k, folder, exclude)
    for h in hits:
        assert h.score == pytest.approx(float(ref.rows[h.path]["vector"] @ query), abs=1e-5)
        assert h.metadata["size"] == ref.rows[h.path]["size"]
    assert store.copies(DIGESTS, folder=folder, exclude=exclude) == ref.copies(DIGESTS, folder, exclude)


@settings(
    max_examples=examples(lite=15, server=4), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(steps=st.lists(st.tuples(st.one_of(upserts, deletes), questions), min_size=1, max_size=6))
def test_any_sequence_of_writes_reads_as_the_reference(steps, db_uri):
    ref = Reference()
    with Store(db_uri, f"contract_{next(_collections)}") as store:
        store.ensure(INFO)
        for (op, arg), question in steps:
            getattr(store, op)(arg)
            getattr(ref, op)(arg)
            check(store, ref, question)
