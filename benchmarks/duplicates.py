"""Duplicates: quality on planted copies of real photos, and scan speed at scale.

``quality``: the first ``--originals`` catalogue photos are copied into a temporary folder with,
for each, planted copies made with Pillow, in two splits.

The *tuning* split, the transformations the pixel check's parameters were chosen on:
``down50`` (downscaled to 50 %), ``jpeg30`` (JPEG quality 30), ``crop90`` (90 % centre crop),
``bright+10`` / ``bright-10`` (brightness x1.1 / x0.9), ``resave1`` (decoded, one pixel value
changed by 1, saved again as JPEG at the original's quantisation: other bytes, same picture),
``identical`` (byte-identical copy).

The *held-out* split, never used to choose a parameter, transformations that real copies carry:
``rot+2`` (rotated 2 degrees counter-clockwise and cropped to the largest upright rectangle
inside, as a straightened photo is), ``rot-2fill`` (rotated 2 degrees clockwise in its own frame,
the corners filled white, as a crooked scan on a white bed), ``rot1-down60`` (rotated 1 degree,
cropped as ``rot+2``, then downscaled to 60 %), ``down50-sharp`` (downscaled to 50 % then
sharpened, ``UnsharpMask(2, 150, 3)``, as a web shop's resize does), ``shift3`` (3 % of the width
cut off the left side: a re-framed copy), ``gamma-contrast`` (gamma 0.8, then contrast x1.15:
an edited copy), ``down75-jpeg50`` (downscaled to 75 % and saved at JPEG quality 50). Every copy
is saved as JPEG (quality 90 unless said otherwise).

``--split tuning`` plants the tuning copies only (the benchmark as it was before the split),
``held-out`` the held-out ones only, ``both`` (the default) both sets into one collection, each
split then scored on its own files (the originals and that split's copies; a group is cut down to
them). All files are indexed with the real indexer and model; then
:meth:`SearchClient.duplicates` (what ``vitsearch duplicates`` calls) runs at each threshold
(the collection's default threshold is always among them, marked ``*``), with its pixel check of
the candidate pairs (the default) or without it (``--no-verify``). Two files are a true pair when
they come from the same original; a reported pair is two files in one group. Per transformation:
recall of the (original, copy) pairs, precision of the reported pairs that hold such a copy;
overall precision/recall over all same-original pairs; and the number of reported pairs whose
files come from two distinct originals (of which: the two originals themselves). Last, the pixel
check's own cost: the signatures of 100 of the files (decode included) and the scores of all
pairs of them, timed in this process.

``speed``: synthetic 384-d unit vectors (random, plus 1 % planted near copies at cosine ~0.97)
inserted directly through ``Store.upsert`` into a fresh collection with vitsearch's schema and
index, flushed; then the scan (``find_duplicates`` at 0.95, without the pixel check: the rows
have no files) runs in a fresh child process (its
peak RSS, ``VmHWM``, is the scan's own; with Lite it holds the Milvus Lite engine that the
scanning process serves); ``--exact-only`` scan (sha256 only) and, up to ``--exact-max``
vectors, exact all-pairs numpy (blocked matrix products) as the baselines, and the pair recall
of the scan against exact.

    python benchmarks/duplicates.py quality [--originals 300] [--model M] [--runtime R] [--no-verify]
        [--split tuning|held-out|both] [--thresholds T,...] [--workdir DIR]
    python benchmarks/duplicates.py speed [--sizes 10000,100000] [--server URI|local] [--no-lite] [--keep] [--reuse]
        [--lite-dir DIR]
    python benchmarks/duplicates.py page [--originals 4] [--out DIR]

``page``: the same planted copies of the first ``--originals`` photos, indexed with the default
model by ``vitsearch index`` (a subprocess, as a user runs it); ``vitsearch ui`` over them in
Debian's headless Chromium (tests/browser.py); screenshots of the Duplicates view at the default
threshold (``duplicates.png``) and of a collapsed search for the first original
(``search-collapsed.png``) are saved in ``--out``.

Not a test: run by hand, report the tables (and ``uptime``: the CPU is shared).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import itertools
import math
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from queue import Empty

import numpy as np

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
THRESHOLDS = (0.90, 0.91, 0.92, 0.93, 0.94, 0.95, 0.96, 0.97, 0.98, 0.985, 0.99, 0.995)
TRANSFORMS = ("down50", "jpeg30", "crop90", "bright+10", "bright-10", "resave1", "identical")
HELD_OUT = ("rot+2", "rot-2fill", "rot1-down60", "down50-sharp", "shift3", "gamma-contrast", "down75-jpeg50")
SPLITS = {"tuning": TRANSFORMS, "held-out": HELD_OUT}


def straightened(rgb, degrees: float):
    """``rgb`` rotated by ``degrees`` (counter-clockwise, bicubic) and cropped to the largest
    upright rectangle of the same aspect that holds no fill."""
    from PIL import Image

    w, h = rgb.size
    a = math.radians(abs(degrees))
    scale = 1 / (math.cos(a) + math.sin(a) * max(w / h, h / w))  # the inner rectangle's share of each side
    rotated = rgb.rotate(degrees, Image.Resampling.BICUBIC)
    dx, dy = round(w * (1 - scale) / 2), round(h * (1 - scale) / 2)
    return rotated.crop((dx, dy, w - dx, h - dy))


def plant(original: Path, kind: str, out: Path) -> None:
    """Write the ``kind`` copy of ``original`` to ``out`` (see the module docstring)."""
    from PIL import Image, ImageEnhance, ImageFilter

    if kind == "identical":
        shutil.copyfile(original, out)
        return
    with Image.open(original) as im:
        im.load()
        rgb = im.convert("RGB")
        if kind == "down50":
            rgb.resize((max(1, rgb.width // 2), max(1, rgb.height // 2)), Image.Resampling.LANCZOS).save(
                out, quality=90
            )
        elif kind == "jpeg30":
            rgb.save(out, quality=30)
        elif kind == "crop90":
            dx, dy = round(rgb.width * 0.05), round(rgb.height * 0.05)
            rgb.crop((dx, dy, rgb.width - dx, rgb.height - dy)).save(out, quality=90)
        elif kind in ("bright+10", "bright-10"):
            ImageEnhance.Brightness(rgb).enhance(1.1 if kind == "bright+10" else 0.9).save(out, quality=90)
        elif kind == "resave1":
            r, g, b = rgb.getpixel((0, 0))
            rgb.putpixel((0, 0), (r ^ 1, g, b))
            rgb.save(out, "JPEG", qtables=im.quantization)  # the originals are JPEGs: same quantisation
        elif kind == "rot+2":
            straightened(rgb, 2).save(out, quality=90)
        elif kind == "rot-2fill":
            rgb.rotate(-2, Image.Resampling.BICUBIC, fillcolor=(255, 255, 255)).save(out, quality=90)
        elif kind == "rot1-down60":
            turned = straightened(rgb, 1)
            turned.resize((round(turned.width * 0.6), round(turned.height * 0.6)), Image.Resampling.LANCZOS).save(
                out, quality=90
            )
        elif kind == "down50-sharp":
            small = rgb.resize((max(1, rgb.width // 2), max(1, rgb.height // 2)), Image.Resampling.LANCZOS)
            small.filter(ImageFilter.UnsharpMask(radius=2, percent=150, threshold=3)).save(out, quality=90)
        elif kind == "shift3":
            rgb.crop((round(rgb.width * 0.03), 0, rgb.width, rgb.height)).save(out, quality=90)
        elif kind == "gamma-contrast":
            lut = [round(255 * (v / 255) ** 0.8) for v in range(256)] * 3
            ImageEnhance.Contrast(rgb.point(lut)).enhance(1.15).save(out, quality=90)
        elif kind == "down75-jpeg50":
            rgb.resize((round(rgb.width * 0.75), round(rgb.height * 0.75)), Image.Resampling.LANCZOS).save(
                out, quality=50
            )
        else:
            raise ValueError(kind)


def quality(args) -> None:
    from vitsearch.indexer import index_folder
    from vitsearch.search import SearchClient
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.store import Store

    originals = sorted(Path(args.folder).glob("*.jpg"))[: args.originals]
    splits = list(SPLITS) if args.split == "both" else [args.split]
    kinds = [kind for split in splits for kind in SPLITS[split]]
    with contextlib.ExitStack() as stack:
        tmp = Path(args.workdir) if args.workdir else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        root = tmp / "photos"
        source: dict[str, tuple[str, str]] = {}  # path -> (original name, transformation)
        for kind in ("original", *kinds):
            (root / kind).mkdir(parents=True, exist_ok=True)
        for p in originals:
            source[str(root / "original" / p.name)] = (p.name, "original")
            if not (root / "original" / p.name).exists():  # a --workdir of an earlier run: its files as they are
                shutil.copyfile(p, root / "original" / p.name)
            for kind in kinds:
                if not (root / kind / p.name).exists():
                    plant(p, kind, root / kind / p.name)
                source[str(root / kind / p.name)] = (p.name, kind)
        uri = str(tmp / "milvus.db")
        encoder = Encoder.load(args.model, runtime=args.runtime)
        started = time.perf_counter()
        with Store(uri, "images") as store:
            report = index_folder(str(root), encoder=encoder, store=store, workers=1)
        index_s = time.perf_counter() - started
        print(
            f"indexed {report.indexed} files ({len(originals)} originals x {1 + len(kinds)}; "
            f"{report.unchanged} unchanged), {len(report.failures)} failures, in {index_s:.0f} s",
            flush=True,
        )
        results = []
        with SearchClient(uri=uri) as client:
            default = client.duplicate_threshold()
            space = "whitened" if client.space.whitened else "raw"
            thresholds = sorted({float(x) for x in args.thresholds.split(",")} | {default})
            for t in thresholds:
                found = client.duplicates(threshold=t, verify=args.verify)
                results.append((t, found))
        shas: dict[str, list[str]] = {}
        for p in originals:
            shas.setdefault(hashlib.sha256(p.read_bytes()).hexdigest(), []).append(p.name)
        identical_originals = sum(len(v) * (len(v) - 1) // 2 for v in shas.values())
        cost = pixel_cost(
            sorted(p for p in source if p.startswith(str(root / kinds[0])))[:50]
            + sorted(p for p in source if p.startswith(str(root / "original")))[:50]
        )

    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"{len(originals)} catalogue photos from {args.folder} + {len(kinds)} planted copies each "
        f"({len(source)} files, split {args.split}), model {Path(args.model).name} ({args.runtime}), {space} "
        f"collection, default threshold {default} (*); {identical_originals} pairs of originals are "
        f"byte-identical in the catalogue itself; "
        + ("near pairs confirmed by their pixels (default)" if args.verify else "embedding alone (--no-verify)")
    )
    for split in splits:
        report_split(split, SPLITS[split], len(originals), source, results, default)
    print(
        f"\npixel check cost: {cost[0]:.2f} ms a file (decode and signature), {cost[1]:.1f} us a pair "
        f"(score of two signatures), {cost[2]} files, {cost[3]} pairs"
    )


def pixel_cost(paths: list[str]) -> tuple[float, float, int, int]:
    """The pixel check's cost on ``paths``: (ms a file for its signature, decode included; us a
    pair for the score of two signatures over all pairs of them, keypoints detected on first use
    included; files; pairs)."""
    from vitsearch.search.pixels import pixel_score, signature

    started = time.perf_counter()
    sigs = [signature(p) for p in paths]
    per_file = (time.perf_counter() - started) / len(paths) * 1e3
    i, j = np.triu_indices(len(paths), 1)
    started = time.perf_counter()
    for a, b in zip(i, j):
        pixel_score(sigs[a], sigs[b])
    return per_file, (time.perf_counter() - started) / len(i) * 1e6, len(paths), len(i)


def report_split(
    split: str,
    kinds: tuple[str, ...],
    n_originals: int,
    source: dict[str, tuple[str, str]],
    results: list,
    default: float,
) -> None:
    """Print the recall/precision tables of one split: its files are the originals and its
    ``kinds`` of copies; each group is cut down to them."""
    mine = {"original", *kinds}
    header = (
        f"{'threshold':>10} "
        + " ".join(f"{k:>14}" for k in kinds)
        + f" {'P all':>6} {'R all':>6} {'distinct':>8} {'orig-orig':>9} {'scan s':>6}"
    )
    print(
        f"\n{split} split: recall per transformation (original-copy pairs in one group), overall pair precision P "
        "and recall R,"
    )
    print("reported pairs of files from two distinct originals, of which both originals:")
    print(header)
    prec_rows = []
    truth = n_originals * (1 + len(kinds)) * len(kinds) // 2
    for t, found in results:
        # Counted per group from how many of its files come from each original (each original has
        # one file of each kind), not pair by pair: a loose threshold makes groups of thousands.
        recalled = dict.fromkeys(kinds, 0)
        involving = dict.fromkeys(kinds, 0)
        true_involving = dict.fromkeys(kinds, 0)
        reported = good = orig_orig = 0
        for group in found.groups:
            members = [source[p] for p in group.paths if source[p][1] in mine]
            n = len(members)
            per_original: dict[str, set[str]] = {}
            for name, kind in members:
                per_original.setdefault(name, set()).add(kind)
            reported += n * (n - 1) // 2
            good += sum(len(k) * (len(k) - 1) // 2 for k in per_original.values())
            originals_in = sum("original" in k for k in per_original.values())
            orig_orig += originals_in * (originals_in - 1) // 2
            for kind in kinds:
                m = sum(kind in k for k in per_original.values())
                involving[kind] += m * (n - 1) - m * (m - 1) // 2
                true_involving[kind] += sum(len(k) - 1 for k in per_original.values() if kind in k)
                recalled[kind] += sum(1 for k in per_original.values() if kind in k and "original" in k)
        per = [recalled[kind] / n_originals for kind in kinds]
        prec = [true_involving[kind] / involving[kind] if involving[kind] else 1.0 for kind in kinds]
        p_all = good / reported if reported else 1.0
        r_all = good / truth
        mark = "*" if t == default else " "
        print(
            f"{t:9.3f}{mark} "
            + " ".join(f"{r:14.3f}" for r in per)
            + f" {p_all:6.3f} {r_all:6.3f} {reported - good:8d} {orig_orig:9d} {found.seconds:6.1f}",
            flush=True,
        )
        prec_rows.append((t, mark, prec))
    print(f"\n{split} split: precision per transformation (reported pairs holding that copy that are true pairs):")
    print(f"{'threshold':>10} " + " ".join(f"{k:>14}" for k in kinds))
    for t, mark, prec in prec_rows:
        print(f"{t:9.3f}{mark} " + " ".join(f"{p:14.3f}" for p in prec))


def page(args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from browser import THUMBNAILS, chromium_page, ui_server, upload_and_wait

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    originals = sorted(Path(args.folder).glob("*.jpg"))[: args.originals]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "photos"
        for kind in ("original", *TRANSFORMS):
            (root / kind).mkdir(parents=True)
            for p in originals:
                shutil.copyfile(p, root / kind / p.name) if kind == "original" else plant(p, kind, root / kind / p.name)
        uri = str(Path(tmp) / "milvus.db")
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from vitsearch.cli import main; main()",
                "index",
                str(root),
                "--model",
                args.model,
                "--uri",
                uri,
            ],
            check=True,
        )
        with ui_server(uri, Path(tmp) / "ui.log") as url, chromium_page(height=1300) as browser:
            browser.goto(f"{url}/duplicates")
            browser.get_by_text("groups,").first.wait_for(timeout=300_000)
            browser.wait_for_function(
                f"""() => {{
                const imgs = [...document.querySelectorAll('{THUMBNAILS}')];
                return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0);
            }}""",
                timeout=120_000,
            )
            browser.screenshot(path=out / "duplicates.png", full_page=True)
            browser.goto(url)
            upload_and_wait(browser, root / "original" / originals[0].name)
            browser.screenshot(path=out / "search-collapsed.png", full_page=True)
    print(f"saved {out / 'duplicates.png'} and {out / 'search-collapsed.png'}")


def synthetic(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """``(n, dim) float32`` unit vectors: random, with the last 1 % near copies (cosine ~0.97)
    of the first 1 %."""
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((n, dim), dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    copies = max(1, n // 100)
    noise = rng.standard_normal((copies, dim), dtype=np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    v[n - copies :] = v[:copies] + 0.25 * noise
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def bench_store(uri: str):
    """The benchmark's collection at ``uri``, with the credentials of ``vitsearch server start``'s
    server where ``uri`` is it (else ``VITSEARCH_TOKEN``)."""
    from vitsearch.search.config import Settings
    from vitsearch.search.store import Store

    return Store.from_settings(Settings(retry_s=600), uri, "bench")


def fill(uri: str, vectors: np.ndarray, chunk: int = 5000) -> float:
    from vitsearch.search.encoder_info import EncoderInfo

    info = EncoderInfo(
        model="synthetic", weights_sha256="0" * 64, dim=vectors.shape[1], pooling="cls", image_size=(224, 224)
    )
    started = time.perf_counter()
    with bench_store(uri) as store:
        store.drop()
        store.ensure(info)
        for start in range(0, len(vectors), chunk):
            store.upsert(
                [
                    {
                        "path": f"/f/{i % 100}/{i:08d}.jpg",
                        "vector": vectors[i],
                        "folder": f"/f/{i % 100}",
                        "size": 1000,
                        "mtime": float(i),
                        "ctime_ns": 0,
                        "inode": i,
                        "width": 10,
                        "height": 10,
                        "sha256": f"{i:064x}",
                        "indexed_at": 0.0,
                        "taken_at": 0.0,
                        "date_source": "mtime",
                        "camera": "",
                    }
                    for i in range(start, min(start + chunk, len(vectors)))
                ]
            )
        store.flush(timeout_s=3600)
        store.close(release=True)
    return time.perf_counter() - started


def stored(uri: str) -> int:
    """Rows in the benchmark's collection at ``uri`` (0 where there is none)."""
    with bench_store(uri) as store:
        n = store.count() if store.exists() else 0
        store.close(release=True)
    return n


