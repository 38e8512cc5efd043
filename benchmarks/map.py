"""The collection map (`vitsearch map`, search/embedding_map.py): time and peak RSS of computing
it, the whole layout against sample-and-place, and how well its clusters agree with known groups.

- Synthetic: N unit vectors of D dimensions around ``--centres`` random centres (20) (Gaussian noise of
  ``--noise`` per coordinate, row i in group ``i % centres``), written through ``Store.upsert`` into
  Milvus Lite. Each map is computed in a process of its own (spawned, so its peak RSS,
  ``VmHWM``, is its own; umap-learn's numba compilation is in every row), full (the whole
  collection laid out) and sampled (``--sample`` laid out, the rest placed by ``knn``, the default,
  or umap-learn's ``transform``); ``read`` is the floor: a bare read of every vector.
- flowers-12 (``$VITSEARCH_SHARED/data/flowers-12``, 960 photos, 12 species folders) indexed with
  the real model (``$VITSEARCH_SHARED/models/dinov2-small-9l``) as `vitsearch index` does
  (whitening included), then mapped; the species are the labels.

ARI: scikit-learn's adjusted Rand index of the map's clusters (noise, -1, counted as one more
cluster) against the groups; 1 is perfect agreement, 0 chance.

    python benchmarks/map.py [--rows 10000,100000] [--dim 384] [--sample 20000] [--no-flowers]
        [--runs full,knn,transform] [--centres 20]

Not a test: run by hand, report the table (docs/benchmarks/map.md).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

from vitsearch.search.config import Settings
from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.store import Store

COLLECTION = "map_bench"
SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FLOWERS = SHARED / "data" / "flowers-12"
MODEL = SHARED / "models" / "dinov2-small-9l"


def fill(store: Store, n: int, dim: int, noise: float, centres: int, chunk: int = 5000) -> float:
    """``n`` synthetic rows (module docstring); returns the seconds taken."""
    store.drop()
    store.ensure(EncoderInfo("bench", "0" * 64, dim, "cls", (224, 224), "torch"))
    rng = np.random.default_rng(0)
    groups = centres
    centres = rng.standard_normal((groups, dim)).astype(np.float32) / np.sqrt(dim)
    started = time.perf_counter()
    for start in range(0, n, chunk):
        ids = np.arange(start, min(n, start + chunk))
        vectors = centres[ids % groups] + rng.normal(scale=noise / np.sqrt(dim), size=(len(ids), dim))
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        store.upsert(
            [
                {
                    "path": f"/photos/{i % groups}/IMG_{i:08d}.jpg",
                    "vector": v,
                    "folder": f"/photos/{i % groups}",
                    "size": 2_000_000 + i,
                    "mtime": 1.7e9,
                    "ctime_ns": 1,
                    "inode": i,
                    "width": 4032,
                    "height": 3024,
                    "sha256": f"{i:064x}",
                    "indexed_at": 1.7e9,
                    "taken_at": 1.7e9,
                    "date_source": "mtime",
                    "camera": "",
                }
                for i, v in zip(ids.tolist(), vectors)
            ]
        )
    store.flush()
    return time.perf_counter() - started


def one_run(uri: str, collection: str, sample: int, place: str, result) -> None:
    """In a child process: compute the map; put ``(rows, laid out, clusters, seconds, RSS MB, ARI)``."""
    from sklearn.metrics import adjusted_rand_score

    from vitsearch.search.embedding_map import READ_ROWS, compute_map

    with Store.from_settings(Settings(retry_s=600), uri, collection) as store:
        started = time.perf_counter()
        if place == "read":  # the floor: a bare read of every vector, as the map reads them
            for batch in store.read_batches(["vector"], batch_size=READ_ROWS):
                np.asarray([r["vector"] for r in batch], np.float32)
            n = store.count()
            result.put((n, 0, 0, time.perf_counter() - started, peak_rss_mb(), float("nan")))
            return
        emap = compute_map(store, sample_size=sample, place=place)
        seconds = time.perf_counter() - started
    truth = [os.path.basename(os.path.dirname(p)) for p in emap.paths]
    ari = adjusted_rand_score(truth, emap.cluster)
    rss = peak_rss_mb()
    result.put((emap.record["rows"], emap.record["sampled"], emap.record["clusters"], seconds, rss, ari))


def peak_rss_mb() -> float:
    """This process's peak RSS in MiB: ``VmHWM`` (ru_maxrss survives exec, so a spawned child
    would report its parent's peak); ru_maxrss where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(uri: str, collection: str, sample: int, place: str) -> tuple:
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    p = ctx.Process(target=one_run, args=(uri, collection, sample, place, result))
    p.start()
    got = result.get()
    p.join()
    return got


def index_flowers(uri: str) -> float:
    from vitsearch.indexer import index_folder
    from vitsearch.search.encoder import Encoder

    started = time.perf_counter()
    with Store(uri, "flowers") as store:
        store.drop()
        index_folder(str(FLOWERS), encoder=Encoder.load(str(MODEL)), store=store, workers=0)
        store.close(release=True)  # the runs' processes serve the database in turn
    return time.perf_counter() - started


def row(name: str, run: str, got: tuple) -> str:
    rows, laid, clusters, seconds, rss, ari = got
    return f"| {name} | {run} | {rows:,} | {laid:,} | {clusters} | {seconds:.1f} | {rss:.0f} | {ari:.3f} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10000,100000", help="comma-separated collection sizes")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--centres", type=int, default=20, help="groups of the synthetic vectors")
    ap.add_argument("--noise", type=float, default=1.0, help="noise norm relative to a centre's (about 1)")
    ap.add_argument("--sample", type=int, default=20_000, help="images laid out by the sampled runs")
    ap.add_argument("--runs", default="full,knn,transform", help="read, full, knn, transform (comma-separated)")
    ap.add_argument("--no-flowers", action="store_true")
    args = ap.parse_args()
    runs = args.runs.split(",")
    print(f"D={args.dim}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores; Milvus Lite")
    print("| data | run | rows | laid out | clusters | s | peak RSS MB | ARI |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        uri = os.path.join(tmp, "milvus.db")
        if not args.no_flowers and FLOWERS.is_dir() and MODEL.is_dir():
            seconds = index_flowers(uri)
            print(f"| flowers-12 | (index) | 960 | | | {seconds:.1f} | | |", flush=True)
            print(row("flowers-12", "full", measure(uri, "flowers", 10**9, "knn")), flush=True)
            print(row("flowers-12", "sample 240 + knn", measure(uri, "flowers", 240, "knn")), flush=True)
        for n in (int(x) for x in args.rows.split(",")):
            with Store(uri, COLLECTION) as store:
                seconds = fill(store, n, args.dim, args.noise, args.centres)
                store.close(release=True)
            name = f"synthetic {n:,}"
            print(f"| {name} | (fill) | {n:,} | | | {seconds:.1f} | | |", flush=True)
            sample = args.sample if args.sample < n else n // 4  # a quarter where --sample is not below N
            for run in runs:
                if run == "read":
                    print(row(name, "read (floor)", measure(uri, COLLECTION, n, "read")), flush=True)
                elif run == "full":
                    print(row(name, "full", measure(uri, COLLECTION, n, "knn")), flush=True)
                else:
                    print(row(name, f"sample {sample:,} + {run}", measure(uri, COLLECTION, sample, run)), flush=True)


if __name__ == "__main__":
    main()
