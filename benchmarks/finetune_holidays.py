"""Does fine-tuning on labelled photos help retrieval of *other* photos? `vitsearch train --from`
on real photos, measured by `vitsearch eval` on held-out classes.

INRIA Holidays (dev part, ``$VITSEARCH_SHARED/data/holidays-dev``) groups 405 photos into 150
scenes. The scenes are split in two by group number: even groups are the training classes
(those with at least 3 photos, as ``train``'s validation split needs), odd groups the held-out
classes (those with at least 2 photos), never seen in training. Both become class folders
(symbolic links). The pretrained encoder and the fine-tuned one are each measured with
``vitsearch eval`` on the held-out classes (every photo queries the others; mAP, recall@k), and
``train`` prints its own per-epoch figures on the training classes' validation split.

    python benchmarks/finetune_holidays.py [--model PATH] [--epochs 3] [--lr 1e-5] [--batch-size 16]

Not a test: run by hand, report the table (2 CPU cores: a few minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from vitsearch.train import train

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))
VITSEARCH = [sys.executable, "-c", "from vitsearch.cli import main; main()"]


def class_folders(holidays: Path, out: Path, parity: int, at_least: int) -> int:
    """Link the photos of the groups with ``group % 2 == parity`` and ``at_least`` photos into
    ``out/<group>/``; return the number of classes."""
    truth = json.loads((holidays / "groundtruth.json").read_text())
    groups: dict[int, list[str]] = defaultdict(list)
    for query, relevant in truth.items():
        for name in {query, *relevant}:
            groups[int(name[:4])].append(name)
    kept = {g: names for g, names in groups.items() if g % 2 == parity and len(set(names)) >= at_least}
    for g, names in kept.items():
        (out / str(g)).mkdir(parents=True)
        for name in sorted(set(names)):
            (out / str(g) / name).symlink_to((holidays / "images" / name).resolve())
    return len(kept)


def evaluate(dataset: Path, model: str) -> dict:
    out = subprocess.run(
        [*VITSEARCH, "eval", str(dataset), "--model", model, "--json"], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--holidays", default=str(SHARED / "data" / "holidays-dev"))
    ap.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_train = class_folders(Path(args.holidays), tmp / "train", parity=0, at_least=3)
        n_held = class_folders(Path(args.holidays), tmp / "held-out", parity=1, at_least=2)
        print(
            f"training classes {n_train} ({sum(1 for _ in (tmp / 'train').rglob('*.jpg'))} photos), "
            f"held-out classes {n_held} ({sum(1 for _ in (tmp / 'held-out').rglob('*.jpg'))} photos)"
        )
        before = evaluate(tmp / "held-out", args.model)
        result = train(
            tmp / "train",
            tmp / "tuned",
            from_model=args.model,
            epochs=args.epochs,
            lr=args.lr,
            batch_size=args.batch_size,
            on_epoch=lambda r: print(r.line(args.epochs), flush=True),
        )
        after = evaluate(tmp / "held-out", str(result.out_dir))

    print(
        f"\nheld-out classes (never trained on), `vitsearch eval`; {args.epochs} epochs, lr {args.lr}, "
        f"batch {args.batch_size}, {result.device}, training {result.seconds:.0f} s"
    )
    print(f"{'encoder':24} {'mAP':>7} {'R@1':>7} {'R@5':>7} {'R@10':>7} {'P@1':>7}")
    for name, r in (("pretrained", before), ("fine-tuned", after)):
        print(
            f"{name:24} {r['map']:7.4f} {r['recall']['1']:7.4f} {r['recall']['5']:7.4f} {r['recall']['10']:7.4f} "
            f"{r['precision']['1']:7.4f}"
        )


if __name__ == "__main__":
    main()
