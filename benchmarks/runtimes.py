"""The CPU runtimes: speed, and whether an image's embedding depends on the other images of its batch.

On the same Holidays-dev photos, preprocessed once, for each runtime: model-only images/s at
batch 32 and one image at a time; the lowest cosine between an image embedded alone and inside a
batch of 32 (1.0: independent of its companions); the lowest cosine to torch fp32; Holidays-dev
mAP on the raw embeddings and after the collection's whitening (:mod:`vitsearch.search.whitening`,
learned from the 405 photos, as ``vitsearch eval`` does). Runtimes: ``torch`` (fp32), ``onnx``
(fp32), ``onnx-int8`` as the product builds it (MatMulNBits, 8-bit blocks of 32, int8 compute
with activations quantized per row: :mod:`vitsearch.search.runtimes`), and, for comparison,
``dynamic-int8``: ONNX Runtime's ``quantize_dynamic`` (int8 weights, one activation scale per
tensor, so per batch), the recipe of the int8 runtime before.

    python benchmarks/runtimes.py [--model M] [--limit 405]

Not a test: run by hand, report the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
HOLIDAYS = SHARED / "data" / "holidays-dev"


def holidays_map(vectors: np.ndarray, names: list[str]) -> float:
    from vitsearch.search.metrics import exact_rankings, load_dataset, ranking_figures

    data = load_dataset(HOLIDAYS)
    row = {n: i for i, n in enumerate(names)}
    queries = list(data.queries)
    ranks = exact_rankings(vectors, names, vectors[[row[q] for q in queries]], queries)
    return ranking_figures(dict(zip(queries, ranks)), data.queries, (10,)).map


def whitened(vectors: np.ndarray) -> np.ndarray:
    from vitsearch.search.whitening import Moments, Whitening

    moments = Moments(vectors.shape[1])
    moments.add(vectors)
    return Whitening.learn(moments).apply(vectors)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    parser.add_argument("--limit", type=int, default=405)
    args = parser.parse_args()
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from vitsearch.search.application import configure
    from vitsearch.search.encoder import Encoder
    from vitsearch.search.runtimes import OnnxEmbedder

    configure()
    names = sorted(str(p) for p in (HOLIDAYS / "images").glob("*.jpg"))[: args.limit]
    encoders = {rt: Encoder.load(args.model, runtime=rt) for rt in ("torch", "onnx", "onnx-int8")}
    pixels = torch.cat([encoders["torch"].preprocess([encoders["torch"].preprocessor.load(f)]) for f in names])
    runs = {rt: enc.embed_pixels for rt, enc in encoders.items()}
    with tempfile.TemporaryDirectory() as tmp:
        dynamic = Path(tmp) / "dynamic-int8.onnx"
        quantize_dynamic(str(encoders["onnx"].onnx.path), str(dynamic), weight_type=QuantType.QInt8)
        embedder = OnnxEmbedder(dynamic)
        runs["dynamic-int8"] = lambda x: embedder(x.numpy())
        rows, reference = [], None
        for rt, run in runs.items():
            run(pixels[:2])
            started = time.perf_counter()
            batched = np.concatenate([run(pixels[i : i + 32]) for i in range(0, len(pixels), 32)])
            batch_s = time.perf_counter() - started
            started = time.perf_counter()
            alone = np.concatenate([run(pixels[i : i + 1]) for i in range(len(pixels))])
            alone_s = time.perf_counter() - started
            reference = batched if reference is None else reference
            rows.append(
                (
                    rt,
                    len(pixels) / batch_s,
                    len(pixels) / alone_s,
                    float((batched * alone).sum(1).min()),
                    float((batched * reference).sum(1).min()),
                    holidays_map(alone, names),
                    holidays_map(whitened(alone), names),
                )
            )
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=Path(__file__).parent
    ).stdout.strip()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
        f"{torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}; commit {commit}; {len(names)} Holidays-dev "
        f"photos; model {Path(args.model).name}"
    )
    print(
        "| runtime | images/s, batch 32 | images/s, one at a time | cos alone vs in a batch (min) | "
        "cos to torch fp32 (min) | mAP raw | mAP whitened |"
    )
    print("|---|---|---|---|---|---|---|")
    for rt, b, a, same, ref, m_raw, m_white in rows:
        print(f"| {rt} | {b:.1f} | {a:.1f} | {same:.6f} | {ref:.5f} | {m_raw:.4f} | {m_white:.4f} |")


if __name__ == "__main__":
    main()
