"""The GPU path, run for real, in one prepared script (issue 36).

Writes ``report.md`` (a table per part) and ``report.json`` under ``--out DIR``. Each part runs in
its own subprocess (this script with ``--part NAME``, or the ``vitsearch`` command itself) under
a wall-clock budget (``--budget-s`` per part); a part that fails or runs out of time is recorded
with its error and the script goes on. The report is rewritten after every part, so whatever
happens the folder holds what was measured so far.

Parts and what each measures:

``model_only``
    Forward passes alone (``Encoder.embed_pixels`` on a batch preprocessed once: no decode, no
    I/O, no Milvus) of the product's encoder (``search/encoder.py`` ``Encoder.load``: bf16 by
    default on CUDA, runtime ``torch``), images/s at batch 64, 128, 256, 512, eager and
    ``torch.compile`` (``Encoder.load(compile=True)``: Inductor, ``dynamic=False``, one compile
    per batch shape; the compile time is reported apart). Two checkpoints: a ViT-B/16-shaped one
    made here (``transformers.ViTConfig()`` defaults, random weights, ``ViTImageProcessor``) and
    the real ``dinov2-small-9l`` from ``$VITSEARCH_SHARED/models``. Anchor: timm ViT-B/16 with AMP
    on one recent GPU measures about 3,000-4,700 images/s model-only (timm's published inference
    benchmark tables, ``benchmark-infer-amp-*.csv`` in huggingface/pytorch-image-models).
``index``
    Whole-process ``vitsearch index`` (a subprocess into a fresh Milvus Lite database; its wall
    time includes start-up, imports, model load) with the ViT-B/16 checkpoint (the goal's model:
    >= 90 % of its best model-only images/s; tiny ViT with ``--quick``), runtime torch,
    ``--whitening none`` (no whitening learnt at the end), batch size the indexer's own (on CUDA
    sized from free memory), on 2,000+ real photos: the catalogue
    (``data/catalog``) plus copies flipped left-right and resized to 80 %, so that every file is
    distinct. ``--workers`` is sized to the machine's cores (cores - 1). Reported: wall images/s,
    the indexer's own images/s and stage split (``--json``: decode summed over workers, embed,
    write, input wait), the batch size it chose, and GPU utilisation sampled every 200 ms while
    it runs (NVML through ``pynvml`` when importable, else ``nvidia-smi --query-gpu=
    utilization.gpu --format=csv,noheader,nounits -lms 200``; on the CPU: n/a). Also the ratio
    to the best model-only images/s of the same checkpoint, and the CPU cores per 1,000 images/s
    of decode (decode seconds summed over workers / images x 1,000).
``index_ray``
    The same folder and command with ``--engine ray`` (a local Ray instance started by the
    command; its start-up is in both the wall and the indexer's seconds); skipped when Ray is not
    importable. Its stage split is whatever the Ray engine's report fills in.
``train``
    One epoch of ``vitsearch train`` (``cli/train.py``, ``train/loop.py``) on the device, on class
    folders made from catalogue photos: distinct photos per class, the class being a visible
    change (as taken, greyscale, turned 90 degrees), so that the held-out figures mean something.
    Fine-tunes ``dinov2-small-9l`` (``--from``); with ``--quick`` a tiny ``--scratch`` ViT.
    Reported: wall seconds and the epoch line's held-out figures (val accuracy, mAP, R@1, R@10,
    P@1); on a GPU the same run on the CPU too, side by side.
``cosine``
    CLS embeddings of the same photos from the device's encoder (its default dtype: bf16 on CUDA)
    and from the CPU in fp32 with the torch runtime (the reference every runtime is compared
    with); cosine min and mean. Expected >= 0.999 (1.0 when both are the CPU).
``eval``
    ``vitsearch eval`` of Holidays-dev (``data/holidays-dev``: images/ + groundtruth.json) on the
    device with ``dinov2-small-9l``, runtime torch: mAP, recall@1, ANN recall@10, seconds. With
    ``--quick`` a subset of the first queries and their relevant images (about 40 photos).

Usage::

    python benchmarks/gpu_check.py --out DIR                # on a GPU machine, <= ~8 minutes
    python benchmarks/gpu_check.py --device cpu --quick --out DIR   # here, <= 3 minutes

Options: ``--device`` (default ``cuda``), ``--quick`` (tiny sizes: a tiny ViT, ~40 photos,
batch 8/16, one short training, eval on a 40-photo subset), ``--budget-s`` (seconds per part,
default 90), ``--model-budget-s`` (model_only, whose compiles take longest: default 200, 120 with
``--quick``), ``--total-s`` (the whole run: a part gets at most what is left, default 480, 240
with ``--quick``; model_only writes its rows as it goes, so a timeout keeps those measured),
``--parts`` (comma-separated subset), ``--workers`` (decode
processes; default cores - 1), ``--copies`` (variants per catalogue photo, default 2: 3,018
files), ``--install-cuda-torch`` (GPU machines only: before anything else,
``pip install torch --index-url https://download.pytorch.org/whl/cu124`` into this interpreter
when ``torch.cuda.is_available()`` is false; never done otherwise, and never on the CPU).
Set ``VITSEARCH_SHARED`` (default ``../shared`` beside the repository) and ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve()
REPO = HERE.parents[1]
SHARED = Path(os.environ.get("VITSEARCH_SHARED", REPO.parent / "shared"))
PARTS = ("model_only", "index", "index_ray", "train", "cosine", "eval")


def vitsearch_cmd() -> list[str]:
    """The ``vitsearch`` command of this interpreter's environment."""
    exe = Path(sys.executable).with_name("vitsearch")
    if exe.exists():
        return [str(exe)]
    found = shutil.which("vitsearch")
    if found:
        return [found]
    raise RuntimeError("no vitsearch command beside this interpreter nor on PATH (pip install -e .)")


