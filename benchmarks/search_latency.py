"""Search latency and index quality at scale: Milvus Lite against a Milvus server.

Vectors are real: the encoder's embeddings of the catalogue photos, and copies of them perturbed
by Gaussian noise (sigma per dimension, then L2-normalised) up to each size; the queries are
other perturbed copies. For each backend and size the vectors go into a fresh collection with
vitsearch's schema and index (HNSW M 16, efConstruction 200, COSINE) through ``Store``; then
top-10 searches from one client, one at a time: latency p50/p99 in ms and QPS, without and
with a filter (``folder == ...``, 1% of the rows), and recall@10 of the index against exact
numpy search over the same vectors.

    python benchmarks/search_latency.py [--sizes 10000,100000] [--server URI] [--no-lite]
        [--queries 200] [--sigma 0.02] [--model M] [--folder FOLDER] [--lite-settings]

``--lite-settings`` measures Milvus Lite once per setting on the same data, to find where its
time goes: as written (upserts, flush, searched on the same connection), with each search
consistency level (Session, the default; Bounded; Eventually; Strong), and reopened (the database
released and opened again, as a new ``vitsearch search`` process finds it: Lite loads the
collection and builds its index on the sealed segments then).

``--lite-index-types`` creates bare collections (an INT64 key and the vector, through pymilvus
directly, since vitsearch's schema always asks for HNSW) with HNSW (M 16, efConstruction 200, ef
64), IVF_FLAT (nlist 1024, nprobe 16 and 1) and FLAT, and times the search right after the writes
and after release + load (when Lite builds the index), with recall@10 against exact search.

The embeddings of FOLDER are cached in ``--cache`` (default: the system temp folder). A Milvus
server must be reachable at ``--server`` (``vitsearch server start`` and ``--server local``,
``milvus-server`` of the ``milvus`` package, or docker-compose.yml). Not a test: run by hand, report the table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from vitsearch.search.config import Settings
from vitsearch.search.encoder import Encoder, EncoderInfo
from vitsearch.search.images import is_image_file
from vitsearch.search.store import Store
from vitsearch.search.store.profile import profile_for

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
FOLDERS = 100  # rows are spread over this many folders: a folder filter keeps 1%


def base_embeddings(folder: str, model: str, cache: Path) -> tuple[np.ndarray, EncoderInfo]:
    files = sorted(str(p) for p in Path(folder).rglob("*") if is_image_file(p))
    key = hashlib.sha256("\n".join([model, *files]).encode()).hexdigest()[:16]
    path = cache / f"vitsearch-embeddings-{key}.npz"
    if path.exists():
        saved = np.load(path)
        return saved["vectors"], EncoderInfo.from_json(str(saved["info"]))
    encoder = Encoder.load(model)
    vectors = encoder.embed(files)
    np.savez(path, vectors=vectors, info=encoder.info.to_json())
    return vectors, encoder.info


def perturbed(base: np.ndarray, n: int, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = base[rng.integers(0, len(base), n)] + rng.normal(0, sigma, (n, base.shape[1])).astype(np.float32)
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def fill(store: Store, info: EncoderInfo, vectors: np.ndarray, chunk: int = 5000) -> float:
    store.drop()
    store.ensure(info)
    started = time.perf_counter()
    for start in range(0, len(vectors), chunk):
        store.upsert(
            [
                {
                    "path": f"/f/{i % FOLDERS}/{i}.jpg",
                    "vector": vectors[i],
                    "folder": f"/f/{i % FOLDERS}",
                    "size": 0,
                    "mtime": 0.0,
                    "ctime_ns": 0,
                    "inode": i,
                    "width": 1,
                    "height": 1,
                    "sha256": "",
                    "indexed_at": 0.0,
                    "taken_at": 0.0,
                    "date_source": "mtime",
                    "camera": "",
                }
                for i in range(start, min(start + chunk, len(vectors)))
            ]
        )
    store.flush()
    return time.perf_counter() - started


def measure(store: Store, queries: np.ndarray, filter: str | None) -> tuple[list[float], list[list[str]]]:
    times, results = [], []
    for q in queries:
        started = time.perf_counter()
        hits = store.search(q[None, :], k=10, filter=filter, fields=("path",))[0]
        times.append(time.perf_counter() - started)
        results.append([h.path for h in hits])
    return times, results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", default=str(SHARED / "data" / "catalog"))
    ap.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    ap.add_argument("--sizes", default="10000,100000")
    ap.add_argument(
        "--server",
        default=None,
        help="Milvus server URI, e.g. http://127.0.0.1:19530, or 'local': the "
        "server that `vitsearch server start` runs (its credentials are used; else VITSEARCH_TOKEN)",
    )
    ap.add_argument("--no-lite", action="store_true", help="measure the server only")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--sigma", type=float, default=0.02, help="noise per dimension of the copies")
    ap.add_argument("--cache", default=tempfile.gettempdir())
    ap.add_argument("--lite-settings", action="store_true", help="one Lite row per setting (see above)")
    ap.add_argument("--lite-index-types", action="store_true", help="Lite with each index type (see above)")
    args = ap.parse_args()

    base, info = base_embeddings(args.folder, args.model, Path(args.cache))
    queries = perturbed(base, args.queries, args.sigma, seed=1)
    if args.lite_index_types:
        for n in (int(s) for s in args.sizes.split(",")):
            lite_index_types(perturbed(base, n, args.sigma, seed=0), queries)
        return
    settings = Settings(retry_s=600)
    server = settings.resolved_uri() if args.server == "local" else args.server
    backends = ([] if args.no_lite else ["lite"]) + ([server] if server else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in (int(s) for s in args.sizes.split(",")):
            vectors = perturbed(base, n, args.sigma, seed=0)
            exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]

            def recall_of(found, exact=exact):
                return np.mean(
                    [len({f"/f/{i % FOLDERS}/{i}.jpg" for i in e} & set(f)) / 10 for e, f in zip(exact, found)]
                )

            for backend in backends:
                uri = str(Path(tmp) / f"lite-{n}.db") if backend == "lite" else backend
                variants = backend == "lite" and args.lite_settings
                store = Store.from_settings(settings, uri, "bench")
                load_s = fill(store, info, vectors)
                for level in ["Session", "Bounded", "Eventually", "Strong"] if variants else ["Session"]:
                    # the same collection searched at another consistency level: a store of its own
                    at_level = Store(
                        uri, "bench", retry_s=600, profile=replace(profile_for(uri), search_consistency=level)
                    )
                    measure(at_level, queries[:5], None)  # warm-up
                    plain, found = measure(at_level, queries, None)
                    filtered, _ = measure(at_level, queries, 'folder == "/f/7"')
                    at_level.close()
                    name = "Milvus Lite" if backend == "lite" else "Milvus server"
                    rows.append(
                        (
                            name + (f", as written, {level}" if variants else ""),
                            n,
                            load_s,
                            plain,
                            filtered,
                            recall_of(found),
                        )
                    )
                    print_row(*rows[-1])
                if variants:  # a new process opens the database: Lite loads it, building the index
                    store.close(release=True)
                    started = time.perf_counter()
                    store = Store(uri, "bench", retry_s=600)
                    reopen_s = time.perf_counter() - started
                    measure(store, queries[:5], None)
                    plain, found = measure(store, queries, None)
                    filtered, _ = measure(store, queries, 'folder == "/f/7"')
                    rows.append(
                        (
                            f"Milvus Lite, reopened ({reopen_s:.0f} s), Session",
                            n,
                            load_s,
                            plain,
                            filtered,
                            recall_of(found),
                        )
                    )
                    print_row(*rows[-1])
                store.drop()
                store.close(release=backend == "lite")
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {len(base)} base embeddings "
        f"({info.dim}-d, {Path(args.model).name}) from {args.folder}, sigma {args.sigma}; {args.queries} "
        f"queries, top-10, one client; HNSW M 16, efConstruction 200, ef 64"
    )
    print(
        f"\n{'backend':44} {'vectors':>9} {'load s':>7} {'p50 ms':>7} {'p99 ms':>7} {'QPS':>7} "
        f"{'filt p50':>8} {'filt p99':>8} {'recall@10':>9}"
    )
    for row in rows:
        print_row(*row)


def lite_index_types(vectors: np.ndarray, queries: np.ndarray, chunk: int = 5000) -> None:
    """One bare Lite collection per index type: search p50 after the writes and after reload."""
    from pymilvus import DataType, MilvusClient

    exact = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    kinds = [
        ("HNSW", {"M": 16, "efConstruction": 200}, [{"ef": 64}]),
        ("IVF_FLAT", {"nlist": 1024}, [{"nprobe": 16}, {"nprobe": 1}]),
        ("FLAT", {}, [{}]),
    ]
    print(f"\n{len(vectors):,} vectors, {len(queries)} queries, top-10, Milvus Lite, bare collections")
    print(
        "| index | search params | write + flush s | p50 ms after the writes | reload s | p50 ms after reload "
        "| p99 ms | recall@10 |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        client = MilvusClient(str(Path(tmp) / "kinds.db"))

        def timed(name: str, params: dict) -> tuple[list[float], list[list[int]]]:
            times, found = [], []
            for q in queries:
                started = time.perf_counter()
                hits = client.search(
                    name, [q.tolist()], limit=10, search_params={"metric_type": "COSINE", "params": params}
                )[0]
                times.append(time.perf_counter() - started)
                found.append([h["id"] for h in hits])
            return times, found

        for kind, build, searches in kinds:
            name = f"bench_{kind.lower()}"
            schema = MilvusClient.create_schema(auto_id=False)
            schema.add_field("id", DataType.INT64, is_primary=True)
            schema.add_field("vector", DataType.FLOAT_VECTOR, dim=vectors.shape[1])
            index = client.prepare_index_params()
            index.add_index(field_name="vector", index_type=kind, metric_type="COSINE", params=build)
            client.create_collection(name, schema=schema, index_params=index)
            started = time.perf_counter()
            for start in range(0, len(vectors), chunk):
                client.insert(
                    name,
                    [{"id": i, "vector": vectors[i].tolist()} for i in range(start, min(start + chunk, len(vectors)))],
                )
            client.flush(name)
            write_s = time.perf_counter() - started
            before = np.median(timed(name, searches[0])[0][5:]) * 1000
            client.release_collection(name)
            started = time.perf_counter()
            client.load_collection(name)
            reload_s = time.perf_counter() - started
            for params in searches:
                timed(name, params)  # warm-up
                times, found = timed(name, params)
                recall = np.mean([len(set(e) & set(f)) / 10 for e, f in zip(exact, found)])
                ms = np.asarray(times) * 1000
                print(
                    f"| {kind} | {params or '-'} | {write_s:.1f} | {before:.1f} | {reload_s:.1f} | "
                    f"{np.percentile(ms, 50):.1f} | {np.percentile(ms, 99):.1f} | {recall:.3f} |",
                    flush=True,
                )
            client.drop_collection(name)
        client.close()


def print_row(backend, n, load_s, plain, filtered, recall) -> None:
    ms = lambda t, q: float(np.percentile(np.asarray(t) * 1000, q))  # noqa: E731
    print(
        f"{backend:44} {n:9,d} {load_s:7.1f} {ms(plain, 50):7.1f} {ms(plain, 99):7.1f} "
        f"{len(plain) / sum(plain):7.0f} {ms(filtered, 50):8.1f} {ms(filtered, 99):8.1f} {recall:9.3f}"
    )


if __name__ == "__main__":
    main()
