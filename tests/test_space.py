"""The collection's space (:mod:`vitsearch.search.store.space`): whitening learned from the
collection by the indexer once, recorded and reused, re-learned as the collection grows or on
request, removed with ``--whitening none``; every vector rewritten without embedding an image
again (the raw embeddings recovered); searches during a re-learn answered in one space; a run
killed during the rewrite finished by the next; collections of 1, 11 and 5,000 images. Run
again against a Milvus server by tests/test_server.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, milvus_client
from PIL import Image

from vitsearch.indexer import index_folder
from vitsearch.search.client import SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.store import Store
from vitsearch.search.store.generations import is_internal
from vitsearch.search.store.schema import SCHEMA_VERSION, collection_schema, index_params
from vitsearch.search.store.space import read_space, update_space
from vitsearch.search.whitening import MIN_IMAGES


def varied_photos(folder: Path, n: int, seed: int = 0, start: int = 0) -> Path:
    """``n`` small distinct pictures (random blocks of colour), ``img-NNNN.png``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        blocks = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        Image.fromarray(blocks).resize((48, 48), Image.Resampling.NEAREST).save(folder / f"img-{i:04d}.png")
    return folder


@pytest.fixture(scope="module")
def encoder(tiny_model) -> Encoder:
    return Encoder.load(str(tiny_model), runtime="torch")


def index(folder: Path, encoder: Encoder, uri: str, **kw):
    with Store(uri, "images") as store:
        return index_folder(str(folder), encoder=encoder, store=store, workers=0, **kw)


def collections(uri: str) -> list[str]:
    with milvus_client(uri) as client:
        return sorted(client.list_collections())


@pytest.mark.slow
def test_learned_once_recorded_reused_relearned_removed(tmp_path, db_uri, encoder):
    photos = varied_photos(tmp_path / "photos", MIN_IMAGES - 1)
    first = index(photos, encoder, db_uri)
    assert first.indexed == MIN_IMAGES - 1 and first.space == ""  # too few to learn from
    with SearchClient(uri=db_uri) as client:
        assert not client.space.whitened and client.space.stats.count == MIN_IMAGES - 1
        assert client.stats()["space"].startswith("raw embeddings; whitening is learned once")
    varied_photos(photos, 1, seed=1, start=MIN_IMAGES - 1)
    learned = index(photos, encoder, db_uri)
    assert learned.indexed == 1 and learned.space == "learned" and learned.rewritten == MIN_IMAGES
    with SearchClient(uri=db_uri) as client:
        space = client.space
        assert space.whitened and space.whitening.n == MIN_IMAGES
        stats = client.stats()
        assert stats["whitening"]["n"] == MIN_IMAGES and stats["space"].startswith("whitened (learned from 50 images")
        assert stats["count"] == MIN_IMAGES
    again = index(photos, encoder, db_uri)
    assert again.indexed == 0 and again.space == "" and read_space(Store(db_uri, "images")).id == space.id
    varied_photos(photos, MIN_IMAGES, seed=2, start=MIN_IMAGES)  # the collection doubles
    grown = index(photos, encoder, db_uri)
    assert grown.space == "re-learned" and grown.rewritten == 2 * MIN_IMAGES
    with SearchClient(uri=db_uri) as client:
        assert client.space.whitening.n == 2 * MIN_IMAGES and client.space.id != space.id
        relearned_id = client.space.id
    asked = index(photos, encoder, db_uri, relearn=True)
    assert asked.space == "re-learned" and read_space(Store(db_uri, "images")).id != relearned_id
    removed = index(photos, encoder, db_uri, whitening="none")
    assert removed.space == "removed"
    with SearchClient(uri=db_uri) as client:
        assert not client.space.whitened and client.space.learn == "none"
    varied_photos(photos, 10, seed=3, start=2 * MIN_IMAGES)
    assert index(photos, encoder, db_uri).space == ""  # stays raw: the collection says none
    names = collections(db_uri)
    generations = [n for n in names if is_internal(n) and not n.endswith("_space")]
    assert len(generations) == 1, names  # each rewrite dropped the generation it replaced


