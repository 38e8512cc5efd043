"""Contract of :mod:`vitsearch.search.thumbnails`: :func:`thumbnail` turns a collection's row
(``path``, ``size``, ``sha256``) into a JPEG whose longest side is at most ``max_px``, aspect
kept and never enlarged, and only while the file holds the bytes that were indexed: a file of
another size is refused before it is read, one of the same size with other bytes before it is
decoded, also where a symlink now points at another image; a missing, unreadable or oversized
file is a :class:`BadImageError` naming the path. Real image files, made with Pillow in the
test's folder or copied from ``examples/``.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest
from PIL import Image

from vitsearch.search.errors import BadImageError, ImageTooLargeError
from vitsearch.search.images import Limits
from vitsearch.search.thumbnails import THUMB_PX, thumbnail, to_jpeg

CHANGED = "changed since it was indexed"


def row_of(path: Path) -> dict:
    """The row the indexer stores for ``path``: its path, size and sha256 as they are now."""
    data = path.read_bytes()
    return {"path": str(path), "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def two_colours(path: Path, size: tuple[int, int], left=(255, 0, 0), right=(0, 0, 255), fmt=None) -> Path:
    """An image whose left half is ``left`` and right half ``right``."""
    img = Image.new("RGB", size, right)
    img.paste(left, (0, 0, size[0] // 2, size[1]))
    img.save(path, fmt)
    return path


def opened(jpeg: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(jpeg))
    assert img.format == "JPEG" and jpeg.startswith(b"\xff\xd8\xff")
    img.load()
    return img


def near(pixel, colour, tolerance=40) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, colour, strict=True))


@pytest.mark.parametrize("size", [(640, 360), (360, 640), (500, 500), (1001, 97)])
def test_the_longest_side_is_max_px_and_the_aspect_is_kept(tmp_path, size):
    path = two_colours(tmp_path / "wide.png", size)
    thumb = opened(thumbnail(row_of(path), max_px=100))
    w, h = thumb.size
    assert max(w, h) == 100
    assert abs(min(w, h) - min(size) * 100 / max(size)) <= 1  # the short side scaled alike, to a pixel
    assert (w >= h) == (size[0] >= size[1])
    assert near(thumb.getpixel((0, h // 2)), (255, 0, 0)) and near(thumb.getpixel((w - 1, h // 2)), (0, 0, 255))


def test_a_small_image_is_not_enlarged(tmp_path):
    path = two_colours(tmp_path / "small.png", (50, 30))
    assert opened(thumbnail(row_of(path))).size == (50, 30)


def test_a_real_photo_gets_the_default_thumbnail_size(photos):
    path = photos / "cat.jpg"
    with Image.open(path) as original:
        width, height = original.size
    thumb = opened(thumbnail(row_of(path)))
    assert max(thumb.size) == min(THUMB_PX, max(width, height))
    assert thumb.mode == "RGB"


def test_a_large_jpeg_is_decoded_at_reduced_scale_and_passes_the_pixel_limit(tmp_path):
    """Limits count pixels as decoded: a 4000x4000 JPEG decoded for a 320 px thumbnail is 500x500."""
    path = two_colours(tmp_path / "big.jpg", (4000, 4000))
    limits = Limits(max_pixels=1_000_000)
    assert max(opened(thumbnail(row_of(path), limits=limits)).size) == THUMB_PX
    png = two_colours(tmp_path / "big.png", (4000, 4000))  # no reduced scale for a PNG
    with pytest.raises(ImageTooLargeError, match="VITSEARCH_MAX_IMAGE_PIXELS"):
        thumbnail(row_of(png), limits=limits)


def test_an_image_over_the_pixel_limit_is_refused_naming_the_path(tmp_path):
    path = two_colours(tmp_path / "bomb.png", (2000, 1500))
    with pytest.raises(ImageTooLargeError) as err:
        thumbnail(row_of(path), limits=Limits(max_pixels=2000 * 1500 - 1))
    assert isinstance(err.value, BadImageError) and err.value.source == str(path)
    assert "2000x1500" in err.value.reason
    assert thumbnail(row_of(path), limits=Limits(max_pixels=2000 * 1500))  # at the limit: shown


def test_a_file_over_the_byte_limit_is_refused(tmp_path):
    path = tmp_path / "noise.png"
    Image.frombytes("RGB", (256, 256), os.urandom(256 * 256 * 3)).save(path)  # incompressible
    with pytest.raises(ImageTooLargeError, match="VITSEARCH_MAX_FILE_MB") as err:
        thumbnail(row_of(path), limits=Limits(max_file_bytes=path.stat().st_size - 1))
    assert err.value.source == str(path)


def test_transparency_becomes_white(tmp_path):
    path = tmp_path / "alpha.png"
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))
    img.paste((0, 128, 0, 255), (0, 0, 20, 40))
    img.save(path)
    thumb = opened(thumbnail(row_of(path)))
    assert near(thumb.getpixel((35, 20)), (255, 255, 255)) and near(thumb.getpixel((5, 20)), (0, 128, 0))


def test_a_file_replaced_by_one_of_another_size_is_refused_before_it_is_read(tmp_path):
    path = two_colours(tmp_path / "photo.png", (64, 64))
    row = row_of(path)
    stat = path.stat()
    with open(path, "r+b") as f:  # now far over the byte limit (sparse): were it read, that would be the reason
        f.truncate(2**30)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same mtime
    with pytest.raises(BadImageError, match=CHANGED) as err:
        thumbnail(row, limits=Limits(max_file_bytes=2**20))
    assert err.value.source == str(path) and not isinstance(err.value, ImageTooLargeError)


def test_a_file_replaced_by_other_bytes_of_the_same_size_is_refused_before_it_is_decoded(tmp_path):
    path = two_colours(tmp_path / "photo.bmp", (64, 64))
    row = row_of(path)
    stat = path.stat()
    path.write_bytes(os.urandom(row["size"]))  # not an image at all: decoding would say so
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(BadImageError, match=CHANGED) as err:
        thumbnail(row)
    assert err.value.source == str(path)


def test_an_image_of_the_same_size_with_other_pixels_is_refused(tmp_path):
    path = two_colours(tmp_path / "photo.bmp", (64, 64))
    row = row_of(path)
    two_colours(path, (64, 64), left=(0, 255, 0))  # uncompressed: the same number of bytes
    assert path.stat().st_size == row["size"]
    with pytest.raises(BadImageError, match=CHANGED):
        thumbnail(row)


def test_a_symlink_swapped_to_another_image_is_refused(tmp_path):
    first = two_colours(tmp_path / "first.bmp", (64, 48))
    second = two_colours(tmp_path / "second.bmp", (64, 48), left=(255, 255, 0))
    link = tmp_path / "link.bmp"
    link.symlink_to(first)
    row = row_of(link)
    shown = opened(thumbnail(row))
    assert near(shown.getpixel((0, 24)), (255, 0, 0))
    os.utime(second, ns=(first.stat().st_atime_ns, first.stat().st_mtime_ns))  # same size and mtime
    link.unlink()
    link.symlink_to(second)
    with pytest.raises(BadImageError, match=CHANGED) as err:
        thumbnail(row)
    assert err.value.source == str(link)


def test_a_missing_file_is_a_bad_image_naming_the_path(tmp_path):
    path = two_colours(tmp_path / "gone.png", (32, 32))
    row = row_of(path)
    path.unlink()
    with pytest.raises(BadImageError) as err:
        thumbnail(row)
    assert err.value.source == str(path) and str(path) in str(err.value)
    assert err.value.reason == os.strerror(2)  # ENOENT: "No such file or directory"


def test_a_folder_at_the_path_is_refused(tmp_path):
    path = two_colours(tmp_path / "photo.png", (32, 32))
    row = row_of(path)
    path.unlink()
    path.mkdir()
    with pytest.raises(BadImageError, match="a folder") as err:
        thumbnail(row)
    assert err.value.source == str(path)


def test_indexed_bytes_that_are_not_an_image_are_refused(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image\n")
    with pytest.raises(BadImageError, match="not a recognised image format") as err:
        thumbnail(row_of(path))
    assert err.value.source == str(path)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "P"])
def test_to_jpeg_takes_the_usual_modes_and_leaves_its_input_alone(mode):
    img = Image.new(mode, (300, 120))
    jpeg = to_jpeg(img, max_px=60)
    assert opened(jpeg).size == (60, 24)
    assert img.size == (300, 120) and img.mode == mode
