"""``vitsearch search`` and ``vitsearch stats``: parse, call :class:`~vitsearch.search.client.SearchClient`, print."""

from __future__ import annotations

import datetime
import json
import os
from enum import StrEnum

import typer

from vitsearch.search.config import MAX_K
from vitsearch.search.errors import BadImageError, BadQueryError, VitsearchError
from vitsearch.search.paths import absolute, printable
from vitsearch.search.query import weighted
from vitsearch.search.when import SORTS

from .common import (
    COLLECTION,
    DEVICE,
    EXPAND,
    IMAGE_SIZE,
    JSON,
    RUNTIME,
    URI,
    Runtime,
    app,
    fail,
    open_client,
    parsed_settings,
    ready,
)

#: ``--sort``'s choices: :data:`~vitsearch.search.when.SORTS`.
Sort = StrEnum("Sort", {name.replace("-", "_"): name for name in SORTS})


@app.command(epilog="Docs: docs/guides/searching.md")
def search(
    images: list[str] = typer.Argument(
        ...,
        metavar="IMAGE...",
        help="Query image file (or, with --similar, an indexed file's path). Several: images like all of them; "
        "WEIGHT:IMAGE (2:a.jpg) weighs one more.",
    ),
    negative: list[str] = typer.Option(
        [], "--not", metavar="IMAGE", help="An example of what not to find (repeat for more; WEIGHT:IMAGE too)."
    ),
    box: str | None = typer.Option(
        None,
        "--box",
        metavar="X,Y,W,H",
        help="Search for this region of IMAGE only: pixels of the image as displayed (after EXIF orientation).",
    ),
    k: int = typer.Option(10, "-k", min=1, max=MAX_K, help="Number of results."),
    filter: str | None = typer.Option(
        None,
        "--filter",
        help="Milvus boolean expression on stored fields, e.g. 'width >= 500 and folder == \"/photos/2024\"'.",
    ),
    folder: str | None = typer.Option(None, "--folder", help="Only images in this folder or below it."),
    after: str | None = typer.Option(
        None,
        "--after",
        metavar="DATE",
        help="Only images taken at or after DATE (EXIF capture time, else the file's mtime): 2024, 2024-05, "
        "2024-05-01, 2024-05-01T18:30, +02:00 or Z for a zone (default: local time).",
    ),
    before: str | None = typer.Option(
        None, "--before", metavar="DATE", help="Only images taken before DATE (--after 2024-05 --before 2024-06: May)."
    ),
    sort: Sort = typer.Option(
        Sort.score,
        "--sort",
        help="score: best first; date / date-asc: the close matches newest / oldest first, then the rest by score.",
    ),
    similar: bool = typer.Option(False, "--similar", help="IMAGE is an indexed file: use its stored vector."),
    collapse: bool = typer.Option(
        False,
        "--collapse",
        help="Show files with identical bytes (same sha256) as one "
        "result with a '+N copies' count (JSON: its \"copies\"); still k distinct "
        "results.",
    ),
    model: str | None = typer.Option(None, "--model", help="Default: the model the collection was indexed with."),
    image_size: int | None = IMAGE_SIZE,
    uri: str | None = URI,
    collection: str | None = COLLECTION,
    device: str | None = DEVICE,
    runtime: Runtime | None = RUNTIME,
    expand: int = EXPAND,
    as_json: bool = JSON,
) -> None:
    """Find the indexed images most similar to IMAGE (or a --box of it), best first.

    With several images, and --not: the images most like the examples and least like the
    negatives (their weighted sum minus a fifth of the negatives', in the collection's space); with
    --similar, each example that is indexed uses its stored vector and is left out of the results.

    Score: cosine similarity in the collection's space (whitened once it holds 50 images:
    unrelated images score near 0). "match": a close match, the same object, scene or product
    rather than merely the nearest image; when none qualifies, "no close match in this
    collection" is said after the results (JSON: "close_match": false). Taken: the capture time
    from EXIF, local time; "~" where the file has no EXIF date and its mtime stands in.

    Exit codes: 0 results (or none), 1 Milvus, model or collection trouble, 2 a bad query (not an
    image, a corrupt image, an unknown --similar path, a --folder without indexed images, a
    malformed --filter, k out of range, a bad --after/--before).
    """
    s = parsed_settings(
        uri=uri, collection=collection, device=device, image_size=image_size, runtime=runtime and runtime.value
    )
    examples = [weighted(a) for a in images] + [weighted(a) for a in negative]
    several = len(examples) > 1
    if several and box:
        fail("--box takes one IMAGE, not several examples", code=2)
    image = examples[0][1] if not several else None
    # a bad file is said before any model or Milvus loads
    files = {} if similar else {name: _read_query(name, s) for _, name in (examples if several else [(1, image)])}
    ready(s)
    try:
        from vitsearch.search.client import SearchClient

        with SearchClient(model=model, settings=s) as client:
            if folder and not client.store.count(folder=absolute(folder)):
                fail(
                    f"no indexed image is in {printable(os.path.abspath(folder))} or below it, in collection "
                    f"{client.store.collection!r}: --folder takes a folder that was indexed "
                    f"(see `vitsearch stats`)",
                    code=2,
                )
            common = {
                "k": k,
                "filter": filter,
                "folder": folder,
                "collapse_duplicates": collapse,
                "expand": expand,
                "after": after,
                "before": before,
                "sort": sort.value,
            }
            if several:
                hits = _search_examples(client, examples, len(images), files, similar, s, common)
            elif similar:
                hits = client.search_similar(image, **common)
            else:
                hits = client.search(client.load(files[image], name=image, box=box), **common)
    except (BadImageError, BadQueryError) as exc:
        fail(str(exc), code=2)
    except VitsearchError as exc:
        fail(str(exc))
    close = any(h.match for h in hits)
    if as_json:
        typer.echo(json.dumps({"hits": [h.to_dict() for h in hits], "close_match": close}, indent=2))
        return
    if not hits:
        typer.echo("no results")
        return
    typer.echo(f"{'rank':>4}  {'score':>6}  {'match':>5}  {'size':>11}  {'taken':<16}  path")
    for rank, h in enumerate(hits, 1):
        size = f"{h.metadata.get('width')}x{h.metadata.get('height')}"
        copies = f"  (+{len(h.copies)} {'copy' if len(h.copies) == 1 else 'copies'})" if h.copies else ""
        typer.echo(
            f"{rank:>4}  {h.score:.4f}  {'yes' if h.match else '':>5}  {size:>11}  {taken_label(h.metadata):<16}  "
            f"{printable(h.path)}{copies}"
        )
    if not close:
        typer.echo("no close match in this collection: these are only the nearest images")


