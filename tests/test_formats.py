"""HEIC/HEIF (pillow-heif) and AVIF (Pillow's libavif plugin) go through search/images.py like
JPEG: close to the source pixels, upright, within the same limits, with the same BadImageError
for damaged files; and a HEIC or AVIF photo indexed with JPEGs is found by a crop of itself, from
SearchClient and from an upload to the HTTP API. Every file is made here, with Pillow and
pillow-heif, from real photos of ``$VITSEARCH_SHARED/data/holidays-dev``."""

from __future__ import annotations

import io
import random
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import shared_path
from PIL import Image

from vitsearch.search.errors import BadImageError, ImageTooLargeError
from vitsearch.search.images import Limits, check_header, decode_bytes, decode_sized, is_image_file, load_image

#: Pillow's format name (for ``save``, and what check_header says) and a file extension.
FORMATS = [pytest.param("HEIF", ".heic", id="heic"), pytest.param("AVIF", ".avif", id="avif")]
#: The transposition that turns an upright image into what a file of EXIF orientation N stores
#: (the inverse of what ``ImageOps.exif_transpose`` does to it).
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def holiday_photos(count: int) -> list[Image.Image]:
    """The first ``count`` query photos of holidays-dev (one per scene: ids ending in 00), RGB."""
    folder = shared_path("data", "holidays-dev", "images")
    names = sorted(folder.glob("*00.jpg"))[:count]
    return [Image.open(p).convert("RGB") for p in names]


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real 325x243 photo, cropped to even sides (324x242: a HEIC then needs no clean-aperture box)."""
    return holiday_photos(1)[0].crop((0, 0, 324, 242))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two same-size RGB images, in levels of 0-255."""
    assert a.size == b.size
    return float(np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).mean())


def test_extensions_are_picked_up_in_any_case():
    for name in ("a/IMG_0001.HEIC", "x.heic", "x.heif", "x.HEIF", "x.avif", "x.AVIF"):
        assert is_image_file(name), name


@pytest.mark.parametrize("fmt, ext", FORMATS)
def test_decodes_close_to_the_source(photo, fmt, ext, tmp_path):
    data = encoded(photo, fmt, quality=90)
    assert check_header(data, "x") == fmt
    got, size = decode_sized(data, f"photo{ext}", draft_px=64)  # no reduced scale: decoded whole
    assert got.mode == "RGB" and got.size == size == photo.size
    assert mean_diff(got, photo) < 4  # lossy coding noise only
    path = tmp_path / f"photo{ext.upper()}"
    path.write_bytes(data)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(got))  # a path, as its bytes


