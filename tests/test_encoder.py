"""Contract of search/encoder.py and search/models.py: CLS token of the last hidden state,
L2-normalised, (N, D) float32; equal to a plain transformers forward pass; encoder identity
recorded and compared; offline failures are one clear error."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import EXAMPLES
from PIL import Image

from vitsearch.search.encoder import Encoder, EncoderInfo
from vitsearch.search.errors import EncoderMismatchError, ModelNotFoundError
from vitsearch.search.models import DINOV2_SMALL_9L_SHA256, weights_sha256

PHOTOS = sorted((EXAMPLES / "images").glob("*.jpg"))


def plain_cls(folder, paths) -> np.ndarray:
    """Reference: AutoImageProcessor + AutoModel, last_hidden_state[:, 0], normalised in numpy."""
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    images = [Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        cls = model(**processor(images=images, return_tensors="pt")).last_hidden_state[:, 0].numpy()
    return cls / np.linalg.norm(cls, axis=1, keepdims=True)


def test_tiny_model_shapes_and_norms(tiny_model):
    enc = Encoder.load(str(tiny_model))
    assert enc.device.type == "cpu" and enc.dtype == torch.float32
    v = enc.embed([str(p) for p in PHOTOS[:3]])
    assert v.shape == (3, 32) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    one = enc.embed([str(PHOTOS[0])])
    assert one.shape == (1, 32)  # one image is still 2-D
    assert enc.embed([]).shape == (0, 32)
    assert enc.info.dim == 32 and enc.info.pooling == "cls" and enc.info.size_text == "32x32"
    assert enc.info.weights_sha256 == weights_sha256(tiny_model)


@pytest.mark.parametrize("which", ["tiny", "real"])
def test_embedding_equals_plain_transformers_cls(which, tiny_model, request):
    folder = tiny_model if which == "tiny" else request.getfixturevalue("real_model")
    enc = Encoder.load(str(folder), runtime="torch")  # the ONNX runtimes are pinned to it in test_runtimes.py
    ours = enc.embed([str(p) for p in PHOTOS[:4]], batch_size=3)
    ref = plain_cls(folder, PHOTOS[:4])
    cos = (ours * ref).sum(axis=1)
    assert cos.min() > 0.999, cos


def test_real_model_identity(real_model):
    enc = Encoder.load(str(real_model))
    assert enc.info.dim == 384 and enc.info.size_text == "224x224"
    assert enc.info.weights_sha256 == DINOV2_SMALL_9L_SHA256


def test_encoder_info_round_trip_and_mismatch(tiny_model, other_tiny_model):
    a = Encoder.load(str(tiny_model)).info
    b = Encoder.load(str(other_tiny_model)).info
    assert EncoderInfo.from_json(a.to_json()) == a
    a.check_same(EncoderInfo(**{**a.__dict__, "model": "renamed"}), "here")  # same weights: fine
    with pytest.raises(EncoderMismatchError, match="weights_sha256"):
        a.check_same(b, "collection 'x'")


def test_uncached_hub_id_offline_says_how_to_fix():
    with pytest.raises(ModelNotFoundError) as err:
        Encoder.load("facebook/dinov2-small")
    msg = str(err.value)
    assert "facebook/dinov2-small" in msg and "--model /path/to/model" in msg
    assert "vitsearch model pull dinov2-small-9l" in msg


def test_missing_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        Encoder.load(str(tmp_path / "no-such-model"))


def test_bad_dtype_is_refused(tiny_model):
    with pytest.raises(ValueError, match="unknown dtype"):
        Encoder.load(str(tiny_model), dtype="int3")


def save_tiny(kind: str, folder):
    """A tiny random checkpoint of each ViT family the product claims, with its image processor."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        DeiTConfig,
        DeiTModel,
        Dinov2Config,
        Dinov2Model,
        ViTImageProcessor,
    )

    torch.manual_seed(0)
    small = dict(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32, patch_size=8
    )
    if kind == "clip":
        model = CLIPModel(
            CLIPConfig(
                vision_config=small,
                text_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64),
                projection_dim=16,
            )
        )
        CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    else:
        if kind == "deit":
            model = DeiTModel(DeiTConfig(**small), add_pooling_layer=False)
        else:
            model = Dinov2Model(Dinov2Config(**{k: v for k, v in small.items() if k != "intermediate_size"}))
        ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    model.save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("kind", ["deit", "dinov2", "clip"])
