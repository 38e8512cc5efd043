"""Shared fixtures: real components only.

- a tiny ViT made here (``ViTConfig``, hidden size 32), saved and loaded back through the product;
- the real pretrained DINOv2 in ``$VITSEARCH_SHARED/models/dinov2-small-9l`` (skip where absent);
- real photos from ``examples/`` (in the repo) and ``$VITSEARCH_SHARED/data``;
- a real Milvus Lite database in a temporary folder.
"""
from __future__ import annotations

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
    """Every test gets its own VITSEARCH_DATA_DIR (default Lite database and pulled models)."""
    d = tmp_path_factory.mktemp("vitsearch-data")
    monkeypatch.setenv("VITSEARCH_DATA_DIR", str(d))
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
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, image_size=32, patch_size=8)
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


@pytest.fixture(scope="session")
def real_model() -> Path:
    """The pretrained DINOv2 ViT-S/14 (9 blocks) from the shared folder."""
    return shared_path("models", "dinov2-small-9l")


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
def db_uri(tmp_path) -> str:
    """A Milvus Lite database path in a fresh temporary folder."""
    return str(tmp_path / "milvus.db")


@pytest.fixture
def indexed(photos, db_uri, tiny_model) -> tuple[Path, str]:
    """The example photos indexed with the tiny ViT: ``(photos folder, Lite database path)``."""
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    return photos, db_uri
