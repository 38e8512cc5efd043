"""Turning files, bytes, PIL images and arrays into upright RGB PIL images.

Every decode path of the product (indexer workers, ``SearchClient``, UI) goes through
:func:`load_image`, so a query is decoded exactly like an indexed file.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .config import DEFAULT_MAX_IMAGE_PIXELS
from .errors import BadImageError

#: File extensions the indexer picks up (compared in lower case).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})

_ORIENTATION = 0x0112  # EXIF tag
#: File signatures, to tell a damaged image from a file that is not an image at all.
_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"RIFF", "WebP"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))
# vitsearch refuses by its own limit (max_pixels); Pillow's DecompressionBombWarning is noise here.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray]


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS`."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def decode_bytes(data: bytes, source: str, draft_px: int | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode an encoded image (JPEG, PNG, WebP, BMP, GIF, TIFF) to an upright RGB image.

    EXIF orientation is applied, the first frame of an animation or multi-page file is used and
    transparent pixels are composited onto white.

    Args:
        draft_px: if given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (Pillow's
            ``Image.draft``, the DCT scaling of libjpeg) as long as both sides stay at least
            ``draft_px`` pixels: several times faster for large photos. Other formats decode at
            full size.
        max_pixels: refuse an image of more pixels than this (before decoding it).

    Raises:
        BadImageError: ``source`` (a path or label) with a one-line reason.
    """
    return decode_sized(data, source, draft_px, max_pixels)[0]


def decode_sized(data: bytes, source: str, draft_px: int | None = None,
                 max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`decode_bytes`, and the upright image's full ``(width, height)`` in pixels (which a
    draft decode does not have).

    Raises:
        BadImageError: ``source`` (a path or label) with a one-line reason.
    """
    if not data:
        raise BadImageError(source, "empty file (0 bytes)")
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's guard (at twice this) stays behind ours
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.seek(0)
            width, height = img.size
            if width * height > max_pixels:
                raise BadImageError(source, f"image too large: {width}x{height} = {width * height / 1e6:.0f} "
                                            f"megapixels, over the limit of {max_pixels / 1e6:.0f} "
                                            f"(VITSEARCH_MAX_IMAGE_PIXELS)")
            if img.getexif().get(_ORIENTATION) in (5, 6, 7, 8):  # turned by 90 degrees
                width, height = height, width
            if draft_px is not None:
                img.draft("RGB", (draft_px, draft_px))
            img.load()
            return to_rgb(img), (width, height)
    except UnidentifiedImageError:
        kind = next((k for magic, k in _SIGNATURES if data.startswith(magic)), None)
        if kind:
            raise BadImageError(source, f"corrupt {kind} file: its header or first chunks are damaged") from None
        raise BadImageError(source, "not a recognised image format") from None
    except Image.DecompressionBombError as exc:
        raise BadImageError(source, f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImageError(source, f"corrupt or truncated image data ({exc})") from None


def to_rgb(img: Image.Image) -> Image.Image:
    """Return ``img`` upright (EXIF orientation applied) in RGB, alpha composited onto white."""
    img = ImageOps.exif_transpose(img)
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if img.mode != "RGB":
        # I;16 and other wide modes: Pillow scales them when going through "L".
        if img.mode.startswith("I"):
            img = img.point(lambda v: v / 256).convert("L")
        img = img.convert("RGB")
    return img


def read_file(path: str | os.PathLike) -> bytes:
    """Read a file's bytes, turning OS errors into :class:`BadImageError` naming the path."""
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise BadImageError(os.fspath(path), exc.strerror or str(exc)) from None


def load_image(image: ImageLike) -> Image.Image:
    """Any supported query or file to an upright RGB :class:`PIL.Image.Image`.

    Args:
        image: a path (``str`` or ``PathLike``), encoded bytes, a PIL image, or an
            ``(H, W, 3)`` ``uint8`` array in RGB order.

    Raises:
        BadImageError: unreadable or undecodable input, or an array of the wrong shape/dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        return decode_bytes(read_file(image), os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(image), "<bytes>")
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise BadImageError(
                "<array>", f"expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}"
            )
        return Image.fromarray(image, mode="RGB")
    raise BadImageError(repr(type(image)), "unsupported query type: use a path, bytes, PIL image or array")
