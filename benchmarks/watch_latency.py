"""`vitsearch watch`: how soon a copied photo is searchable, a burst's throughput against `vitsearch
index`, and the watcher's memory over a large tree.

- latency: a :class:`~vitsearch.indexer.watch.Watcher` (settle time ``--settle``, the CLI's tick of
  0.2 s) over an empty folder; ``--copies`` photos copied in one at a time; for each, the time from
  the end of the copy until ``Store.get`` finds its row (written, so searchable): p50 / p99 / max.
- burst: ``--burst`` photos copied into the watched folder at once; images/s from the end of the
  copy until the last row is there, against ``index_folder`` (``vitsearch index``'s job, the same
  workers) over the same photos into another collection of the same database, in the same run.
- memory: in processes of their own, the RSS of a process that imports the watcher and watches
  nothing (idle), of one watching a tree of ``--files`` empty ``.jpg`` files by inotify, of one
  polling it (the fallback past the inotify limits), and of one holding every file as a pending
  change (all touched, nothing settled).

    python benchmarks/watch_latency.py [--copies 100] [--burst 500] [--files 100000] \
        [--model $VITSEARCH_SHARED/models/dinov2-small-9l] [--photos $VITSEARCH_SHARED/data/catalog]

Not a test: run by hand, report the table (docs/benchmarks/watch.md).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import shutil
import statistics
import tempfile
import threading
import time
from pathlib import Path

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def wait_row(store, path: str, timeout_s: float = 60.0) -> float:
    deadline = time.monotonic() + timeout_s
    while not store.get([path], fields=()):
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return time.perf_counter()


def latency_and_burst(args, tmp: Path) -> list[tuple[str, str]]:
    from vitsearch.indexer import IndexJob, LocalExecutor, index_folder
    from vitsearch.indexer.watch import Watcher
    from vitsearch.search.application import configure
    from vitsearch.search.config import Settings

    s = Settings(model=args.model, uri=str(tmp / "milvus.db"), collection="watch", runtime=args.runtime)
    configure(s)
    photos = sorted(Path(args.photos).glob("*.jpg"))
    watched = tmp / "watched"
    watched.mkdir()
    out = []
    with IndexJob.open(s, LocalExecutor(s.workers)) as job:
        w = Watcher([str(watched)], job.store, job.encoder, batch_size=job.batch_size, workers=s.workers)
        w.settle_s = args.settle
        w.start()
        w.catch_up()
        stop = threading.Event()
        runner = threading.Thread(target=w.run, args=(stop,), daemon=True)
        runner.start()
        lat = []
        for i in range(args.copies):
            dest = watched / f"one-{i:04d}.jpg"
            shutil.copy(photos[i % len(photos)], dest)
            end = time.perf_counter()
            lat.append(wait_row(job.store, str(dest)) - end)
        lat.sort()
        p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))]  # noqa: E731
        out.append(("latency p50 / p99 / max", f"{p(0.5):.2f} s / {p(0.99):.2f} s / {lat[-1]:.2f} s"))
        out.append(("latency mean", f"{statistics.mean(lat):.2f} s over {len(lat)} copies"))
        burst = tmp / "burst-src"
        burst.mkdir()
        for i in range(args.burst):
            shutil.copy(photos[i % len(photos)], burst / f"b-{i:05d}.jpg")
            with open(burst / f"b-{i:05d}.jpg", "ab") as f:  # distinct bytes: no two files alike
                f.write(i.to_bytes(4, "little"))
        started = time.perf_counter()
        shutil.copytree(burst, watched / "burst")
        copied = time.perf_counter()
        last = str(watched / "burst" / f"b-{args.burst - 1:05d}.jpg")
        while job.store.count(str(watched / "burst")) < args.burst:
            time.sleep(0.25)  # a count costs the watcher's own process: not too often
        done = time.perf_counter()
        stop.set()
        runner.join()
        w.stop()
        assert job.store.get([last], fields=())
        watch_rate = args.burst / (done - copied)
        other = job.store.sibling("index_baseline")
        t = time.perf_counter()
        report = index_folder(str(burst), encoder=job.encoder, store=other, workers=s.workers)
        index_rate = report.indexed / (time.perf_counter() - t)
        out.append(
            (
                f"burst of {args.burst}",
                f"{watch_rate:.1f} img/s from the copy's end ({done - copied:.1f} s; copy {copied - started:.1f} s)",
            )
        )
        out.append(("vitsearch index, same photos", f"{index_rate:.1f} img/s ({report.indexed} indexed)"))
        out.append(("burst / index", f"{100 * watch_rate / index_rate:.0f} %"))
        out.append(("encoder", f"{job.encoder.info.model} {job.encoder.info.runtime}, batch {job.batch_size}"))
    return out


def memory_phase(kind: str, tree: str, files: int, queue) -> None:
    from vitsearch.indexer.watch import Watcher

    class NoStore:  # the watcher is not asked to write in these phases
        pass

    if kind == "idle":
        time.sleep(1)
        queue.put(rss_mb())
        return
    observer = {}
    if kind == "polling":
        from watchdog.observers.polling import PollingObserver

        class Refuse(PollingObserver):
            def schedule(self, *a, **k):
                raise OSError(28, "inotify watch limit reached")

        observer = {"observer": Refuse, "poll_s": 2.0}
    w = Watcher([tree], NoStore(), None, settle_s=3600, **observer)
    w.start()
    time.sleep(3 if kind == "polling" else 1)
    if kind == "pending":
        for root, _, names in os.walk(tree):
            for n in names:
                os.utime(os.path.join(root, n))
        deadline = time.monotonic() + 120
        while w.pending() < files and time.monotonic() < deadline:
            time.sleep(0.2)
    queue.put((rss_mb(), w.pending()))
    w.stop()


def memory(args, tmp: Path) -> list[tuple[str, str]]:
    tree = tmp / "tree"
    per = 1000
    for d in range(max(1, args.files // per)):
        folder = tree / f"d{d:03d}"
        folder.mkdir(parents=True)
        for i in range(per):
            (folder / f"f{i:04d}.jpg").touch()
    ctx = mp.get_context("spawn")
    out = []
    idle = None
    for kind in ("idle", "inotify", "polling", "pending"):
        q = ctx.Queue()
        p = ctx.Process(target=memory_phase, args=(kind, str(tree), args.files, q))
        p.start()
        got = q.get(timeout=300)
        p.join()
        if kind == "idle":
            idle = got
            out.append(("RSS idle (watcher imported, nothing watched)", f"{idle:.0f} MB"))
        else:
            rss, pending = got
            out.append(
                (f"RSS {kind}, {args.files:,} files", f"{rss:.0f} MB (+{rss - idle:.0f} MB; {pending:,} pending)")
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=100)
    ap.add_argument("--burst", type=int, default=500)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--settle", type=float, default=1.0)
    ap.add_argument("--runtime", default=None)
    ap.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    ap.add_argument("--photos", default=str(SHARED / "data" / "catalog"))
    ap.add_argument("--skip", choices=["memory", "latency"], default=None)
    args = ap.parse_args()
    rows = [("hardware", f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")]
    with tempfile.TemporaryDirectory() as d:
        if args.skip != "latency":
            rows += latency_and_burst(args, Path(d))
        if args.skip != "memory":
            rows += memory(args, Path(d))
    width = max(len(k) for k, _ in rows)
    print(f"| {'what'.ljust(width)} | result |\n|{'-' * (width + 2)}|---|")
    for k, v in rows:
        print(f"| {k.ljust(width)} | {v} |")


if __name__ == "__main__":
    main()
