"""``vitsearch map``: parse, call :func:`~vitsearch.search.embedding_map.embedding_map`, print."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import typer

from vitsearch.search.embedding_map import SAMPLE_SIZE
from vitsearch.search.errors import VitsearchError
from vitsearch.search.paths import printable, stored_path

from .common import COLLECTION, JSON, URI, app, fail, open_client

#: Clusters listed by the table (largest first); --json lists them all.
CLUSTERS_SHOWN = 20


@app.command(name="map", epilog="Docs: docs/guides/map.md")
def map_command(
    recompute: bool = typer.Option(False, "--recompute", help="Compute the map again even if the kept one is fresh."),
    sample_size: int = typer.Option(
        SAMPLE_SIZE,
        "--sample-size",
        min=2,
        help="Images laid out together at most; a larger collection lays out a sample of this many and "
        "places the others by their 10 most similar sampled images. Used when the map is computed.",
    ),
    seed: int = typer.Option(0, "--seed", help="Seeds the sample and the layout (the same seed, the same map)."),
    out: Path | None = typer.Option(
        None, "--csv", dir_okay=False, help="Also write the map's rows (path, x, y, cluster, label) to this CSV."
    ),
    as_json: bool = JSON,
    uri: str | None = URI,
    collection: str | None = COLLECTION,
) -> None:
    """Lay the collection out in 2-D (UMAP of the vectors it searches) and group it into clusters
    (HDBSCAN), each labelled by its most central images: what the app's Map page draws.

    The map is kept with the collection and reused until the collection's image count moves by
    10% or its space changes (or --recompute); no model is loaded. Exit codes: 0, 1 Milvus,
    collection or file trouble, 2 a bad option.
    """
    from tqdm import tqdm

    from vitsearch.search.embedding_map import embedding_map

    try:
        with open_client(uri, collection, None, None) as client:
            total = client.store.count()
            with tqdm(total=total, unit="row", desc="reading", dynamic_ncols=True, disable=None, leave=False) as bar:

                def stage(what: str) -> None:
                    bar.set_description(what)
                    if what == "placing":  # the second read of the rows
                        bar.reset(total)

                emap = embedding_map(
                    client.store,
                    recompute=recompute,
                    sample_size=sample_size,
                    random_state=seed,
                    on_rows=bar.update,
                    on_stage=stage,
                )
    except VitsearchError as exc:
        fail(str(exc))
    if out is not None:
        try:
            write_csv(out, emap)
        except OSError as exc:
            fail(f"cannot write {printable(str(out))}: {exc.strerror or exc}")
    sizes = {c: int((emap.cluster == c).sum()) for c in emap.labels}
    if as_json:
        clusters = [{"cluster": c, "size": sizes[c], "labels": emap.labels[c]} for c in sorted(sizes)]
        noise = int((emap.cluster < 0).sum())
        typer.echo(json.dumps({**emap.record, "computed": emap.computed, "noise": noise, "cluster_list": clusters}))
        return
    r = emap.record
    how = "computed" if emap.computed else "kept map, reused"
    typer.echo(
        f"{r['rows']:,} images, {r['clusters']} clusters ({how}; {r['method']}, {r['sampled']:,} laid out, "
        f"{r['seconds']:.1f} s)"
    )
    for c in sorted(sizes, key=lambda c: -sizes[c])[:CLUSTERS_SHOWN]:
        names = ", ".join(printable(os.path.basename(p)) for p in emap.labels[c][:3])
        typer.echo(f"  cluster {c:>3}  {sizes[c]:>7,} images  {names}")
    if len(sizes) > CLUSTERS_SHOWN:
        typer.echo(f"  ... {len(sizes) - CLUSTERS_SHOWN} more (--json lists them all)")


def write_csv(out: Path, emap) -> None:
    """The map's rows as CSV, paths in stored form (see ``vitsearch export``), written atomically."""
    from vitsearch.search.files import written

    rank = {p: i for paths in emap.labels.values() for i, p in enumerate(paths)}
    with written(out) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "x", "y", "cluster", "label"])
        for path, (x, y), c in zip(emap.paths, emap.xy.tolist(), emap.cluster.tolist()):
            w.writerow([stored_path(path), f"{x:.5f}", f"{y:.5f}", c, rank.get(path, -1)])
