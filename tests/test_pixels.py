"""Contract of the pixel check (search/pixels.py): a signature is the image at most WORK_PX on
a side; a copy (50 % downscale, JPEG 30, 90 % centre crop, 10 % darker, and the geometric changes
the keypoint alignment puts back: 2 degrees of rotation, 3 % cut off one side) scores at or above
PIXEL_THRESHOLD and distinct photos far below it; a file that cannot be read is a BadImageError,
and the checker reports it and scores its pairs None."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image, ImageEnhance

from vitsearch.search import pixels
from vitsearch.search.errors import BadImageError
from vitsearch.search.pixels import PIXEL_THRESHOLD, WORK_PX, PixelChecker, pixel_score, signature

PHOTOS = EXAMPLES / "images"


def straightened(rgb: Image.Image, degrees: float) -> Image.Image:
    """Rotated, then cropped to the largest upright rectangle of the same shape (a straightened photo)."""
    turn = math.radians(abs(degrees))
    keep = 1 / (math.cos(turn) + math.sin(turn) * max(rgb.width / rgb.height, rgb.height / rgb.width))
    dx, dy = round(rgb.width * (1 - keep) / 2), round(rgb.height * (1 - keep) / 2)
    return rgb.rotate(degrees, Image.Resampling.BICUBIC).crop((dx, dy, rgb.width - dx, rgb.height - dy))


def copies(tmp_path) -> dict[str, str]:
    with Image.open(PHOTOS / "camera.jpg") as im:
        rgb = im.convert("RGB")
    out = {}
    dx, dy = round(rgb.width * 0.05), round(rgb.height * 0.05)
    for name, image, quality in (
        ("down50", rgb.resize((rgb.width // 2, rgb.height // 2), Image.Resampling.LANCZOS), 90),
        ("jpeg30", rgb, 30),
        ("crop90", rgb.crop((dx, dy, rgb.width - dx, rgb.height - dy)), 90),
        ("darker", ImageEnhance.Brightness(rgb).enhance(0.9), 90),
        ("rot2", straightened(rgb, 2.0), 90),
        ("shift3", rgb.crop((round(rgb.width * 0.03), 0, rgb.width, rgb.height)), 90),
    ):
        out[name] = str(tmp_path / f"{name}.jpg")
        image.save(out[name], quality=quality)
    return out


def test_a_signature_is_the_image_at_working_size_and_matches_itself():
    sig = signature(str(PHOTOS / "cat.jpg"))
    with Image.open(PHOTOS / "cat.jpg") as im:
        width, height = im.size
    assert (
        sig.rgb.dtype == np.uint8
        and sig.rgb.shape[2] == 3
        and max(sig.rgb.shape[:2]) == min(WORK_PX, max(width, height))
    )
    assert abs(sig.rgb.shape[1] / sig.rgb.shape[0] - width / height) < 0.02
    assert pixel_score(sig, sig) == pytest.approx(1.0, abs=1e-5)


def test_copies_pass_and_distinct_photos_do_not(tmp_path):
    original = signature(str(PHOTOS / "camera.jpg"))
    made = copies(tmp_path)
    got = {name: pixel_score(original, signature(path)) for name, path in made.items()}
    assert all(score >= PIXEL_THRESHOLD for score in got.values()), got
    assert all(pixel_score(signature(path), original) == got[name] for name, path in made.items())  # either order
    # the rotation is put back by the keypoint alignment: the plain rescale alone scores it lower
    rotated = signature(made["rot2"])
    h, w = original.rgb.shape[:2]
    rescale = np.float32([[w / rotated.rgb.shape[1], 0, 0], [0, h / rotated.rgb.shape[0], 0]])
    assert pixels._score(original.rgb, rotated.rgb, rescale) < PIXEL_THRESHOLD <= got["rot2"]
    photos = sorted(str(p) for p in PHOTOS.glob("*.jpg"))
    sigs = {p: signature(p) for p in photos}
    distinct = [pixel_score(sigs[a], sigs[b]) for a, b in itertools.combinations(photos, 2)]
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


def test_a_blank_matches_only_a_blank_of_the_same_colour(tmp_path):
    made = {}
    for name, size, colour in (
        ("white", (300, 200), "white"),
        ("white-small", (150, 100), "white"),
        ("off-white", (300, 200), (245, 245, 245)),
    ):
        made[name] = str(tmp_path / f"{name}.png")
        Image.new("RGB", size, colour).save(made[name])
    white, small, off = (signature(made[n]) for n in ("white", "white-small", "off-white"))
    photo = signature(str(PHOTOS / "cat.jpg"))
    assert pixel_score(white, small) == 1.0
    assert pixel_score(white, off) == 0.0 and pixel_score(white, photo) < PIXEL_THRESHOLD