@pytest.mark.slow
def test_rewrite_keeps_rows_and_recovers_the_raw_embeddings(tmp_path, db_uri, encoder):
    photos = varied_photos(tmp_path / "photos", 2 * MIN_IMAGES, seed=4)
    index(photos, encoder, db_uri, whitening="none")
    with Store(db_uri, "images") as store:
        before = {r["path"]: r for r in store.iter_rows(["size", "mtime", "sha256", "inode", "width"])}
    report = index(photos, encoder, db_uri, whitening="auto")
    assert report.space == "learned" and report.indexed == 0  # no image embedded again
    files = sorted(str(p) for p in photos.iterdir())
    embedded = encoder.embed(files)
    with SearchClient(uri=db_uri) as client:
        after = {r["path"]: r for r in client.store.iter_rows(["size", "mtime", "sha256", "inode", "width"])}
        assert after == before
        stored = client.stored_vectors(files)
        raw = np.stack([stored[f] for f in files])
        assert (raw * embedded).sum(1).min() > 0.9999  # the model's embeddings, recovered
        whitened = client.store.get(files[:3], fields=["vector"])
        assert (np.asarray([whitened[f]["vector"] for f in files[:3]]) * embedded[:3]).sum(1).max() < 0.99
        hits = client.search(files[7], k=3)
        assert hits[0].path == files[7] and hits[0].score > 0.9999 and hits[0].match


@pytest.mark.slow
def test_searches_during_a_relearn_stay_in_one_space(tmp_path, db_uri, encoder):
    photos = varied_photos(tmp_path / "photos", 3 * MIN_IMAGES, seed=5)
    index(photos, encoder, db_uri)
    files = sorted(str(p) for p in photos.iterdir())
    embedded = encoder.embed(files[:20])
    scores, errors, stop = [], [], threading.Event()

    def search() -> None:
        with SearchClient(uri=db_uri) as client:
            while not stop.is_set():
                for f, v in zip(files[:20], embedded):
                    try:
                        hit = client.search_vector(v, k=1)[0]
                        scores.append((hit.path == f, hit.score))
                    except Exception as exc:  # noqa: BLE001 - any error fails the test below
                        errors.append(exc)

    thread = threading.Thread(target=search)
    thread.start()
    try:
        with Store(db_uri, "images") as store:
            for _ in range(3):
                update_space(store, relearn=True, on_rows=lambda n: time.sleep(0.05), batch_size=16)
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert len(scores) > 20
    # a query mapped with one space and compared with vectors of another would not find itself at ~1
    assert all(same and score > 0.9999 for same, score in scores), [s for s in scores if not (s[0] and s[1] > 0.9999)][
        :5
    ]


@pytest.mark.slow
def test_a_reader_on_a_generation_being_dropped_follows_the_move(tmp_path, db_uri, encoder, monkeypatch):
    """Milvus Lite answers a search on a collection being dropped with no hits rather than an
    error: a short reply makes the reader look the name up again and search the new generation."""
    photos = varied_photos(tmp_path / "photos", 2 * MIN_IMAGES, seed=7)
    index(photos, encoder, db_uri)
    files = sorted(str(p) for p in photos.iterdir())
    vector = encoder.embed(files[:1])[0]
    with SearchClient(uri=db_uri) as reader:
        assert reader.search_vector(vector, k=1)[0].path == files[0]  # resolved the first generation
        old = reader.store.physical

        def empty_instead_of_drop(store, name):  # what a concurrent reader of Lite sees mid-drop
            with milvus_client(db_uri) as client:
                client.delete(name, filter='path != ""')

        monkeypatch.setattr(Store, "drop_physical", empty_instead_of_drop)
        with Store(db_uri, "images") as writer:
            update_space(writer, relearn=True)
            assert writer.physical != old and writer.count_of(old) == 0
        hit = reader.search_vector(vector, k=1)[0]
        assert hit.path == files[0] and hit.score > 0.9999
        assert reader.store.physical != old
        assert reader.stats()["count"] == len(files)


KILLED_RELEARN = textwrap.dedent("""
    import sys, time
    from vitsearch.search.store import Store
    from vitsearch.search.store.space import update_space
    def slow(n):
        print("batch", flush=True)
        time.sleep(0.5)
    with Store(sys.argv[1], "images") as store:
        update_space(store, relearn=True, on_rows=slow, batch_size=10)
""")


@pytest.mark.slow
def test_a_kill_during_relearn_is_finished_by_the_next_run(tmp_path, db_uri, encoder):
    photos = varied_photos(tmp_path / "photos", 2 * MIN_IMAGES, seed=6)
    index(photos, encoder, db_uri)
    with Store(db_uri, "images") as store:
        before_id, count = read_space(store).id, store.count()
        store.close(release=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_RELEARN, db_uri],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    seen = 0
    while seen < 3:  # three batches written and recorded, the copy half done
        line = proc.stdout.readline()
        assert line, "the re-learn ended before it could be killed"
        seen += line.startswith("batch")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with SearchClient(uri=db_uri) as client:  # the collection answers from its old generation meanwhile
        assert client.space.id == before_id and client.store.count() == count
    names = collections(db_uri)
    assert len([n for n in names if is_internal(n) and not n.endswith("_space")]) == 2, names  # old + partial
    report = index(photos, encoder, db_uri)
    assert report.space == "resumed" and 0 < report.rewritten < count  # from where it stopped
    with SearchClient(uri=db_uri) as client:
        assert client.space.id != before_id and client.space.whitened and client.store.count() == count
        f = str(sorted(photos.iterdir())[5])
        assert client.search(f, k=1)[0].path == f
    assert len([n for n in collections(db_uri) if is_internal(n) and not n.endswith("_space")]) == 1


