"""Indexing throughput: is the indexer limited by the model alone?

Measures, in one run, on the same files, model and device:

1. **model only**: the encoder's forward passes on ready-made input batches (no decode, no I/O,
   no Milvus): the ceiling;
2. **naive loop**: one image at a time through ``AutoImageProcessor`` + ``AutoModel``, then one
   ``MilvusClient.insert`` per image (the pattern of Milvus's image-search tutorial), in a
   subprocess;
3. **vitsearch index**: the real command in a subprocess, into a fresh Milvus Lite database;
   its wall time includes Python start-up, imports, model loading and opening Milvus. Its own
   per-stage times (decode summed over workers, embed, write, input wait) come from ``--json``;
4. with ``--ray``, **vitsearch index --engine ray** the same way: a local Ray instance started by
   the command (its start-up included), decode tasks and encoder actors on this machine;
5. with ``--runtimes torch,onnx,onnx-int8``, for each runtime: model only, the cosine of its
   embeddings to torch fp32's on the same batch (the lowest over the batch), and the whole
   ``vitsearch index --runtime R`` process into a fresh database; with the ratios to torch. The
   ONNX export is made (and cached) by the model-only step, so the whole-process runs find it
   cached, as every run after a model's first does.

and prints images/s, ratios to model-only, peak RSS (each subprocess's ``ru_maxrss``; decode
workers, forked, are not counted).

    python benchmarks/index_throughput.py [FOLDER] [--model M] [--limit 400] [--batch-size B]
        [--workers W] [--replicate K] [--device cuda] [--dtype bfloat16] [--ray]
        [--runtimes torch,onnx,onnx-int8] [--naive-limit 0]

Defaults: ``$VITSEARCH_SHARED/data/catalog``, ``$VITSEARCH_SHARED/models/dinov2-small-9l``,
400 images, batch 32, 2 workers. ``--model vit-b16-random`` builds a ViT-B/16 (86 M parameters,
random weights) for timing. ``--replicate K`` links every file K times (for >= 5,000 images on a
GPU). Not a test: run by hand, report the table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitsearch.search.config import DEFAULT_BATCH_SIZE
from vitsearch.search.encoder import Encoder
from vitsearch.search.images import is_image_file, load_image

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))

NAIVE = """
import json, sys, time
import torch
from PIL import Image
from pymilvus import MilvusClient
from transformers import AutoImageProcessor, AutoModel
model, db, device, files = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
started = time.perf_counter()
processor = AutoImageProcessor.from_pretrained(model)
net = AutoModel.from_pretrained(model).to(device).eval()
client = MilvusClient(db)
client.create_collection("naive", dimension=net.config.hidden_size, metric_type="COSINE")
stages = {"decode": 0.0, "embed": 0.0, "write": 0.0}
loop = t0 = time.perf_counter()
for i, path in enumerate(files):
    image = Image.open(path).convert("RGB")
    inputs = processor(images=image, return_tensors="pt").to(device)
    t1 = time.perf_counter()
    with torch.no_grad():
        v = net(**inputs).last_hidden_state[:, 0]
    v = torch.nn.functional.normalize(v, dim=-1)[0].cpu().tolist()
    t2 = time.perf_counter()
    client.insert("naive", [{"id": i, "vector": v, "path": path}])
    t3 = time.perf_counter()
    stages["decode"] += t1 - t0; stages["embed"] += t2 - t1; stages["write"] += t3 - t2
    t0 = t3
