"""What every command shares: the Typer app, the options several commands take, settings from
flags, one-line failures, the progress bar, and the process setup of an application
(:func:`~vitsearch.search.application.configure`: quiet third-party loggers and warnings)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import typer

from vitsearch.search.config import Runtime, Settings
from vitsearch.search.errors import VitsearchError
from vitsearch.search.pooling import Pooling as Pooling  # the --pooling choices, re-exported

app = typer.Typer(
    help="Image similarity search: index folders of images with a Vision Transformer's CLS "
    "embedding into Milvus, then find visually similar images.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
    epilog="Docs: docs/index.md (mkdocs serve for the site)",
)
model_app = typer.Typer(
    help="Get encoder models for offline use.", no_args_is_help=True, epilog="Docs: docs/getting-started.md"
)
app.add_typer(model_app, name="model")
server_app = typer.Typer(
    help="Run a Milvus server on this machine (no Docker) that every vitsearch command then "
    "uses: fast search past ~100k images, where Milvus Lite slows down.",
    no_args_is_help=True,
    epilog="Docs: docs/guides/storage.md",
)
app.add_typer(server_app, name="server")

URI = typer.Option(
    None,
    "--uri",
    help="Milvus URI: a Milvus Lite path (*.db) or http://host:19530. "
    "(env VITSEARCH_URI; default: the server of `vitsearch server start` while it runs, "
    "else milvus.db in the user data folder)",
)
COLLECTION = typer.Option(None, "--collection", help="Collection name. (env VITSEARCH_COLLECTION; default: images)")
DEVICE = typer.Option(None, "--device", help="cuda, cuda:N, mps or cpu. (env VITSEARCH_DEVICE; default: auto)")
DTYPE = typer.Option(
    None,
    "--dtype",
    help="bfloat16, float16 or float32. (env VITSEARCH_DTYPE; default: bfloat16 on CUDA, float32 elsewhere)",
)
#: The progress bar's label of each rewrite of a collection (:meth:`IndexJob` progress ``rewriting``).
_REWRITES = {"resuming": "finishing a stopped rewrite", "upgrading": "upgrading the collection (capture dates)"}
JSON = typer.Option(False, "--json", help="Print JSON instead of a table.")
ALLOWED_HOSTS = typer.Option(
    None,
    "--allowed-hosts",
    help="Names (or addresses) this server answers to besides "
    "localhost, 127.0.0.1, [::1] and --host, comma-separated, e.g. photos.lan,192.168.1.20: "
    "a request for any other Host is refused (400), so that no web page reaches it by DNS "
    "rebinding. (env VITSEARCH_ALLOWED_HOSTS)",
)


IMAGE_SIZE = typer.Option(
    None,
    "--image-size",
    min=8,
    help="Encoder input N x N pixels: the processor resizes "
    "and crops to N, the position embeddings are interpolated. Recorded in the "
    "collection like the model. (env VITSEARCH_IMAGE_SIZE; default: the collection's, "
    "else the checkpoint's, e.g. 224)",
)


RUNTIME = typer.Option(
    None,
    "--runtime",
    help="How the encoder runs: torch, onnx (the model exported once to "
    "ONNX, cached beside it, run by ONNX Runtime) or onnx-int8 (the same with int8 weights: "
    "fastest on a CPU). Recorded in the collection like the model; a search takes the "
    "collection's unless told. (env VITSEARCH_RUNTIME; default: the collection's, else "
    "onnx-int8 on a CPU and torch on CUDA)",
)


class Whitening(StrEnum):
    """``--whitening`` values (see :mod:`vitsearch.search.whitening`)."""

    auto = "auto"
    none = "none"


WHITENING = typer.Option(
    None,
    "--whitening",
    help="auto: learn a whitening of the embeddings from the collection "
    "itself once it holds 50 images (no labels; better rankings and readable scores); none: "
    "search the model's raw embeddings. Recorded in the collection. (default: the "
    "collection's, auto for a new one)",
)
EXPAND = typer.Option(
    0,
    "--expand",
    min=0,
    max=100,
    help="Query expansion: search again with the query averaged "
    "with its N nearest results (αQE). 2-3 finds more of a category (species, product "
    "type); it changes little for copies and scenes. 0: off.",
)
POOLING = typer.Option(
    None,
    "--pooling",
    help="cls (the CLS token; default) or mean (the mean of the patch tokens); recorded "
    "in the collection like the model. (env VITSEARCH_POOLING)",
)


def parsed_settings(**overrides: Any) -> Settings:
    """Settings from the flags given (None: not given) over ``VITSEARCH_*``, checked only (nothing
    imported, the process not set up); a bad value is one line and exit code 2."""
    from pydantic import ValidationError

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "settings"
        fail(f"{where}: {error['msg'].removeprefix('Value error, ')}", code=2)


def settings(**overrides: Any) -> Settings:
    """:func:`parsed_settings`, the process set up for them (:func:`ready`)."""
    return ready(parsed_settings(**overrides))


def ready(s: Settings) -> Settings:
    """Set the process up for ``s`` (quiet third-party loggers; pymilvus is imported) and check
    that its Milvus URI resolves (a server of `vitsearch server start` that is gone: exit 1)."""
    from vitsearch.search.application import configure

    configure(s)
    try:  # a server of `vitsearch server start` that is gone: say so now, in one line
        s.resolved_uri()
    except VitsearchError as exc:
        fail(str(exc))
    return s


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def open_client(
    uri: str | None,
    collection: str | None,
    model: str | None,
    device: str | None,
    image_size: int | None = None,
    runtime: Runtime | None = None,
):
    """The :class:`~vitsearch.search.client.SearchClient` the flags name."""
    s = settings(
        uri=uri, collection=collection, device=device, image_size=image_size, runtime=runtime and runtime.value
    )  # the process set up before pymilvus loads
    from vitsearch.search.client import SearchClient

    return SearchClient(model=model, settings=s)


def progress_bar():
    """A tqdm bar (images/s) implementing the indexer's ``Progress`` callbacks."""
    from tqdm import tqdm

    from vitsearch.indexer import Progress

    class Bar(Progress):
        bar = None  # drawn once there is something to embed: no empty bar for a run with nothing to do

        def found(self, n: int) -> None:  # the scan streams: the total grows as files are found
            if not n:
                return
            if self.bar is None:
                self.bar = tqdm(total=0, unit="img", desc="embedding", dynamic_ncols=True)
            self.bar.total += n
            self.bar.refresh()

        def advance(self, n: int) -> None:
            if self.bar is not None:
                self.bar.update(n)

        def close(self) -> None:
            if self.bar is not None:
                self.bar.close()

        def rewriting(self, kind: str, rows: int) -> None:
            self.rewrite = tqdm(
                total=rows,
                unit="row",
                desc=_REWRITES.get(kind, f"{kind} whitening"),
                dynamic_ncols=True,
            )

        def rewritten(self, n: int) -> None:
            self.rewrite.update(n)
            if self.rewrite.n >= self.rewrite.total:
                self.rewrite.close()

    return Bar()