# ---------------------------------------------------------------------------------------------
# sizes


def sizes(quick: bool) -> dict:
    if quick:
        return {
            "batches": [8, 16],
            "photos": 20,
            "copies": 1,
            "train_per_class": 8,
            "cosine_photos": 8,
            "eval_queries": 16,
            "model_batches_total": 64,
        }
    return {
        "batches": [64, 128, 256, 512],
        "photos": None,
        "copies": 2,
        "train_per_class": 120,
        "cosine_photos": 64,
        "eval_queries": None,
        "model_batches_total": 4096,
    }


# ---------------------------------------------------------------------------------------------
# inputs: checkpoints and photo folders


def build_vit(folder: Path, quick: bool) -> Path:
    """A ViT checkpoint with random weights: ViT-B/16 (``ViTConfig()`` defaults) or, quick, a tiny one."""
    if (folder / "config.json").exists():
        return folder
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    if quick:
        config = ViTConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            image_size=32,
            patch_size=8,
        )
        processor = ViTImageProcessor(size={"height": 32, "width": 32})
    else:
        config, processor = ViTConfig(), ViTImageProcessor()
    ViTModel(config, add_pooling_layer=False).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def catalogue(limit: int | None) -> list[Path]:
    files = sorted(p for p in (SHARED / "data" / "catalog").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not files:
        raise RuntimeError(f"no photos under {SHARED / 'data' / 'catalog'} (set VITSEARCH_SHARED)")
    return files[:limit] if limit else files


def _variant(job) -> None:
    from PIL import Image, ImageOps

    src, dst, kind = job
    with Image.open(src) as im:
        im = im.convert("RGB")
        if kind == "flip":
            im = ImageOps.mirror(im)
        elif kind == "small":
            im = im.resize((max(8, im.width * 4 // 5), max(8, im.height * 4 // 5)))
        elif kind == "gray":
            im = ImageOps.grayscale(im).convert("RGB")
        elif kind == "rot90":
            im = im.rotate(90, expand=True)
        im.save(dst, quality=90)


def _run_jobs(jobs, workers: int) -> None:
    if workers > 1 and len(jobs) > 50:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_variant, jobs, chunksize=32))
    else:
        for job in jobs:
            _variant(job)


def make_photos(folder: Path, quick: bool, copies: int, workers: int) -> int:
    """The catalogue photos plus ``copies`` changed copies of each (flipped, then resized): distinct files."""
    if folder.exists():
        return sum(1 for _ in folder.rglob("*.jpg"))
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "orig").mkdir(parents=True)
    files = catalogue(sizes(quick)["photos"])
    for p in files:
        shutil.copy2(p, tmp / "orig" / p.name)
    kinds = ["flip", "small", "gray", "rot90"][:copies]
    jobs = []
    for kind in kinds:
        (tmp / kind).mkdir()
        jobs += [(p, tmp / kind / (p.stem + ".jpg"), kind) for p in files]
    _run_jobs(jobs, workers)
    tmp.rename(folder)
    return len(files) * (1 + len(kinds))


def make_classes(folder: Path, per_class: int, workers: int) -> int:
    """Class folders (plain, gray, rot90) of distinct catalogue photos: the class is a visible change."""
    if folder.exists():
        return sum(1 for _ in folder.rglob("*.jpg"))
    tmp = folder.with_name(folder.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    files = catalogue(None)[: 3 * per_class]
    jobs = []
    for i, kind in enumerate(("plain", "gray", "rot90")):
        (tmp / kind).mkdir(parents=True)
        jobs += [(p, tmp / kind / (p.stem + ".jpg"), kind) for p in files[i * per_class : (i + 1) * per_class]]
    _run_jobs(jobs, workers)
    tmp.rename(folder)
    return len(jobs)


def holidays(folder: Path, queries: int | None) -> Path:
    """Holidays-dev, or a subset of its first ``queries`` queries and their relevant images."""
    src = SHARED / "data" / "holidays-dev"
    if not (src / "groundtruth.json").exists():
        raise RuntimeError(f"no {src / 'groundtruth.json'}")
    if not queries:
        return src
    if folder.exists():
        return folder
    truth = json.loads((src / "groundtruth.json").read_text())
    subset = dict(list(truth.items())[:queries])
    (folder / "images").mkdir(parents=True)
    for q, rel in subset.items():
        for name in [q, *rel]:
            shutil.copy2(src / "images" / name, folder / "images" / name)
    (folder / "groundtruth.json").write_text(json.dumps(subset, indent=1))
    return folder


# ---------------------------------------------------------------------------------------------
# GPU utilisation


class GpuSampler:
    """Samples GPU utilisation (%) every 200 ms: NVML through pynvml, else nvidia-smi; n/a on the CPU."""

    def __init__(self, device: str):
        self.device, self.samples, self.source = device, [], "n/a"
        self._stop = threading.Event()
        self._thread = self._proc = None

    def __enter__(self):
        if not self.device.startswith("cuda"):
            return self
        index = int(self.device.split(":")[1]) if ":" in self.device else 0
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            self.source = "pynvml"

            def loop():
                while not self._stop.wait(0.2):
                    self.samples.append(float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))

            self._thread = threading.Thread(target=loop, daemon=True)
            self._thread.start()
            return self
        except Exception:
            pass
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"
            self._proc = subprocess.Popen(
                [
                    "nvidia-smi",
                    f"--id={index}",
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    "-lms",
                    "200",
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )

            def read():
                for line in self._proc.stdout:
                    try:
                        self.samples.append(float(line.strip()))
                    except ValueError:
                        pass

            self._thread = threading.Thread(target=read, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        if self._thread is not None:
            self._thread.join(5)

    def summary(self) -> dict:
        if not self.samples:
            return {
                "gpu_util_source": self.source,
                "gpu_util_mean": "n/a",
                "gpu_util_max": "n/a",
                "gpu_util_samples": 0,
            }
        busy = self.samples
        return {
            "gpu_util_source": self.source,
            "gpu_util_mean": round(sum(busy) / len(busy), 1),
            "gpu_util_max": max(busy),
            "gpu_util_samples": len(busy),
        }


# ---------------------------------------------------------------------------------------------
# parts run in a child process (python gpu_check.py --part NAME ...)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def part_model_only(args, work: Path) -> dict:
    import torch

    from vitsearch.search.encoder import Encoder
    from vitsearch.search.images import load_image

    s = sizes(args.quick)
    images = [load_image(catalogue(1)[0])]  # one real photo, repeated to each batch size
    rows = []

    def save() -> dict:
        best = {}
        for r in rows:
            if "images_per_s" in r:
                best[r["model"]] = max(best.get(r["model"], 0), r["images_per_s"])
        result = {
            "rows": rows,
            "best_images_per_s": best,
            "anchor": "timm ViT-B/16 AMP, one recent GPU: 3,000-4,700 images/s model-only",
        }
        Path(args.result).write_text(json.dumps(result, default=str))  # what is there if the budget runs out
        return result

    for mode in ("eager", "compile"):
        for name, model in models(args, work):
            try:
                started = time.perf_counter()
                encoder = Encoder.load(model, device=args.device, runtime="torch", compile=mode == "compile")
                load_s = time.perf_counter() - started
            except Exception as exc:  # recorded, the others go on
                rows.append({"model": name, "mode": mode, "error": f"load: {type(exc).__name__}: {exc}"[:400]})
                save()
                continue
            if encoder.device.type != args.device.split(":")[0]:
                raise RuntimeError(f"encoder on {encoder.device}, asked {args.device}: a silent fallback")
            for batch in s["batches"]:
                row = {
                    "model": name,
                    "mode": mode,
                    "batch": batch,
                    "dtype": str(encoder.dtype).replace("torch.", ""),
                    "device": str(encoder.device),
                }
                try:
                    one = encoder.preprocess(images[:1])
                    pixels = one.repeat(batch, *[1] * (one.dim() - 1)) if hasattr(one, "repeat") else one
                    if args.device.startswith("cuda"):
                        pixels = torch.as_tensor(pixels).pin_memory()
                    started = time.perf_counter()
                    encoder.embed_pixels(pixels)  # warm-up; with compile, the compile of this shape
                    _sync(args.device)
                    row["first_call_s"] = round(time.perf_counter() - started, 2)
                    total = max(s["model_batches_total"], 2 * batch)
                    n, started = 0, time.perf_counter()
                    while n < total:
                        encoder.embed_pixels(pixels)  # returns NumPy: waits for the device
                        n += batch
                    _sync(args.device)
                    row["images_per_s"] = round(n / (time.perf_counter() - started), 1)
                except Exception as exc:
                    row["error"] = f"{type(exc).__name__}: {exc}"[:400]
                    if args.device.startswith("cuda"):
                        torch.cuda.empty_cache()
                row["load_s"] = round(load_s, 2)
                rows.append(row)
                save()
            del encoder
    return save()


def models(args, work: Path) -> list[tuple[str, str]]:
    vit = build_vit(work / ("vit-tiny" if args.quick else "vit-b16"), args.quick)
    dino = SHARED / "models" / "dinov2-small-9l"
    if args.quick:
        return [("vit-tiny", str(vit))]
    return [("vit-b16", str(vit)), ("dinov2-small-9l", str(dino))]


def part_cosine(args, work: Path) -> dict:
    import numpy as np

    from vitsearch.search.encoder import Encoder
    from vitsearch.search.images import load_image

    model = str(SHARED / "models" / "dinov2-small-9l")
    images = [load_image(p) for p in catalogue(sizes(args.quick)["cosine_photos"])]
    dev = Encoder.load(model, device=args.device, runtime="torch")
    if dev.device.type != args.device.split(":")[0]:
        raise RuntimeError(f"encoder on {dev.device}, asked {args.device}: a silent fallback")
    pixels = dev.preprocess(images)
    a = np.asarray(dev.embed_pixels(pixels), dtype=np.float64)
    dev_dtype = str(dev.dtype).replace("torch.", "")
    del dev
    ref = Encoder.load(model, device="cpu", dtype="float32", runtime="torch")
    b = np.asarray(ref.embed_pixels(pixels), dtype=np.float64)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    cos = (a * b).sum(axis=1)
    return {
        "model": "dinov2-small-9l",
        "photos": len(images),
        "device": args.device,
        "device_dtype": dev_dtype,
        "reference": "cpu float32, runtime torch",
        "cosine_min": round(float(cos.min()), 6),
        "cosine_mean": round(float(cos.mean()), 6),
        "expected": ">= 0.999",
    }


CHILD_PARTS = {"model_only": part_model_only, "cosine": part_cosine}


# ---------------------------------------------------------------------------------------------
# parts run from the parent through the vitsearch command


def run(cmd: list[str], budget: float, env: dict | None = None, cwd: Path | None = None) -> tuple[str, float]:
    """Run ``cmd``; its stdout and the wall seconds. Raises on a timeout or a non-zero exit."""
    started = time.perf_counter()
    # its own process group, so that a timeout ends its workers too (decode processes, Ray, compilers)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=max(5.0, budget))
    except subprocess.TimeoutExpired as exc:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise TimeoutError(f"timed out after {budget:.0f} s: {' '.join(map(str, cmd))[:300]}") from exc
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"exit {proc.returncode}: {' '.join(map(str, cmd))[:300]}\n{stderr[-1500:]}")
    return stdout, seconds


def index_model(args, work: Path) -> tuple[str, str]:
    if args.quick:
        return "vit-tiny", str(build_vit(work / "vit-tiny", True))
    return "vit-b16", str(build_vit(work / "vit-b16", False))


def part_index(args, work: Path, budget: float, engine: str, results: dict) -> dict:
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            return {"status": "skipped: Ray is not installed (pip install 'vitsearch[ray]')"}
    folder = work / "photos"
    n = make_photos(folder, args.quick, args.copies, args.workers)
    name, model = index_model(args, work)
    db = work / f"index-{engine}-{time.time_ns()}.db"
    cmd = [
        *vitsearch_cmd(),
        "index",
        str(folder),
        "--model",
        model,
        "--uri",
        str(db),
        "--device",
        args.device,
        "--runtime",
        "torch",
        "--json",
        "--whitening",
        "none",
    ]
    if engine == "ray":
        cmd += ["--engine", "ray"]
    else:
        cmd += ["--workers", str(args.workers)]
    with GpuSampler(args.device) as sampler:
        out, seconds = run(cmd, budget)
    summary = json.loads(out[out.index("{") :])
    if summary["failed"]:
        raise RuntimeError(f"{summary['failed']} files failed: {summary.get('failures', [])[:3]}")
    if summary["indexed"] != n:
        raise RuntimeError(f"indexed {summary['indexed']} of {n} files")
    row = {
        "engine": engine,
        "model": name,
        "images": n,
        "workers": args.workers if engine == "local" else "ray",
        "wall_s": round(seconds, 2),
        "wall_images_per_s": round(n / seconds, 1),
        "indexer_s": summary["seconds"],
        "indexer_images_per_s": summary["images_per_s"],
        "batch_size": summary["batch_size"],
        "runtime": summary["runtime"],
        **{f"{k}_s": v for k, v in summary["stage_seconds"].items()},
        **sampler.summary(),
    }
    decode = summary["stage_seconds"].get("decode") or 0
    row["decode_cores_per_1000_images_per_s"] = round(decode / n * 1000, 2) if decode else "n/a"
    best = (results.get("model_only") or {}).get("best_images_per_s", {}).get(name)
    row["of_model_only"] = round(summary["images_per_s"] / best, 3) if best else "n/a"
    return {"rows": [row]}


EPOCH = re.compile(r"epoch\s+(\d+)/\d+\s+loss (\S+)\s+val acc (\S+)\s+mAP (\S+)\s+R@1 (\S+)\s+R@10 (\S+)\s+P@1 (\S+)")


def part_train(args, work: Path, budget: float) -> dict:
    s = sizes(args.quick)
    data = work / "classes"
    n = make_classes(data, s["train_per_class"], args.workers)
    devices = [args.device] + (["cpu"] if args.device != "cpu" else [])
    rows, started = [], time.perf_counter()
    for device in devices:
        if args.quick:
            how = [
                "--scratch",
                "--patch-size",
                "8",
                "--dim",
                "32",
                "--depth",
                "2",
                "--heads",
                "2",
                "--mlp-dim",
                "64",
                "--image-size",
                "32",
                "--batch-size",
                "8",
            ]
        else:
            how = ["--from", str(SHARED / "models" / "dinov2-small-9l"), "--batch-size", "64"]
        out_dir = work / f"trained-{device.replace(':', '-')}"
        cmd = [
            *vitsearch_cmd(),
            "train",
            str(data),
            "--out",
            str(out_dir),
            "--overwrite",
            "--epochs",
            "1",
            "--device",
            device,
            "--seed",
            "0",
            *how,
        ]
        left = budget - (time.perf_counter() - started)
        try:
            with GpuSampler(device) as sampler:
                out, seconds = run(cmd, left)
        except Exception as exc:
            rows.append({"device": device, "error": f"{type(exc).__name__}: {exc}"[:600]})
            continue
        found = [m for m in EPOCH.finditer(out) if m.group(1) == "1"]
        if not found:
            rows.append({"device": device, "error": f"no epoch line in the output: {out[-400:]}"})
            continue
        m = found[-1]
        val = lambda v: None if v == "-" else float(v)  # noqa: E731
        rows.append(
            {
                "device": device,
                "images": n,
                "classes": 3,
                "wall_s": round(seconds, 2),
                "loss": val(m.group(2)),
                "val_accuracy": val(m.group(3)),
                "map": val(m.group(4)),
                "recall_at_1": val(m.group(5)),
                "recall_at_10": val(m.group(6)),
                "precision_at_1": val(m.group(7)),
                **sampler.summary(),
            }
        )
    if rows and all("error" in r for r in rows):
        raise RuntimeError("; ".join(r["error"] for r in rows))
    return {"rows": rows}


def _round(v, digits: int = 4):
    return round(v, digits) if isinstance(v, float) else v


def part_eval(args, work: Path, budget: float) -> dict:
    s = sizes(args.quick)
    dataset = holidays(work / "holidays-subset", s["eval_queries"])
    model = str(SHARED / "models" / "dinov2-small-9l")
    cmd = [
        *vitsearch_cmd(),
        "eval",
        str(dataset),
        "--model",
        model,
        "--device",
        args.device,
        "--runtime",
        "torch",
        "--workers",
        str(args.workers),
        "--json",
    ]
    with GpuSampler(args.device) as sampler:
        out, seconds = run(cmd, budget)
    r = json.loads(out[out.index("{") :])
    return {
        "rows": [
            {
                "dataset": "holidays-dev" + (f" (first {s['eval_queries']} queries)" if s["eval_queries"] else ""),
                "model": "dinov2-small-9l",
                "device": args.device,
                "images": r.get("images"),
                "queries": r.get("queries"),
                "map": _round(r.get("map")),
                "recall_at_1": _round(r.get("recall", {}).get("1")),
                "ann_recall_at_10": _round(r.get("ann_recall_at_10")),
                "runtime": r.get("runtime"),
                "wall_s": round(seconds, 2),
                **sampler.summary(),
            }
        ]
    }


# ---------------------------------------------------------------------------------------------
# the report


def write_report(out: Path, report: dict) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str))
    lines = [
        "# vitsearch GPU check",
        "",
        f"Device `{report['device']}`{' (quick)' if report['quick'] else ''}; {report['machine']}; "
        f"started {report['started']}; {report.get('total_s', '?')} s in all.",
        "",
    ]
    for name in PARTS:
        part = report["parts"].get(name)
        lines += [f"## {name}", ""]
        if part is None:
            lines += ["| status |", "|---|", "| not run |", ""]
            continue
        rows = part.get("rows") or [{k: v for k, v in part.items() if k not in ("status", "seconds", "error")}]
        rows = [r for r in rows if r] or [{}]
        lines += [f"status: **{part['status']}**, {part.get('seconds', '?')} s", ""]
        if part.get("error"):
            lines += ["```", str(part["error"])[-1500:], "```", ""]
        keys = []
        for r in rows:
            keys += [k for k in r if k not in keys and not isinstance(r[k], (dict, list))]
        keys = keys or ["status"]
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in rows:
            cells = [
                str(r.get(k, part["status"] if k == "status" else "")).replace("|", "\\|").replace("\n", " ")
                for k in keys
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))


