"""Contract of ``vitsearch watch`` (indexer/watch.py, cli/watch.py): while it runs the collection
equals the folders: a copied image becomes searchable, a file written slowly is embedded once,
whole; a rename or move keeps the vector (no embedding) under the new path; a delete, a folder
deleted or moved out removes the rows; the start catches up with what changed meanwhile; a
SIGKILL at any moment and a restart converge to the folder's truth; a folder the OS refuses to
watch is polled and still seen; a `vitsearch index` run waits for a watcher's batch.
Real Milvus Lite, real photos, the tiny ViT."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import EXAMPLES

from vitsearch.indexer import index_folder
from vitsearch.indexer.watch import Watcher
from vitsearch.search.encoder import Encoder
from vitsearch.search.errors import CollectionNotFoundError
from vitsearch.search.store import Store, writer_lease

PHOTOS = sorted((EXAMPLES / "images").glob("*.jpg"))


class Counting:
    """The encoder, counting the images it embeds."""

    def __init__(self, encoder: Encoder):
        self._encoder, self.images = encoder, 0

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def embed_pixels(self, pixel_values):
        self.images += len(pixel_values)
        return self._encoder.embed_pixels(pixel_values)


@pytest.fixture
def encoder(tiny_model):
    return Counting(Encoder.load(str(tiny_model), runtime="torch"))


@pytest.fixture
def store(db_uri):
    with Store(db_uri, "images") as s:
        yield s


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def truth(folder: Path) -> dict[str, str]:
    return {str(p): sha(p) for p in folder.rglob("*.jpg") if p.is_file()}


def rows(store: Store) -> dict[str, str]:
    found = list(store.iter_rows(["sha256"]))
    assert len(found) == len({r["path"] for r in found}), "duplicate rows"
    return {r["path"]: r["sha256"] for r in found}


def until(watcher: Watcher, done, timeout_s: float = 20.0) -> None:
    """Step the watcher until ``done()``."""
    deadline = time.monotonic() + timeout_s
    while not done():
        assert time.monotonic() < deadline, f"not done after {timeout_s} s; pending {watcher.pending()}"
        watcher.step()
        time.sleep(0.05)


@pytest.fixture
def watching(tmp_path, store, encoder):
    """A factory: a started, caught-up watcher of ``tmp_path/watched`` (made, empty) and more folders."""
    made = []

    def make(*folders: Path, **kw) -> Watcher:
        w = Watcher([str(f) for f in folders], store, encoder, settle_s=kw.pop("settle_s", 0.3), **kw)
        w.start()
        w.catch_up()
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


@pytest.fixture
def folder(tmp_path) -> Path:
    f = tmp_path / "watched"
    f.mkdir()
    return f


def test_a_copied_file_becomes_searchable(folder, watching, store):
    w = watching(folder)
    shutil.copy(PHOTOS[0], folder / "a.jpg")
    until(w, lambda: rows(store) == truth(folder))
    vector = store.get([str(folder / "a.jpg")], fields=["vector"])[str(folder / "a.jpg")]["vector"]
    import numpy as np

    assert store.search(np.asarray([vector], dtype=np.float32), 1)[0][0].path == str(folder / "a.jpg")


@pytest.mark.slow
def test_a_file_written_slowly_is_embedded_once_whole(folder, watching, store, encoder):
    w = watching(folder, settle_s=0.5)
    data, target = PHOTOS[1].read_bytes(), folder / "slow.jpg"
    step = len(data) // 8 + 1

    def write():
        with open(target, "wb") as f:
            for i in range(0, len(data), step):
                f.write(data[i : i + step])
                f.flush()
                time.sleep(0.15)

    writer = threading.Thread(target=write)
    writer.start()
    deadline = time.monotonic() + 30
    while writer.is_alive() or rows(store) != truth(folder):
        assert time.monotonic() < deadline
        w.step()
        time.sleep(0.05)
    assert rows(store) == {str(target): hashlib.sha256(data).hexdigest()}
    assert encoder.images == 1


def test_rename_and_moves_keep_the_vector_without_embedding(folder, watching, store, encoder):
    for i, p in enumerate(PHOTOS[:4]):
        shutil.copy(p, folder / f"{i}.jpg")
    (folder / "sub").mkdir()
    shutil.copy(PHOTOS[4], folder / "sub" / "4.jpg")
    w = watching(folder)
    before = {r["path"]: r for r in store.iter_rows(["sha256", "indexed_at", "vector"])}
    embedded = encoder.images
    (folder / "0.jpg").rename(folder / "renamed.jpg")  # rename
    (folder / "1.jpg").rename(folder / "sub" / "1.jpg")  # move to another folder
    (folder / "sub").rename(folder / "moved-sub")  # a folder moved, with its files
    until(w, lambda: rows(store) == truth(folder))
    after = {r["path"]: r for r in store.iter_rows(["sha256", "indexed_at", "vector"])}
    moved = {
        "0.jpg": "renamed.jpg",
        "1.jpg": "moved-sub/1.jpg",
        "sub/4.jpg": "moved-sub/4.jpg",
        "2.jpg": "2.jpg",
    }
    for old, new in moved.items():
        a, b = before[str(folder / old)], after[str(folder / new)]
        assert (b["sha256"], b["indexed_at"], b["vector"]) == (a["sha256"], a["indexed_at"], a["vector"])
    assert encoder.images == embedded  # nothing embedded again


@pytest.mark.slow
def test_deletes_and_folders_gone_remove_rows(folder, watching, store, tmp_path):
    for name in ("keep", "gone", "out"):
        (folder / name).mkdir()
        for i, p in enumerate(PHOTOS[:2]):
            shutil.copy(p, folder / name / f"{i}.jpg")
    shutil.copy(PHOTOS[3], folder / "single.jpg")
    w = watching(folder)
    assert len(rows(store)) == 7
    (folder / "single.jpg").unlink()
    shutil.rmtree(folder / "gone")
    (folder / "out").rename(tmp_path / "outside")  # moved out of the watched folder
    until(w, lambda: rows(store) == truth(folder))
    assert set(rows(store)) == {str(folder / "keep" / "0.jpg"), str(folder / "keep" / "1.jpg")}


def test_start_catches_up_with_what_changed_while_stopped(folder, store, encoder):
    for i, p in enumerate(PHOTOS[:3]):
        shutil.copy(p, folder / f"{i}.jpg")
    index_folder(str(folder), encoder=encoder, store=store, workers=0)
    (folder / "0.jpg").unlink()
    (folder / "1.jpg").rename(folder / "one.jpg")
    shutil.copy(PHOTOS[5], folder / "new.jpg")
    w = Watcher([str(folder)], store, encoder)
    w.start()
    try:
        w.catch_up()
    finally:
        w.stop()
    assert rows(store) == truth(folder)


class Refusing:
    """An OS-event observer that refuses every watch, as inotify does past its limits."""

    def __init__(self):
        self.tried = []

    def start(self):
        pass

    def stop(self):
        pass

    def join(self, timeout=None):
        pass

    def schedule(self, handler, path, recursive=False):
        self.tried.append(path)
        raise OSError(errno.ENOSPC, "inotify watch limit reached")


@pytest.mark.slow
def test_a_folder_the_os_refuses_to_watch_is_polled(folder, watching, store):
    told = []
    w = watching(folder, observer=Refusing, poll_s=0.2, on_fallback=lambda f, why: told.append((f, why)))
    assert w.polled == [str(folder)]
    assert len(told) == 1 and "max_user_watches" in told[0][1]
    shutil.copy(PHOTOS[2], folder / "polled.jpg")
    until(w, lambda: rows(store) == truth(folder))
    (folder / "polled.jpg").unlink()
    until(w, lambda: rows(store) == {})


@pytest.mark.slow
def test_an_index_run_waits_for_a_watch_batch_and_the_watcher_for_a_run(folder, watching, store, encoder, tmp_path):
    w = watching(folder)
    other = tmp_path / "other"
    shutil.copytree(EXAMPLES / "images", other)
    released = threading.Event()

    def hold():  # a watcher's batch holding the lease for a moment
        with writer_lease(store, kind="watch", wait_s=0):
            time.sleep(0.6)
        released.set()

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.1)
    report = index_folder(str(other), encoder=encoder, store=store, workers=0)  # waits, does not refuse
    assert released.is_set() and report.indexed == len(list(other.glob("*.jpg")))
    holder.join()
    with writer_lease(store):  # a run holds it: the watcher keeps its change
        shutil.copy(PHOTOS[0], folder / "later.jpg")
        time.sleep(0.5)
        batch = w.step()
        assert batch is not None and "being indexed by another run" in batch.busy
    until(w, lambda: str(folder / "later.jpg") in rows(store))


def watch_process(folder: Path, uri: str, model: Path, log) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from vitsearch.cli import main; main()",
            "watch",
            str(folder),
            "--uri",
            uri,
            "--model",
            str(model),
            "--runtime",
            "torch",
            "--settle",
            "0.2",
            "--workers",
            "0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


#: SIGKILLs of the watcher in the kill test: 3 in the suite; the issue's 20 by
#: ``VITSEARCH_TEST_WATCH_KILLS=20 pytest tests/test_watch.py -k sigkill`` (docs/benchmarks/watch.md).
KILLS = int(os.environ.get("VITSEARCH_TEST_WATCH_KILLS", "3"))


@pytest.mark.slow
def test_sigkill_at_any_moment_then_a_restart_converges(folder, db_uri, tiny_model, tmp_path):
    import random

    rng = random.Random(0)
    log = open(tmp_path / "watch.log", "w")
    n = 0
    for _ in range(KILLS):
        proc = watch_process(folder, db_uri, tiny_model, log)
        time.sleep(4 + rng.random() * 2)  # model loaded, caught up, watching
        for _ in range(12):  # copies, renames, deletes while it runs
            files = sorted(folder.rglob("*.jpg"))
            op = rng.choice(["copy", "copy", "rename", "delete"]) if files else "copy"
            if op == "copy":
                shutil.copy(PHOTOS[n % len(PHOTOS)], folder / f"c{n}.jpg")
            elif op == "rename":
                rng.choice(files).rename(folder / f"r{n}.jpg")
            else:
                rng.choice(files).unlink()
            n += 1
            time.sleep(rng.random() * 0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = watch_process(folder, db_uri, tiny_model, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            time.sleep(1)
            try:
                with Store(db_uri, "images") as store:
                    if rows(store) == truth(folder):
                        break
            except CollectionNotFoundError:
                pass  # every kill came before the first batch was written: not created yet
            assert time.monotonic() < deadline, (tmp_path / "watch.log").read_text()[-3000:]
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        log.close()