def _scan(uri: str, threshold: float | None, queue) -> None:
    from vitsearch.search.duplicates import find_duplicates

    with bench_store(uri) as store:
        report = find_duplicates(store, threshold, verify=False)  # synthetic rows: no files to check
        pairs = {frozenset(p) for g in report.groups for p in itertools.combinations(g.paths, 2)}
        store.close(release=True)
    queue.put((report.seconds, report.images, len(report.groups), pairs, peak_rss_mib()))


def peak_rss_mib() -> float:
    """This process's peak resident set (``VmHWM``, MiB): unlike ``ru_maxrss``, it does not carry
    the parent's peak over a fork and exec."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024


def scan(uri: str, threshold: float | None):
    """``find_duplicates`` in a fresh process: (seconds, images, groups, pairs, peak RSS MiB)."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_scan, args=(uri, threshold, queue))
    proc.start()
    while True:
        try:
            result = queue.get(timeout=5)
            break
        except Empty:
            if not proc.is_alive():  # one last look: it may have reported just before it exited
                try:
                    result = queue.get(timeout=1)
                    break
                except Empty:
                    raise SystemExit(
                        f"the scan process exited with code {proc.exitcode} without a result (its traceback is above)"
                    ) from None
    proc.join()
    return result


def exact_pairs(vectors: np.ndarray, threshold: float, block: int = 4096) -> tuple[set, float]:
    """All pairs at ``threshold`` or above by blocked numpy matrix products, and the seconds."""
    started = time.perf_counter()
    found = set()
    for s in range(0, len(vectors), block):
        sims = vectors[s : s + block] @ vectors.T
        for i, j in zip(*np.nonzero(sims >= threshold)):
            if s + i < j:
                found.add(frozenset((f"/f/{(s + i) % 100}/{s + i:08d}.jpg", f"/f/{j % 100}/{j:08d}.jpg")))
    return found, time.perf_counter() - started


