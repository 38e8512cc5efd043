"""``vitsearch export``: parse, call :meth:`~vitsearch.search.client.SearchClient.export`, print."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vitsearch.search.errors import VitsearchError
from vitsearch.search.export import ExportFormat, ExportSpace
from vitsearch.search.paths import absolute, printable

from .common import COLLECTION, JSON, URI, app, fail, open_client


@app.command(epilog="Docs: docs/guides/export.md")
def export(
    out: Path = typer.Argument(
        ...,
        metavar="OUT",
        dir_okay=False,
        help="File to write: OUT itself for Parquet; for npy, OUT's name with .npy (vectors) and .csv (metadata).",
    ),
    fmt: ExportFormat = typer.Option(
        ExportFormat.parquet,
        "--format",
        help="parquet: one file, the vector a column of fixed-size float32 lists; npy: an (N, D) float32 .npy "
        "and a .csv of the metadata, row for row.",
    ),
    space: ExportSpace = typer.Option(
        ExportSpace.raw,
        "--space",
        help="raw: the model's L2-normalised CLS embeddings; searched: the vectors the collection stores and "
        "searches (whitened where it is).",
    ),
    folder: str | None = typer.Option(None, "--folder", help="Only the images in this folder or below it."),
    as_json: bool = JSON,
    uri: str | None = URI,
    collection: str | None = COLLECTION,
) -> None:
    """Write the collection's embeddings and metadata (path, folder, size, mtime, ctime_ns, inode,
    width, height, sha256, indexed_at) to a file for your own tools; no model is loaded.

    The rows are streamed (memory does not grow with the collection) and each file appears under
    its name only when complete. Paths are written as stored: a backslash doubled, a byte that is
    not UTF-8 as \\xNN. Exit codes: 0, 1 Milvus, collection or file trouble, 2 a bad option.
    """
    from tqdm import tqdm

    try:
        with open_client(uri, collection, None, None) as client:
            total = client.store.count(absolute(folder) if folder else None)
            with tqdm(total=total, unit="row", desc="exporting", dynamic_ncols=True, disable=None, leave=False) as bar:
                report = client.export(out, format=fmt, folder=folder, space=space, on_rows=bar.update)
    except VitsearchError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write {printable(str(out))}: {exc.strerror or exc}")
    if as_json:
        typer.echo(json.dumps(report.__dict__ | {"seconds": round(report.seconds, 3)}))
        return
    rate = report.rows / report.seconds if report.seconds else 0.0
    typer.echo(
        f"{report.rows:,} rows ({report.dim}-d {report.space} vectors) written to "
        f"{', '.join(printable(f) for f in report.files)} in {report.seconds:.1f} s ({rate:,.0f} rows/s)"
    )
