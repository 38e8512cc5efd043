"""What a user of the page waits for: upload to results shown, in a real browser.

Indexes a folder with ``vitsearch index`` (a subprocess, as a user would), starts ``vitsearch ui``
on it, and drives Debian's headless Chromium with Playwright: for each query photo, the time
from the upload until the whole grid (top-12, every thumbnail loaded, the photo itself first)
is on screen. The baseline, measured in the same run, is ``SearchClient.search`` on the same
files from Python (decode + embed + Milvus, no page), so the ratio is what the page adds.

    python benchmarks/ui_latency.py [FOLDER] [--model M] [--queries 20] [--out DIR]

Defaults: ``$VITSEARCH_SHARED/data/catalog`` (all of it), ``$VITSEARCH_SHARED/models/
dinov2-small-9l``, 20 queries spread over the folder. Saves ``results.png`` (a search) and
``more-like-this.png`` in ``--out``. Not a test: run by hand, report the table.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import chromium_page, results_shown, ui_server, upload_and_wait  # noqa: E402

from vitsearch.search import SearchClient  # noqa: E402
from vitsearch.search.images import is_image_file  # noqa: E402

SHARED = Path(os.environ.get("VITSEARCH_SHARED", Path(__file__).resolve().parents[2] / "shared"))


def ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(samples) * 1000, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", nargs="?", default=str(SHARED / "data" / "catalog"))
    ap.add_argument("--model", default=str(SHARED / "models" / "dinov2-small-9l"))
    ap.add_argument("--queries", type=int, default=20)
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "vitsearch-ui-bench"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in Path(args.folder).rglob("*") if is_image_file(p))
    queries = [files[i] for i in np.linspace(0, len(files) - 1, args.queries).astype(int)]

    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "milvus.db")
        t = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-c",
                "from vitsearch.cli import main; main()",
                "index",
                args.folder,
                "--model",
                args.model,
                "--uri",
                uri,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        index_s = time.perf_counter() - t

        with ui_server(uri, out / "ui.log") as url, chromium_page(height=2200) as page:
            t = time.perf_counter()
            page.goto(url)  # the first page load opens the collection and loads the encoder
            page.get_by_text("Drop a photo to find similar images").wait_for(timeout=300_000)
            first_load_s = time.perf_counter() - t
            upload_and_wait(page, queries[-1])  # warm-up: first thumbnails, first forward pass
            ui = [upload_and_wait(page, q) for q in queries]
            page.screenshot(path=out / "results.png")
            page.get_by_role("button", name="More like this").nth(1).click()
            page.get_by_text("More like ").first.wait_for(timeout=60_000)
            time.sleep(0.5)
            results_shown(
                page,
                page.eval_on_selector(
                    "[data-testid=stColumn] [data-testid=stMarkdownContainer] p code", "c => c.innerText"
                ),
            )
            page.screenshot(path=out / "more-like-this.png")

            with SearchClient(uri=uri) as client:  # connects to the page's server process
                client.search(queries[-1], k=12)
                direct = []
                for q in queries:
                    t = time.perf_counter()
                    hits = client.search(q, k=12)
                    direct.append(time.perf_counter() - t)
                    assert hits[0].path == str(q)
                count = client.stats()["count"]

    print(
        f"\nvitsearch ui, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"model {Path(args.model).name}, {count} images from {args.folder}, {len(queries)} queries, top-12"
    )
    print(
        f"indexing (vitsearch index, whole process): {index_s:.1f} s; first page load with model: {first_load_s:.1f} s\n"
    )
    print(f"{'':42} {'p50 ms':>8} {'p90 ms':>8} {'max ms':>8}")
    rows = [("SearchClient.search (baseline)", direct), ("page: upload to results shown", ui)]
    for name, samples in rows:
        print(f"{name:42} {ms(samples, 50):8.0f} {ms(samples, 90):8.0f} {ms(samples, 100):8.0f}")
    print(f"\npage / baseline (p50): {ms(ui, 50) / ms(direct, 50):.1f}x; screenshots in {out}")


if __name__ == "__main__":
    main()