def speed(args) -> None:
    from vitsearch.search.config import Settings
    from vitsearch.search.store.profile import LITE, SERVER

    server = Settings().resolved_uri() if args.server == "local" else args.server
    backends = ([] if args.no_lite else ["lite"]) + ([server] if server else [])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        lite_dir = Path(args.lite_dir or tmp)
        lite_dir.mkdir(parents=True, exist_ok=True)
        for n in (int(s) for s in args.sizes.split(",")):
            vectors = synthetic(n, args.dim)
            exact, exact_s = exact_pairs(vectors, 0.95) if n <= args.exact_max else (None, None)
            for backend in backends:
                uri = str(lite_dir / f"lite-{n}.db") if backend == "lite" else backend
                load_s = None if args.reuse and stored(uri) == n else fill(uri, vectors)
                sha_s, *_ = scan(uri, None)
                seconds, images, groups, pairs, rss = scan(uri, 0.95)
                recall = len(pairs & exact) / len(exact) if exact else None
                rows.append(
                    (
                        "Milvus Lite" if backend == "lite" else "Milvus server",
                        n,
                        load_s,
                        sha_s,
                        seconds,
                        images,
                        groups,
                        rss,
                        exact_s,
                        recall,
                    )
                )
                print_row(*rows[-1], flush=True)
                if not args.keep:
                    with bench_store(uri) as store:
                        store.drop()
                        store.close(release=True)
    print(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; "
        f"synthetic {args.dim}-d unit vectors (1 % planted near copies), threshold 0.95, HNSW M 16, "
        f"efConstruction 200; top-16 per query; queries per search: {SERVER.search_queries} on a server, "
        f"{LITE.search_queries} on Lite"
    )
    print(
        f"\n{'backend':14} {'vectors':>9} {'load s':>7} {'sha s':>6} {'scan s':>7} {'img/s':>7} {'groups':>7} "
        f"{'RSS MiB':>7} {'numpy s':>7} {'x numpy':>7} {'recall':>6}"
    )
    for row in rows:
        print_row(*row)


