"""Bounded-size JPEG thumbnails for the page, made on the server.

Only rows of the collection are ever read: :func:`thumbnail` takes a row (``path``, ``size``,
``mtime`` as the indexer stored them), never a bare path, and reads the file only while it is
still the file that was indexed.
"""
from __future__ import annotations

import io
import os
from typing import Any, Mapping

from PIL import Image

from vitsearch.search.errors import BadImageError
from vitsearch.search.images import decode_bytes, read_file

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


def thumbnail(row: Mapping[str, Any], max_px: int = THUMB_PX) -> bytes:
    """A JPEG thumbnail (longest side ≤ ``max_px``) of an indexed image file.

    Args:
        row: the collection's row of the file: ``path``, ``size`` (bytes) and ``mtime``
            (Unix seconds) as stored by the indexer.

    Raises:
        BadImageError: the file is gone, unreadable, undecodable, or no longer the file that was
            indexed (its size or mtime changed): it is then not read.
    """
    path = row["path"]
    try:
        st = os.stat(path)
    except OSError as exc:
        raise BadImageError(path, exc.strerror or str(exc)) from None
    if st.st_size != row["size"] or abs(st.st_mtime - row["mtime"]) > 1e-3:
        raise BadImageError(path, "changed since it was indexed: run vitsearch index again")
    return to_jpeg(decode_bytes(read_file(path), path, draft_px=max_px), max_px)
