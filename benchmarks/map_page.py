"""The Map page in a real browser: how long until the map is drawn, and how soon a hover answers.

Makes a collection of ``--rows`` synthetic vectors (``benchmarks/map.py``'s: unit vectors around
20 centres, the paths' folders their groups) or indexes ``--folder`` with ``--model``, computes
its map (``vitsearch map``'s :func:`~vitsearch.search.embedding_map.embedding_map`, kept with the
collection), starts ``vitsearch ui`` on it and drives Debian's headless Chromium with Playwright:

- **load**: ``--loads`` times, a fresh page opened at ``/map``, the time from the request until
  plotly has drawn every point (the WebGL scatter's traces hold all rows). The first load is the
  server's first read of the kept map (then cached per server process), the others are not.
- **hover**: the mouse moved onto ``--hovers`` points (their pixel position from plotly's axes),
  the time until the hover label shows.

Saves ``map.png`` (the page) and ``hover.png`` in ``--out``. Not a test: run by hand, report the
table (docs/benchmarks/map.md).

    python benchmarks/map_page.py [--rows 100000 | --folder DIR [--model M]] [--loads 10] [--hovers 10]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
from browser import chromium_page, ui_server  # noqa: E402
from map import MODEL, fill  # noqa: E402

from vitsearch.search.store import Store  # noqa: E402

#: JavaScript: the number of points plotly has drawn (0 before the chart exists).
DRAWN = """() => {
  const gd = document.querySelector('.js-plotly-plot');
  if (!gd || !gd._fullData || !gd.querySelector('canvas')) return 0;
  return gd._fullData.reduce((n, t) => n + (t.x ? t.x.length : 0), 0);
}"""
#: JavaScript: the page position of point ``i`` of the first trace.
POINT = """(i) => {
  const gd = document.querySelector('.js-plotly-plot');
  const fl = gd._fullLayout, t = gd._fullData[0], box = gd.getBoundingClientRect();
  return [box.left + fl._size.l + fl.xaxis.l2p(t.x[i]), box.top + fl._size.t + fl.yaxis.l2p(t.y[i])];
}"""


def make_collection(args, uri: str) -> int:
    """The collection ``images`` at ``uri`` with its map kept; returns its rows."""
    from vitsearch.search.embedding_map import embedding_map

    with Store(uri, "images") as store:
        if args.folder:
            from vitsearch.indexer import index_folder
            from vitsearch.search.encoder import Encoder

            index_folder(args.folder, encoder=Encoder.load(args.model), store=store, workers=0)
        else:
            fill(store, args.rows, 384, 1.0, 20)
        started = time.perf_counter()
        emap = embedding_map(store)
        print(
            f"map: {len(emap.paths):,} rows, {emap.record['clusters']} clusters, {time.perf_counter() - started:.1f} s"
        )
        store.close(release=True)  # the page's server serves the database now
        return len(emap.paths)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--folder", help="index this folder instead of synthetic rows")
    ap.add_argument("--model", default=str(MODEL))
    ap.add_argument("--loads", type=int, default=10)
    ap.add_argument("--hovers", type=int, default=10)
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "vitsearch-map-page"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        uri = str(Path(tmp) / "milvus.db")
        rows = make_collection(args, uri)
        loads, hovers = [], []
        with ui_server(uri, out / "ui.log") as url, chromium_page() as page:
            for i in range(args.loads):
                page.goto("about:blank")
                started = time.perf_counter()
                page.goto(f"{url}/map")
                page.wait_for_function(f"() => ({DRAWN})() >= {rows}", timeout=600_000, polling=50)
                loads.append(time.perf_counter() - started)
                print(f"load {i + 1}: {loads[-1]:.2f} s", flush=True)
            page.screenshot(path=out / "map.png")
            n0 = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData[0].x.length")
            for i in np.linspace(0, n0 - 1, args.hovers).astype(int).tolist():
                x, y = page.evaluate(POINT, i)
                page.mouse.move(1, 1)
                page.wait_for_timeout(200)
                started = time.perf_counter()
                page.mouse.move(x, y)
                page.wait_for_selector(".hoverlayer .hovertext", timeout=30_000)
                hovers.append(time.perf_counter() - started)
            page.screenshot(path=out / "hover.png")
    what = args.folder or f"{rows:,} synthetic rows"
    print(f"\n{what}; {platform.machine()}, {os.cpu_count()} CPUs; Chromium (headless), 1400x1100")
    print("| measure | p50 | max | n |\n|---|---|---|---|")
    print(f"| load until every point is drawn (s) | {np.median(loads):.2f} | {max(loads):.2f} | {len(loads)} |")
    print(f"| first load, the kept map read by the server (s) | {loads[0]:.2f} | | 1 |")
    if hovers:
        print(f"| hover label shown (ms) | {1000 * np.median(hovers):.0f} | {1000 * max(hovers):.0f} | {len(hovers)} |")
    print(f"screenshots: {out / 'map.png'}, {out / 'hover.png'}")


if __name__ == "__main__":
    main()
