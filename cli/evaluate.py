"""``vitsearch eval``: parse, call :func:`vitsearch.indexer.evaluate`, print the figures."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vitsearch.search.config import DEFAULT_MODEL
from vitsearch.search.errors import BadQueryError, VitsearchError

from .common import (
    COLLECTION,
    DEVICE,
    EXPAND,
    IMAGE_SIZE,
    POOLING,
    RUNTIME,
    WHITENING,
    Pooling,
    Runtime,
    Whitening,
    app,
    fail,
    progress_bar,
    settings,
)


@app.command("eval", epilog="Docs: docs/guides/eval.md")
def eval_(
    dataset: Path = typer.Argument(
        ...,
        exists=True,
        file_okay=False,
        dir_okay=True,
        help="images/ + groundtruth.json (query file -> relevant files), or one subfolder of images per class.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help=f"Hub id, local folder or pulled model name. (env VITSEARCH_MODEL; default: {DEFAULT_MODEL})",
    ),
    pooling: Pooling | None = POOLING,
    image_size: int | None = IMAGE_SIZE,
    k: str = typer.Option("1,5,10", "--k", help="Cut-offs for recall@k and precision@k, comma-separated."),
    uri: str | None = typer.Option(
        None,
        "--uri",
        help="Reuse this Milvus (with --collection); default: a temporary Milvus Lite database, deleted afterwards.",
    ),
    collection: str | None = COLLECTION,
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per forward pass."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Decode/preprocess processes."),
    device: str | None = DEVICE,
    runtime: Runtime | None = RUNTIME,
    whitening: Whitening | None = WHITENING,
    expand: int = EXPAND,
    unrelated: Path | None = typer.Option(
        None,
        "--unrelated",
        exists=True,
        file_okay=False,
        dir_okay=True,
        help="A folder of images that match nothing in DATASET: the share "
        'of them answered "no close match" is reported.',
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON documented in docs/guides/eval.md."),
) -> None:
    """Measure retrieval quality on a labelled set: mAP, recall@k, precision@k, ANN recall@10.

    DATASET is indexed with the normal indexer (incremental, so a reused collection is not
    embedded twice); the stored vectors are read once and every query is ranked exactly over
    them (the query left out of its own ranking), in the collection's space (whitened, unless
    --whitening none), each query expanded first with --expand; a sample of queries is searched
    through Milvus, and the index's top-10 compared with the exact one (ANN recall@10). The
    close-match label is scored on each query's top hit (precision, recall), and on --unrelated
    images (the share answered "no close match").
    """
    try:
        ks = sorted({int(v) for v in k.split(",") if v.strip()})
        if not ks or ks[0] < 1:
            raise ValueError
    except ValueError:
        fail(f"--k takes positive integers separated by commas, got {k!r}", code=2)
    s = settings(
        model=model,
        pooling=pooling and pooling.value,
        image_size=image_size,
        batch_size=batch_size,
        workers=workers,
        device=device,
        runtime=runtime and runtime.value,
    )
    from vitsearch.indexer import evaluate  # after settings(): the process set up before pymilvus loads

    try:
        report = evaluate(
            dataset,
            s,
            ks,
            uri=uri,
            collection=collection,
            progress=progress_bar(),
            whitening=whitening and whitening.value,
            expand=expand,
            unrelated=unrelated,
        )
    except BadQueryError as exc:
        fail(str(exc), code=2)
    except VitsearchError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    _print_figures(dataset, report)


def _print_figures(dataset: Path, report) -> None:
    """The figures of an :class:`~vitsearch.indexer.EvalReport`, one line each."""
    result = report.result
    typer.echo(
        f"{dataset}: {report.layout}, {report.images} images, {result.queries} queries; "
        f"model {report.model}, pooling {report.pooling}, {report.dim}-d, input {report.image_size}, "
        f"runtime {report.runtime}; {report.whitening} embeddings"
        + (f", query expansion {report.expand}" if report.expand else "")
    )
    typer.echo(f"{'mAP':>14}  {result.map:.4f}")
    for name, values in (("recall", result.recall), ("precision", result.precision)):
        typer.echo("  ".join(f"{f'{name}@{kk}':>14}  {v:.4f}" for kk, v in values.items()))
    typer.echo(
        f"{'close match':>14}  precision {result.match_precision:.4f}, recall {result.match_recall:.4f} "
        f"(the label on each query's top hit)"
        + (
            f'; {result.unrelated_rejected:.4f} of {result.unrelated} unrelated queries answered "no close match"'
            if result.unrelated_rejected is not None
            else ""
        )
    )
    typer.echo(
        f"{'ANN recall@10':>14}  {result.ann_recall_at_10:.4f} (the index's top-10 against exact search, "
        f"{result.ann_queries} queries)"
    )
    typer.echo(
        f"{'seconds':>14}  index {report.seconds['index']} ({report.images_per_s} images/s), "
        f"search {report.seconds['search']}, total {report.seconds['total']}"
    )
