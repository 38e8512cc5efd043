"""Shared fixtures: real components only.

- a tiny ViT made here (``ViTConfig``, hidden size 32), saved and loaded back through the product;
- the real pretrained DINOv2 in ``$VITSEARCH_SHARED/models/dinov2-small-9l`` (skip where absent);
- real photos from ``examples/`` (in the repo) and ``$VITSEARCH_SHARED/data``;
- a real Milvus Lite database in a temporary folder.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

# No test may reach the Hugging Face hub or touch the user's own data folder.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("VITSEARCH_MODEL", None)
os.environ.pop("VITSEARCH_URI", None)

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SHARED = Path(os.environ.get("VITSEARCH_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(autouse=True)
def data_dir(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own VITSEARCH_DATA_DIR (default Lite database and pulled models); the
    session shares one VITSEARCH_CACHE_DIR (ONNX exports of read-only models such as the shared
    one), never the user's."""
    d = tmp_path_factory.mktemp("vitsearch-data")
    monkeypatch.setenv("VITSEARCH_DATA_DIR", str(d))
    monkeypatch.setenv("VITSEARCH_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "vitsearch-cache"))
    return d


def shared_path(*parts: str) -> Path:
    """A path in the shared test data, or skip the test saying what is missing."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"{p} not found: set VITSEARCH_SHARED to the shared data folder (see README)")
    return p


def make_tiny_vit(folder: Path, seed: int) -> Path:
    """Save a randomly initialised ViT (2 layers, hidden 32, 32x32 input, patch 8) with its processor."""
    import torch
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(seed)
    config = ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random ViT saved as a model folder, loaded back through the product's loader."""
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit"), seed=0)


@pytest.fixture(scope="session")
def other_tiny_model(tmp_path_factory) -> Path:
    """A second tiny ViT with other weights: same shape, different embedding space."""
    return make_tiny_vit(tmp_path_factory.mktemp("tiny-vit-2"), seed=1)


#: Markers that make a test slow wherever it is (``pytest -m "not slow"`` leaves them out).
SLOW_KINDS = ("server", "network", "browser", "ray")


def pytest_collection_modifyitems(config, items):
    """A test marked ``server``, ``network``, ``browser`` or ``ray`` is also ``slow``."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS) and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def real_model(tmp_path_factory) -> Path:
    """The pretrained DINOv2 ViT-S/14 (9 blocks) from the shared folder, as a read-only copy
    (folder mode 0o555): a test sees the same folder whether ``../shared`` is mounted read-only
    or not, and nothing (an ONNX export cached beside a writable model) is ever written there."""
    copy = tmp_path_factory.mktemp("shared-models") / "dinov2-small-9l"
    shutil.copytree(shared_path("models", "dinov2-small-9l"), copy)
    copy.chmod(0o555)
    return copy


@pytest.fixture
def photos(tmp_path) -> Path:
    """A writable copy of the example photos (11 real photos, one in a subfolder)."""
    folder = tmp_path / "photos"
    shutil.copytree(EXAMPLES / "images", folder)
    sub = folder / "sub"
    sub.mkdir()
    (folder / "rocket.jpg").rename(sub / "rocket.jpg")
    return folder


@pytest.fixture
def linked_photos(photos, tmp_path):
    """A factory: a folder of the 11 photos each linked ``copies`` times (``{k:02d}-name.jpg``;
    links to files are followed by the scan), for runs of a few hundred files."""

    def make(copies: int) -> Path:
        folder = tmp_path / f"linked-{copies}"
        folder.mkdir()
        for k in range(copies):
            for p in sorted(photos.rglob("*.jpg")):
                (folder / f"{k:02d}-{p.name}").symlink_to(p)
        return folder

    return make


#: Set by tests/test_server.py when it runs the store, indexer and search suites again inside the
#: network namespace of a real Milvus server: ``db_uri`` is then that server.
MILVUS_SERVER_URI = os.environ.get("VITSEARCH_TEST_MILVUS_URI")


def examples(lite: int, server: int) -> int:
    """Examples of a property test: fewer in the server leg, where each write is followed by a
    Strong read that waits for the server's time tick (~200 ms); ``VITSEARCH_PROPERTY_EXAMPLES``
    sets both (for a long run)."""
    return int(os.environ.get("VITSEARCH_PROPERTY_EXAMPLES", server if MILVUS_SERVER_URI else lite))


@pytest.fixture
def db_uri(tmp_path) -> str:
    """A fresh Milvus: a Lite database path in a temporary folder, or (in the server leg of
    tests/test_server.py) the Milvus server with all its collections dropped."""
    if not MILVUS_SERVER_URI:
        return str(tmp_path / "milvus.db")
    from pymilvus import MilvusClient

    client = MilvusClient(uri=MILVUS_SERVER_URI)
    for name in client.list_collections():
        for alias in client.list_aliases(name).get("aliases", []):
            client.drop_alias(alias)
        client.drop_collection(name)
    client.close()
    return MILVUS_SERVER_URI


@contextlib.contextmanager
def milvus_client(uri: str):
    """A pymilvus ``MilvusClient`` of the database at ``uri``, opened as another tool would (a
    Lite database through the endpoint its vitsearch server shares, or served from here): for
    making the states other tools and older versions leave, and for looking at what Milvus holds."""
    from pymilvus import MilvusClient

    from vitsearch.search.store.lite import lite_uri

    client = MilvusClient(uri=uri if MILVUS_SERVER_URI else lite_uri(Path(uri), 10)[0])
    try:
        yield client
    finally:
        client.close()


def stored_vectors(uri: str, collection: str = "images") -> dict:
    """The collection's vectors by path, ``(D,)`` arrays, read back from Milvus."""
    import numpy as np

    from vitsearch.search.store import Store

    with Store(uri, collection) as store:
        return {r["path"]: np.asarray(r["vector"]) for r in store.iter_rows(["vector"])}


@pytest.fixture
def indexed(photos, db_uri, tiny_model) -> tuple[Path, str]:
    """The example photos indexed with the tiny ViT in torch fp32 (exact scores; the ONNX runtimes
    are pinned to it in test_runtimes.py): ``(photos folder, Lite database path)``."""
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model), runtime="torch"), store=store, workers=0)
    return photos, db_uri


class MilvusProcess:
    """A real Milvus gRPC endpoint in its own process: ``milvus-lite server`` on a free loopback
    port, which the tests can kill (SIGKILL) and start again on the same data and port."""

    def __init__(self, data: Path, log: Path):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.data, self.log = data, log
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout_s: float = 60) -> MilvusProcess:
        import subprocess
        import sys
        import time

        from pymilvus import MilvusClient

        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    "from milvus_lite.cmdline import main; main()",
                    "server",
                    "--data-dir",
                    str(self.data),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                MilvusClient(uri=self.uri, timeout=2).list_collections()
                return self
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"milvus-lite server did not start: {self.log.read_text()}") from None
                time.sleep(0.2)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def milvus_process(tmp_path):
    """A started ``milvus-lite server`` process (see :class:`MilvusProcess`), killed at the end."""
    server = MilvusProcess(tmp_path / "server-data", tmp_path / "server.log").start()
    yield server
    server.kill()
