"""The whitening's maths (:mod:`vitsearch.search.whitening`) against a NumPy reference written
from the formula: learned from moments fed in batches as from all rows at once, invertible, the
score statistics and the close-match rule, and query expansion (:mod:`vitsearch.search.ranking`)."""

from __future__ import annotations

import numpy as np
import pytest

from vitsearch.search import ranking
from vitsearch.search.store import Hit
from vitsearch.search.whitening import (
    MATCH_CAP,
    MATCH_Z_RAW,
    MATCH_Z_RAW_ONLY,
    MATCH_Z_SEARCH,
    POWER,
    SHRINK_BASE,
    SHRINK_PER_DIM,
    Moments,
    Reservoir,
    ScoreStats,
    Space,
    Whitening,
    normalise,
    shrinkage_for,
)


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors in ``d`` dimensions, correlated as embeddings are (a shared direction,
    a few strong axes)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * np.linspace(3, 0.2, d) + 4 * rng.standard_normal(d)
    return normalise(x.astype(np.float32))


def reference(x: np.ndarray, power: float, shrink: float) -> np.ndarray:
    """The whitening of the module docstring, written out with NumPy in float64."""
    x = x.astype(np.float64)
    mean = x.mean(0)
    cov = (x - mean).T @ (x - mean) / len(x)
    eig, axes = np.linalg.eigh(cov)
    eig = np.clip(eig, 0, None)
    y = ((x - mean) @ axes) * (eig + shrink * eig.mean()) ** -power
    return y / np.linalg.norm(y, axis=1, keepdims=True)


def learned(x: np.ndarray, **kw) -> Whitening:
    moments = Moments(x.shape[1])
    moments.add(x)
    return Whitening.learn(moments, **kw)


def test_learn_and_apply_match_the_numpy_reference():
    x = unit_rows(300, 24)
    w = learned(x)
    assert w.n == 300 and w.power == POWER and w.shrinkage == pytest.approx(shrinkage_for(300, 24))
    assert shrinkage_for(300, 24) == pytest.approx(SHRINK_BASE + SHRINK_PER_DIM * 24 / 300)
    y = w.apply(x)
    ref = reference(x, POWER, w.shrinkage)
    assert y.dtype == np.float32 and y.shape == (300, 24)
    assert np.allclose(np.linalg.norm(y, axis=1), 1, atol=1e-5)
    # eigenvectors are defined up to sign: compare the similarities the two give
    assert np.abs(y @ y.T - ref @ ref.T).max() < 1e-4
    other = learned(x, power=0.5, shrinkage=0.0).apply(x)
    assert np.abs(other @ other.T - reference(x, 0.5, 0.0) @ reference(x, 0.5, 0.0).T).max() < 1e-3


def test_whitened_random_pairs_are_decorrelated():
    """After full whitening, random pairs of the collection score about 0 on average, where the
    raw embeddings (sharing a direction) score high."""
    x = unit_rows(2000, 16, seed=3)
    raw_pairs = (x @ x.T)[np.triu_indices(2000, 1)]
    y = learned(x, power=0.5, shrinkage=0.0).apply(x)
    white_pairs = (y @ y.T)[np.triu_indices(2000, 1)]
    assert raw_pairs.mean() > 0.5
    assert abs(white_pairs.mean()) < 0.01


def test_moments_fed_in_batches_equal_all_at_once():
    x = unit_rows(500, 12, seed=1)
    whole, parts = Moments(12), Moments(12)
    whole.add(x)
    for start in range(0, 500, 37):
        parts.add(x[start : start + 37])
    assert parts.n == whole.n == 500
    for a, b in zip(parts.mean_cov(), whole.mean_cov()):
        assert np.allclose(a, b, atol=1e-12)


def test_invert_recovers_the_raw_embedding():
    x = unit_rows(400, 32, seed=2)
    w = learned(x)
    back = w.invert(w.apply(x))
    assert back.shape == x.shape
    assert (back * x).sum(1).min() > 0.99999
    new = unit_rows(50, 32, seed=9)  # vectors the whitening was not learned from
    assert (w.invert(w.apply(new)) * new).sum(1).min() > 0.99999


def test_matrix_round_trip_and_sha256():
    w = learned(unit_rows(200, 8, seed=4))
    again = Whitening.from_matrix(w.matrix(), w.record())
    assert again.sha256() == w.sha256() == w.record()["sha256"]
    assert np.array_equal(again.apply(unit_rows(5, 8)), w.apply(unit_rows(5, 8)))
    assert w.matrix().shape == (10, 8)


