"""Contract of search/runtimes.py and the runtime of search/encoder.py: the ONNX export computes
the torch embedding (cosine >= 0.9999 in fp32, >= 0.995 in int8) for the tiny model and the real
one, as ``(N, D) float32`` unit rows; the export is cached and reused, a corrupt cache is rebuilt,
a read-only model folder is left as it is; the runtime is recorded in the collection (an old
record reads as torch), followed by search, and another one is refused when indexing."""

from __future__ import annotations

import functools
import json
import os
import shutil

import numpy as np
import pytest
from conftest import EXAMPLES

from vitsearch.indexer import index_folder
from vitsearch.search.client import SearchClient
from vitsearch.search.config import Settings
from vitsearch.search.encoder import Encoder, encoder_for
from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.errors import EncoderMismatchError, UnsupportedRuntimeError
from vitsearch.search.models import file_sha256
from vitsearch.search.store import Store

IMAGES = sorted((EXAMPLES / "images").glob("*.jpg"))[:6]
FLOOR = {"onnx": 0.9999, "onnx-int8": 0.995}


@functools.cache
def torch_fp32(model: str, pooling: str) -> np.ndarray:
    """The reference: the photos' torch fp32 embeddings (computed once per model and pooling)."""
    return Encoder.load(model, runtime="torch", pooling=pooling).embed(IMAGES)


def cosines(model, runtime: str, pooling: str = "cls") -> tuple[np.ndarray, Encoder]:
    reference = torch_fp32(str(model), pooling)
    encoder = Encoder.load(str(model), runtime=runtime, pooling=pooling)
    out = encoder.embed(IMAGES)
    assert out.shape == reference.shape and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-5)
    return (out * reference).sum(axis=1), encoder


@pytest.mark.parametrize("runtime, pooling", [("onnx", "cls"), ("onnx-int8", "cls"), ("onnx", "mean")])
def test_the_tiny_model_in_onnx_computes_the_torch_embedding(tiny_model, runtime, pooling):
    cos, encoder = cosines(tiny_model, runtime, pooling)
    assert cos.min() >= FLOOR[runtime], cos
    assert encoder.runtime == encoder.info.runtime == runtime and encoder.onnx is not None
    assert encoder.onnx.path.parent == tiny_model / ".vitsearch-onnx"  # beside a writable model


@pytest.mark.parametrize("runtime", ["torch", "onnx", "onnx-int8"])
@pytest.mark.parametrize("model", ["tiny", "real"])
@pytest.mark.slow
def test_an_image_gets_the_same_embedding_alone_and_in_any_batch(tiny_model, real_model, model, runtime):
    """Every runtime: an image embedded alone and inside a batch with other images (before or
    after it) gives the same vector, cosine >= 0.9999 (int8 quantizes each token's activations on
    its own, not the batch's)."""
    encoder = Encoder.load(str(tiny_model if model == "tiny" else real_model), runtime=runtime)
    alone = np.concatenate([encoder.embed([p]) for p in IMAGES])
    together = encoder.embed(IMAGES)
    reordered = encoder.embed(IMAGES[::-1] + IMAGES)[len(IMAGES) :]  # the same images after others
    assert (alone * together).sum(1).min() >= 0.9999
    assert (alone * reordered).sum(1).min() >= 0.9999


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
@pytest.mark.slow
def test_the_real_model_in_onnx_computes_the_torch_embedding(real_model, runtime, monkeypatch, tmp_path):
    before = sorted(os.listdir(real_model))
    cos, encoder = cosines(real_model, runtime)
    print(f"{runtime}: cosine to torch fp32 min {cos.min():.5f} mean {cos.mean():.5f}")
    assert cos.min() >= FLOOR[runtime], cos
    assert sorted(os.listdir(real_model)) == before  # the read-only shared folder is left as it is
    assert encoder.onnx.path.parent == Settings().cache_dir / "onnx"


def test_a_read_only_model_folder_caches_in_the_cache_dir(tiny_model, tmp_path):
    model = tmp_path / "ro-model"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns(".vitsearch-onnx"))
    model.chmod(0o555)
    try:
        encoder = Encoder.load(str(model), runtime="onnx")
        assert encoder.onnx.path.parent == Settings().cache_dir / "onnx"
        assert not (model / ".vitsearch-onnx").exists()
    finally:
        model.chmod(0o755)


