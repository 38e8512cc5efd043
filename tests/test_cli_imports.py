"""What a `vitsearch` command imports: a search with an ONNX runtime whose export is cached runs
without torch and transformers (preprocessing from the checkpoint's JSON, ONNX Runtime on the
cached file) and finds what the fully loaded encoder finds; a bad query and --help load neither
a model nor Milvus. (Latency itself is benchmarks/cli_latency.py's.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import EXAMPLES

#: Runs the CLI, then prints which heavy modules the process imported, as JSON on the last line.
PROBE = (
    "import json, sys\nfrom vitsearch.cli import main\ntry:\n    main()\nexcept SystemExit as exc:\n"
    "    code = exc.code\nprint(json.dumps({'code': code, 'modules': sorted(m for m in ('torch', 'transformers', "
    "'pymilvus', 'onnxruntime', 'streamlit', 'fastapi', 'ray') if m in sys.modules)}))"
)


def probe(*args) -> tuple[dict, str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *map(str, args)], capture_output=True, text=True, timeout=300, env={**os.environ}
    )
    lines = out.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1]) + out.stderr


@pytest.fixture
def onnx_indexed(photos, tmp_path, tiny_model):
    """The example photos indexed by the CLI with onnx-int8 (which exports and caches the model)."""
    uri = str(tmp_path / "onnx.db")
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "from vitsearch.cli import main; main()",
            "index",
            str(photos),
            "--model",
            str(tiny_model),
            "--uri",
            uri,
            "--runtime",
            "onnx-int8",
            "--workers",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    return photos, uri


@pytest.mark.slow
def test_an_onnx_search_imports_neither_torch_nor_transformers(onnx_indexed, tiny_model):
    photos, uri = onnx_indexed
    seen, text = probe("search", EXAMPLES / "queries" / "cat-crop.jpg", "--uri", uri, "-k", "5", "--json")
    assert seen["code"] in (0, None), text
    assert "torch" not in seen["modules"] and "transformers" not in seen["modules"], seen
    assert "onnxruntime" in seen["modules"] and "pymilvus" in seen["modules"]  # it did search
    hits = json.loads(text[: text.rindex("}") + 1])["hits"]

    from vitsearch.search.client import SearchClient
    from vitsearch.search.encoder import Encoder

    full = Encoder.load(str(tiny_model), runtime="onnx-int8")  # torch, transformers, the checkpoint
    assert full.model is not None
    with SearchClient(uri, encoder=full) as client:
        expected = client.search(str(EXAMPLES / "queries" / "cat-crop.jpg"), k=5)
    assert [h["path"] for h in hits] == [h.path for h in expected]
    np.testing.assert_allclose([h["score"] for h in hits], [h.score for h in expected], atol=1e-5)


def test_the_quick_encoder_embeds_as_the_loaded_one(tiny_model, real_model):
    """Encoder.exported (JSON settings, the cached export) gives the fully loaded encoder's
    record, preprocessing and vectors, for the tiny ViT and the real DINOv2, at their own input
    size and another."""
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.preprocess import Preprocess

    photos = [str(p) for p in sorted((EXAMPLES / "images").glob("*.jpg"))[:4]]
    for model, size in ((tiny_model, None), (tiny_model, 48), (real_model, None)):
        full = Encoder.load(str(model), runtime="onnx-int8", image_size=size)  # exports where not cached
        quick = Encoder.exported(str(model), runtime="onnx-int8", image_size=size)
        assert quick is not None and quick.model is None, model
        assert quick.info == full.info
        a, b = quick.preprocessor, full.preprocessor
        assert isinstance(a, Preprocess) and a.native and b.native
        assert (a.short_edge, a.size_hw, a.resample, a.crop_hw, a.scale) == (
            b.short_edge,
            b.size_hw,
            b.resample,
            b.crop_hw,
            b.scale,
        )
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.std, b.std)
        np.testing.assert_array_equal(quick.embed(photos), full.embed(photos))
    assert Encoder.exported(str(tiny_model), runtime="torch") is None


def test_no_export_in_the_cache_means_the_model_is_loaded(tiny_model, tmp_path, monkeypatch):
    from vitsearch.search.encoder import Encoder

    monkeypatch.setenv("VITSEARCH_CACHE_DIR", str(tmp_path / "empty-cache"))
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns(".vitsearch-onnx"))
    assert Encoder.exported(str(model), runtime="onnx-int8") is None
    loaded = Encoder.load(str(model), runtime="onnx-int8", quick=True)
    assert loaded.model is not None  # loaded and exported...
    assert Encoder.exported(str(model), runtime="onnx-int8") is not None  # ...so the next one is quick


@pytest.mark.parametrize(
    "args",
    [
        ["search", "{tmp}/nope.jpg"],
        ["search", "{tmp}"],
        ["search", "--help"],
        ["--help"],
        ["index", "--help"],
        ["search", "{tmp}/x.jpg", "-k", "0"],
    ],
)
def test_bad_arguments_and_help_load_no_model_nor_milvus(args, tmp_path):
    seen, text = probe(*[a.format(tmp=tmp_path) for a in args], "--uri", tmp_path / "never.db")
    assert seen["code"] in (0, 2, None), text
    assert not {"torch", "transformers", "pymilvus", "onnxruntime", "streamlit", "fastapi"} & set(seen["modules"]), seen
    assert not (tmp_path / "never.db").exists()