def taken_label(metadata: dict) -> str:
    """A hit's capture time as local ``YYYY-MM-DD HH:MM``, ``~`` before it where it is the file's
    mtime (no EXIF date), ``""`` where unknown (a collection not yet upgraded)."""
    source, taken = metadata.get("date_source"), metadata.get("taken_at", -1.0)
    if not source or taken is None:  # before 1970 is negative, and a date
        return ""
    try:
        text = datetime.datetime.fromtimestamp(taken).strftime("%Y-%m-%d %H:%M")
    except (OverflowError, OSError, ValueError):
        return ""
    return ("~" if source == "mtime" else "") + text


def _search_examples(client, examples, n_positive, files, similar, s, common):
    """Several examples (``(weight, name)``, positives first): files read, or with ``similar``
    the indexed ones as stored items (the others read as files)."""
    from vitsearch.search.query import Stored

    if similar:
        indexed = client.store.get([absolute(name) for _, name in examples], fields=["path"])
        files = {name: _read_query(name, s) for _, name in examples if absolute(name) not in indexed}
    items = [Stored(name) if name not in files else client.load(files[name], name=name) for _, name in examples]
    weights = [w for w, _ in examples]
    return client.search_examples(items[:n_positive], items[n_positive:], weights, **common)


def _read_query(image: str, s) -> bytes:
    """The query file's bytes, or exit 2 with one line naming it and why it is not an image
    (missing, a folder, a pipe or a device, no permission, empty, not an image format)."""
    from vitsearch.search.images import Limits, check_header, read_file

    try:
        data = read_file(image, Limits.from_settings(s))
        check_header(data, image)
    except BadImageError as exc:
        fail(f"{printable(exc.source)}: {exc.reason}", code=2)
    return data


@app.command(epilog="Docs: docs/guides/indexing.md")
def stats(uri: str | None = URI, collection: str | None = COLLECTION, as_json: bool = JSON) -> None:
    """Show the collection: number of images, model, dimension, runtime, index type, URI."""
    try:
        with open_client(uri, collection, None, None) as client:
            info = client.stats()
    except VitsearchError as exc:
        fail(str(exc))
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key == "whitening" and value:
            value = f"power {value['power']}, shrinkage {value['shrinkage']:.3f}, learned from {value['n']:,} images"
        typer.echo(f"{key:>15}: {value}")
