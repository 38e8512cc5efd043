"""Whitening, query expansion and the close-match label, measured through the product.

``quality``: each set is indexed and measured by :func:`vitsearch.indexer.evaluate` (what
``vitsearch eval`` runs: the real indexer, the collection's own learned whitening, exact
rankings in the collection's space) with ``--whitening none`` (raw embeddings), the default
(whitened) and the default with ``--expand N`` for each N of ``--expand`` (default 2 and 3); one
table row per set and setting: mAP, P@10, and the close-match label on each query's top hit
(precision, recall) and on unrelated queries (the share answered "no close match"). The sets:

- ``holidays``: INRIA Holidays-dev (405 photos, 150 queries); unrelated: 200 catalogue photos;
- ``flowers``: flowers-12 (960 photos, 12 species, category-level); unrelated: 200 catalogue photos;
- ``catalogue``: ``--originals`` catalogue photos with the duplicates benchmark's 7 planted copies
  each (``benchmarks/duplicates.py``; relevant: the copies of the same original), queries the
  originals; unrelated: 200 Holidays photos;
- held-out halves, split before any setting was chosen and never looked at while choosing:
  ``holidays-even`` / ``holidays-odd`` (groups by the parity of their number, each half its own
  collection) and ``flowers-a`` / ``flowers-b`` (alternate species, 6 each);
- ``flowers-mixed`` (stretch): flowers-12 ranked in one collection that also holds Holidays-dev and
  the catalogue (~2,400 images), its whitening learned from all of it.

``relearn``: the cost of re-learning at scale: ``--sizes`` synthetic rows (the catalogue's real
embeddings perturbed by Gaussian noise, as ``benchmarks/search_latency.py`` makes them) are
upserted into a fresh collection at ``--uri`` (a server: ``--uri local`` for the one of
``vitsearch server start``), then ``update_space(relearn=True)`` is timed (one read of every
vector to learn, one read and one write of every row), rows/s and the new generation's count.

``latency``: search latency on the same vectors, p50/p99 of 200 single top-10 searches: Milvus
alone (``Store.search``, what a search was before whitening) against ``SearchClient.search_vector``
on the raw collection and on the whitened one (the transform, the stored vectors of the hits and
the label included), as ratios.

    python benchmarks/whitening.py quality [--sets holidays,flowers,...] [--expand 2,3] [--originals 100]
    python benchmarks/whitening.py relearn [--sizes 100000] [--uri local|URI]
    python benchmarks/whitening.py latency [--size 10000] [--uri URI]

Not a test: run by hand, report the tables (and ``uptime``: the CPU is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HOLIDAYS = SHARED / "data" / "holidays-dev"
FLOWERS = SHARED / "data" / "flowers-12"
CATALOG = SHARED / "data" / "catalog"
SETS = ("holidays", "flowers", "catalogue", "holidays-even", "holidays-odd", "flowers-a", "flowers-b", "flowers-mixed")


def link_all(files, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        (folder / Path(f).name).symlink_to(f)


def holidays_half(root: Path, parity: int) -> Path:
    """Holidays-dev groups whose number (``1000``-``1149``) has this parity, as a dataset."""
    truth = json.loads((HOLIDAYS / "groundtruth.json").read_text())
    keep = {q: rel for q, rel in truth.items() if int(q[:4]) % 2 == parity}
    out = root / f"holidays-{'even' if parity == 0 else 'odd'}"
    link_all([HOLIDAYS / "images" / f for q, rel in keep.items() for f in (q, *rel)], out / "images")
    (out / "groundtruth.json").write_text(json.dumps(keep))
    return out


def flowers_half(root: Path, half: int) -> Path:
    """Every other species of flowers-12 (``half`` 0: the 1st, 3rd, ...), as a class dataset."""
    species = sorted(p for p in FLOWERS.iterdir() if p.is_dir())[half::2]
    out = root / f"flowers-{'ab'[half]}"
    for s in species:
        link_all(sorted(s.iterdir()), out / s.name)
    return out


def catalogue_copies(root: Path, originals: int) -> Path:
    """The first ``originals`` catalogue photos and their planted copies, as a groundtruth
    dataset: each original's relevant set is its copies."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from duplicates import TRANSFORMS, plant

    out = root / "catalogue"
    (out / "images").mkdir(parents=True)
    truth = {}
    for p in sorted(CATALOG.glob("*.jpg"))[:originals]:
        shutil.copyfile(p, out / "images" / p.name)
        copies = []
        for kind in TRANSFORMS:
            name = f"{p.stem}-{kind}.jpg"
            plant(p, kind, out / "images" / name)
            copies.append(name)
        truth[p.name] = copies
    (out / "groundtruth.json").write_text(json.dumps(truth))
    return out


def unrelated(root: Path, source: str) -> Path:
    """200 photos that match nothing in the set: catalogue photos past the first 500 (never
    planted), or Holidays photos."""
    out = root / f"unrelated-{source}"
    files = (
        sorted(CATALOG.glob("*.jpg"))[500:700]
        if source == "catalogue"
        else sorted((HOLIDAYS / "images").glob("*.jpg"))[:200]
    )
    link_all(files, out)
    return out