@pytest.mark.parametrize("fmt, ext", FORMATS)
@pytest.mark.parametrize("orientation", sorted(STORED))
def test_exif_orientation_is_applied(photo, fmt, ext, orientation):
    """Written with an EXIF orientation (which pillow-heif and Pillow store as the file's
    irot/imir boxes), decoded upright, and decode_sized's size is the upright one."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encoded(photo.transpose(STORED[orientation]), fmt, quality=90, exif=exif.tobytes())
    got, size = decode_sized(data, f"turned{ext}")
    assert got.size == size == photo.size
    assert mean_diff(got, photo) < 4
    assert load_image(got).size == got.size  # decoding an upright image again does not turn it


def test_a_multi_image_heif_gives_its_primary_image(photo):
    other = photo.transpose(Image.Transpose.ROTATE_180)
    data = encoded(photo, "HEIF", quality=90, save_all=True, append_images=[other], primary_index=1)
    assert mean_diff(decode_bytes(data, "burst.heic"), other) < 4


@pytest.mark.parametrize("fmt, ext", FORMATS)
def test_damaged_files_are_bad_images_naming_the_file_and_the_reason(photo, fmt, ext, tmp_path):
    data = encoded(photo, fmt, quality=90)
    kind = "HEIC" if fmt == "HEIF" else "AVIF"
    cases = [
        (data[:40], f"corrupt {kind} file"),  # the ftyp box and no more
        (data[:100], f"corrupt {kind} file"),  # cut in its header (the meta box)
        # cut in the coded image: libavif checks the items' extents against the length as it opens
        (data[: len(data) // 2], "corrupt or truncated" if fmt == "HEIF" else "corrupt AVIF file"),
        (data[:-16], "corrupt or truncated"),
        (data[:32] + random.Random(0).randbytes(4000), f"corrupt {kind} file"),  # garbage after ftyp
        (b"\x00\x00\x00\x18ftyp", "not a recognised image format"),
        (random.Random(1).randbytes(4000), "not a recognised image format"),
        (b"", "empty file"),
    ]
    for k, (bad, reason) in enumerate(cases):
        path = tmp_path / f"bad-{k}{ext}"
        path.write_bytes(bad)
        with pytest.raises(BadImageError) as err:
            load_image(path)
        assert type(err.value) is BadImageError, (k, err.value)  # not "too large", not another error
        assert err.value.source == str(path) and reason in err.value.reason, (k, err.value.reason)
        assert "\n" not in err.value.reason  # one line


@pytest.mark.parametrize("fmt, ext", FORMATS)
def test_hostile_variants_decode_or_are_bad_images(photo, fmt, ext):
    """Bytes overwritten anywhere (and most in the header), or the file cut anywhere: decoded, or
    refused as a BadImageError, never another exception (libavif's RuntimeError included)."""
    data = encoded(photo.resize((96, 72)), fmt, quality=70)
    rng = random.Random(fmt)
    for k in range(300):
        bad = bytearray(data)
        if k % 3 == 0:
            bad = bad[: rng.randrange(len(bad))]
        else:
            span = len(bad) if k % 3 == 1 else min(len(bad), 600)
            for _ in range(rng.choice((1, 3, 10))):
                bad[rng.randrange(span)] = rng.randrange(256)
        try:
            got, size = decode_sized(bytes(bad), f"hostile{ext}", limits=Limits(max_pixels=10**6))
        except BadImageError:
            continue
        assert got.mode == "RGB" and got.size == size and size[0] * size[1] <= 10**6


@pytest.mark.parametrize("fmt, ext", FORMATS)
def test_a_size_over_the_limit_is_refused_from_the_header(photo, fmt, ext, monkeypatch):
    """The ``ispe`` box (the size the file declares) says 9000x9000, 81 megapixels: refused as
    too large without a pixel decoded (the plugins' decode is made to fail), as a real file over
    a lower limit is."""
    from PIL.AvifImagePlugin import AvifImageFile
    from pillow_heif.as_plugin import HeifImageFile

    data = encoded(photo, fmt, quality=90)
    at = data.find(b"ispe")
    assert data.count(b"ispe") == 1 and struct.unpack(">II", data[at + 8 : at + 16]) == photo.size
    bomb = data[: at + 8] + struct.pack(">II", 9000, 9000) + data[at + 16 :]

    def no_decode(self):
        raise AssertionError("decoded")

    monkeypatch.setattr(AvifImageFile, "load", no_decode)
    monkeypatch.setattr(HeifImageFile, "load", no_decode)
    with pytest.raises(ImageTooLargeError, match=r"9000x9000 = 81 megapixels, over the limit of 64 megapixels"):
        decode_bytes(bomb, f"bomb{ext}")
    with pytest.raises(ImageTooLargeError, match=r"324x242 = 0 megapixels, over the limit of 0.05 megapixels"):
        decode_bytes(data, f"photo{ext}", limits=Limits(max_pixels=50_000))


def index_mixed_folder(folder: Path, db_uri: str, model: Path) -> tuple[dict[int, Path], list[Image.Image]]:
    """Nine photos of different scenes written as HEIC, AVIF and JPEG in turn (``photo-K.ext``,
    upper-case extensions from K = 6), indexed with ``model`` in torch: ``({K: path}, photos)``."""
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    folder.mkdir()
    photos = holiday_photos(9)
    files = {}
    for k, img in enumerate(photos):
        fmt, ext = [("HEIF", ".heic"), ("AVIF", ".avif"), ("JPEG", ".jpg")][k % 3]
        files[k] = folder / f"photo-{k}{ext.upper() if k >= 6 else ext}"
        files[k].write_bytes(encoded(img, fmt, quality=90))
    with Store(db_uri, "images") as store:
        index_folder(str(folder), encoder=Encoder.load(str(model), runtime="torch"), store=store, workers=0)
    return files, photos


def crop_queries(files: dict[int, Path], margin: int) -> list[tuple[Path, bytes, str]]:
    """For two HEIC and two AVIF photos of ``files``: ``(photo, its centre less 1/margin of each
    side encoded in the photo's format, a file name for it)``."""
    queries = []
    for k, fmt, ext in ((0, "HEIF", ".heic"), (1, "AVIF", ".avif"), (6, "HEIF", ".heic"), (7, "AVIF", ".avif")):
        upright = load_image(files[k])
        w, h = upright.size
        crop = upright.crop((w // margin, h // margin, w - w // margin, h - h // margin))
        queries.append((files[k], encoded(crop, fmt, quality=85), f"crop{ext}"))
    return queries


def test_heic_and_avif_photos_are_indexed_shown_uploaded_and_found_by_a_crop(tmp_path, db_uri, tiny_model):
    """Indexed beside JPEGs, with their upright size; each thumbnail made; a crop of a HEIC and of
    an AVIF photo (encoded as HEIC and AVIF, searched by SearchClient and uploaded to the HTTP API)
    finds its photo first. The tiny random ViT tells photos apart, not much more: a light crop."""
    import httpx
    from test_api import serving

    from vitsearch.search import SearchClient
    from vitsearch.search.store import Store
    from vitsearch.search.thumbnails import thumbnail

    files, photos = index_mixed_folder(tmp_path / "photos", db_uri, tiny_model)
    with Store(db_uri, "images") as store:
        rows = {r["path"]: r for r in store.iter_rows(["size", "sha256", "width", "height"])}
    assert sorted(rows) == sorted(map(str, files.values()))
    for k, path in files.items():
        row = rows[str(path)]
        assert (row["width"], row["height"]) == photos[k].size
        thumb = Image.open(io.BytesIO(thumbnail(row)))  # what the page and the API show
        shrunk = photos[k].copy()
        shrunk.thumbnail((320, 320), Image.Resampling.LANCZOS)
        assert thumb.format == "JPEG" and thumb.size == shrunk.size and mean_diff(thumb.convert("RGB"), shrunk) < 5
    queries = crop_queries(files, margin=16)
    with SearchClient(uri=db_uri) as client:
        for path, data, _ in queries:
            assert client.search(data, k=3)[0].path == str(path)
    mime = {"crop.heic": "image/heic", "crop.avif": "image/avif"}
    with serving(db_uri) as (base, _):
        for path, data, name in queries:
            reply = httpx.post(f"{base}/search", files={"image": (name, data, mime[name])}, params={"k": 3}, timeout=60)
            assert reply.status_code == 200, reply.text
            assert reply.json()["hits"][0]["path"] == str(path)


def test_the_real_model_finds_heic_and_avif_photos_by_a_crop_of_themselves(tmp_path, db_uri, real_model):
    """The pretrained DINOv2: the centre 60% of a HEIC or AVIF photo finds it first."""
    from vitsearch.search import SearchClient

    files, _ = index_mixed_folder(tmp_path / "photos", db_uri, real_model)
    with SearchClient(uri=db_uri) as client:
        for path, data, _ in crop_queries(files, margin=5):
            assert client.search(data, k=3)[0].path == str(path)