def test_vit_families_give_their_cls_token(kind, tmp_path):
    from transformers import AutoImageProcessor

    model = save_tiny(kind, tmp_path)
    enc = Encoder.load(str(tmp_path))
    ours = enc.embed([str(p) for p in PHOTOS[:3]])
    assert ours.shape == (3, 32)
    tower = model.vision_model if kind == "clip" else model  # CLIP: the vision tower only
    decoded = [enc.preprocessor.load(str(p)) for p in PHOTOS[:3]]  # as the product decodes (reduced-scale JPEG)
    pixels = AutoImageProcessor.from_pretrained(tmp_path)(images=decoded, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = tower(pixel_values=pixels).last_hidden_state[:, 0].numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert (ours * ref).sum(axis=1).min() > 0.999


def test_hub_id_is_recorded_as_given(tiny_model, monkeypatch):
    """The hub cannot be reached here: stand in for its download with a local snapshot folder."""
    import huggingface_hub

    asked = []
    monkeypatch.setattr(
        huggingface_hub, "snapshot_download", lambda repo_id, allow_patterns: asked.append(repo_id) or str(tiny_model)
    )
    enc = Encoder.load("someone/tiny-vit")
    assert asked == ["someone/tiny-vit"]
    assert enc.info.model == "someone/tiny-vit" and enc.info.weights_sha256 == weights_sha256(tiny_model)


def test_compiled_encoder_gives_the_same_embeddings(tiny_model):
    """``--compile`` (torch.compile with Inductor; here on the CPU) changes speed, not vectors."""
    plain = Encoder.load(str(tiny_model))
    compiled = Encoder.load(str(tiny_model), compile=True)
    pixels = plain.preprocess([Image.open(p).convert("RGB") for p in sorted((EXAMPLES / "images").glob("*.jpg"))[:4]])
    np.testing.assert_allclose(compiled.embed_pixels(pixels), plain.embed_pixels(pixels), atol=1e-5)
    assert compiled.info == plain.info


def test_cuda_path_copies_asynchronously_and_casts_on_the_device(tiny_model, monkeypatch):
    """No GPU here: check the order of operations embed_pixels asks of a CUDA tensor."""
    encoder = Encoder.load(str(tiny_model), runtime="torch")
    calls = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        calls.append((args, kwargs))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    encoder.embed_pixels(torch.zeros(2, 3, 32, 32))
    assert calls[0] == ((encoder.device,), {"non_blocking": True}) and calls[1] == ((encoder.dtype,), {})


@pytest.mark.parametrize("kind, prefix", [("vit", 1), ("deit", 2), ("dinov2", 1), ("clip", 1)])
def test_mean_pooling_averages_the_patch_tokens_only(kind, prefix, tmp_path, tiny_model):
    """DeiT's second prefix token (distillation) is not a patch: 16 patches of 8 px on 32 px."""
    from transformers import AutoImageProcessor, AutoModel

    folder = tiny_model if kind == "vit" else tmp_path
    if kind != "vit":
        save_tiny(kind, tmp_path)
    enc = Encoder.load(str(folder), pooling="mean")
    assert enc.info.pooling == "mean"
    ours = enc.embed([str(p) for p in PHOTOS[:3]])
    model = AutoModel.from_pretrained(folder).eval()
    tower = getattr(model, "vision_model", model)
    pixels = AutoImageProcessor.from_pretrained(folder)(
        images=[Image.open(p).convert("RGB") for p in PHOTOS[:3]], return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        tokens = tower(pixel_values=pixels).last_hidden_state
    assert tokens.shape[1] == prefix + 16
    ref = tokens[:, prefix:].mean(dim=1).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    assert (ours * ref).sum(axis=1).min() > 0.999
    cls = Encoder.load(str(folder)).embed([str(p) for p in PHOTOS[:3]])
    assert (ours * cls).sum(axis=1).max() < 0.9999  # a different vector from the CLS token's


def test_pooling_is_recorded_and_a_mismatch_refused(photos, db_uri, tiny_model):
    from vitsearch.indexer import index_folder
    from vitsearch.search import SearchClient
    from vitsearch.search.store import Store

    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model), pooling="mean"), store=store, workers=0)
        assert store.encoder_info().pooling == "mean"
        with pytest.raises(EncoderMismatchError, match="mean"):
            index_folder(str(photos), encoder=Encoder.load(str(tiny_model)), store=store, workers=0)
    with SearchClient(uri=db_uri) as client:  # loads the collection's pooling
        assert client.encoder.info.pooling == "mean"
        assert client.search(photos / "cat.jpg", k=1)[0].path == str(photos / "cat.jpg")
    with pytest.raises(ValueError, match="unknown pooling"):
        Encoder.load(str(tiny_model), pooling="max")


