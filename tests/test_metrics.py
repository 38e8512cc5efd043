"""Contract of search/metrics.py: average precision as the field defines it (the figures over a
whole dataset are pinned against a reference in test_eval.py); the exact rankings equal one
stable sort per query, in chunks and truncated alike; importing it does not import pymilvus."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from vitsearch.search.metrics import average_precision, exact_rankings


def test_average_precision():
    assert average_precision(["a", "x", "b"], {"a", "b"}) == (1 + 2 / 3) / 2
    assert average_precision(["x", "y"], {"a"}) == 0.0
    assert average_precision(["a"], {"a", "b"}) == 0.5  # a relevant item never retrieved counts 0


def test_the_metrics_need_no_milvus():
    code = "import sys, vitsearch.search.metrics; print('pymilvus' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("depth, chunk_bytes", [(None, 256 * 2**20), (None, 1), (5, 1), (40, 4000), (1, 10**6)])
def test_exact_rankings_are_one_stable_sort_per_query(depth, chunk_bytes):
    rng = np.random.default_rng(3)
    matrix = rng.normal(size=(40, 8)).astype(np.float32)
    matrix[7] = matrix[3]  # a tie: it keeps the order of the names
    matrix /= np.linalg.norm(matrix, axis=1, keepdims=True)
    names = [f"n{i:02d}" for i in range(40)]
    queries = np.concatenate([matrix[[3, 10, 39]], rng.normal(size=(1, 8)).astype(np.float32)])
    leave = ["n03", "n10", None, "absent"]
    got = exact_rankings(matrix, names, queries, leave, depth=depth, chunk_bytes=chunk_bytes)
    for query, left, ranking in zip(queries, leave, got):
        full = [names[i] for i in np.argsort(-(matrix @ query), kind="stable") if names[i] != left]
        assert ranking == full[: len(names) if depth is None else depth]
    assert got[0][0] == "n07"  # the duplicate of the query ranks first, the query itself left out