def machine() -> str:
    cores = os.cpu_count()
    text = f"{platform.platform()}, {cores} CPU cores, Python {platform.python_version()}"
    try:
        import torch

        text += f", torch {torch.__version__}"
        if torch.cuda.is_available():
            text += f", {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}"
    except Exception:
        pass
    return text


def install_cuda_torch() -> None:
    """``pip install torch`` (CUDA 12.4 wheels) into this interpreter, when CUDA is not available."""
    probe = subprocess.run([sys.executable, "-c", "import torch,sys; sys.exit(0 if torch.cuda.is_available() else 1)"])
    if probe.returncode == 0:
        return
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--upgrade",
            "torch",
            "--index-url",
            "https://download.pytorch.org/whl/cu124",
        ],
        check=True,
    )


def child(args) -> None:
    """``--part NAME``: run one in-process part, write its JSON to ``--result``."""
    work = Path(args.work)
    result = CHILD_PARTS[args.part](args, work)
    Path(args.result).write_text(json.dumps(result, default=str))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, help="folder for report.md and report.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="tiny sizes, for the CPU and the tests")
    ap.add_argument("--budget-s", type=float, default=None, help="seconds per part but model_only (default 90)")
    ap.add_argument(
        "--model-budget-s",
        type=float,
        default=None,
        help="seconds for model_only, whose compiles take longest (default 200; 120 with --quick)",
    )
    ap.add_argument(
        "--total-s",
        type=float,
        default=None,
        help="the whole run's limit: a part gets at most what is left (default 480; 240 with --quick)",
    )
    ap.add_argument("--parts", default=",".join(PARTS))
    ap.add_argument("--workers", type=int, default=None, help="decode processes (default: cores - 1)")
    ap.add_argument("--copies", type=int, default=None, help="changed copies per catalogue photo (default 2; 1 quick)")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temporary one, deleted)")
    ap.add_argument(
        "--install-cuda-torch",
        action="store_true",
        help="GPU machines only: pip install the CUDA build of torch first if CUDA is not available",
    )
    ap.add_argument("--part", choices=sorted(CHILD_PARTS), help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.workers = args.workers if args.workers is not None else max(1, (os.cpu_count() or 2) - 1)
    args.copies = args.copies if args.copies is not None else sizes(args.quick)["copies"]
    if args.part:
        child(args)
        return
    if args.out is None:
        ap.error("--out DIR is required")
    default_budget = args.budget_s or 90.0
    model_budget = args.model_budget_s or (120.0 if args.quick else 200.0)
    total = args.total_s or (240.0 if args.quick else 480.0)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("VITSEARCH_SHARED", str(SHARED))
    if args.install_cuda_torch and args.device.startswith("cuda"):
        install_cuda_torch()
    args.out.mkdir(parents=True, exist_ok=True)
    wanted = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(wanted) - set(PARTS)
    if unknown:
        ap.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    report = {
        "device": args.device,
        "quick": args.quick,
        "machine": machine(),
        "workers": args.workers,
        "budget_s_per_part": default_budget,
        "budget_s_model_only": model_budget,
        "total_s_limit": total,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "parts": {},
    }
    t0 = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="gpu-check-") if args.work is None else None
    work = Path(args.work or tmp.name)
    work.mkdir(parents=True, exist_ok=True)
    try:
        for name in PARTS:
            if name not in wanted:
                report["parts"][name] = {"status": "skipped: not asked (--parts)"}
                continue
            started = time.perf_counter()
            left = total - (started - t0)
            budget = min(model_budget if name == "model_only" else default_budget, left)
            if budget < 5:
                report["parts"][name] = {"status": f"timeout: not started, {total:.0f} s (--total-s) spent"}
                write_report(args.out, report)
                continue
            result_file = work / f"{name}.json"
            try:
                if name in CHILD_PARTS:
                    result_file.unlink(missing_ok=True)
                    cmd = [
                        sys.executable,
                        str(HERE),
                        "--part",
                        name,
                        "--result",
                        str(result_file),
                        "--work",
                        str(work),
                        "--device",
                        args.device,
                        "--workers",
                        str(args.workers),
                        "--copies",
                        str(args.copies),
                    ]
                    run(cmd + (["--quick"] if args.quick else []), budget, cwd=REPO)
                    result = json.loads(result_file.read_text())
                elif name == "index":
                    result = part_index(args, work, budget, "local", report["parts"])
                elif name == "index_ray":
                    result = part_index(args, work, budget, "ray", report["parts"])
                elif name == "train":
                    result = part_train(args, work, budget)
                else:
                    result = part_eval(args, work, budget)
                result.setdefault("status", "ok")
            except Exception as exc:
                result = {
                    "status": "timeout" if isinstance(exc, TimeoutError) else "error",
                    "error": f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"[-3000:],
                }
                if name in CHILD_PARTS and result_file.exists():  # the rows measured before it stopped
                    try:
                        result = {**json.loads(result_file.read_text()), **result}
                    except ValueError:
                        pass
            result["seconds"] = round(time.perf_counter() - started, 1)
            report["parts"][name] = result
            report["total_s"] = round(time.perf_counter() - t0, 1)
            write_report(args.out, report)
            print(f"{name}: {result['status']} ({result['seconds']} s)", flush=True)
    finally:
        report["total_s"] = round(time.perf_counter() - t0, 1)
        write_report(args.out, report)
        if tmp is not None:
            tmp.cleanup()
    print(f"wrote {args.out / 'report.md'} and {args.out / 'report.json'} ({report['total_s']} s)")


if __name__ == "__main__":
    main()