def test_learning_needs_two_vectors():
    with pytest.raises(ValueError, match="at least 2"):
        learned(unit_rows(1, 4))


def test_reservoir_is_uniform_and_bounded():
    r = Reservoir(size=100, seed=0)
    for start in range(0, 10_000, 250):
        r.add(np.arange(start, start + 250, dtype=np.float32)[:, None])
    sample = r.sample(1)[:, 0]
    assert len(sample) == 100 and r.seen == 10_000
    assert 3000 < sample.mean() < 7000  # drawn from the whole stream, not its start


def test_score_stats_and_the_match_rule():
    x = unit_rows(300, 16, seed=5)
    w = learned(x)
    stats = ScoreStats.measure(x, 300, w)
    pairs = (x @ x.T)[np.triu_indices(300, 1)]
    assert stats.raw_mean == pytest.approx(pairs.mean(), abs=1e-5) and stats.raw_sd == pytest.approx(
        pairs.std(), abs=1e-5
    )
    y = w.apply(x)
    assert stats.search_mean == pytest.approx((y @ y.T)[np.triu_indices(300, 1)].mean(), abs=1e-5)
    assert ScoreStats.measure(x[:2], 2, w) is None
    white = Space("s", w, stats=stats)
    bar, raw_bar = white.match_bars()
    assert bar == pytest.approx(min(MATCH_CAP, stats.search_mean + MATCH_Z_SEARCH * stats.search_sd))
    assert raw_bar == pytest.approx(min(MATCH_CAP, stats.raw_mean + MATCH_Z_RAW * stats.raw_sd))
    assert bar == MATCH_CAP  # these 16-d random pairs spread so widely that the bar would pass 1
    assert (
        white.is_match(bar, raw_bar) and not white.is_match(bar - 1e-3, 1.0) and not white.is_match(1.0, raw_bar - 1e-3)
    )
    assert white.is_match(bar, None)  # a raw score not known: the searched space decides
    raw = Space(stats=stats)
    assert raw.match_bars()[0] == pytest.approx(min(MATCH_CAP, stats.raw_mean + MATCH_Z_RAW_ONLY * stats.raw_sd))
    assert not Space().is_match(1.0, 1.0)  # no statistics yet: nothing is called a match


def test_space_record_round_trip_and_identity_for_raw():
    x = unit_rows(100, 8, seed=6)
    w = learned(x)
    space = Space("abc", w, "auto", ScoreStats.measure(x, 100, w))
    again = Space.from_record(space.record(), w)
    assert again == space and again.record() == space.record()
    assert np.allclose(Space().to_search(x), x, atol=1e-7) and np.allclose(Space().to_raw(x), x, atol=1e-7)
    assert np.allclose(space.to_raw(space.to_search(x)), x, atol=1e-5)


def test_query_expansion_is_alpha_qe():
    q = normalise(np.array([[1.0, 0.0, 0.0]], np.float32))[0]
    nb = normalise(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]], np.float32))
    scores = np.array([0.5, -0.2], np.float32)
    out = ranking.expand(q, nb, scores, alpha=3.0)
    expected = q + 0.5**3 * nb[0]  # a negative similarity weighs 0
    assert np.allclose(out, expected / np.linalg.norm(expected), atol=1e-6)
    assert out.shape == (3,) and out.dtype == np.float32


def test_labels_use_the_original_query_in_both_spaces():
    x = unit_rows(500, 64, seed=7)
    w = learned(x)
    space = Space("s", w, stats=ScoreStats.measure(x, 500, w))
    assert space.match_bars()[0] < 1  # random pairs of 64-d whitened vectors: sd about 1/8
    y = w.apply(x)
    query, raw_query = y[0], x[0]
    hits = [Hit(f"/p/{i}", float(y[i] @ query)) for i in (0, 1, 2)]
    labelled = ranking.label(hits, space, query, raw_query, {h.path: y[i] for h, i in zip(hits, (0, 1, 2))})
    assert labelled[0].match  # the query's own stored vector
    for h, i in zip(labelled, (0, 1, 2)):
        assert h.match == space.is_match(float(y[i] @ query), float(x[i] @ raw_query))
    assert ranking.candidates(hits, space) == [h.path for h in hits if h.score >= space.match_bars()[0]]
