"""The space a collection searches in: the model's raw embedding, or that embedding whitened with
a transform learned from the collection's own vectors (no labels).

**Whitening** (Jégou & Chum, ECCV 2012, "Negative evidences and co-occurrences in image
retrieval: the benefit of PCA and whitening"): centre on the collection's mean ``m``, rotate to
the principal axes ``U`` of its covariance (eigenvalues ``λ``), divide each axis by
``(λ + s)^p``, L2-normalise:

    y = normalise(((x - m) @ U) * (λ + s)^-p)

Full whitening is ``p = 1/2``, ``s = 0``. Here ``p = 0.34`` (:data:`POWER`) and ``s`` is
``(1 + 0.5 D / N)`` times the mean eigenvalue (:func:`shrinkage_for`): a power below 1/2 and a
shrinkage toward the identity keep the principal directions, which carry category-level
information, from being flattened, and the term in ``D / N`` regularises more where fewer images
estimate a ``D x D`` covariance (``benchmarks/whitening.py`` chose both). Nothing is dropped
(the rotation keeps all ``D`` axes), so the transform is invertible: the model's embedding of a
stored image is recovered from its whitened vector (:meth:`Whitening.invert`), and re-learning
never embeds an image again.

**Scores a person can read.** After whitening, unrelated images score near 0 and copies or
views of the same scene well above. :class:`ScoreStats` holds the mean and standard deviation of
the cosine of random pairs of the collection's images, in the raw and in the searched space; a
hit is a *close match* (the same object, scene or product, not merely the nearest item) when it
stands out from that background in both (:meth:`Space.is_match`).
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

#: Eigenvalue power ``p`` of the whitening (1/2 is full whitening).
POWER = 0.34
#: Shrinkage ``s = (SHRINK_BASE + SHRINK_PER_DIM * D / N)`` x the mean eigenvalue.
SHRINK_BASE = 1.0
SHRINK_PER_DIM = 0.5
#: Fewest stored images whitening is learned from; a smaller collection searches raw embeddings.
MIN_IMAGES = 50
#: A collection is re-learned when it holds this many times the images its whitening was learned
#: from (so over a collection's life each row is rewritten at most about twice, amortised).
RELEARN_GROWTH = 2.0
#: Images sampled (uniformly, reservoir) for the score statistics: all their pairs are scored.
STATS_SAMPLE = 2000
#: A hit is a close match when its score is this many standard deviations above the mean of
#: random pairs: in the searched (whitened) space ...
MATCH_Z_SEARCH = 4.75
#: ... and in the model's raw space; a collection that is not whitened uses the raw bar alone.
MATCH_Z_RAW = 2.0
MATCH_Z_RAW_ONLY = 2.5
#: A score at or above this is a close match whatever the statistics say (in a collection whose
#: random pairs spread widely, the bars above can exceed 1: an identical image still matches).
MATCH_CAP = 0.98


def shrinkage_for(n: int, dim: int) -> float:
    """The shrinkage ``s`` in units of the mean eigenvalue for ``n`` images of dimension ``dim``."""
    return SHRINK_BASE + SHRINK_PER_DIM * dim / max(1, n)


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` scaled to L2 norm 1, ``(N, D) float32`` (a zero row stays zero)."""
    x = np.asarray(x, np.float32)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1)


