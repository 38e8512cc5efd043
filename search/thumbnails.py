"""Bounded-size JPEG thumbnails of indexed images, for the page and the HTTP API (one guard for
both: :meth:`~vitsearch.search.client.SearchClient.thumbnail` looks the row up by path).

Only rows of the collection are ever read: :func:`thumbnail` takes a row (``path``, ``size``,
``sha256`` as the indexer stored them), never a bare path, and shows a file only if its bytes are
the bytes that were indexed: a file replaced since (also by a symlink to an image elsewhere,
with the same size and mtime) shows nothing.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping
from typing import Any

from PIL import Image

from .errors import BadImageError
from .images import Limits, decode_bytes, read_file

#: Longest side of a result thumbnail, in pixels (a grid cell is at most ~300 CSS px wide).
THUMB_PX = 320
#: JPEG quality of thumbnails (Pillow's scale, 1-95).
JPEG_QUALITY = 85


def to_jpeg(img: Image.Image, max_px: int = THUMB_PX) -> bytes:
    """``img`` shrunk to at most ``max_px`` on its longest side (aspect kept), as JPEG bytes."""
    small = img.copy()
    small.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    small.convert("RGB").save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def thumbnail(row: Mapping[str, Any], max_px: int = THUMB_PX, limits: Limits = Limits()) -> bytes:
    """A JPEG thumbnail (longest side ≤ ``max_px``) of an indexed image file.

    Args:
        row: the collection's row of the file: ``path``, ``size`` (bytes) and ``sha256`` as
            stored by the indexer.
        limits: what reading and decoding the file may cost.

    Raises:
        BadImageError: the file is gone, unreadable, undecodable, or not the bytes that were
            indexed (another size: not read; another sha256: not decoded).
    """
    path = row["path"]
    data = read_file(path, limits, size=int(row["size"]))
    if hashlib.sha256(data).hexdigest() != row["sha256"]:
        raise BadImageError(path, "changed since it was indexed: run vitsearch index again")
    return to_jpeg(decode_bytes(data, path, draft_px=max_px, limits=limits), max_px)
