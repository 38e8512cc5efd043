"""Contract of search/preprocess.py: the checkpoint's preprocessing, applied with Pillow/NumPy,
gives the same model input as its ``AutoImageProcessor`` on real photos (measured here: max abs
difference 0 for DINOv2's, ViT's, DeiT's and CLIP's processors); a JPEG decoded at reduced scale
(``Image.draft``) gives the same embedding (cosine > 0.9999 measured with the real DINOv2); a
processor with options it does not implement is called as it is."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from conftest import EXAMPLES, shared_path
from PIL import Image

from vitsearch.search.images import decode_bytes, decode_sized
from vitsearch.search.preprocess import DRAFT_MARGIN, Preprocess


def real_photos() -> list[tuple[str, Image.Image]]:
    """The example photos plus, where the shared data is present, holiday and catalogue photos
    (landscape, portrait, letterboxed, 218x255 to 512x512)."""
    paths = sorted((EXAMPLES / "images").glob("*.jpg"))
    try:
        paths += sorted(shared_path("data", "holidays-dev", "images").glob("*.jpg"))[:15]
        paths += sorted(shared_path("data", "catalog").glob("*.jpg"))[:15]
    except pytest.skip.Exception:
        pass
    return [(p.name, decode_bytes(p.read_bytes(), str(p))) for p in paths]


def processors():
    from transformers import AutoImageProcessor, CLIPImageProcessor, DeiTImageProcessor, ViTImageProcessor

    yield "ViT 224", ViTImageProcessor()
    yield "ViT 32x32 (tests' tiny model)", ViTImageProcessor(size={"height": 32, "width": 32})
    yield "DeiT (256, crop 224)", DeiTImageProcessor()
    yield "CLIP (short side 224, crop)", CLIPImageProcessor()
    try:
        yield (
            "DINOv2 (short side 256, crop 224)",
            AutoImageProcessor.from_pretrained(shared_path("models", "dinov2-small-9l")),
        )
    except pytest.skip.Exception:
        pass


@pytest.mark.slow
def test_same_input_as_auto_image_processor_on_real_photos():
    photos = real_photos()
    for name, processor in processors():
        pre = Preprocess.from_processor(processor)
        assert pre.native, name
        worst = max(
            float(np.abs(pre(img) - processor(images=[img], return_tensors="np")["pixel_values"][0]).max())
            for _, img in photos
        )
        assert worst <= 1e-6, f"{name}: max abs difference {worst}"
        batch = pre.batch([img for _, img in photos[:3]])
        assert batch.dtype == torch.float32 and batch.shape[:2] == (3, 3)


def test_a_processor_it_does_not_implement_is_called_as_it_is():
    from transformers import ViTImageProcessor

    processor = ViTImageProcessor(size={"shortest_edge": 40, "longest_edge": 64})
    pre = Preprocess.from_processor(processor)
    assert not pre.native and pre.draft_px is None
    _, img = real_photos()[0]
    assert np.array_equal(pre(img), processor(images=[img], return_tensors="np")["pixel_values"][0])


@pytest.mark.slow
def test_draft_decoding_of_a_large_jpeg_gives_the_same_embedding(real_model):
    from vitsearch.search.encoder import Encoder

    encoder = Encoder.load(str(real_model), runtime="torch")  # pins the decode; int8's own noise is test_runtimes'
    pre = encoder.preprocessor
    assert pre.draft_px == DRAFT_MARGIN * 256
    cosines = []
    for path in sorted((EXAMPLES / "images").glob("*.jpg"))[:6]:
        big = Image.open(path).convert("RGB").resize((3000, 2000), Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        big.save(buf, "JPEG", quality=92)
        drafted, size = decode_sized(buf.getvalue(), path.name, draft_px=pre.draft_px)
        assert size == (3000, 2000) and drafted.size == (1500, 1000)  # decoded at half scale
        reference = encoder.processor(images=[decode_bytes(buf.getvalue(), path.name)], return_tensors="pt")
        a = encoder.embed_pixels(reference["pixel_values"])
        b = encoder.embed_pixels(pre.batch([drafted]))
        cosines.append(float((a * b).sum()))
    assert min(cosines) > 0.9999, cosines


def test_decode_sized_reports_the_upright_full_size():
    img = Image.open(EXAMPLES / "images" / "coffee.jpg").convert("RGB").resize((1200, 800))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: shown rotated by 90 degrees
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    upright, size = decode_sized(buf.getvalue(), "rotated.jpg", draft_px=300)
    assert size == (800, 1200) and upright.size == (400, 600)  # 1/2 scale keeps both sides >= 300