def test_the_export_is_cached_and_reused(tiny_model):
    first = Encoder.load(str(tiny_model), runtime="onnx-int8")
    path = first.onnx.path
    stamp = (path.stat().st_ino, path.stat().st_mtime_ns)  # a new export is a new file put in its place
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["runtime"] == "onnx-int8" and record["weights_sha256"] == first.info.weights_sha256
    again = Encoder.load(str(tiny_model), runtime="onnx-int8")
    assert again.onnx.path == path and (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    np.testing.assert_array_equal(again.embed(IMAGES[:2]), first.embed(IMAGES[:2]))


@pytest.mark.parametrize("damage", ["truncate", "garbage with a matching record", "record", "no record"])
def test_a_corrupt_cache_is_rebuilt(tiny_model, tmp_path, damage):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model, ignore=shutil.ignore_patterns(".vitsearch-onnx"))
    good = Encoder.load(str(model), runtime="onnx").embed(IMAGES[:3])
    path = next((model / ".vitsearch-onnx").glob("*-onnx-cls-*.onnx"))
    record = path.with_suffix(".json")
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:1000])
    elif damage == "garbage with a matching record":
        path.write_bytes(b"not a model")
        meta = json.loads(record.read_text())
        record.write_text(json.dumps({**meta, "sha256": file_sha256(path)}))
    elif damage == "record":
        record.write_text("{")
    else:
        record.unlink()
    encoder = Encoder.load(str(model), runtime="onnx")
    np.testing.assert_allclose(encoder.embed(IMAGES[:3]), good, atol=1e-6)
    assert json.loads(record.read_text())["sha256"] == file_sha256(path)
    assert not list(path.parent.glob("*.tmp*"))  # no temporary file left behind


def test_the_runtime_is_recorded_followed_by_search_and_mixing_is_refused(tiny_model, photos, db_uri):
    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model), runtime="onnx-int8"), store=store, workers=0)
        recorded = store.recorded_encoder()
        assert recorded.runtime == "onnx-int8"
        with pytest.raises(EncoderMismatchError, match="runtime onnx-int8.*runtime torch.*differing: runtime"):
            encoder_for(recorded, Settings(runtime="torch"), store.where)  # index --runtime torch
        assert encoder_for(recorded, Settings(), store.where).runtime == "onnx-int8"  # the record is followed
    with SearchClient(uri=db_uri) as client:
        assert client.stats()["runtime"] == client.stats()["query_runtime"] == "onnx-int8"
        assert client.encoder.runtime == "onnx-int8"
        hits = client.search(photos / "cat.jpg", k=1)
        assert hits[0].path == str(photos / "cat.jpg") and hits[0].score > 0.999
    with SearchClient(uri=db_uri, runtime="torch") as client:  # told otherwise: queries in torch
        assert client.stats()["query_runtime"] == "torch" and client.encoder.runtime == "torch"
        assert client.search(photos / "cat.jpg", k=1)[0].score > 0.99


def test_a_record_without_a_runtime_reads_as_torch(tiny_model, db_uri):
    old = EncoderInfo.from_json(
        json.dumps({"model": "m", "weights_sha256": "a" * 64, "dim": 32, "pooling": "cls", "image_size": "32x32"})
    )
    assert old.runtime == "torch" and json.loads(old.to_json())["runtime"] == "torch"
    encoder = Encoder.load(str(tiny_model), runtime="torch")
    with Store(db_uri, "images") as store:
        store.ensure(encoder.info)
        legacy = {k: v for k, v in json.loads(encoder.info.to_json()).items() if k != "runtime"}
        store.set_properties({"vitsearch.encoder": json.dumps(legacy)})
        assert store.recorded_encoder() == encoder.info
        assert encoder_for(store.recorded_encoder(), Settings(), store.where).runtime == "torch"


def test_unknown_runtimes_and_onnx_off_the_cpu_are_refused(tiny_model):
    with pytest.raises(UnsupportedRuntimeError, match="unknown runtime 'tensorrt'"):
        Encoder.load(str(tiny_model), runtime="tensorrt")
    with pytest.raises(UnsupportedRuntimeError, match="runs on the CPU"):
        Encoder.load(str(tiny_model), runtime="onnx", device="cuda")
