"""Contract of search/metrics.py: average precision as the field defines it (the figures over a
whole dataset are pinned against a reference in test_eval.py); importing it does not import
pymilvus."""
from __future__ import annotations

import subprocess
import sys

from vitsearch.search.metrics import average_precision


def test_average_precision():
    assert average_precision(["a", "x", "b"], {"a", "b"}) == (1 + 2 / 3) / 2
    assert average_precision(["x", "y"], {"a"}) == 0.0
    assert average_precision(["a"], {"a", "b"}) == 0.5  # a relevant item never retrieved counts 0


def test_the_metrics_need_no_milvus():
    code = "import sys, vitsearch.search.metrics; print('pymilvus' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"
