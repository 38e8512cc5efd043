"""``vitsearch watch``: parse, open the collection and its encoder, run a
:class:`~vitsearch.indexer.watch.Watcher` until Ctrl-C, a line per batch."""

from __future__ import annotations

import os
import signal
import threading
import time

import typer

from vitsearch.search.config import DEFAULT_MODEL
from vitsearch.search.errors import VitsearchError
from vitsearch.search.paths import printable

from .common import (
    COLLECTION,
    DEVICE,
    DTYPE,
    IMAGE_SIZE,
    POOLING,
    RUNTIME,
    URI,
    Pooling,
    Runtime,
    app,
    fail,
    settings,
)


@app.command(epilog="Docs: docs/guides/watch.md")
def watch(
    folders: list[str] = typer.Argument(..., metavar="DIR...", help="Folders of images to keep indexed, recursively."),
    model: str | None = typer.Option(
        None,
        "--model",
        help=f"Hub id, local folder or pulled model name. (env VITSEARCH_MODEL; default: the collection's model, "
        f"for a new collection {DEFAULT_MODEL})",
    ),
    pooling: Pooling | None = POOLING,
    image_size: int | None = IMAGE_SIZE,
    uri: str | None = URI,
    collection: str | None = COLLECTION,
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Images per forward pass (default: 32)."),
    workers: int | None = typer.Option(
        None, "--workers", min=0, help="Decode processes for the start-up catch-up and large batches (default: 2)."
    ),
    device: str | None = DEVICE,
    dtype: str | None = DTYPE,
    runtime: Runtime | None = RUNTIME,
    settle_s: float = typer.Option(
        1.0,
        "--settle",
        min=0.0,
        envvar="VITSEARCH_WATCH_SETTLE_S",
        metavar="SECONDS",
        help="Seconds a file's size and mtime must stay unchanged before it is read: a file still being "
        "written is never read half-written.",
    ),
    poll_s: float = typer.Option(
        2.0,
        "--poll",
        min=0.1,
        metavar="SECONDS",
        help="Seconds between two looks at a folder the OS refuses to watch (the inotify limits), which is polled.",
    ),
) -> None:
    """Keep the collection equal to the folders while this runs: new and changed images are
    embedded, renamed and moved ones keep their vector under the new path, deleted ones (and
    folders deleted or moved out) lose their rows.

    On start it catches up with what changed while it was not running (the incremental index of
    each folder, with --prune), then follows the OS's file events; a file is read once its size and
    mtime have been unchanged for --settle seconds. A folder the OS refuses to watch (inotify's
    limits) is polled every --poll seconds, and it says so. Each batch of changes takes the
    collection's writer lease for its own few seconds: a `vitsearch index` started meanwhile
    waits for the batch, and the watcher waits for it. Ctrl-C stops; a kill at any moment loses
    nothing that a restart does not catch up.
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
        runtime=runtime and runtime.value,
    )  # before pymilvus loads
    from vitsearch.indexer import IndexInterrupted, IndexJob, LocalExecutor
    from vitsearch.indexer.watch import Watcher

    for folder in folders:
        if not os.path.isdir(folder):
            why = "is not a folder" if os.path.exists(folder) else "does not exist"
            raise typer.BadParameter(f"{folder} {why}", param_hint="DIR")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        with IndexJob.open(s, LocalExecutor(s.workers), on_failure=_skipped) as job:
            watcher = Watcher(
                folders,
                job.store,
                job.encoder,
                batch_size=job.batch_size,
                workers=s.workers,
                settle_s=settle_s,
                poll_s=poll_s,
                on_failure=_skipped,
                on_fallback=_polling,
            )
            watcher.start()
            try:
                for folder, report in watcher.catch_up().items():
                    typer.echo(
                        f"caught up {printable(folder)}: indexed {report.indexed}, unchanged {report.unchanged}, "
                        f"removed {report.removed}, failed {report.failed} in {report.seconds:.1f} s",
                        err=True,
                    )
                typer.echo(f"watching {len(folders)} folder{'s' * (len(folders) > 1)} into {s.where()} (Ctrl-C stops)")
                watcher.run(stop, on_batch=_Lines())
            finally:
                watcher.stop()
    except VitsearchError as exc:
        fail(str(exc))
    except (IndexInterrupted, KeyboardInterrupt):
        typer.echo("\nstopped: every image embedded so far is written; the next start catches up", err=True)
    else:
        typer.echo("stopped", err=True)


class _Lines:
    """A line per batch; a busy lease or an unreachable Milvus said once until it clears."""

    def __init__(self):
        self.waiting = ""

    def __call__(self, batch) -> None:
        why = batch.busy or batch.error
        if why:
            if why != self.waiting:
                typer.echo(f"waiting: {why}", err=True)
            self.waiting = why
            return
        self.waiting = ""
        r = batch.report
        typer.echo(
            f"{time.strftime('%H:%M:%S')} {batch.paths} changed: indexed {r.indexed}, moved {r.moved}, "
            f"removed {r.removed}, unchanged {r.unchanged}, failed {r.failed} in {r.seconds:.2f} s"
        )


def _skipped(path: str, reason: str) -> None:
    typer.echo(f"skipped {printable(path)}: {reason}", err=True)


def _polling(folder: str, reason: str) -> None:
    typer.echo(f"{printable(folder)}: {reason}; polling it and the folders after it instead", err=True)
