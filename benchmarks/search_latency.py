"""Search latency: by image file (decode + embed + Milvus) and by stored vector (Milvus only).

Indexes a folder into a fresh Milvus Lite collection, then prints latency p50/p99 in ms of
``SearchClient.search`` and ``SearchClient.search_similar`` (k=10). Indexing throughput has its
own benchmark (``index_throughput.py``).

    python benchmarks/search_latency.py [FOLDER] [--model M] [--limit N] [--queries Q]

Defaults: ``$VITSEARCH_SHARED/data/catalog``, ``$VITSEARCH_SHARED/models/dinov2-small-9l``,
400 images, 50 queries. Not a test: run by hand, report the ratios.
"""
from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vitsearch.indexer import index_folder
from vitsearch.search import SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.images import is_image_file
from vitsearch.search.store import Store

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default=str(SHARED / "data" / "catalog"))
    ap.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    ap.add_argument("--limit", type=int, default=400, help="images to index")
    ap.add_argument("--queries", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    files = sorted(p for p in Path(args.folder).rglob("*") if is_image_file(p))[:args.limit]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for p in files:
            shutil.copy(p, folder / p.name)
        encoder = Encoder.load(args.model)

        uri = str(Path(tmp) / "bench.db")
        with Store(uri, "bench") as store:
            report = index_folder(str(folder), encoder=encoder, store=store,
                                  batch_size=args.batch_size, workers=args.workers)

        with SearchClient(uri=uri, collection="bench", encoder=encoder) as client:
            queries = [str(folder / p.name) for p in files[:args.queries]]
            by_image, by_vector = [], []
            for q in queries:
                t = time.perf_counter()
                client.search(q, k=10)
                by_image.append(time.perf_counter() - t)
                t = time.perf_counter()
                client.search_similar(q, k=10)
                by_vector.append(time.perf_counter() - t)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, device {encoder.device}, {encoder.dtype}")
    print(f"model: {encoder.info.model} (dim {encoder.dim}, {encoder.info.image_size}), "
          f"batch {args.batch_size}, workers {args.workers}, index HNSW COSINE, Milvus Lite")
    print(f"{'measure':<44} {'value':>12}")
    rows = [
        (f"indexed {report.indexed} images (images/s)", f"{report.images_per_s:.1f}"),
        (f"search by image, k=10, {len(by_image)} queries p50 (ms)", f"{percentile_ms(by_image, 50):.1f}"),
        ("search by image p99 (ms)", f"{percentile_ms(by_image, 99):.1f}"),
        ("search by stored vector p50 (ms)", f"{percentile_ms(by_vector, 50):.1f}"),
        ("search by stored vector p99 (ms)", f"{percentile_ms(by_vector, 99):.1f}"),
    ]
    for name, value in rows:
        print(f"{name:<44} {value:>12}")


if __name__ == "__main__":
    main()
