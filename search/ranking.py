"""What a search does with Milvus's hits in the collection's space (:mod:`.whitening`): query
expansion and the close-match label.

**Query expansion** (αQE; Radenović, Tolias & Chum, TPAMI 2018, "Fine-tuning CNN Image Retrieval
with No Human Annotation", section 5.3): the query is replaced by the normalised sum of itself and
its ``n`` nearest stored vectors, each weighted by its similarity to the query raised to the power
``α`` (negative similarities count 0), and searched once more:

    q' = normalise(q + sum_i max(0, s_i)^α y_i),  i = 1..n

**Close matches**: a hit is labelled a match when its similarity to the *original* query stands
out of the collection's random pairs in the searched space and in the model's raw space
(:meth:`~.whitening.Space.is_match`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .store import Hit
from .whitening import Space, normalise

#: αQE's exponent α. Radenović et al. use 3 on raw CNN descriptors; on whitened embeddings, where
#: close matches score about 0.5, 3 leaves the query nearly unchanged, and 1 expands more: on the
#: category-level sets it gains more, on Holidays-dev it loses a little (``benchmarks/whitening.py``).
QE_ALPHA = 1.0
#: Most neighbours a query may be expanded with (``--expand``).
MAX_EXPAND = 100


def expand(query: np.ndarray, neighbours: np.ndarray, scores: np.ndarray, alpha: float = QE_ALPHA) -> np.ndarray:
    """αQE of one query (module docstring).

    Args:
        query: ``(D,) float32`` in the searched space, unit norm.
        neighbours: ``(n, D) float32``, its ``n`` nearest stored vectors.
        scores: ``(n,)`` their cosine similarity to ``query``.

    Returns:
        ``(D,) float32``, unit norm.
    """
    weights = np.clip(np.asarray(scores, np.float32), 0, None) ** alpha
    expanded = np.asarray(query, np.float32) + weights @ np.asarray(neighbours, np.float32).reshape(len(weights), -1)
    return normalise(expanded[None, :])[0]


def label(
    hits: Sequence[Hit], space: Space, query: np.ndarray, raw_query: np.ndarray, vectors: dict[str, np.ndarray]
) -> list[Hit]:
    """``hits`` with :attr:`~.store.Hit.match` set (module docstring).

    Args:
        query: ``(D,)`` the original query in the searched space (scores are recomputed against
            it where the hits came from an expanded query).
        raw_query: ``(D,)`` the same query as a raw embedding.
        vectors: the stored vectors (searched space) of hits by path; a whitened hit without one
            is decided by the searched space alone.
    """
    out = []
    for hit in hits:
        stored = vectors.get(hit.path)
        score = hit.score if stored is None else float(stored @ query)
        raw = score if not space.whitened else (None if stored is None else float(space.to_raw(stored)[0] @ raw_query))
        out.append(replace(hit, match=space.is_match(score, raw)))
    return out


def candidates(hits: Sequence[Hit], space: Space) -> list[str]:
    """Paths of hits whose score reaches the searched-space bar of a close match: those whose raw
    score a whitened collection must check."""
    bars = space.match_bars()
    return [] if bars is None else [h.path for h in hits if h.score >= bars[0]]
