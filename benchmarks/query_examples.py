"""Queries of more than one whole picture, measured through SearchClient: a box around an object,
and several examples with negatives.

``regions``: the collection is the catalogue (product photos on white) and Holidays-dev (scenes).
Each of ``--composites`` composites pastes a random catalogue photo, its longer side 30-60 % of
the background's shorter side, at a random position of a random Holidays photo (seeded). Query
once with the whole composite and once with the box around the pasted product; report the share
of composites whose product original is the top hit (rank 1) and within the top 10.

``examples``: the collection is Holidays-dev (405 photos, 150 groups of one scene or object),
whitened as the product learns it.

- *Two positives*: for each group of 3 or more photos, its first two photos as examples; the
  relevant items are the group's other photos. AP of each photo alone and of both together
  (``search_examples``), each ranking over the collection without the two examples. Reported:
  mAP of one example (the mean over both), of the better one of the two per group (an oracle),
  and of both.
- *A negative*: for each group's query photo, its top-ranked photo of another group is the
  confuser; search again with the confuser as a negative. Reported: mAP of the group's other
  photos, and the mean rank of the confuser group's other photos (higher: pushed down), without
  and with the negative, and the share of queries whose confuser group moved down.

    python benchmarks/query_examples.py regions [--composites 100] [--model M] [--work DIR]
    python benchmarks/query_examples.py examples [--model M] [--work DIR]

The collections are built with the real indexer (default model: ``dinov2-small-9l`` from
``$VITSEARCH_SHARED/models``, the CPU default runtime) in ``--work`` (kept between runs: a
second run indexes nothing). Not a test: run by hand, report the tables
(docs/benchmarks/query-examples.md).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vitsearch.indexer import index_folder
from vitsearch.search import SearchClient
from vitsearch.search.encoder import Encoder
from vitsearch.search.metrics import average_precision
from vitsearch.search.query import Stored
from vitsearch.search.store import Store

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[1].parent / "shared"))
HOLIDAYS = SHARED / "data" / "holidays-dev"
CATALOG = SHARED / "data" / "catalog"


def collection(work: Path, name: str, folders: dict[str, Path], model: str) -> str:
    """A Lite database in ``work`` holding the photos of ``folders`` (linked under ``work/name/``), indexed."""
    root = work / name
    root.mkdir(parents=True, exist_ok=True)
    for sub, source in folders.items():  # the photos linked one by one: the scan follows links to files
        (root / sub).mkdir(exist_ok=True)
        for photo in sorted(source.glob("*.jpg")):
            if not (root / sub / photo.name).exists():
                (root / sub / photo.name).symlink_to(photo)
    uri = str(work / f"{name}.db")
    with Store(uri, name) as store:
        started = time.perf_counter()
        report = index_folder(str(root), encoder=Encoder.load(model), store=store)
        if report.indexed:
            print(f"indexed {report.indexed} photos into {name} in {time.perf_counter() - started:.0f} s", flush=True)
    return uri


def composites(n: int, seed: int = 0):
    """``n`` (composite image, box, product path) with the product pasted onto a scene."""
    rng = random.Random(seed)
    products = sorted(CATALOG.glob("*.jpg"))
    scenes = sorted((HOLIDAYS / "images").glob("*.jpg"))
    for _ in range(n):
        product, scene = rng.choice(products), rng.choice(scenes)
        with Image.open(scene) as s, Image.open(product) as p:
            background, item = s.convert("RGB"), p.convert("RGB")
        side = rng.uniform(0.3, 0.6) * min(background.size)
        scale = side / max(item.size)
        item = item.resize((max(1, round(item.width * scale)), max(1, round(item.height * scale))), Image.BICUBIC)
        x = rng.randrange(0, background.width - item.width + 1)
        y = rng.randrange(0, background.height - item.height + 1)
        background.paste(item, (x, y))
        yield background, (x, y, item.width, item.height), product.name


def regions(args) -> None:
    uri = collection(args.work, "regions", {"catalog": CATALOG, "holidays": HOLIDAYS / "images"}, args.model)
    found = {"whole composite": [0, 0], "box around the product": [0, 0]}
    with SearchClient(uri, "regions") as client:
        for image, box, product in composites(args.composites):
            for kind, kwargs in (("whole composite", {}), ("box around the product", {"box": box})):
                hits = [Path(h.path).name for h in client.search(image, k=10, **kwargs)]
                found[kind][0] += bool(hits) and hits[0] == product
                found[kind][1] += product in hits
    print(f"\n{args.composites} composites; {describe(args)}")
    print("| query | product original at rank 1 | in the top 10 |")
    print("|---|---|---|")
    for kind, (top1, top10) in found.items():
        print(f"| {kind} | {top1 / args.composites:.2f} | {top10 / args.composites:.2f} |")


def examples(args) -> None:
    uri = collection(args.work, "holidays", {"images": HOLIDAYS / "images"}, args.model)
    truth = json.loads((HOLIDAYS / "groundtruth.json").read_text())
    root = str(args.work / "holidays" / "images")
    groups = [[os.path.join(root, q), *(os.path.join(root, o) for o in others)] for q, others in sorted(truth.items())]
    group_of = {p: i for i, g in enumerate(groups) for p in g}
    with SearchClient(uri, "holidays") as client:
        n = client.store.count()
        print(f"\n{n} photos, {len(groups)} groups; space: {client.stats()['space']}; {describe(args)}")

        def ranking(positive, negative=(), leave_out=()):
            hits = client.search_examples([Stored(p) for p in positive], [Stored(p) for p in negative], k=n)
            return [h.path for h in hits if h.path not in leave_out]

        single, best, both = [], [], []
        for g in (g for g in groups if len(g) >= 3):
            a, b, relevant = g[0], g[1], set(g[2:])
            ap_a = average_precision(ranking([a], leave_out={b}), relevant)
            ap_b = average_precision(ranking([b], leave_out={a}), relevant)
            single.append((ap_a + ap_b) / 2)
            best.append(max(ap_a, ap_b))
            both.append(average_precision(ranking([a, b]), relevant))
        print(f"\nTwo positives ({len(both)} groups of 3 or more photos)")
        print("| examples | mAP |")
        print("|---|---|")
        print(f"| one photo (mean of the two) | {np.mean(single):.4f} |")
        print(f"| the better photo of the two (oracle) | {np.mean(best):.4f} |")
        print(f"| both photos | {np.mean(both):.4f} |")

        before_ap, after_ap, before_rank, after_rank, moved = [], [], [], [], 0
        for g in groups:
            query, relevant = g[0], set(g[1:])
            plain = ranking([query])
            confuser = next((p for p in plain if group_of[p] != group_of[query]), None)
            if confuser is None:
                continue
            rivals = [p for p in groups[group_of[confuser]] if p != confuser]
            pushed = ranking([query], [confuser])
            plain = [p for p in plain if p != confuser]  # both rankings without the negative itself
            before_ap.append(average_precision(plain, relevant))
            after_ap.append(average_precision(pushed, relevant))
            if rivals:
                rb = np.mean([plain.index(p) + 1 for p in rivals])
                ra = np.mean([pushed.index(p) + 1 for p in rivals])
                before_rank.append(rb)
                after_rank.append(ra)
                moved += ra > rb
        print(f"\nA negative: the query photo's top photo of another group ({len(before_ap)} queries)")
        print("| query | mAP of the group | mean rank of the confuser's group | confuser group moved down |")
        print("|---|---|---|---|")
        print(f"| the photo | {np.mean(before_ap):.4f} | {np.mean(before_rank):.1f} | |")
        print(
            f"| the photo, the confuser as a negative | {np.mean(after_ap):.4f} | {np.mean(after_rank):.1f} | "
            f"{moved}/{len(after_rank)} |"
        )


def describe(args) -> str:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return f"model {Path(args.model).name}; {platform.machine()}, {os.cpu_count()} cores; commit {commit}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["regions", "examples"])
    ap.add_argument("--composites", type=int, default=100)
    ap.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vitsearch-query-examples")
    ap.add_argument("--fresh", action="store_true", help="index again from scratch")
    args = ap.parse_args()
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True, exist_ok=True)
    regions(args) if args.what == "regions" else examples(args)


if __name__ == "__main__":
    main()
