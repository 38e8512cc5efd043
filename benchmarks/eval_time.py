"""Where ``vitsearch eval``'s time goes: embedding against everything else, and the ranking done
exactly in NumPy against the ranking through Milvus it replaced, in one run on the same collection.

1. ``evaluate()`` on DATASET into a kept Milvus Lite collection (the indexer embeds every image):
   its seconds ``index`` (decode + forward passes + upsert: the embedding), ``search`` (read the
   stored vectors once, rank every query exactly in NumPy, search the ANN sample through Milvus)
   and ``total``;
2. the baseline on the same collection: every query searched through Milvus at the full ranking
   depth (``SearchClient.search_similar(query, k=N - 1)``, what eval did before), its mAP
   computed by the same :func:`~vitsearch.search.metrics.ranking_figures`.

Prints both rows with the ranking seconds, the share of eval's time outside embedding
(``(total - index) / total``, the baseline's total being the run's with its ranking instead) and
mAP, which must agree.

    python benchmarks/eval_time.py [DATASET] [--model M] [--runtime torch|onnx|onnx-int8]

Defaults: ``$VITSEARCH_SHARED/data/holidays-dev``, ``$VITSEARCH_SHARED/models/dinov2-small-9l``.
Not a test: run by hand, report the table.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from vitsearch.indexer.evaluate import evaluate
from vitsearch.search.client import SearchClient
from vitsearch.search.config import MAX_K, Settings
from vitsearch.search.metrics import load_dataset, ranking_figures

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset", nargs="?", default=str(SHARED / "data" / "holidays-dev"))
    parser.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    parser.add_argument("--runtime", default=None, help="default: the CPU's default runtime")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vitsearch-eval-bench-") as tmp:
        uri = str(Path(tmp) / "eval.db")
        settings = Settings(
            model=args.model, uri=uri, collection="eval", **({"runtime": args.runtime} if args.runtime else {})
        )
        report = evaluate(args.dataset, settings, (1, 5, 10), uri=uri, collection="eval")
        new = report.seconds
        data = load_dataset(args.dataset)
        with SearchClient(settings=settings) as client:
            n = client.store.count()
            started = time.perf_counter()
            rankings = {q: [h.path for h in client.search_similar(q, k=min(n - 1, MAX_K))] for q in data.queries}
            old_search = time.perf_counter() - started
        old_map = ranking_figures(rankings, data.queries, (1, 5, 10)).map
    old_total = new["total"] - new["search"] + old_search
    print(
        f"{args.dataset}: {report.images} images, {report.result.queries} queries, model {report.model}, "
        f"runtime {report.runtime}; "
        f"model load {new['model']:.2f} s, embedding (index) {new['index']:.2f} s, {report.images_per_s} images/s; "
        f"load average {os.getloadavg()[0]:.2f}"
    )
    embedding = new["index"] + new["model"]
    print(
        "| ranking | ranking s | total s | outside embedding (model load counted as embedding) | "
        "outside index | mAP | ANN recall@10 |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, search, total, figure, ann in (
        ("per-query search through Milvus (before)", old_search, old_total, old_map, "-"),
        (
            f"stored vectors once, exact NumPy, ANN sample of {report.result.ann_queries} (now)",
            new["search"],
            new["total"],
            report.result.map,
            f"{report.result.ann_recall_at_10:.4f}",
        ),
    ):
        print(
            f"| {name} | {search:.2f} | {total:.2f} | {(total - embedding) / total:.1%} | "
            f"{(total - new['index']) / total:.1%} | {figure:.4f} | {ann} |"
        )
    print(
        f"ranking speed-up x{old_search / max(new['search'], 1e-9):.1f}; ANN sample {new['ann']:.2f} s of the ranking"
    )


if __name__ == "__main__":
    main()
