"""Pixel check of near-duplicate candidates: are two images the same picture, once aligned?

The embedding finds candidates (every copy of a picture is close to it), but on a catalogue of
look-alike products it puts distinct products (two black leggings on white) as close as the
copies are. Their pixels differ in the details; a copy's do not, once it is put back in place:

1. each file is decoded (through :func:`~.images.decode_sized`, with its size guards, at reduced
   JPEG scale) to at most ``WORK_PX`` on its longest side (:func:`signature`);
2. the second image of a pair is mapped onto the first twice: scaled to its frame, and by the
   similarity transform (rotation, scale, shift) that ORB keypoints matched with Lowe's ratio test
   and RANSAC find between the two (OpenCV: Rublee et al., ICCV 2011, "ORB: an efficient
   alternative to SIFT or SURF"; ``cv2.estimateAffinePartial2D``), which puts back a rotated,
   cropped, shifted or rescaled copy;
3. each mapping is scored: both images at ``COMPARE_PX`` square (less where either is smaller),
   band-passed (a difference of Gaussian blurs of radii ``BAND_PX``: the silhouette and background
   that look-alikes share, the brightness offset, and the finest pixel noise that resampling,
   sharpening and JPEG change are removed), and compared by normalised cross-correlation (the
   cosine of the zero-mean vectors, in [-1, 1], invariant to brightness gain and offset) over the
   pixels both images cover. The pair's score is the better of the two.

The band and the threshold were chosen on planted copies of catalogue photos (the duplicates
benchmark's tuning transformations, and development copies of other photos under other rotations,
shifts, crops and downscales) against the most alike pairs of distinct catalogue photos; the
benchmark's held-out transformations measure it (docs/benchmarks/duplicates.md,
``benchmarks/duplicates.py quality``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .errors import BadImageError
from .images import Limits, decode_sized, read_file

__all__ = [
    "WORK_PX",
    "COMPARE_PX",
    "BAND_PX",
    "PIXEL_THRESHOLD",
    "Signature",
    "signature",
    "pixel_score",
    "PixelChecker",
]

#: Longest side, in pixels, of the image a file is decoded to for the check.
WORK_PX = 256
#: Side of the square an aligned pair is compared at, in pixels (the smaller image's shorter side
#: where that is less; the band then shrinks in proportion).
COMPARE_PX = 128
#: The band-pass: Gaussian blur radii, in pixels at ``COMPARE_PX``, of the difference of blurs.
BAND_PX = (1.0, 3.0)
#: Pixel score at or above which a candidate pair is confirmed (docs/benchmarks/duplicates.md).
PIXEL_THRESHOLD = 0.93
#: ORB keypoints detected per image, matches the ratio test keeps, and RANSAC's reprojection
#: tolerance (pixels of the ``WORK_PX`` image).
ORB_FEATURES = 500
RATIO = 0.8
MIN_MATCHES = 6
RANSAC_PX = 3.0
#: A transform found by RANSAC is used only within these bounds (a copy is not turned over or
#: shrunk to a corner), and only where the mapped image covers this share of the comparison.
MAX_TURN_DEG = 10.0
SCALE_RANGE = (1 / 3, 3.0)
MIN_COVER = 0.6
#: Band-passed detail below this standard deviation (levels of 0-255) is none: such an image (a
#: blank) is the same picture only as another blank of the same colour, within ``BLANK_LEVELS``
#: on average.
FLAT_LEVELS = 0.1
BLANK_LEVELS = 2.0


@dataclass
class Signature:
    """What the check keeps of one file.

    Attributes:
        rgb: ``(H, W, 3) uint8``, the image at most ``WORK_PX`` on its longest side.
        points: ``(K, 2) float32`` ORB keypoint positions in ``rgb``'s pixels (None until needed).
        descriptors: ``(K, 32) uint8`` their binary descriptors (None until needed, or none found).
    """

    rgb: np.ndarray
    points: np.ndarray | None = None
    descriptors: np.ndarray | None = None

    def keypoints(self) -> tuple[np.ndarray, np.ndarray | None]:
        """The ORB keypoints and descriptors, detected on first use (on the grey image upscaled
        to twice ``WORK_PX``, where small images still give enough of them)."""
        if self.points is None:
            import cv2

            grey = cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)
            zoom = 2 * WORK_PX / max(grey.shape)
            grey = cv2.resize(grey, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_CUBIC)
            orb = cv2.ORB_create(nfeatures=ORB_FEATURES, fastThreshold=10, edgeThreshold=15, patchSize=15)
            found, self.descriptors = orb.detectAndCompute(grey, None)
            self.points = np.float32([k.pt for k in found]).reshape(-1, 2) / zoom
        return self.points, self.descriptors


def signature(path: str, size: int | None = None, limits: Limits = Limits()) -> Signature:
    """Decode a file for the check.

    Args:
        path: the file.
        size: the size in bytes it was indexed with; a file of another size is refused.
        limits: the decode guards (:class:`~.images.Limits`).

    Raises:
        BadImageError: the file is gone, unreadable, changed in size, too large or undecodable.
    """
    image, _ = decode_sized(read_file(path, limits, size), os.fsdecode(path), WORK_PX, limits)
    image = image.convert("RGB")
    image.thumbnail((WORK_PX, WORK_PX), Image.Resampling.BOX)
    return Signature(np.asarray(image, np.uint8))


def _similarity(a: Signature, b: Signature) -> np.ndarray | None:
    """The ``2x3`` similarity transform taking ``b``'s pixels to ``a``'s, or None."""
    import cv2

    pa, da = a.keypoints()
    pb, db = b.keypoints()
    if da is None or db is None or len(da) < MIN_MATCHES or len(db) < MIN_MATCHES:
        return None
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(db, da, k=2)
    good = [m[0] for m in pairs if len(m) == 2 and m[0].distance < RATIO * m[1].distance]
    if len(good) < MIN_MATCHES:
        return None
    moved, _ = cv2.estimateAffinePartial2D(
        pb[[m.queryIdx for m in good]],
        pa[[m.trainIdx for m in good]],
        method=cv2.RANSAC,
        ransacReprojThreshold=RANSAC_PX,
        maxIters=1000,
    )
    if moved is None:
        return None
    scale = float(np.hypot(moved[0, 0], moved[1, 0]))
    turn = abs(float(np.degrees(np.arctan2(moved[1, 0], moved[0, 0]))))
    return moved if SCALE_RANGE[0] < scale < SCALE_RANGE[1] and turn <= MAX_TURN_DEG else None


def _score(a: np.ndarray, b: np.ndarray, moved: np.ndarray) -> float:
    """Band-passed normalised cross-correlation of ``a`` and ``b`` mapped onto it by ``moved``."""
    import cv2

    h, w = a.shape[:2]
    side = min(COMPARE_PX, h, w, *b.shape[:2])
    inner, outer = (r * side / COMPARE_PX for r in BAND_PX)
    mapped = cv2.warpAffine(b, moved, (w, h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    cover = cv2.warpAffine(np.ones(b.shape[:2], np.float32), moved, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)

    def band(small: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(small, (0, 0), inner) - cv2.GaussianBlur(small, (0, 0), outer)

    covered = cv2.resize(cover, (side, side), interpolation=cv2.INTER_AREA) > 0.999
    edge = 2 * int(np.ceil(2 * outer)) + 1  # where the blur saw no uncovered pixel
    covered = cv2.erode(covered.astype(np.uint8), np.ones((edge, edge), np.uint8)).astype(bool)
    if covered.mean() < MIN_COVER:
        return -1.0
    small_a, small_b = (
        cv2.resize(x.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA) for x in (a, mapped)
    )
    x, y = band(small_a)[covered].ravel(), band(small_b)[covered].ravel()
    x, y = x - x.mean(), y - y.mean()
    if min(x.std(), y.std()) < FLAT_LEVELS:  # no detail to compare: a blank matches only the same blank
        both = max(x.std(), y.std()) < FLAT_LEVELS
        return 1.0 if both and float(np.abs(small_a[covered] - small_b[covered]).mean()) < BLANK_LEVELS else 0.0
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def _order(s: Signature) -> tuple[int, float]:
    return s.rgb.shape[0] * s.rgb.shape[1], float(s.rgb.mean())


def pixel_score(a: Signature, b: Signature) -> float:
    """The pixel score of a pair (module docstring), in [-1, 1]: higher is more alike, 1 for the
    same pixels. The smaller image is mapped onto the larger (of two the same size, the one of
    lower mean level onto the other), so either order gives the same score; the keypoint
    alignment is tried only where the plain rescale scores below :data:`PIXEL_THRESHOLD`."""
    if _order(a) < _order(b):
        a, b = b, a
    (h, w), (hb, wb) = a.rgb.shape[:2], b.rgb.shape[:2]
    best = _score(a.rgb, b.rgb, np.float32([[w / wb, 0, 0], [0, h / hb, 0]]))
    if best < PIXEL_THRESHOLD:
        moved = _similarity(a, b)
        if moved is not None:
            best = max(best, _score(a.rgb, b.rgb, moved))
    return best


class PixelChecker:
    """Pixel scores of candidate pairs, each file decoded once while its signature is cached
    (at most ``cache`` signatures, up to 192 KiB of pixels and 20 KiB of keypoints each, are held:
    about 210 MiB at the default).

    Args:
        sizes: ``{path: indexed size in bytes}`` of the files that may be asked about.
        limits: the decode guards.
        cache: how many signatures to hold; pairs are best asked grouped by their first path.
    """

    def __init__(self, sizes: dict[str, int], limits: Limits = Limits(), cache: int = 1024):
        self.sizes = sizes
        self.limits = limits
        self.unreadable: dict[str, str] = {}  # path -> reason
        self._signature = functools.lru_cache(maxsize=cache)(self._load)

    def _load(self, path: str) -> Signature | None:
        try:
            return signature(path, self.sizes.get(path), self.limits)
        except BadImageError as exc:
            self.unreadable[path] = exc.reason
            return None

    def scores(self, pairs: Sequence[tuple[str, str]]) -> Iterable[float | None]:
        """The pixel score of each pair, in order; None where either file could not be read
        (its path and reason are in :attr:`unreadable`)."""
        for a, b in pairs:
            x, y = self._signature(a), self._signature(b)
            yield None if x is None or y is None else pixel_score(x, y)