end = time.perf_counter()
print(json.dumps({"seconds": end - started, "loop_seconds": end - loop, "stage_seconds": stages}))
"""


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[str, float, float]:
    """Run ``cmd``; return (stdout, wall seconds, the process's peak RSS in GB)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        out.seek(0), err.seek(0)
        if os.waitstatus_to_exitcode(status):
            raise SystemExit(f"{cmd[:4]} failed:\n{err.read()[-3000:]}")
        return out.read(), wall, usage.ru_maxrss / 2**20  # KB -> GB


def model_only(encoder: Encoder, files: list[Path], batch_size: int) -> float:
    """Images/s of forward passes alone, on inputs preprocessed beforehand."""
    pixels = encoder.preprocess([load_image(p) for p in files[:batch_size]])
    encoder.embed_pixels(pixels)  # warm-up
    if encoder.device.type == "cuda":
        torch.cuda.synchronize()
    n, started = 0, time.perf_counter()
    while n < len(files):
        encoder.embed_pixels(pixels)  # .cpu() inside waits for the device
        n += len(pixels)
    return n / (time.perf_counter() - started)


def build_vit_b16(folder: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    ViTModel(ViTConfig(), add_pooling_layer=False).save_pretrained(folder)  # ViT-B/16, 224
    ViTImageProcessor().save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default=str(SHARED / "data" / "catalog"))
    ap.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    ap.add_argument("--limit", type=int, default=400, help="distinct images taken from FOLDER")
    ap.add_argument("--replicate", type=int, default=1, help="link each image this many times")
    ap.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--device", default=None)
    ap.add_argument("--dtype", default=None)
    ap.add_argument("--naive-limit", type=int, default=400, help="images for the (slow) naive loop")
    ap.add_argument("--ray", action="store_true", help="also time `vitsearch index --engine ray`")
    ap.add_argument("--runtimes", default="", help="comma-separated runtimes to compare, e.g. torch,onnx,onnx-int8")
    args = ap.parse_args()
    runtimes = [r for r in args.runtimes.split(",") if r]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(build_vit_b16(tmp / "vit-b16")) if args.model == "vit-b16-random" else args.model
        distinct = sorted(p for p in Path(args.folder).rglob("*") if is_image_file(p))[: args.limit]
        folder = tmp / "images"
        folder.mkdir()
        for k in range(args.replicate):
            for p in distinct:
                (folder / f"{k:03d}-{p.name}").symlink_to(p.resolve())
        files = sorted(folder.iterdir())

        encoder = Encoder.load(model, device=args.device, dtype=args.dtype)
        ceiling = model_only(encoder, files, args.batch_size)
        device, dtype = str(encoder.device), str(encoder.dtype).replace("torch.", "")
        runtime = encoder.runtime
        del encoder

        naive_files = [str(p) for p in files[: args.naive_limit]]
        naive_wall = naive_rss = 0.0
        naive = None
        if naive_files:
            out, naive_wall, naive_rss = run_measured(
                [sys.executable, "-c", NAIVE, model, str(tmp / "naive.db"), device, *naive_files]
            )
            naive = json.loads(out)

        env = {**os.environ, "VITSEARCH_DATA_DIR": str(tmp / "data")}

        def vitsearch_index(db: str, *extra: str) -> tuple[dict, float, float]:
            cmd = [
                sys.executable,
                "-c",
                "from vitsearch.cli import main; main()",
                "index",
                str(folder),
                "--model",
                model,
                "--uri",
                str(tmp / db),
                "--batch-size",
                str(args.batch_size),
                "--json",
                *extra,
            ]
            if args.device:
                cmd += ["--device", args.device]
            if args.dtype:
                cmd += ["--dtype", args.dtype]
            out, wall, rss = run_measured(cmd, env)
            summary = json.loads(out)
            assert summary["indexed"] == len(files), summary
            return summary, wall, rss

        summary, wall, rss = vitsearch_index("vitsearch.db", "--workers", str(args.workers))
        ray = vitsearch_index("ray.db", "--engine", "ray") if args.ray else None
        compared = []  # (runtime, model-only images/s, lowest cosine to torch, whole-process images/s, summary)
        if runtimes:
            fp32 = Encoder.load(model, device=args.device, runtime="torch", dtype="float32")
            probe = fp32.preprocess([load_image(p) for p in files[: args.batch_size]])
            reference = fp32.embed_pixels(probe)
            del fp32
            for name in runtimes:
                encoder = Encoder.load(model, device=args.device, dtype=args.dtype, runtime=name)
                speed = model_only(encoder, files, args.batch_size)
                cosine = float((encoder.embed_pixels(probe) * reference).sum(axis=1).min())
                del encoder
                info, seconds, _ = vitsearch_index(
                    f"runtime-{name}.db", "--workers", str(args.workers), "--runtime", name
                )
                compared.append((name, speed, cosine, len(files) / seconds, info))

    n = len(files)
    nn = len(naive_files)
    rows = [("model only (forward on ready batches)", ceiling, None, "-", None, n)]
    if naive:
        rows.append(
            (
                f"naive loop, 1 image at a time ({nn} images)",
                nn / naive_wall,
                nn / naive["loop_seconds"],
                f"{naive_rss:.2f}",
                naive["stage_seconds"],
                nn,
            )
        )
    rows.append(
        (
            "vitsearch index (whole process)",
            n / wall,
            summary["images_per_s"],
            f"{rss:.2f}",
            summary["stage_seconds"],
            n,
        )
    )
    if ray:
        rows.append(
            (
                "vitsearch index --engine ray (local Ray)",
                n / ray[1],
                ray[0]["images_per_s"],
                f"{ray[2]:.2f}",
                ray[0]["stage_seconds"],
                n,
            )
        )
    print(
        f"\n{n} images ({len(distinct)} distinct) from {args.folder}; model {Path(args.model).name}; "
        f"{device} {dtype}, runtime {runtime}; batch {args.batch_size}; {args.workers} workers; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
        + (f", {torch.cuda.get_device_name()}" if device.startswith("cuda") else "")
    )
    print(
        "\nimages/s: whole process (start-up and model load included), in its loop, and per stage "
        "(images / seconds in that stage)"
    )
    print(f"\n{'':46} {'whole':>7} {'loop':>7} {'vs model':>8} {'decode':>7} {'embed':>7} {'write':>7} {'RSS GB':>7}")
    for name, whole, loop, peak, stages, count in rows:
        per_stage = [
            f"{count / stages[k]:7.0f}" if stages and stages[k] else f"{'':7}" for k in ("decode", "embed", "write")
        ]
        loop_s = f"{loop:7.1f}" if loop else f"{'':7}"
        print(f"{name:46} {whole:7.1f} {loop_s} {whole / ceiling:8.2f} {' '.join(per_stage)} {peak:>7}")
    st = summary["stage_seconds"]
    print(
        f"\nvitsearch index: {wall:.1f} s whole process, {summary['seconds']:.1f} s indexing; stages: "
        f"decode {st['decode']:.1f} s (CPU, summed over {args.workers} workers), embed {st['embed']:.1f} s, "
        f"write {st['write']:.1f} s (background), waited for input {st['wait']:.1f} s"
    )
    print(
        f"whole process vs model only: {n / wall / ceiling:.2f}"
        + (f"; vs naive loop: {(n / wall) / (nn / naive_wall):.1f}x" if naive else "")
    )
    if compared:
        base = {name: (speed, whole) for name, speed, _, whole, _ in compared}.get("torch")
        print(f"\nruntimes ({n} images, load average {os.getloadavg()[0]:.1f}; ratios to torch fp32 of this run)")
        print("| runtime | model only img/s | ratio | whole process img/s | ratio | cosine to torch fp32 (min) |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, speed, cosine, whole, _ in compared:
            ratios = (f"{speed / base[0]:.2f}", f"{whole / base[1]:.2f}") if base else ("-", "-")
            print(f"| {name} | {speed:.1f} | {ratios[0]} | {whole:.1f} | {ratios[1]} | {cosine:.5f} |")
    if ray:
        print(
            f"--engine ray vs --engine local, whole process: {ray[1] and wall / ray[1]:.2f} "
            f"(Ray's RSS is the driver's only; its workers are separate processes)"
        )


if __name__ == "__main__":
    main()
