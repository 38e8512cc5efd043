"""Decode + preprocess cost per image: transformers' AutoImageProcessor against vitsearch's
Preprocess, with and without reduced-scale JPEG decoding (``Image.draft``).

Large photos are where decoding can starve a GPU: by default this makes 4000x3000 JPEGs
(quality 92) from the example photos; pass a FOLDER to use your own. Also reports the cosine
between the embeddings of the AutoImageProcessor input and the draft-decoded input.

    python benchmarks/decode.py [FOLDER] [--model M] [--size 4000x3000] [--repeat 3]

Single process, single thread. Not a test: run by hand, report the table.
"""

from __future__ import annotations

import argparse
import io
import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from vitsearch.search.encoder import Encoder
from vitsearch.search.images import decode_bytes, decode_sized, is_image_file

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("VITSEARCH_SHARED", REPO.parent / "shared"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default=None)
    ap.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    ap.add_argument("--size", default="4000x3000", help="size of the made-up photos (no FOLDER)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()

    if args.folder:
        blobs = [p.read_bytes() for p in sorted(Path(args.folder).rglob("*")) if is_image_file(p)][:50]
        source = args.folder
    else:
        w, h = (int(v) for v in args.size.split("x"))
        blobs = []
        for p in sorted((REPO / "examples" / "images").glob("*.jpg")):
            buf = io.BytesIO()
            Image.open(p).convert("RGB").resize((w, h), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=92)
            blobs.append(buf.getvalue())
        source = f"{len(blobs)} example photos resized to {args.size}, JPEG q92"
    encoder = Encoder.load(args.model)
    pre = encoder.preprocessor
    ways = {
        "AutoImageProcessor, full decode": lambda b: encoder.processor(
            images=[decode_bytes(b, "x")], return_tensors="np"
        )["pixel_values"][0],
        "vitsearch Preprocess, full decode": lambda b: pre(decode_bytes(b, "x")),
        f"vitsearch Preprocess, draft decode (>= {pre.draft_px} px)": lambda b: pre(
            decode_sized(b, "x", draft_px=pre.draft_px)[0]
        ),
    }
    print(f"\n{source}; model {Path(args.model).name}; {type(encoder.processor).__name__}\n")
    print(f"{'':52} {'ms/image':>9} {'vs HF':>6}")
    times = {}
    for name, fn in ways.items():
        fn(blobs[0])
        started = time.perf_counter()
        for _ in range(args.repeat):
            for b in blobs:
                fn(b)
        times[name] = 1000 * (time.perf_counter() - started) / (args.repeat * len(blobs))
        print(f"{name:52} {times[name]:9.1f} {times[name] / next(iter(times.values())):6.2f}")
    reference, drafted = list(ways.values())[0], list(ways.values())[2]
    a = encoder.embed_pixels(torch.from_numpy(np.stack([reference(b) for b in blobs])))
    d = encoder.embed_pixels(torch.from_numpy(np.stack([drafted(b) for b in blobs])))
    print(f"\nembedding cosine, draft vs AutoImageProcessor input: min {(a * d).sum(1).min():.6f}")


if __name__ == "__main__":
    main()
