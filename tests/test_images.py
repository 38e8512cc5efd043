"""Contract of search/images.py: every input type decodes to the same upright RGB image, and bad
input raises BadImageError naming the source and the reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
from conftest import EXAMPLES
from PIL import Image

from vitsearch.search.errors import BadImageError
from vitsearch.search.images import decode_bytes, is_image_file, load_image

CAT = EXAMPLES / "images" / "cat.jpg"


def test_all_query_types_give_the_same_pixels():
    ref = np.asarray(load_image(CAT))
    assert ref.ndim == 3 and ref.shape[2] == 3 and ref.dtype == np.uint8
    for query in (str(CAT), CAT, CAT.read_bytes(), Image.open(CAT), ref.copy()):
        assert np.array_equal(np.asarray(load_image(query)), ref)


def test_exif_orientation_is_applied(tmp_path):
    upright = Image.open(CAT).convert("RGB")
    # Orientation 6: the stored pixels must be turned 90 degrees clockwise to be upright.
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    stored.save(buf, "JPEG", exif=exif.tobytes(), quality=95)
    got = decode_bytes(buf.getvalue(), "rotated.jpg")
    assert got.size == upright.size
    assert load_image(got).size == got.size  # decoding an upright image again does not turn it
    diff = np.abs(np.asarray(got, np.int16) - np.asarray(upright, np.int16)).mean()
    assert diff < 3  # JPEG re-encoding noise only


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(rgba).getpixel((0, 0)) == (255, 255, 255)


def test_sixteen_bit_grayscale_keeps_its_range():
    img = Image.fromarray(np.full((4, 4), 65535, np.uint16))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert decode_bytes(buf.getvalue(), "x.png").getpixel((0, 0)) == (255, 255, 255)


def test_first_frame_of_an_animated_gif():
    frames = [Image.new("RGB", (8, 8), c) for c in ((0, 0, 255), (255, 0, 0))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_bytes(buf.getvalue(), "anim.gif").getpixel((0, 0))
    assert b > 200 and r < 50


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (b"<html>not an image</html>", "not a recognised image format"),
        (CAT.read_bytes()[:2000], "corrupt or truncated"),
    ],
)
def test_bad_bytes_name_the_source_and_reason(data, reason):
    with pytest.raises(BadImageError) as err:
        decode_bytes(data, "/x/bad.jpg")
    assert err.value.source == "/x/bad.jpg"
    assert reason in err.value.reason


def test_missing_file_and_bad_array():
    with pytest.raises(BadImageError, match="No such file"):
        load_image("/nonexistent/photo.jpg")
    with pytest.raises(BadImageError, match=r"\(H, W, 3\) uint8"):
        load_image(np.zeros((4, 4), np.float32))
    with pytest.raises(BadImageError, match="unsupported query type"):
        load_image(42)


def test_extensions():
    assert is_image_file("a/B.JPG") and is_image_file("x.webp") and is_image_file("x.tiff")
    assert not is_image_file("notes.txt") and not is_image_file("jpg")