class Moments:
    """Running first and second moments of ``(N, D)`` vectors in float64 (what the covariance
    is made of), fed batch by batch so a collection of any size is read once in bounded memory."""

    def __init__(self, dim: int):
        self.n = 0
        self.total = np.zeros(dim)
        self.outer = np.zeros((dim, dim))

    def add(self, x: np.ndarray) -> None:
        """Add ``(B, D)`` vectors."""
        x = np.asarray(x, np.float64)
        self.n += len(x)
        self.total += x.sum(0)
        self.outer += x.T @ x

    def mean_cov(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean (D,), covariance (D, D))``, the covariance normalised by N."""
        mean = self.total / self.n
        return mean, self.outer / self.n - np.outer(mean, mean)


@dataclass(frozen=True)
class Whitening:
    """A learned whitening: ``y = normalise(((x - mean) @ axes) * scale)``.

    Attributes:
        mean: ``(D,) float32``, the collection's mean raw embedding.
        axes: ``(D, D) float32`` orthonormal columns, the principal axes (eigenvectors).
        scale: ``(D,) float32``, ``(λ + s)^-p`` per axis.
        power: ``p``. shrinkage: ``s`` in units of the mean eigenvalue.
        n: images it was learned from. learned_at: Unix seconds.
    """

    mean: np.ndarray
    axes: np.ndarray
    scale: np.ndarray
    power: float = POWER
    shrinkage: float = SHRINK_BASE
    n: int = 0
    learned_at: float = 0.0

    @classmethod
    def learn(cls, moments: Moments, power: float = POWER, shrinkage: float | None = None) -> Whitening:
        """Learn from the moments of raw embeddings.

        Args:
            shrinkage: in units of the mean eigenvalue; default :func:`shrinkage_for`.

        Raises:
            ValueError: fewer than 2 vectors.
        """
        if moments.n < 2:
            raise ValueError(f"whitening needs at least 2 vectors, got {moments.n}")
        mean, cov = moments.mean_cov()
        eig, axes = np.linalg.eigh(cov)
        eig = np.clip(eig, 0.0, None)
        s = shrinkage_for(moments.n, len(mean)) if shrinkage is None else shrinkage
        floor = max(float(eig.mean()), 1e-12)
        scale = (eig + s * floor) ** -power
        return cls(
            mean.astype(np.float32),
            axes.astype(np.float32),
            scale.astype(np.float32),
            power,
            float(s),
            moments.n,
            time.time(),
        )

    @property
    def dim(self) -> int:
        """D."""
        return len(self.mean)

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """Raw embeddings ``(N, D)`` (unit norm) to whitened ones, ``(N, D) float32``, unit norm."""
        raw = np.atleast_2d(np.asarray(raw, np.float32))
        return normalise(((raw - self.mean) @ self.axes) * self.scale)

    def invert(self, white: np.ndarray) -> np.ndarray:
        """Whitened vectors ``(N, D)`` back to the unit-norm raw embeddings they came from,
        ``(N, D) float32``: ``x = mean + c v`` with ``v = (y / scale) @ axes.T`` and the one
        ``c > 0`` that gives ``|x| = 1`` (``|mean| < 1``, as for any mean of unit vectors)."""
        y = np.atleast_2d(np.asarray(white, np.float64))
        v = (y / self.scale) @ self.axes.T.astype(np.float64)
        m = self.mean.astype(np.float64)
        a = (v * v).sum(1)
        b = v @ m
        c0 = m @ m - 1.0
        c = (-b + np.sqrt(np.maximum(b * b - a * c0, 0.0))) / np.where(a > 0, a, 1)
        return normalise(m + c[:, None] * v)

    def matrix(self) -> np.ndarray:
        """``(D + 2, D) float32``: the mean, the scale, then the axes as rows (what is stored)."""
        return np.vstack([self.mean, self.scale, self.axes.T]).astype(np.float32)

    @classmethod
    def from_matrix(cls, matrix: np.ndarray, record: dict) -> Whitening:
        """Rebuild from :meth:`matrix` and :meth:`record`."""
        m = np.asarray(matrix, np.float32)
        return cls(
            m[0],
            np.ascontiguousarray(m[2:].T),
            m[1],
            float(record["power"]),
            float(record["shrinkage"]),
            int(record["n"]),
            float(record["learned_at"]),
        )

    def sha256(self) -> str:
        """Digest of :meth:`matrix`'s bytes: what the record checks the stored matrix against."""
        return hashlib.sha256(self.matrix().tobytes()).hexdigest()

    def record(self) -> dict:
        """The JSON-ready facts recorded with the collection (the matrix is stored apart)."""
        return {
            "power": self.power,
            "shrinkage": self.shrinkage,
            "n": self.n,
            "learned_at": self.learned_at,
            "dim": self.dim,
            "sha256": self.sha256(),
        }


@dataclass(frozen=True)
class ScoreStats:
    """Cosine similarity of random pairs of a collection's images: mean and standard deviation in
    the model's raw space and in the searched space (the same numbers where it is raw), measured
    on ``n`` images (a uniform sample of at most :data:`STATS_SAMPLE`) of ``count``."""

    raw_mean: float
    raw_sd: float
    search_mean: float
    search_sd: float
    n: int
    count: int

    @classmethod
    def measure(cls, raw: np.ndarray, count: int, whitening: Whitening | None) -> ScoreStats | None:
        """From a sample of raw embeddings ``(n, D)`` (None for fewer than 3)."""
        if len(raw) < 3:
            return None
        pairs = np.triu_indices(len(raw), 1)
        r = (raw @ raw.T)[pairs]
        w = r if whitening is None else (lambda v: (v @ v.T)[pairs])(whitening.apply(raw))
        return cls(
            float(r.mean()), float(max(r.std(), 1e-6)), float(w.mean()), float(max(w.std(), 1e-6)), len(raw), count
        )


class Reservoir:
    """A uniform sample of at most ``size`` rows of a stream (Vitter's algorithm R), seeded."""

    def __init__(self, size: int = STATS_SAMPLE, seed: int = 0):
        self.size, self.seen, self.rows = size, 0, []
        self._rng = np.random.default_rng(seed)

    def add(self, x: np.ndarray) -> None:
        """Offer ``(B, D)`` rows."""
        for row in np.asarray(x, np.float32):
            if len(self.rows) < self.size:
                self.rows.append(row)
            else:
                j = int(self._rng.integers(0, self.seen + 1))
                if j < self.size:
                    self.rows[j] = row
            self.seen += 1

    def sample(self, dim: int) -> np.ndarray:
        """The sample, ``(n, dim) float32``."""
        return np.asarray(self.rows, np.float32).reshape(-1, dim)


