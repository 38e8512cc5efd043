"""Load test of the HTTP API (``vitsearch serve``): concurrent httpx clients on 127.0.0.1.

Indexes ``--photos`` catalogue photos with the real model into a Lite database (cached between
runs), starts ``vitsearch serve`` on a free loopback port (or drives ``--url``), then for image
search (``POST /search``, an upload of a photo that is not indexed) and stored-vector search
(``POST /search/similar``) runs 1, 4, 16 and 64 clients, each sending its next request as soon as
the last one is answered, for ``--duration`` seconds per level: QPS (answered 200 per second),
latency p50/p99 in ms, errors (an answer other than 200) and dropped requests (no answer: a
refused or reset connection, a timeout of ``--timeout`` s).

Baseline, measured in the same run while the server idles, before and again after the
image-search levels (the machine's load moves): the encoder's own batched throughput,
``Encoder.embed`` on the query photos' bytes (decode, preprocess, forward pass) in batches of 16,
images/s; the image-search QPS at 16 clients is given as a ratio of their mean. The batching effect: the
16-client image-search level again on a server started with ``VITSEARCH_API_MAX_BATCH=1`` (one
image per forward pass), with the mean batch each server ran (from ``/stats``).

Each level also gives the queries per Milvus search the server ran (``/stats``: its searches of
concurrent requests are batched), and the CPU time per answered request of the server process
and of this load generator (httpx; both read from ``/proc``, so they hold also while other jobs
load the machine, where QPS and latency do not); the encoder baseline gives its CPU ms per image.

The clients of a level are spread over ``--procs`` processes (default 4; one event loop each,
at most one process per client; 1: all in this process's loop). One loop at several CPU ms a request is itself busy at a
hundred-odd answers/s, and the time a reply waits for it is in the latencies it measures;
several processes measure more of the server and less of the client (the same CPU in all).

    python benchmarks/api_load.py [--duration 60] [--levels 1,4,16,64] [--photos 300]
        [--model ../shared/models/dinov2-small-9l] [--workers 1] [--url http://127.0.0.1:8000]
        [--modes image,similar] [--no-compare] [--server URI|local] [--procs 4]

Not a test: run by hand, report the table and the machine load it prints.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
BATCH = 16  # the encoder baseline's batch size, and the client count the goal is stated at


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.1f}/{five:.1f}"


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process on this machine has used, in seconds (NaN when it cannot
    be read: a server elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build_collection(
    catalog: Path, n: int, model: str, cache: Path, server: str | None
) -> tuple[str, str, list[Path], list[Path]]:
    """A collection of the first ``n`` catalogue photos (links in a folder of their own): a Lite
    database, or the collection ``api_load`` on ``server``; its URI and name, the indexed paths,
    and 64 other photos to query with."""
    from vitsearch.indexer import index_folder
    from vitsearch.search.config import Settings
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    photos = sorted(catalog.glob("*.jpg"))
    indexed, queries = photos[:n], photos[n : n + 64]
    key = hashlib.sha256("\n".join([model, *map(str, indexed)]).encode()).hexdigest()[:12]
    root = cache / f"vitsearch-api-load-{key}"
    folder = root / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for p in indexed:
        link = folder / p.name
        if not link.is_symlink():
            link.symlink_to(p)
    uri, collection = (server, "api_load") if server else (str(root / "milvus.db"), "images")
    with Store.from_settings(Settings(), uri, collection) as store:
        if not store.exists() or store.count() != n:
            started = time.perf_counter()
            store.drop()  # rows of another photo set (a server collection outlives the cache key)
            index_folder(str(folder), encoder=Encoder.load(model), store=store, workers=1)
            print(f"indexed {n} photos in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        store.close(release=True)  # the server process serves the database
    return uri, collection, [folder / p.name for p in indexed], queries


def encoder_baseline(encoder, queries: list[bytes], seconds: float = 15.0) -> float:
    """Images/s of ``Encoder.embed`` (decode + preprocess + forward) in batches of :data:`BATCH`;
    prints its CPU ms per image."""
    encoder.embed(queries[:BATCH], batch_size=BATCH)  # warm-up
    done, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        encoder.embed(queries[done % len(queries) :][:BATCH] or queries[:BATCH], batch_size=BATCH)
        done += BATCH
    rate = done / (time.perf_counter() - started)
    print(
        f"encoder alone: {rate:.1f} images/s, {1000 * (time.process_time() - cpu) / done:.1f} CPU ms/image "
        f"(Encoder.embed, batches of {BATCH}, decode included), load {load()}"
    )
    return rate


class Server:
    """``vitsearch serve`` in a subprocess on a free loopback port."""

    def __init__(self, uri: str, collection: str, workers: int, env: dict[str, str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from vitsearch.cli import main; main()",
                "serve",
                "--uri",
                uri,
                "--collection",
                collection,
                "--port",
                str(self.port),
                "--workers",
                str(workers),
            ],
            env={**os.environ, **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vitsearch serve did not get ready: {Path(log).read_text()}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


async def _drive(
    url: str,
    mode: str,
    offsets: list[int],
    step: int,
    start_at: float,
    seconds: float,
    queries: list[bytes],
    paths: list[str],
    timeout: float,
) -> tuple:
    """One process's share of a level: a client per offset, from ``start_at`` (``time.time()``) for
    ``seconds``; (latencies s, errors by code, dropped by exception, elapsed s, own CPU s)."""
    latencies: list[float] = []
    errors: dict[int, int] = {}
    dropped: dict[str, int] = {}  # no answer, by httpx exception
    await asyncio.sleep(max(0.0, start_at - time.time()))
    deadline = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient, offset: int) -> None:
        i = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            try:
                if mode == "image":
                    r = await http.post(
                        "/search",
                        params={"k": 10},
                        files={"image": ("query.jpg", queries[i % len(queries)], "image/jpeg")},
                    )
                else:
                    r = await http.post("/search/similar", json={"path": paths[i % len(paths)], "k": 10})
            except httpx.TransportError as exc:
                dropped[type(exc).__name__] = dropped.get(type(exc).__name__, 0) + 1
                continue
            if r.status_code == 200:
                latencies.append(time.perf_counter() - started)
            else:
                errors[r.status_code] = errors.get(r.status_code, 0) + 1
            i += step

    limits = httpx.Limits(max_connections=len(offsets), max_keepalive_connections=len(offsets))
    cpu, started = time.process_time(), time.perf_counter()
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(client(http, k) for k in offsets))
    return latencies, errors, dropped, time.perf_counter() - started, time.process_time() - cpu


def drive(*args) -> tuple:
    """:func:`_drive` in its own event loop (the entry point of a load-generator process)."""
    return asyncio.run(_drive(*args))


def run_level(
    url: str,
    mode: str,
    clients: int,
    seconds: float,
    queries: list[bytes],
    paths: list[str],
    timeout: float,
    procs: int = 1,
) -> dict:
    """One level: ``clients`` clients spread over ``procs`` load-generator processes (this one
    where ``procs`` is 1), each client sending its next request when its last is answered."""
    procs = max(1, min(procs, clients))
    before = httpx.get(f"{url}/stats", timeout=30).json()["api"]
    load_before = load()
    server_cpu = cpu_seconds(before["pid"])
    start_at = time.time() + (3.0 if procs > 1 else 0.0)  # the processes start together, after spawning
    shares = [
        (url, mode, list(range(p, clients, procs)), clients, start_at, seconds, queries, paths, timeout)
        for p in range(procs)
    ]
    if procs == 1:
        parts = [drive(*shares[0])]
    else:
        with multiprocessing.get_context("spawn").Pool(procs) as pool:
            parts = pool.starmap(drive, shares)
    server_cpu = cpu_seconds(before["pid"]) - server_cpu
    after = httpx.get(f"{url}/stats", timeout=30).json()["api"]
    latencies = [x for part in parts for x in part[0]]
    errors = sum((Counter(part[1]) for part in parts), Counter())
    dropped = sum((Counter(part[2]) for part in parts), Counter())
    elapsed, own_cpu = max(part[3] for part in parts), sum(part[4] for part in parts)
    passes = after["forward_passes"] - before["forward_passes"]
    images = after["images_embedded"] - before["images_embedded"]
    searches = after.get("milvus_searches", 0) - before.get("milvus_searches", 0)
    searched = after.get("queries_searched", 0) - before.get("queries_searched", 0)
    ms = np.asarray(latencies) * 1000 if latencies else np.asarray([np.nan])
    answered = max(len(latencies), 1)
    return {
        "mode": mode,
        "clients": clients,
        "procs": procs,
        "requests": len(latencies),
        "qps": len(latencies) / elapsed,
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "errors": sum(errors.values()),
        "codes": errors,
        "dropped": sum(dropped.values()),
        "why": dropped,
        "batch": images / passes if passes else float("nan"),
        "per_search": searched / searches if searches else float("nan"),
        "server_ms": 1000 * server_cpu / answered,
        "client_ms": 1000 * own_cpu / answered,
        "load": f"{load_before} -> {load()}",
    }


def row(r: dict, label: str = "") -> str:
    codes = " " + ",".join(f"{c}x{n}" for c, n in r["codes"].items()) if r["codes"] else ""
    batch, per_search = ("-" if np.isnan(r[key]) else f"{r[key]:.1f}" for key in ("batch", "per_search"))
    why = " " + ",".join(f"{k}x{n}" for k, n in r["why"].items()) if r["why"] else ""
    return (
        f"| {r['mode']}{label} | {r['clients']} | {r['requests']} | {r['qps']:.1f} | {r['p50']:.0f} | "
        f"{r['p99']:.0f} | {r['errors']}{codes} | {r['dropped']}{why} | {batch} | {per_search} | "
        f"{r['server_ms']:.1f} | {r['client_ms']:.1f} | {r['load']} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per level (default 60)")
    parser.add_argument("--levels", default="1,4,16,64")
    parser.add_argument("--modes", default="image,similar", help="image and/or similar")
    parser.add_argument("--photos", type=int, default=300)
    parser.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    parser.add_argument("--catalog", default=str(SHARED / "data" / "catalog"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--server",
        help="index into and serve from the collection api_load of this Milvus server "
        "(a URI, or 'local': the one `vitsearch server start` runs) instead of a Lite database",
    )
    parser.add_argument("--url", help="drive this running server instead (its collection must hold the photos)")
    parser.add_argument(
        "--procs",
        type=int,
        default=4,
        help="load-generator processes the clients of a level are "
        "spread over (default 4, at most one per client; 1: one event loop drives them all, and "
        "its own queueing, at a few CPU ms a request, is in the latencies it measures)",
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a request counts as dropped")
    parser.add_argument("--cache", default=tempfile.gettempdir())
    parser.add_argument("--no-compare", action="store_true", help="skip the batching-off leg")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    levels = [int(c) for c in args.levels.split(",")]

    from vitsearch.search.config import Settings

    milvus = Settings().resolved_uri() if args.server == "local" else args.server
    uri, collection, indexed, query_files = build_collection(
        Path(args.catalog), args.photos, args.model, Path(args.cache), milvus
    )
    queries = [p.read_bytes() for p in query_files]
    paths = [str(p) for p in indexed]
    print(
        f"# {platform.node()}: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
        f"load {load()} at start; model {args.model}; {args.photos} photos indexed in {uri} ({collection}); "
        f"{args.duration:g} s per level; {args.workers} worker(s); clients spread over {args.procs} load-generator "
        f"process(es)"
    )
    from vitsearch.search.encoder import Encoder

    modes = args.modes.split(",")
    encoder = Encoder.load(args.model) if "image" in modes else None
    baselines = [encoder_baseline(encoder, queries)] if encoder else []

    header = (
        "| search | clients | answered | QPS | p50 ms | p99 ms | errors | dropped | mean batch | queries per "
        "Milvus search | server CPU ms/answer | load generator CPU ms/answer | load 1m/5m |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
    )
    results, server = [], None
    try:
        if args.url:
            url = args.url
        else:
            server = Server(uri, collection, args.workers, {}, Path(args.cache) / "api-load-serve.log")
            url = server.url
        for mode in modes:
            for clients in levels:
                results.append(run_level(url, mode, clients, args.duration, queries, paths, args.timeout, args.procs))
                print(row(results[-1]), file=sys.stderr)
            if mode == "image":
                baselines.append(encoder_baseline(encoder, queries))
    finally:
        if server:
            server.stop()
    compare = None
    if not args.url and not args.no_compare and "image" in modes:
        server = Server(
            uri, collection, args.workers, {"VITSEARCH_API_MAX_BATCH": "1"}, Path(args.cache) / "api-load-serve-1.log"
        )
        try:
            compare = run_level(server.url, "image", BATCH, args.duration, queries, paths, args.timeout, args.procs)
        finally:
            server.stop()

    print(header)
    for r in results:
        print(row(r))
    if compare:
        print(row(compare, " (batching off: max batch 1)"))
    baseline = float(np.mean(baselines)) if baselines else float("nan")
    at16 = next((r for r in results if r["mode"] == "image" and r["clients"] == BATCH), None)
    if at16:
        print(
            f"\nimage search at {BATCH} clients: {at16['qps']:.1f} QPS = {at16['qps'] / baseline:.0%} of the "
            f"encoder's own {baseline:.1f} images/s (mean of {', '.join(f'{b:.1f}' for b in baselines)}; "
            f"goal >= 90%)"
        )
        if compare:
            print(
                f"batching on/off at {BATCH} clients: {at16['qps']:.1f} / {compare['qps']:.1f} QPS = "
                f"{at16['qps'] / compare['qps']:.2f}x; p99 {at16['p99']:.0f} / {compare['p99']:.0f} ms"
            )
    sim16 = next((r for r in results if r["mode"] == "similar" and r["clients"] == BATCH), None)
    if sim16:
        print(f"stored-vector search at {BATCH} clients: p99 {sim16['p99']:.0f} ms (goal <= 100 ms)")
    print(f"load {load()} at the end")


if __name__ == "__main__":
    main()
