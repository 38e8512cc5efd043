"""Turning files, bytes, PIL images and arrays into upright RGB PIL images, at bounded cost.

Every decode path of the product (indexer workers, ``SearchClient``, the page's uploads and
thumbnails) goes through :func:`decode_sized`, with the same :class:`Limits`: a file larger than
``max_file_bytes`` is not read, an image that would decode to more than ``max_pixels`` pixels is
refused from its header. A query is decoded exactly like an indexed file when both pass the
model's ``draft_px`` (:meth:`~vitsearch.search.preprocess.Preprocess.load`). Pillow's own guard
(``Image.MAX_IMAGE_PIXELS``, ~179 megapixels in the file) also applies; an application raises it
with :func:`~vitsearch.search.application.configure`.

HEIC/HEIF is decoded by pillow-heif (libheif, registered with Pillow here), AVIF by Pillow's own
plugin (libavif). Both read the size from the file's header when it is opened, so the pixel
limit is checked before anything is decoded, and both give the orientation of the file's
``irot``/``imir`` boxes (pillow-heif applies it while decoding, Pillow's AVIF plugin as the EXIF
orientation that :func:`to_rgb` applies). Neither decodes at reduced scale: only JPEG does.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
import pillow_heif
from PIL import Image, ImageOps, UnidentifiedImageError, features

from .config import DEFAULT_MAX_FILE_MB, DEFAULT_MAX_IMAGE_PIXELS
from .errors import BadImageError, ImageTooLargeError

# HEIC/HEIF files open through Pillow from here on (a HEIC's embedded thumbnail is never decoded
# instead of its image: decode_sized drafts JPEG only).
pillow_heif.register_heif_opener()

#: File extensions the indexer picks up (compared in lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

_ORIENTATION = 0x0112  # EXIF tag
#: File signatures, to tell a damaged image from a file that is not an image at all.
_SIGNATURES = (
    (b"\x89PNG", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF8", "GIF"),
    (b"RIFF", "WebP"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)
#: ISO base media files (HEIF, AVIF) start with an ``ftyp`` box at offset 4: its major brand, then
#: (after a minor version) its compatible brands, tell the format.
_AVIF_BRANDS = frozenset({b"avif", b"avis"})
_HEIC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs"})
_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})

ImageLike = str | os.PathLike | bytes | Image.Image | np.ndarray


@dataclass(frozen=True)
class Limits:
    """What one image may cost (picklable: the indexer's worker processes get a copy).

    Attributes:
        max_pixels: most pixels decoded (width x height as decoded: a JPEG at its reduced scale).
        max_file_bytes: largest file read, or bytes accepted, in bytes.
    """

    max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_file_bytes: int = int(DEFAULT_MAX_FILE_MB * 2**20)

    @classmethod
    def from_settings(cls, settings) -> Limits:
        """The limits of a :class:`~vitsearch.search.config.Settings` (``VITSEARCH_MAX_IMAGE_PIXELS``,
        ``VITSEARCH_MAX_FILE_MB``)."""
        return cls(settings.max_image_pixels, settings.max_file_bytes)

    def check_size(self, size: int, source: str) -> None:
        """Refuse ``size`` bytes over :attr:`max_file_bytes`.

        Raises:
            ImageTooLargeError: naming ``source``, the size and the limit.
        """
        if size > self.max_file_bytes:
            raise ImageTooLargeError(
                source,
                f"file is {size / 2**20:.1f} MB, over the limit of "
                f"{self.max_file_bytes / 2**20:g} MB (VITSEARCH_MAX_FILE_MB)",
            )


def is_image_file(path: str | os.PathLike) -> bool:
    """True when the file name has one of :data:`IMAGE_EXTENSIONS`."""
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


def decode_bytes(data: bytes, source: str, draft_px: int | None = None, limits: Limits = Limits()) -> Image.Image:
    """Decode an encoded image (JPEG, PNG, WebP, BMP, GIF, TIFF, HEIC/HEIF, AVIF) to an upright
    RGB image.

    EXIF orientation (HEIF and AVIF: the ``irot``/``imir`` boxes) is applied, the first frame of an
    animation or multi-page file (HEIF: the primary image) is used and transparent pixels are
    composited onto white.

    Args:
        draft_px: if given, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (Pillow's
            ``Image.draft``, the DCT scaling of libjpeg) as long as both sides stay at least
            ``draft_px`` pixels: several times faster for large photos. Other formats decode at
            full size (AVIF has no reduced-scale decode; a HEIC's embedded thumbnail is not used).
        limits: refuse more bytes than ``limits.max_file_bytes``, and an image that would decode
            to more than ``limits.max_pixels`` pixels (checked from its header).

    Raises:
        BadImageError: ``source`` (a path or label) with a one-line reason.
    """
    return decode_sized(data, source, draft_px, limits)[0]


def decode_sized(
    data: bytes, source: str, draft_px: int | None = None, limits: Limits = Limits()
) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`decode_bytes`, and the upright image's full ``(width, height)`` in pixels (which a
    draft decode does not have).

    Raises:
        BadImageError: ``source`` (a path or label) with a one-line reason;
            :class:`~.errors.ImageTooLargeError` for one over ``limits``.
    """
    if not data:
        raise BadImageError(source, "empty file (0 bytes)")
    limits.check_size(len(data), source)
    with _image_errors(data, source), Image.open(io.BytesIO(data)) as img:
        if img.format != "HEIF":  # a HEIF file opens at its primary image, not always its first
            img.seek(0)
        width, height = img.size  # from the header: nothing is decoded before the limit is checked
        if draft_px is not None and img.format == "JPEG":  # pillow-heif's draft decodes a thumbnail
            img.draft("RGB", (draft_px, draft_px))
        decoded = img.size[0] * img.size[1]
        if decoded > limits.max_pixels:
            scaled = f" ({img.size[0]}x{img.size[1]} at reduced scale)" if img.size != (width, height) else ""
            raise ImageTooLargeError(
                source,
                f"image too large: {width}x{height} = {width * height / 1e6:.0f} "
                f"megapixels{scaled}, over the limit of {limits.max_pixels / 1e6:g} "
                f"megapixels decoded (VITSEARCH_MAX_IMAGE_PIXELS)",
            )
        if img.getexif().get(_ORIENTATION) in (5, 6, 7, 8):  # turned by 90 degrees
            width, height = height, width
        img.load()
        return to_rgb(img), (width, height)


def check_header(data: bytes, source: str) -> str:
    """Refuse what is plainly not an image from its first bytes, without decoding it: what a
    command checks before it loads a model (:func:`decode_sized` checks it all again).

    Returns:
        The format Pillow recognises (``"JPEG"``, ``"PNG"``...).

    Raises:
        BadImageError: naming ``source``: an empty file, not a recognised image format, a
            damaged header.
    """
    if not data:
        raise BadImageError(source, "empty file (0 bytes)")
    with _image_errors(data, source), warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the decode applies the limits
        with Image.open(io.BytesIO(data)) as img:
            return img.format


@contextlib.contextmanager
def _image_errors(data: bytes, source: str):
    """Pillow's errors while opening or decoding ``data`` as :class:`BadImageError` naming ``source``."""
    try:
        yield
    except UnidentifiedImageError:
        raise _unidentified(data, source) from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(source, f"image too large: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as exc:  # RuntimeError: libavif's
        raise BadImageError(source, f"corrupt or truncated image data ({' '.join(str(exc).split())})") from None


def _unidentified(data: bytes, source: str) -> BadImageError:
    """The error for bytes Pillow does not recognise: a damaged file of a known signature, or none."""
    kind = next((k for magic, k in _SIGNATURES if data.startswith(magic)), None) or _media_kind(data)
    if kind == "AVIF" and not features.check("avif"):
        return BadImageError(source, "an AVIF file, and this Pillow was built without AVIF support (libavif)")
    if kind:
        return BadImageError(source, f"corrupt {kind} file: its header or first chunks are damaged")
    return BadImageError(source, "not a recognised image format")


def _media_kind(data: bytes) -> str | None:
    """``"AVIF"``, ``"HEIC"`` or ``"HEIF"`` for bytes that start with an ISO base media ``ftyp`` box
    of one of their brands (a generic HEIF major brand is told apart by the compatible brands),
    else None."""
    if data[4:8] != b"ftyp":
        return None
    size = int.from_bytes(data[:4], "big")
    major = data[8:12]
    compatible = {data[i : i + 4] for i in range(16, min(size, len(data), 1024) - 3, 4)}
    if major in _AVIF_BRANDS or (major in _HEIF_BRANDS and compatible & _AVIF_BRANDS):
        return "AVIF"
    if major in _HEIC_BRANDS or (major in _HEIF_BRANDS and compatible & _HEIC_BRANDS):
        return "HEIC"
    return "HEIF" if major in _HEIF_BRANDS else None


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


def read_file(path: str | os.PathLike, limits: Limits = Limits(), size: int | None = None) -> bytes:
    """A regular file's bytes, at most ``limits.max_file_bytes`` of them, checked before reading.

    Opened without blocking (a FIFO named like an image is refused, not waited on) and refused
    unless it is a regular file: a folder, a pipe, a socket or a device is named as such and
    never read.

    Args:
        size: if given, the size in bytes the file must have (the indexed one): a file of
            another size is refused without being read.

    Raises:
        BadImageError: naming the path with a one-line reason: an OS error's (``No such file or
            directory``, ``Permission denied``...), what it is when it is not a regular file
            (``a folder, not an image file``), over the limit, or not of ``size`` bytes.
    """
    source = os.fspath(path)
    name = os.fsdecode(source)
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise BadImageError(name, _os_reason(source, exc)) from None
    try:
        info = os.fstat(fd)
    except OSError as exc:
        os.close(fd)
        raise BadImageError(name, exc.strerror or str(exc)) from None
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise BadImageError(name, not_regular(info.st_mode))
    with open(fd, "rb", closefd=True) as f:
        if size is not None and info.st_size != size:
            raise BadImageError(name, "changed since it was indexed: run vitsearch index again")
        limits.check_size(info.st_size, name)
        try:
            data = f.read(limits.max_file_bytes + 1)
        except OSError as exc:
            raise BadImageError(name, exc.strerror or str(exc)) from None
    limits.check_size(len(data), name)  # grown while being read
    return data


def not_regular(mode: int) -> str:
    """Why a file of ``mode`` (``st_mode``) that is not a regular file is not read, in words."""
    if stat.S_ISDIR(mode):
        return "a folder, not an image file"
    kind = (
        "a named pipe (FIFO)"
        if stat.S_ISFIFO(mode)
        else "a socket"
        if stat.S_ISSOCK(mode)
        else "a character device"
        if stat.S_ISCHR(mode)
        else "a block device"
        if stat.S_ISBLK(mode)
        else "a special file"
    )
    return f"{kind}, not a regular file: not read"


def _os_reason(path: str | bytes, exc: OSError) -> str:
    """An OS error's reason in words; a socket, which cannot be opened (ENXIO), is named as one."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = None
    if mode is not None and stat.S_ISSOCK(mode):
        return not_regular(mode)
    return exc.strerror or str(exc)


def load_image(image: ImageLike, draft_px: int | None = None, limits: Limits = Limits()) -> Image.Image:
    """Any supported query or file to an upright RGB :class:`PIL.Image.Image`.

    Args:
        image: a path (``str`` or ``PathLike``), encoded bytes, a PIL image, or an
            ``(H, W, 3)`` ``uint8`` array in RGB order.
        draft_px, limits: as in :func:`decode_bytes`, for paths and bytes.

    Raises:
        BadImageError: unreadable or undecodable input, or an array of the wrong shape/dtype.
    """
    if isinstance(image, (str, os.PathLike)):
        return decode_bytes(read_file(image, limits), os.fsdecode(image), draft_px, limits)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return decode_bytes(bytes(image), "<bytes>", draft_px, limits)
    if isinstance(image, Image.Image):
        return to_rgb(image)
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise BadImageError("<array>", f"expected an (H, W, 3) uint8 array, got {image.shape} {image.dtype}")
        return Image.fromarray(image, mode="RGB")
    raise BadImageError(repr(type(image)), "unsupported query type: use a path, bytes, PIL image or array")