def quality(args) -> None:
    from vitsearch.indexer import evaluate, index_folder
    from vitsearch.search.config import Settings
    from vitsearch.search.encoder import encoder_for
    from vitsearch.search.store import Store, writer_lease
    from vitsearch.search.store.space import update_space

    settings = Settings(model=args.model, runtime=args.runtime) if args.runtime else Settings(model=args.model)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = {"holidays": HOLIDAYS, "flowers": FLOWERS}
        for name in args.sets.split(","):
            if name.startswith("holidays-"):
                paths[name] = holidays_half(root, 0 if name.endswith("even") else 1)
            elif name in ("flowers-a", "flowers-b"):
                paths[name] = flowers_half(root, 0 if name.endswith("a") else 1)
            elif name == "catalogue":
                paths[name] = catalogue_copies(root, args.originals)
        others = {"catalogue": unrelated(root, "holidays"), "default": unrelated(root, "catalogue")}
        for name in args.sets.split(","):
            noise = others["catalogue" if name == "catalogue" else "default"]
            configs = [
                ("raw", "none", 0),
                ("whitened", None, 0),
                *((f"whitened + expand {n}", None, n) for n in args.expand),
            ]
            for label, whitening, expand in configs:
                started = time.perf_counter()
                if name == "flowers-mixed":
                    uri = str(root / "mixed.db")
                    with Store(uri, "mixed") as store:  # Holidays and the catalogue first, then learned from all
                        if not store.exists():
                            encoder = encoder_for(None, settings, store.where)
                            for folder in (HOLIDAYS / "images", CATALOG, FLOWERS):
                                index_folder(str(folder), encoder=encoder, store=store, workers=settings.workers)
                        with writer_lease(store):
                            update_space(store, learn=whitening or "auto", relearn=whitening is None)
                    report = evaluate(FLOWERS, settings, (10,), uri=uri, collection="mixed", expand=expand)
                    # (no unrelated queries: the mixed collection holds the catalogue itself)
                else:
                    report = evaluate(paths[name], settings, (10,), whitening=whitening, expand=expand, unrelated=noise)
                r = report.result
                rows.append(
                    (
                        name,
                        label,
                        report.images,
                        r.map,
                        r.p_at_10,
                        r.match_precision,
                        r.match_recall,
                        r.unrelated_rejected,
                        time.perf_counter() - started,
                    )
                )
                print(f"  {name} {label}: mAP {r.map:.4f}, P@10 {r.p_at_10:.4f}", file=sys.stderr, flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"commit {commit}; model {Path(args.model).name}, runtime {args.runtime or 'default'}; "
        f"match figures on each query's top hit; unrelated: 200 photos of another set"
    )
    print("\n| set | images | setting | mAP | P@10 | match precision | match recall | unrelated rejected | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, label, images, m, p, mp, mr, rej, s in rows:
        print(
            f"| {name} | {images} | {label} | {m:.4f} | {p:.4f} | {mp:.3f} | {mr:.3f} | "
            f"{'-' if rej is None else f'{rej:.3f}'} | {s:.0f} |"
        )


def catalogue_embeddings(model: str, cache: Path) -> np.ndarray:
    """The catalogue's raw embeddings with ``model``, cached."""
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.images import is_image_file

    path = cache / f"vitsearch-catalogue-{Path(model).name}.npy"
    if path.exists():
        return np.load(path)
    files = sorted(str(p) for p in CATALOG.iterdir() if is_image_file(p))
    vectors = Encoder.load(model).embed(files)
    np.save(path, vectors)
    return vectors


def synthetic(base: np.ndarray, n: int, sigma: float = 0.02, seed: int = 0) -> np.ndarray:
    """``n`` unit vectors: ``base`` rows perturbed by Gaussian noise and normalised."""
    rng = np.random.default_rng(seed)
    out = base[rng.integers(0, len(base), n)] + rng.normal(0, sigma, (n, base.shape[1])).astype(np.float32)
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def fill(store, info, vectors: np.ndarray, chunk: int = 20_000) -> None:
    """Upsert ``vectors`` as rows ``/synthetic/NNNNNNNN.jpg`` (raw embeddings, the collection new)."""
    store.ensure(info)
    for start in range(0, len(vectors), chunk):
        store.upsert(
            [
                {
                    "path": f"/synthetic/{start + i:08d}.jpg",
                    "vector": v,
                    "folder": "/synthetic",
                    "size": 1,
                    "mtime": 0.0,
                    "ctime_ns": 0,
                    "inode": start + i,
                    "width": 1,
                    "height": 1,
                    "sha256": f"{start + i:064x}",
                    "indexed_at": 0.0,
                    "taken_at": 0.0,
                    "date_source": "mtime",
                    "camera": "",
                }
                for i, v in enumerate(vectors[start : start + chunk])
            ]
        )


def resolve_uri(uri: str) -> tuple[str, str | None]:
    from vitsearch.search.config import Settings

    if uri == "local":
        s = Settings()
        uri = s.resolved_uri()
        return uri, s.token_for(uri)
    return uri, None


def info_of(model: str, dim: int):
    from vitsearch.search.encoder_info import EncoderInfo

    return EncoderInfo(
        model=f"synthetic from {Path(model).name}",
        weights_sha256="0" * 64,
        dim=dim,
        pooling="cls",
        image_size=(224, 224),
        runtime="onnx-int8",
    )


def relearn(args) -> None:
    from vitsearch.search.store import Store, writer_lease
    from vitsearch.search.store.space import update_space

    base = catalogue_embeddings(args.model, Path(tempfile.gettempdir()))
    uri, token = resolve_uri(args.uri)
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; {uri}")
    print("| rows | fill s | learn whitening s (first) | re-learn s | rows/s | count after |")
    print("|---|---|---|---|---|---|")
    for n in (int(s) for s in args.sizes.split(",")):
        name = f"relearn_{n}"
        with Store(uri, name, token) as store:
            store.drop()
            started = time.perf_counter()
            fill(store, info_of(args.model, base.shape[1]), synthetic(base, n))
            store.flush()
            filled = time.perf_counter() - started
            with writer_lease(store):
                started = time.perf_counter()
                update_space(store)
                first = time.perf_counter() - started
                started = time.perf_counter()
                update_space(store, relearn=True)
                again = time.perf_counter() - started
            count = store.count()
            print(f"| {n:,} | {filled:.0f} | {first:.1f} | {again:.1f} | {n / again:,.0f} | {count:,} |", flush=True)
            if not args.keep:
                store.drop()


def latency(args) -> None:
    from vitsearch.search.client import SearchClient
    from vitsearch.search.store import META_FIELDS, Store, writer_lease
    from vitsearch.search.store.space import update_space

    base = catalogue_embeddings(args.model, Path(tempfile.gettempdir()))
    uri, token = resolve_uri(args.uri) if args.uri else (None, None)
    with contextlib.ExitStack() as stack:
        if uri is None:
            uri = str(Path(stack.enter_context(tempfile.TemporaryDirectory())) / "latency.db")
        vectors = synthetic(base, args.size)
        queries = synthetic(base, args.queries, seed=1)
        results = {}
        for name, learn in (("raw_latency", "none"), ("white_latency", "auto")):
            with Store(uri, name, token) as store:
                store.drop()
                fill(store, info_of(args.model, base.shape[1]), vectors)
                with writer_lease(store):
                    update_space(store, learn=learn)
                store.flush()
            client = stack.enter_context(SearchClient(uri=uri, collection=name, token=token))
            space = client.space
            kind = name.split("_")[0]
            runs = {
                f"Milvus alone ({kind})": lambda q, c=client, s=space: c.store.search(
                    s.to_search(q[None, :]), 10, fields=META_FIELDS
                ),
                f"SearchClient.search_vector ({kind})": lambda q, c=client: c.search_vector(q, k=10),
            }
            times: dict[str, list[float]] = {what: [] for what in runs}
            for q in queries[:20]:
                for run in runs.values():
                    run(q)  # warm up
            for q in queries:  # the two alternate query by query, so that a change of load hits both
                for what, run in runs.items():
                    t = time.perf_counter()
                    run(q)
                    times[what].append(1000 * (time.perf_counter() - t))
            for what, ms in times.items():
                results[what] = (np.percentile(ms, 50), np.percentile(ms, 99))
    base_p50 = results["Milvus alone (raw)"][0]
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"{uri}; {args.size:,} rows, {args.queries} top-10 searches"
    )
    print("| search | p50 ms | p99 ms | p50 / Milvus alone (raw) |")
    print("|---|---|---|---|")
    for what, (p50, p99) in results.items():
        print(f"| {what} | {p50:.2f} | {p99:.2f} | {p50 / base_p50:.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--sets", default=",".join(SETS))
    q.add_argument(
        "--expand",
        type=lambda v: [int(n) for n in v.split(",")],
        default=[2, 3],
        help="query expansion's neighbours, one setting per value (default 2,3)",
    )
    q.add_argument("--originals", type=int, default=100)
    q.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    q.add_argument("--runtime", default=None, help="default: the CPU default (onnx-int8)")
    r = sub.add_parser("relearn")
    r.add_argument("--sizes", default="100000")
    r.add_argument("--uri", default="local", help="a Milvus server URI, or local (vitsearch server start)")
    r.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    r.add_argument("--keep", action="store_true")
    lat = sub.add_parser("latency")
    lat.add_argument("--size", type=int, default=10_000)
    lat.add_argument("--queries", type=int, default=200)
    lat.add_argument(
        "--uri",
        default=None,
        help="default: a temporary Milvus Lite database; local: the server of vitsearch server start",
    )
    lat.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    args = parser.parse_args()
    from vitsearch.search.application import configure

    configure()
    {"quality": quality, "relearn": relearn, "latency": latency}[args.mode](args)


if __name__ == "__main__":
    main()
