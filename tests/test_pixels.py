"""Contract of the pixel check (search/pixels.py): signatures are two unit, zero-mean
high-passed thumbnails; a copy (50 % downscale, JPEG 30, 90 % centre crop, 10 % darker) scores at
or above PIXEL_THRESHOLD and distinct photos far below it; a file that cannot be read is a
BadImageError, and the checker reports it and scores its pairs None."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import EXAMPLES
from vitsearch.search.errors import BadImageError
from vitsearch.search.pixels import PIXEL_THRESHOLD, THUMB_PX, PixelChecker, pixel_scores, signature

PHOTOS = EXAMPLES / "images"


def copies(tmp_path) -> dict[str, str]:
    with Image.open(PHOTOS / "camera.jpg") as im:
        rgb = im.convert("RGB")
    out = {}
    dx, dy = round(rgb.width * 0.05), round(rgb.height * 0.05)
    for name, image, quality in (
            ("down50", rgb.resize((rgb.width // 2, rgb.height // 2), Image.Resampling.LANCZOS), 90),
            ("jpeg30", rgb, 30),
            ("crop90", rgb.crop((dx, dy, rgb.width - dx, rgb.height - dy)), 90),
            ("darker", ImageEnhance.Brightness(rgb).enhance(0.9), 90)):
        out[name] = str(tmp_path / f"{name}.jpg")
        image.save(out[name], quality=quality)
    return out


def test_signatures_are_unit_zero_mean_thumbnails():
    sig = signature(str(PHOTOS / "cat.jpg"))
    assert sig.shape == (2, THUMB_PX * THUMB_PX * 3) and sig.dtype == np.float32
    assert np.allclose(np.linalg.norm(sig, axis=1), 1, atol=1e-5) and np.allclose(sig.mean(axis=1), 0, atol=1e-6)
    assert pixel_scores(sig[None], sig[None])[0] == pytest.approx(1.0, abs=1e-5)


def test_copies_pass_and_distinct_photos_do_not(tmp_path):
    original = signature(str(PHOTOS / "camera.jpg"))
    made = copies(tmp_path)
    got = {name: float(pixel_scores(original[None], signature(path)[None])[0]) for name, path in made.items()}
    assert all(score >= PIXEL_THRESHOLD for score in got.values()), got
    # the crop is found by the alignment: whole against whole alone is lower
    crop = signature(made["crop90"])
    assert float(original[0] @ crop[0]) < got["crop90"]
    photos = sorted(str(p) for p in PHOTOS.glob("*.jpg"))
    sigs = {p: signature(p) for p in photos}
    distinct = [float(pixel_scores(sigs[a][None], sigs[b][None])[0]) for a, b in itertools.combinations(photos, 2)]
    assert max(distinct) < 0.5


def test_unreadable_files_are_reported_and_their_pairs_unscored(tmp_path):
    with pytest.raises(BadImageError):
        signature(str(tmp_path / "gone.jpg"))
    cat, gone = str(PHOTOS / "cat.jpg"), str(tmp_path / "gone.jpg")
    changed = str(tmp_path / "changed.jpg")
    Image.open(PHOTOS / "cat.jpg").save(changed)
    checker = PixelChecker({changed: 1})  # indexed at 1 byte: it has changed since
    assert list(checker.scores([(cat, cat), (cat, gone), (changed, cat)])) == [pytest.approx(1.0, abs=1e-5), None, None]
    assert set(checker.unreadable) == {gone, changed} and "changed since" in checker.unreadable[changed]
