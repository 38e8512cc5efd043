"""Queries made of more than one whole picture: a region of an image (:class:`Box`), and several
examples, weighted, some of them negative (:class:`Examples`, :func:`combine`).

**The combination.** Each example is embedded (a file) or read (an indexed item's stored vector)
and mapped into the space the collection searches in (:meth:`~.whitening.Space.to_search`: unit
vectors, whitened where the collection is). The query is

    q = normalise(Σ_pos w_i · e_i  −  γ · Σ_neg w_j · e_j),   γ = NEGATIVE_WEIGHT = 0.2

the weighted sum of the positive examples minus a fraction of that of the negatives: the
vector-space form of relevance feedback (Rocchio, 1971, "Relevance feedback in information
retrieval"), whose negative examples weigh less than its positives (the classic β = 0.75,
γ = 0.15: a ratio of 0.2), as rclip combines its ``+``/``-`` queries with weights and Qdrant's
recommendation API its ``average_vector`` strategy. Ranking by ``q · x`` ranks an item by how
much more it resembles the positives than the negatives. On Holidays-dev
(``benchmarks/query_examples.py examples``), a photo's top hit of another group given as a
negative at γ = 1 pushed that group down but cut the query's own group's mAP from 0.85 to 0.59
(the two scenes share what the subtraction removes); at 0.2 the group's mAP holds and the
confuser's group still moves down. Conflicting examples cancel: an image given as both a
positive and a negative only lowers its own weight, and examples that cancel completely are
refused (:class:`~.errors.BadQueryError`).

The close-match label of each hit compares it with the same combination of the raw embeddings.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from .errors import BadQueryError
from .whitening import normalise

#: Most examples a query may have, positives and negatives together.
MAX_EXAMPLES = 32
#: γ: how much a negative example weighs against a positive of the same weight (module docstring).
NEGATIVE_WEIGHT = 0.2

_WEIGHTED = re.compile(r"^(\d+(?:\.\d+)?):(.+)$", re.S)


@dataclass(frozen=True)
class Box:
    """A region of an image: ``x``, ``y`` (its top-left corner), ``w``, ``h``, in pixels of the
    image as displayed (after its EXIF orientation), integers."""

    x: int
    y: int
    w: int
    h: int

    @classmethod
    def of(cls, box: Box | str | Sequence[Any]) -> Box:
        """A box from ``"x,y,w,h"`` or a sequence of four integers.

        Raises:
            BadQueryError: not four integers, or an empty box (width or height under 1).
        """
        if isinstance(box, Box):
            return box
        parts = box.split(",") if isinstance(box, str) else list(box)
        try:
            values = [int(str(p).strip()) for p in parts]
        except ValueError:
            values = []
        if len(values) != 4:
            raise BadQueryError(f"a box is x,y,w,h: four whole numbers of pixels, not {box!r}")
        found = cls(*values)
        if found.w < 1 or found.h < 1:
            raise BadQueryError(f"the box {found.text()} is empty: its width and height must be at least 1 pixel")
        return found

    def text(self) -> str:
        """``"x,y,w,h"``."""
        return f"{self.x},{self.y},{self.w},{self.h}"

    def crop(self, image: Image.Image) -> Image.Image:
        """The region of an upright image.

        Raises:
            BadQueryError: the box is not inside the image (its size is named).
        """
        width, height = image.size
        if self.x < 0 or self.y < 0 or self.x + self.w > width or self.y + self.h > height:
            raise BadQueryError(
                f"the box {self.text()} (x,y,w,h) is not inside the image, which is {width}x{height} pixels "
                "as displayed"
            )
        return image.crop((self.x, self.y, self.x + self.w, self.y + self.h))


@dataclass(frozen=True)
class Stored:
    """An indexed item as an example: its stored vector is used (no file is read, no model runs).

    Attributes:
        path: the indexed file's path (a relative one is taken from the current folder).
    """

    path: str


def weighted(argument: str) -> tuple[float, str]:
    """rclip's ``WEIGHT:EXAMPLE`` (``2:a.jpg``, ``0.5:b.jpg``) as ``(weight, example)``; an
    argument without a weight, or one naming an existing file (``2:a.jpg`` may be a file's name),
    has weight 1."""
    match = _WEIGHTED.match(argument)
    if match is None or os.path.lexists(argument):
        return 1.0, argument
    return float(match.group(1)), match.group(2)


@dataclass(frozen=True)
class Examples:
    """The examples of one query, checked.

    Attributes:
        positive, negative: the examples (image files, bytes, PIL images, arrays or
            :class:`Stored` items).
        weights: one positive weight per example, positives first; default all 1.
    """

    positive: list[Any]
    negative: list[Any]
    weights: list[float]

    @classmethod
    def of(cls, positive: Sequence[Any], negative: Sequence[Any] = (), weights: Sequence[float] | None = None):
        """Check the examples.

        Raises:
            BadQueryError: no positive example (only negatives say nothing about what to find),
                more than :data:`MAX_EXAMPLES`, or weights that are not one finite positive
                number per example.
        """
        positive, negative = list(positive), list(negative)
        if not positive:
            raise BadQueryError("give at least one positive example: negatives alone do not say what to find")
        n = len(positive) + len(negative)
        if n > MAX_EXAMPLES:
            raise BadQueryError(f"{n} examples: at most {MAX_EXAMPLES} positives and negatives together")
        weights = [1.0] * n if weights is None else [float(w) for w in weights]
        if len(weights) != n:
            raise BadQueryError(f"{len(weights)} weights for {n} examples: give one per example, positives first")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise BadQueryError("weights must be finite numbers above 0 (a negative example is given as negative)")
        return cls(positive, negative, weights)

    def signs(self) -> np.ndarray:
        """``(N,) float64``: each example's weight; a negative's times ``-NEGATIVE_WEIGHT``."""
        sign = np.array([1.0] * len(self.positive) + [-NEGATIVE_WEIGHT] * len(self.negative))
        return sign * np.asarray(self.weights, np.float64)

    def stored_paths(self) -> list[str]:
        """The paths of the :class:`Stored` examples (left out of the results)."""
        return [e.path for e in [*self.positive, *self.negative] if isinstance(e, Stored)]


def combine(vectors: np.ndarray, signs: np.ndarray) -> np.ndarray:
    """The query of weighted examples (module docstring): ``(N, D)`` unit vectors and ``(N,)``
    signed weights to one ``(1, D) float32`` unit vector.

    Raises:
        BadQueryError: the examples cancel out (their weighted sum is about zero).
    """
    total = (np.asarray(signs, np.float64)[:, None] * np.asarray(vectors, np.float64)).sum(axis=0)
    scale = float(np.abs(signs).sum())
    if np.linalg.norm(total) < 1e-6 * scale:
        raise BadQueryError("the examples cancel out: the negatives are the positives; nothing is left to search for")
    return normalise(total.astype(np.float32)[None, :])