@pytest.mark.slow
def test_eleven_photos_the_crop_of_the_cat_matches_the_cat_only(db_uri, photos, real_model):
    """The README's main job: 11 photos (too few to whiten), the cropped, mirrored cat as the query."""
    index(photos, Encoder.load(str(real_model)), db_uri)
    with SearchClient(uri=db_uri) as client:
        assert client.space.stats.count == 11 and not client.space.whitened
        hits = client.search(REPO / "examples" / "queries" / "cat-crop.jpg", k=11)
        assert hits[0].path == str(photos / "cat.jpg") and hits[0].match
        assert not any(h.match for h in hits[1:])  # ten other photos: none the same picture


@pytest.mark.slow
def test_collections_of_1_11_and_5000_images(tmp_path, db_uri, encoder, photos):
    one = tmp_path / "one"
    one.mkdir()
    (one / "cat.jpg").write_bytes((photos / "cat.jpg").read_bytes())
    index(one, encoder, db_uri)
    with SearchClient(uri=db_uri) as client:
        hits = client.search(one / "cat.jpg", k=5)
        assert [h.path for h in hits] == [str(one / "cat.jpg")] and not hits[0].match  # no statistics of 1 image
        assert client.space.stats is None and client.stats()["match_bar"] is None
    with Store(db_uri, "images") as store:
        store.drop()
    index(photos, encoder, db_uri)
    with SearchClient(uri=db_uri) as client:
        assert client.space.stats.count == 11 and not client.space.whitened
        hits = client.search(photos / "cat.jpg", k=11)
        assert hits[0].path == str(photos / "cat.jpg") and hits[0].match and len(hits) == 11
    with Store(db_uri, "images") as store:
        store.drop()
        from vitsearch.search.store import writer_lease

        store.ensure(encoder.info)
        rng = np.random.default_rng(0)
        raw = rng.standard_normal((5000, encoder.dim)).astype(np.float32) * np.linspace(4, 0.5, encoder.dim)
        raw = (raw + 3) / np.linalg.norm(raw + 3, axis=1, keepdims=True)
        rows = [
            {
                "path": f"/synthetic/{i:05d}.jpg",
                "vector": v,
                "folder": "/synthetic",
                "size": 1,
                "mtime": 0.0,
                "ctime_ns": 0,
                "inode": i,
                "width": 1,
                "height": 1,
                "sha256": f"{i:064x}",
                "indexed_at": 0.0,
                "taken_at": 0.0,
                "date_source": "mtime",
                "camera": "",
            }
            for i, v in enumerate(raw)
        ]
        with writer_lease(store):
            store.upsert(rows)
            space = update_space(store)
        assert space.whitened and space.whitening.n == 5000 and store.count() == 5000
    with SearchClient(uri=db_uri) as client:
        found = client.search_vectors(raw[[10, 4321]], k=2)
        assert [hits[0].path for hits in found] == ["/synthetic/00010.jpg", "/synthetic/04321.jpg"]
        assert all(hits[0].score > 0.9999 and hits[0].match and not hits[1].match for hits in found)


def test_a_collection_of_an_older_vitsearch_is_moved_behind_its_name(db_uri, encoder, tmp_path):
    """A plain collection named as the user named it (no alias, as vitsearch made them before
    generations) keeps working, and its first rewrite puts it behind an alias."""
    with Store(db_uri, "images") as store, milvus_client(db_uri) as client:
        client.create_collection(
            "images",
            schema=collection_schema(encoder.dim),
            index_params=index_params(client),
            consistency_level="Strong",
            properties={"vitsearch.encoder": encoder.info.to_json(), "vitsearch.schema_version": SCHEMA_VERSION},
        )
        assert store.resolve() == "images"
    photos = varied_photos(tmp_path / "photos", MIN_IMAGES, seed=7)
    report = index(photos, encoder, db_uri)
    assert report.space == "learned"
    names = collections(db_uri)
    assert "images" not in names and not any(n.endswith("_0") for n in names), names
    with SearchClient(uri=db_uri) as client:
        assert client.store.physical != "images" and client.store.count() == MIN_IMAGES