def print_row(backend, n, load_s, sha_s, seconds, images, groups, rss, exact_s, recall, flush=False) -> None:
    ratio = f"{exact_s / seconds:7.2f}" if exact_s else f"{'-':>7}"
    load = f"{load_s:7.1f}" if load_s is not None else f"{'reused':>7}"
    print(
        f"{backend:14} {n:9,d} {load} {sha_s:6.1f} {seconds:7.1f} {images / seconds:7.0f} {groups:7d} "
        f"{rss:7.0f} {exact_s if exact_s else float('nan'):7.1f} {ratio} "
        f"{recall if recall is not None else float('nan'):6.3f}",
        flush=flush,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    q = sub.add_parser("quality")
    q.add_argument("--folder", default=str(SHARED / "data" / "catalog"))
    q.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    q.add_argument("--originals", type=int, default=300)
    q.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    q.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="the embedding alone decides (no pixel check of the candidate pairs)",
    )
    q.add_argument("--runtime", default="onnx-int8", help="encoder runtime (default onnx-int8, the CPU default)")
    q.add_argument(
        "--split",
        choices=("tuning", "held-out", "both"),
        default="both",
        help="the planted "
        "copies: the transformations the pixel check was tuned on, the held-out ones, or both in one "
        "collection, each scored on its own (default both)",
    )
    q.add_argument(
        "--workdir",
        default=None,
        help="keep the planted files and the index here (reused when it holds them): default a temporary folder",
    )
    s = sub.add_parser("speed")
    s.add_argument("--sizes", default="10000,100000")
    s.add_argument(
        "--server",
        default=None,
        help="Milvus server URI, e.g. http://127.0.0.1:19530, or "
        "'local': the server that `vitsearch server start` runs (its credentials are used)",
    )
    s.add_argument("--no-lite", action="store_true")
    s.add_argument("--dim", type=int, default=384)
    s.add_argument(
        "--keep",
        action="store_true",
        help="keep the collections after the scans (Lite's only "
        "with --lite-dir: by default its databases are in a temporary folder)",
    )
    s.add_argument(
        "--reuse",
        action="store_true",
        help="scan the collections a --keep run left, without "
        "refilling them, where they hold exactly the size asked (1M takes ~16 min to fill on Lite, "
        "~30 min on a server here)",
    )
    s.add_argument(
        "--lite-dir",
        default=None,
        help="folder of the Lite databases (lite-N.db), for --keep and --reuse (default a temporary folder)",
    )
    s.add_argument("--exact-max", type=int, default=100000, help="largest size checked by exact numpy")
    g = sub.add_parser("page")
    g.add_argument("--folder", default=str(SHARED / "data" / "catalog"))
    g.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    g.add_argument("--originals", type=int, default=4)
    g.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "vitsearch-duplicates-page"))
    args = ap.parse_args()
    {"quality": quality, "speed": speed, "page": page}[args.what](args)


if __name__ == "__main__":
    main()
