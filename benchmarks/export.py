"""Export throughput and memory: `vitsearch export` (Parquet and npy + CSV) against a bare read of
the same rows, on Milvus Lite and on a Milvus server.

For each backend a fresh collection gets N rows of vitsearch's schema (random unit vectors of D
dimensions, metadata of the indexer's shape), written through ``Store.upsert``. Then each of
these runs in a process of its own (spawned, so its peak RSS is its own, ``ru_maxrss``):

- ``open``: the store opened, nothing read (the floor of the RSS column);
- ``read``: ``Store.read_batches`` of every field, vector included, the rows dropped (the baseline:
  what Milvus and pymilvus cost before anything is written);
- ``parquet`` and ``npy``: :func:`vitsearch.search.export.export_collection` to a temporary folder.

Rows/s is N over the run's wall time; the ratio is against ``read`` of the same backend.

    python benchmarks/export.py [--rows 200000] [--dim 384] [--server URI|local] [--no-lite]

A server: ``vitsearch server start`` and ``--server local``, or docker-compose.yml. Not a test:
run by hand, report the table (docs/benchmarks/export.md).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import resource
import tempfile
import time

import numpy as np

from vitsearch.search.config import Settings
from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.hit import META_FIELDS
from vitsearch.search.store import Store

COLLECTION = "export_bench"
FOLDERS = 100


def fill(store: Store, n: int, dim: int, chunk: int = 5000) -> float:
    store.drop()
    store.ensure(EncoderInfo("bench", "0" * 64, dim, "cls", (224, 224), "torch"))
    rng = np.random.default_rng(0)
    started = time.perf_counter()
    for start in range(0, n, chunk):
        vectors = rng.standard_normal((min(chunk, n - start), dim)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.upsert(
            [
                {
                    "path": f"/photos/{i % FOLDERS}/IMG_{i:08d}.jpg",
                    "vector": v,
                    "folder": f"/photos/{i % FOLDERS}",
                    "size": 2_000_000 + i,
                    "mtime": 1.7e9 + i,
                    "ctime_ns": 1_700_000_000_000_000_000 + i,
                    "inode": i,
                    "width": 4032,
                    "height": 3024,
                    "sha256": f"{i:064x}",
                    "indexed_at": 1.7e9,
                    "taken_at": 1.7e9,
                    "date_source": "mtime",
                    "camera": "",
                }
                for i, v in zip(range(start, start + len(vectors)), vectors)
            ]
        )
    store.flush()
    return time.perf_counter() - started


def one_run(uri: str, what: str, out: str, result) -> None:
    """In a child process: open the store, do ``what``, put ``(rows, seconds, peak RSS MB)``."""
    from vitsearch.search.export import ExportFormat, ExportSpace, export_collection
    from vitsearch.search.searcher import Searcher

    with Store.from_settings(Settings(retry_s=600), uri, COLLECTION) as store:
        started, rows = time.perf_counter(), 0
        if what == "read":
            for batch in store.read_batches([*META_FIELDS, "vector"]):
                rows += len(batch)
        elif what in ("parquet", "npy"):
            space = Searcher(store).space  # as a client reads it (raw here: nothing was whitened)
            rows = export_collection(
                store, space, os.path.join(out, f"x.{what}"), fmt=ExportFormat(what), vectors=ExportSpace.raw
            ).rows
        seconds = time.perf_counter() - started
    result.put((rows, seconds, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def measure(uri: str, what: str) -> tuple[int, float, float]:
    ctx = mp.get_context("spawn")
    result = ctx.Queue()
    with tempfile.TemporaryDirectory() as out:
        p = ctx.Process(target=one_run, args=(uri, what, out, result))
        p.start()
        got = result.get()
        p.join()
    return got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--server", help="Milvus server URI, or 'local' (the server of `vitsearch server start`)")
    ap.add_argument("--no-lite", action="store_true", help="measure the server only")
    args = ap.parse_args()
    settings = Settings(retry_s=600)
    server = settings.resolved_uri() if args.server == "local" else args.server
    with tempfile.TemporaryDirectory() as tmp:
        backends = ([] if args.no_lite else [("Milvus Lite", os.path.join(tmp, "milvus.db"))]) + (
            [("Milvus server", server)] if server else []
        )
        print(f"{args.rows:,} rows, D={args.dim}; {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
        print("| backend | run | rows | s | rows/s | / read | peak RSS MB |")
        print("|---|---|---|---|---|---|---|")
        for name, uri in backends:
            with Store.from_settings(settings, uri, COLLECTION) as store:
                fill_s = fill(store, args.rows, args.dim)
                if store.is_lite:
                    store.close(release=True)
            print(f"| {name} | (fill) | {args.rows:,} | {fill_s:.1f} | {args.rows / fill_s:,.0f} | | |")
            base = None
            for what in ("open", "read", "parquet", "npy"):
                rows, seconds, rss = measure(uri, what)
                rate = rows / seconds if rows else 0
                base = rate if what == "read" else base
                ratio = f"{rate / base:.2f}" if base and what != "read" and rows else ""
                shown = f"{rows:,}" if rows else "-"
                print(f"| {name} | {what} | {shown} | {seconds:.1f} | {rate:,.0f} | {ratio} | {rss:.0f} |", flush=True)
            if not store.is_lite:
                with Store.from_settings(settings, uri, COLLECTION) as s:
                    s.drop()


if __name__ == "__main__":
    main()
