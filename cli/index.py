"""``vitsearch index``: parse, build an :class:`~vitsearch.indexer.IndexJob` with this process's
executor (or the Ray engine's) and run it, print the summary."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path

import typer

from vitsearch.search.config import DEFAULT_MODEL, Settings
from vitsearch.search.encoder_info import EncoderInfo
from vitsearch.search.errors import VitsearchError
from vitsearch.search.paths import printable

from .common import (
    COLLECTION,
    DEVICE,
    DTYPE,
    IMAGE_SIZE,
    JSON,
    POOLING,
    RUNTIME,
    URI,
    WHITENING,
    Pooling,
    Runtime,
    Whitening,
    app,
    fail,
    progress_bar,
    settings,
)


class Engine(StrEnum):
    """``--engine`` values: this process (:mod:`vitsearch.indexer.runner`) or a Ray cluster
    (:mod:`vitsearch.indexer.ray_engine`)."""

    local = "local"
    ray = "ray"


@app.command(epilog="Docs: docs/guides/indexing.md")
def index(
    folder: str = typer.Argument(
        ...,
        metavar="SOURCE",
        help="Folder of images, scanned recursively; with --engine ray also a URI such as s3://bucket/prefix.",
    ),
    model: str | None = typer.Option(
        None,
        "--model",
        help="Hub id, local folder or pulled model "
        "name. (env VITSEARCH_MODEL; default: the collection's model, "
        f"for a new collection {DEFAULT_MODEL} from the Hugging Face hub; "
        "offline: vitsearch model pull dinov2-small-9l, then --model "
        "dinov2-small-9l)",
    ),
    pooling: Pooling | None = POOLING,
    image_size: int | None = IMAGE_SIZE,
    uri: str | None = URI,
    collection: str | None = COLLECTION,
    batch_size: int | None = typer.Option(
        None,
        "--batch-size",
        min=1,
        help="Images per forward pass (default: 32; on CUDA, sized to the card's free memory).",
    ),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Decode/preprocess processes (default: 2)."),
    device: str | None = DEVICE,
    dtype: str | None = DTYPE,
    runtime: Runtime | None = RUNTIME,
    use_compile: bool = typer.Option(
        False,
        "--compile",
        help="torch.compile the encoder: tens of seconds "
        "to compile, faster forward passes; pays off on large runs. (env VITSEARCH_COMPILE)",
    ),
    prune: bool = typer.Option(
        False,
        "--prune",
        help="Delete the rows under SOURCE whose path is no longer a "
        "regular file (deleted, or now a folder or a socket).",
    ),
    verify: bool = typer.Option(
        False,
        "--verify",
        help="Read and hash every file and re-embed each whose bytes "
        "differ from its row's sha256, also where size, mtime, ctime and inode all match.",
    ),
    report_file: Path | None = typer.Option(
        None,
        "--report",
        help="Write the files that failed, with the reason, to this file: CSV if it ends in .csv, else JSON lines.",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Say where the time went (decode, embed, write) and log each batch's times."
    ),
    as_json: bool = JSON,
    whitening: Whitening | None = WHITENING,
    relearn: bool = typer.Option(
        False,
        "--relearn",
        help="Learn the collection's whitening again from all its "
        "images at the end of the run (it is re-learned on its own when the collection "
        "has doubled since). Rewrites the stored vectors; no image is embedded again.",
    ),
    engine: Engine = typer.Option(
        Engine.local,
        "--engine",
        help="local: this machine's processes; ray: a "
        "Ray cluster (pip install 'vitsearch[ray]'), decoding on its CPUs, one "
        "encoder per GPU, writing from the workers.",
    ),
    ray_address: str | None = typer.Option(
        None,
        "--ray-address",
        help="With --engine ray: auto (the "
        "cluster of `ray start`) or ray://HOST:10001; default: a Ray "
        "instance started on this machine for the run.",
    ),
    num_gpus_per_worker: float | None = typer.Option(
        None,
        "--num-gpus-per-worker",
        min=0,
        help="With --engine ray: GPUs per encoder (default: 1 if the cluster has GPUs, else 0).",
    ),
    concurrency: int | None = typer.Option(
        None, "--concurrency", min=1, help="With --engine ray: encoder workers (default: one per GPU, 1 without GPUs)."
    ),
    bulk_dir: str | None = typer.Option(
        None,
        "--bulk-dir",
        help="With --engine ray, for large first "
        "loads: write the rows as Parquet shards here instead of upserting; "
        "with a Milvus server and s3://ITS-BUCKET/prefix, then load them by "
        "Milvus bulk import. See docs/guides/scaling-out.md.",
    ),
) -> None:
    """Index the images under SOURCE (JPEG, PNG, WebP, BMP, GIF, TIFF).

    Incremental: files whose path, size, mtime, ctime and inode match their row are skipped; a file
    where any differs is hashed, and embedded again only if its bytes changed (--verify hashes
    every file). Unreadable files are reported and skipped. Decoding (worker processes), the
    encoder and the writes to Milvus (a background thread) overlap; the summary says where the
    time went. With `--engine ray` the same stages run on a Ray cluster
    (docs/guides/scaling-out.md).
    """
    s = settings(
        model=model,
        pooling=pooling and pooling.value,
        image_size=image_size,
        uri=uri,
        collection=collection,
        batch_size=batch_size,
        workers=workers,
        device=device,
        dtype=dtype,
        compile=use_compile or None,
        runtime=runtime and runtime.value,
    )  # before pymilvus loads
    from vitsearch.indexer import IndexInterrupted, IndexJob, LocalExecutor
    from vitsearch.indexer.ray_engine import RayExecutor  # no Ray imported: only when --engine ray runs

    _check_options(folder, engine, prune, bulk_dir, relearn, whitening)
    if verbose:
        import logging

        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("vitsearch").setLevel(logging.DEBUG)
    if engine is Engine.ray:
        executor = RayExecutor(s, ray_address, num_gpus_per_worker, concurrency, bulk_dir)
    else:
        executor = LocalExecutor(s.workers, prune, verify)
    try:
        with IndexJob.open(
            s,
            executor,
            progress=progress_bar(),
            on_failure=_skipped,
            whitening=whitening and whitening.value,
            relearn=relearn,
        ) as job:
            report = job.run(folder)
    except NotADirectoryError as exc:
        fail(str(exc), 2)
    except VitsearchError as exc:
        fail(str(exc))
    except IndexInterrupted as stop:
        _index_summary(stop.report, s, job.encoder.info, job.batch_size, folder, report_file, as_json, verbose)
        typer.echo("interrupted: every image embedded so far is written; run again to continue", err=True)
        raise typer.Exit(130) from None
    except KeyboardInterrupt:  # before indexing began (loading the model, opening Milvus)
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130) from None
    _index_summary(report, s, job.encoder.info, job.batch_size, folder, report_file, as_json, verbose)
    if bulk_dir and not as_json:
        typer.echo(
            f"rows written as Parquet shards under {bulk_dir}, not into Milvus, unless it is a "
            f"server and {bulk_dir} is in its bucket (then loaded by bulk import)"
        )


def _check_options(
    folder: str, engine: Engine, prune: bool, bulk_dir: str | None, relearn: bool, whitening: Whitening | None
) -> None:
    """Refuse what the source and the options cannot do together.

    Raises:
        typer.BadParameter: a URI without Ray, a missing folder, an option of the other engine,
            --relearn with --whitening none.
    """
    from vitsearch.indexer.sources import is_uri

    if is_uri(folder) and engine is Engine.local:
        raise typer.BadParameter(f"{folder}: a URI needs --engine ray", param_hint="SOURCE")
    if not is_uri(folder) and not os.path.isdir(folder):
        why = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise typer.BadParameter(f"{folder} {why}", param_hint="SOURCE")
    if engine is Engine.ray and prune:
        raise typer.BadParameter("--prune runs with --engine local only", param_hint="--prune")
    if engine is Engine.local and bulk_dir:
        raise typer.BadParameter("--bulk-dir needs --engine ray", param_hint="--bulk-dir")
    if relearn and whitening is Whitening.none:
        raise typer.BadParameter("--relearn learns a whitening; --whitening none removes it", param_hint="--relearn")


def _skipped(path: str, reason: str) -> None:
    """A file that could not be indexed, said above the progress bar."""
    from tqdm import tqdm

    tqdm.write(f"skipped {printable(path)}: {reason}", file=sys.stderr)


def _index_summary(
    report,
    s: Settings,
    info: EncoderInfo,
    batch_size: int,
    folder: str,
    report_file: Path | None,
    as_json: bool,
    verbose: bool = False,
) -> None:
    """Print what an indexing run did (a line, or JSON; where the time went with ``verbose``), and
    write the failures to ``report_file``."""
    if report_file is not None:
        _write_failures(report_file, report.failures)
    if as_json:
        summary = _summary_json(report, s, info, batch_size)
        summary["failures"] = [{"path": p, "reason": r} for p, r in report.failures]
        typer.echo(json.dumps(summary, indent=2))
        return
    unsupported = getattr(report, "unsupported", {})
    skipped = ", ".join(
        f"{n} {ext or '(no extension)'}" for ext, n in sorted(unsupported.items(), key=lambda kv: (-kv[1], kv[0]))
    )
    if not (report.indexed or report.unchanged or report.failed):
        from vitsearch.search.images import IMAGE_EXTENSIONS

        typer.echo(f"no image files under {folder} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        if skipped:
            typer.echo(f"{skipped} skipped: not supported")
        return
    typer.echo(
        f"indexed {report.indexed}, unchanged {report.unchanged}, removed {report.removed}, "
        f"failed {report.failed} in {report.seconds:.1f} s ({report.images_per_s:.1f} images/s) "
        f"into {s.where()}"
    )
    if report.rehashed:
        typer.echo(
            f"rehashed {report.rehashed}: files read to compare their bytes with their row's sha256 "
            f"(size, mtime, ctime or inode changed, or --verify)"
        )
    if skipped:
        typer.echo(f"{skipped} skipped: not supported")
    if report.indexed and verbose:
        typer.echo(f"time: {report.stages()}; batch size {batch_size}, runtime {info.runtime}")
    if report.space:
        typer.echo(
            f"{SPACE_DONE.get(report.space, report.space)}: {report.rewritten} stored vectors rewritten in "
            f"{report.rewrite_seconds:.1f} s, no image embedded again"
        )
    if report.failures:
        where = f"listed in {report_file}" if report_file else "listed above; --report FILE saves them"
        typer.echo(f"{report.failed} file{'s' if report.failed > 1 else ''} could not be indexed ({where})")


#: What a run did to the collection's space (:attr:`IndexReport.space`), as the summary says it.
SPACE_DONE = {
    "learned": "whitening learned from the collection",
    "re-learned": "whitening re-learned",
    "removed": "whitening removed (raw embeddings)",
    "resumed": "a rewrite a stopped run left finished",
}


def _summary_json(report, s: Settings, info: EncoderInfo, batch_size: int) -> dict:
    """The summary of ``vitsearch index --json``, without the failures."""
    return {
        "indexed": report.indexed,
        "unchanged": report.unchanged,
        "rehashed": report.rehashed,
        "removed": report.removed,
        "failed": report.failed,
        "seconds": round(report.seconds, 2),
        "images_per_s": round(report.images_per_s, 2),
        "stage_seconds": {
            "decode": round(report.decode_seconds, 2),
            "embed": round(report.embed_seconds, 2),
            "write": round(report.write_seconds, 2),
            "wait": round(report.wait_seconds, 2),
        },
        "batch_size": batch_size,
        "collection": s.collection,
        "uri": s.resolved_uri(),
        "model": info.model,
        "runtime": info.runtime,
        "whitening": report.space,
        "rewritten": report.rewritten,
        "rewrite_seconds": round(report.rewrite_seconds, 2),
        "unsupported": dict(getattr(report, "unsupported", {})),
    }


def _write_failures(path: Path, failures: list[tuple[str, str]]) -> None:
    """``path, reason`` per failed file: CSV for a ``.csv`` name, else JSON lines."""
    import csv

    with open(path, "w", newline="", encoding="utf-8", errors="surrogateescape") as f:
        if path.suffix.lower() == ".csv":
            out = csv.writer(f)
            out.writerow(["path", "reason"])
            out.writerows(failures)
        else:
            for p, reason in failures:
                f.write(json.dumps({"path": p, "reason": reason}) + "\n")