@dataclass(frozen=True)
class Space:
    """What the vectors of a collection are: raw embeddings, or whitened (:attr:`whitening`).

    Attributes:
        id: names this space (a new id each time the vectors are rewritten).
        whitening: None for raw embeddings.
        learn: ``"auto"`` (whitening is learned once the collection holds :data:`MIN_IMAGES`
            and re-learned as it grows) or ``"none"`` (raw embeddings, ``--whitening none``).
        stats: the score statistics (None until measured).
    """

    id: str = "raw"
    whitening: Whitening | None = None
    learn: str = "auto"
    stats: ScoreStats | None = None
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def whitened(self) -> bool:
        """Whether the vectors are whitened."""
        return self.whitening is not None

    def to_search(self, raw: np.ndarray) -> np.ndarray:
        """Raw embeddings ``(N, D)`` to this space, ``(N, D) float32`` unit norm."""
        raw = normalise(np.atleast_2d(raw))
        return raw if self.whitening is None else self.whitening.apply(raw)

    def to_raw(self, stored: np.ndarray) -> np.ndarray:
        """Vectors of this space ``(N, D)`` back to raw embeddings, ``(N, D) float32``."""
        stored = normalise(np.atleast_2d(stored))
        return stored if self.whitening is None else self.whitening.invert(stored)

    def match_bars(self) -> tuple[float, float] | None:
        """``(search score, raw score)`` a close match reaches, or None without statistics."""
        st = self.stats
        if st is None:
            return None
        if self.whitening is None:
            bar = min(MATCH_CAP, st.raw_mean + MATCH_Z_RAW_ONLY * st.raw_sd)
            return bar, bar
        return (
            min(MATCH_CAP, st.search_mean + MATCH_Z_SEARCH * st.search_sd),
            min(MATCH_CAP, st.raw_mean + MATCH_Z_RAW * st.raw_sd),
        )

    def is_match(self, search_score: float, raw_score: float | None) -> bool:
        """Whether a hit is a close match: its score stands out of the collection's random pairs
        in the searched space and (whitened collections) in the raw space. ``raw_score`` None: a
        whitened hit whose raw score is not known is decided by the searched space alone."""
        bars = self.match_bars()
        if bars is None:
            return False
        if search_score < bars[0]:
            return False
        return raw_score is None or raw_score >= bars[1]

    def with_stats(self, stats: ScoreStats | None) -> Space:
        """This space with other statistics."""
        return replace(self, stats=stats)

    def record(self) -> dict:
        """The JSON-ready record kept with the collection."""
        return {
            "id": self.id,
            "learn": self.learn,
            "whitening": self.whitening.record() if self.whitening else None,
            "stats": None if self.stats is None else self.stats.__dict__,
        }

    def to_json(self) -> str:
        """:meth:`record` as JSON text."""
        return json.dumps(self.record(), sort_keys=True)

    @classmethod
    def from_record(cls, record: dict, whitening: Whitening | None) -> Space:
        """Rebuild from :meth:`record` and the stored whitening (None where ``record`` has none)."""
        stats = record.get("stats")
        return cls(
            str(record.get("id", "raw")),
            whitening,
            str(record.get("learn", "auto")),
            ScoreStats(**stats) if stats else None,
        )

    def facts(self, count: int) -> dict:
        """``stats``'s facts of the space of a collection of ``count`` rows: ``space``
        (:meth:`describe`), ``whitening`` (its record, or None) and ``match_bar`` (the searched
        score a close match reaches; None before statistics exist)."""
        bars = self.match_bars()
        return {
            "space": self.describe(count),
            "whitening": self.whitening.record() if self.whitening else None,
            "match_bar": None if bars is None else round(bars[0], 4),
        }

    def describe(self, count: int) -> str:
        """One line for ``stats``: what the vectors are and when whitening is learned next."""
        if self.learn == "none":
            return "raw embeddings (--whitening none)"
        if self.whitening is None:
            return f"raw embeddings; whitening is learned once the collection holds {MIN_IMAGES} images"
        due = int(np.ceil(self.whitening.n * RELEARN_GROWTH))
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(self.whitening.learned_at))
        return (
            f"whitened (learned from {self.whitening.n:,} images on {when}; re-learned at {due:,} images, "
            f"or by `vitsearch index DIR --relearn`)"
        )


def new_id() -> str:
    """A fresh space id."""
    return uuid.uuid4().hex[:16]


def stream_moments(batches: Iterable[np.ndarray], dim: int, reservoir: Reservoir | None = None) -> Moments:
    """Moments of raw embedding batches ``(B, D)``, offering each batch to ``reservoir`` too."""
    moments = Moments(dim)
    for batch in batches:
        moments.add(batch)
        if reservoir is not None:
            reservoir.add(batch)
    return moments
