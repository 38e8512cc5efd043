"""``vitsearch collections`` and ``vitsearch drop``: see and delete the collections of a database
(:mod:`vitsearch.search.store.catalog`)."""

from __future__ import annotations

import json

import typer

from vitsearch.search.errors import VitsearchError

from .common import JSON, URI, app, fail, settings


def _no_database(uri: str) -> bool:
    """Whether ``uri`` is a Milvus Lite path where no database is yet (opening it would make one)."""
    from pathlib import Path

    from vitsearch.search.store import is_server_uri

    return not is_server_uri(uri) and not Path(uri).expanduser().exists()


@app.command(epilog="Docs: docs/guides/indexing.md")
def collections(uri: str | None = URI, as_json: bool = JSON) -> None:
    """List the collections of the database, with their number of images and model.

    Commands use the collection `images` unless given `--collection NAME` (or VITSEARCH_COLLECTION).
    """
    s = settings(uri=uri)
    where = s.resolved_uri()
    found = []
    if not _no_database(where):
        from vitsearch.search.store import Store
        from vitsearch.search.store.catalog import list_collections

        try:
            with Store.from_settings(s, uri=where) as store:
                found = list_collections(store)
        except VitsearchError as exc:
            fail(str(exc))
    if as_json:
        typer.echo(json.dumps({"uri": where, "collections": [c.to_dict() for c in found]}, indent=2))
        return
    if not found:
        from vitsearch.search.models import index_hint

        typer.echo(f"no collections at {where}: index a folder first: {index_hint()}")
        return
    width = max(len("collection"), *(len(c.name) for c in found))
    typer.echo(f"{'collection':<{width}}  {'images':>8}  model")
    for c in found:
        model = c.model if c.model is not None else "(not made by vitsearch)"
        busy = "  (being indexed)" if c.indexing else ""
        typer.echo(f"{c.name:<{width}}  {c.count:>8,}  {model}{busy}")


@app.command(epilog="Docs: docs/guides/indexing.md")
def drop(
    name: str = typer.Argument(..., help="The collection to delete (see `vitsearch collections`)."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation (for scripts)."),
    uri: str | None = URI,
) -> None:
    """Delete the collection NAME: its rows, and everything vitsearch keeps behind the name (the
    whitening it learned). The image files are not touched.

    Asks for confirmation unless given `--yes`. Refused while an indexing run writes to the
    collection. Exit codes: 0 deleted, 1 not deleted (not confirmed, no such collection, being
    indexed, Milvus trouble).
    """
    s = settings(uri=uri)
    where = s.resolved_uri()
    if _no_database(where):
        fail(f"collection {name!r} does not exist at {where}: there is no database there yet")
    from vitsearch.search.store import Store
    from vitsearch.search.store.catalog import drop_collection

    found = []

    def confirm(summary) -> bool:
        found.append(summary)
        if yes:
            return True
        if summary is None:
            what = f"what is left of collection {name!r} (a drop cut short)"
        else:
            model = summary.model if summary.model is not None else "not made by vitsearch"
            what = f"collection {name!r} ({summary.count:,} images, {model})"
        return typer.confirm(f"Delete {what} at {where}? The image files are not touched.", default=False, err=True)

    try:
        with Store.from_settings(s, uri=where, collection=name) as store:
            dropped = drop_collection(store, confirm)
    except typer.Abort:  # no answer: end of input
        typer.echo("", err=True)  # end the question's line
        fail(f"not confirmed: collection {name!r} kept (give --yes to delete it without asking)")
    except VitsearchError as exc:
        fail(str(exc))
    if not dropped:
        fail(f"not confirmed: collection {name!r} kept")
    count = f" ({found[0].count:,} images)" if found and found[0] is not None else ""
    typer.echo(f"deleted collection {name!r}{count} at {where}")