def plain_at_size(folder, paths, size: int, decode=None, **forward) -> np.ndarray:
    """Reference at another input size: the processor set to ``size`` by hand, AutoModel's forward,
    on the images ``decode(path)`` gives (default: a full decode with Pillow)."""
    from transformers import AutoImageProcessor, AutoModel

    processor = AutoImageProcessor.from_pretrained(folder)
    if getattr(processor, "do_center_crop", False):  # DINOv2: resize 256 -> crop 224, scaled alike
        processor.size = {"shortest_edge": round(256 * size / 224)}
        processor.crop_size = {"height": size, "width": size}
    else:
        processor.size = {"height": size, "width": size}
    model = AutoModel.from_pretrained(folder).eval()
    images = [decode(p) if decode else Image.open(p).convert("RGB") for p in paths]
    with torch.no_grad():
        cls = model(**processor(images=images, return_tensors="pt"), **forward).last_hidden_state[:, 0].numpy()
    return cls / np.linalg.norm(cls, axis=1, keepdims=True)


def test_image_size_interpolates_the_position_embeddings_of_a_vit(tiny_model):
    enc = Encoder.load(str(tiny_model), image_size=48, runtime="torch")  # trained at 32: a 6x6 patch grid, not 4x4
    assert enc.info.size_text == "48x48" and enc.info.square_size == 48
    paths = [str(p) for p in PHOTOS[:3]]
    want = plain_at_size(tiny_model, paths, 48, decode=enc.preprocessor.load, interpolate_pos_encoding=True)
    np.testing.assert_allclose(enc.embed(paths), want, atol=1e-5)
    with pytest.raises(ValueError):  # without interpolation the ViT refuses the larger input
        plain_at_size(tiny_model, paths, 48)
    assert Encoder.load(str(tiny_model)).info.size_text == "32x32"
    with pytest.raises(ValueError, match="at least 8"):
        Encoder.load(str(tiny_model), image_size=4)


def test_image_size_on_dinov2_keeps_the_resize_to_crop_ratio(real_model):
    enc = Encoder.load(str(real_model), image_size=336, runtime="torch")
    assert enc.preprocessor.short_edge == 384 and enc.preprocessor.crop_hw == (336, 336)
    paths = [str(p) for p in PHOTOS[:2]]
    np.testing.assert_allclose(
        enc.embed(paths), plain_at_size(real_model, paths, 336, decode=enc.preprocessor.load), atol=1e-4
    )


def test_image_size_is_recorded_reused_and_a_mismatch_refused(photos, db_uri, tiny_model):
    from vitsearch.indexer import index_folder
    from vitsearch.search import SearchClient
    from vitsearch.search.config import Settings
    from vitsearch.search.encoder import encoder_for
    from vitsearch.search.store import Store

    with Store(db_uri, "images") as store:
        index_folder(str(photos), encoder=Encoder.load(str(tiny_model), image_size=48), store=store, workers=0)
        assert store.encoder_info().size_text == "48x48"
        assert encoder_for(store.recorded_encoder(), Settings()).info.size_text == "48x48"  # the collection's size
        with pytest.raises(EncoderMismatchError, match="image.size"):
            index_folder(
                str(photos),
                encoder=encoder_for(store.recorded_encoder(), Settings(image_size=32)),
                store=store,
                workers=0,
            )
    with SearchClient(uri=db_uri) as client:  # loads the collection's size
        assert client.encoder.info.size_text == "48x48"
        assert client.search(photos / "cat.jpg", k=1)[0].path == str(photos / "cat.jpg")
    with pytest.raises(EncoderMismatchError, match="48x48, not 32x32"):
        SearchClient(uri=db_uri, image_size=32)
    assert SearchClient(uri=db_uri, image_size=48).encoder.info.size_text == "48x48"
