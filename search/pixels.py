"""Pixel check of near-duplicate candidates: do two images show the same pixels at small scale?

The embedding finds candidates (every copy of a picture is close to it), but on a catalogue of
look-alike products it puts distinct products (two black leggings on white) as close as the
copies are. Their pixels differ in the details, which survive a 50 % downscale, JPEG quality 30,
a brightness change of 10 % and a 90 % centre crop: each image is decoded (through
:func:`~.images.decode_sized`, with its size guards, at reduced JPEG scale), box-filtered to a
``THUMB_PX`` x ``THUMB_PX`` RGB thumbnail, and high-passed (the thumbnail minus its Gaussian
blur, radius ``BLUR_PX``), which removes the silhouette and background the look-alikes share and
the brightness offset; the score of a pair is the normalised cross-correlation (the cosine of the
zero-mean vectors, in [-1, 1], invariant to brightness gain and offset) of the two, the best of
three alignments: whole with whole, and the centre ``1 - 2 * CROP_SIDE`` of either with the whole
of the other (a centre crop of the one with the larger field). The threshold was measured on
planted copies of catalogue photos (docs/benchmarks/duplicates.md, ``benchmarks/duplicates.py
quality``): it holds for the transformations it was tuned on, not for a copy rotated by a degree
or two or shifted by a few per cent (the held-out split there).
"""
from __future__ import annotations

import functools
import os
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, ImageFilter

from .errors import BadImageError
from .images import Limits, decode_sized, read_file

__all__ = ["THUMB_PX", "BLUR_PX", "CROP_SIDE", "PIXEL_THRESHOLD", "signature", "pixel_scores", "PixelChecker"]

#: Side of the square thumbnails compared, in pixels.
THUMB_PX = 64
#: Gaussian blur radius (pixels of the thumbnail) subtracted to high-pass it.
BLUR_PX = 4.0
#: Share of the width and height cut from each side for the crop alignment (a 90 % centre crop).
CROP_SIDE = 0.05
#: Pixel score at or above which a candidate pair is confirmed (docs/benchmarks/duplicates.md:
#: measured on 300 catalogue photos with 7 planted copies each).
PIXEL_THRESHOLD = 0.95


def signature(path: str, size: int | None = None, limits: Limits = Limits()) -> np.ndarray:
    """The two high-passed thumbnails of a file, each zero-mean and of unit norm.

    Args:
        path: the file.
        size: the size in bytes it was indexed with; a file of another size is refused.
        limits: the decode guards (:class:`~.images.Limits`).

    Returns:
        ``(2, THUMB_PX * THUMB_PX * 3) float32``: the whole image, then its centre crop.

    Raises:
        BadImageError: the file is gone, unreadable, changed in size, too large or undecodable.
    """
    image, _ = decode_sized(read_file(path, limits, size), os.fsdecode(path), 2 * THUMB_PX, limits)
    w, h = image.size
    dx, dy = w * CROP_SIDE, h * CROP_SIDE
    out = np.empty((2, THUMB_PX * THUMB_PX * 3), np.float32)
    for i, box in enumerate(((0, 0, w, h), (dx, dy, w - dx, h - dy))):
        thumb = image.resize((THUMB_PX, THUMB_PX), Image.Resampling.BOX, box=box)
        blurred = thumb.filter(ImageFilter.GaussianBlur(BLUR_PX))
        v = (np.asarray(thumb, np.float32) - np.asarray(blurred, np.float32)).ravel()
        v -= v.mean()
        out[i] = v / max(float(np.linalg.norm(v)), 1e-6)
    return out


def pixel_scores(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pixel scores of pairs of signatures: the best normalised cross-correlation of the three
    alignments (whole-whole, crop of ``a`` with whole ``b``, whole ``a`` with crop of ``b``).

    Args:
        a, b: ``(E, 2, D) float32`` signatures (:func:`signature`), pair ``i`` being ``a[i], b[i]``.

    Returns:
        ``(E,) float32`` in [-1, 1]; higher is more alike, 1 for the same pixels.
    """
    whole = np.einsum("ed,ed->e", a[:, 0], b[:, 0])
    crop_a = np.einsum("ed,ed->e", a[:, 1], b[:, 0])
    crop_b = np.einsum("ed,ed->e", a[:, 0], b[:, 1])
    return np.maximum(whole, np.maximum(crop_a, crop_b))


class PixelChecker:
    """Pixel scores of candidate pairs, each file decoded once while its signature is cached
    (at most ``cache`` signatures, 96 KiB each, are held: 384 MiB at the default).

    Args:
        sizes: ``{path: indexed size in bytes}`` of the files that may be asked about.
        limits: the decode guards.
        cache: how many signatures to hold; pairs are best asked grouped by their first path.
    """

    def __init__(self, sizes: dict[str, int], limits: Limits = Limits(), cache: int = 4096):
        self.sizes = sizes
        self.limits = limits
        self.unreadable: dict[str, str] = {}  # path -> reason
        self._signature = functools.lru_cache(maxsize=cache)(self._load)

    def _load(self, path: str) -> np.ndarray | None:
        try:
            return signature(path, self.sizes.get(path), self.limits)
        except BadImageError as exc:
            self.unreadable[path] = exc.reason
            return None

    def scores(self, pairs: Sequence[tuple[str, str]], chunk: int = 1024) -> Iterable[float | None]:
        """The pixel score of each pair, in order; None where either file could not be read
        (its path and reason are in :attr:`unreadable`)."""
        for start in range(0, len(pairs), chunk):
            part = pairs[start:start + chunk]
            sigs = [(self._signature(a), self._signature(b)) for a, b in part]
            ok = [i for i, (x, y) in enumerate(sigs) if x is not None and y is not None]
            found = np.full(len(part), np.nan, np.float32)
            if ok:
                found[ok] = pixel_scores(np.stack([sigs[i][0] for i in ok]), np.stack([sigs[i][1] for i in ok]))
            yield from (None if np.isnan(s) else float(s) for s in found)
