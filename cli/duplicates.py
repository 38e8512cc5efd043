"""``vitsearch duplicates``: parse, call :meth:`~vitsearch.search.client.SearchClient.duplicates`, print."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vitsearch.search.config import DEFAULT_DUPLICATE_THRESHOLD, DEFAULT_WHITENED_DUPLICATE_THRESHOLD
from vitsearch.search.errors import BadQueryError, VitsearchError
from vitsearch.search.paths import absolute, printable

from .common import COLLECTION, JSON, URI, app, fail, open_client


@app.command(epilog="Docs: docs/guides/duplicates.md")
def duplicates(
    threshold: float | None = typer.Option(
        None,
        "--threshold",
        min=0.0,
        max=1.0,
        help="Cosine similarity (in the collection's space) at or above which two images are near-duplicate "
        "candidates; each candidate pair is then confirmed by the two files' pixels (see --verify). "
        f"Default: {DEFAULT_WHITENED_DUPLICATE_THRESHOLD} on a whitened collection, "
        f"{DEFAULT_DUPLICATE_THRESHOLD} on raw embeddings (one under 50 images, or --whitening none), "
        "chosen for dinov2-small-9l (onnx-int8) on planted copies of real photos (see the benchmark page of the "
        "docs). Review groups before acting on them.",
    ),
    folder: str | None = typer.Option(
        None, "--folder", help="Only images in this folder or below it (both images of every pair)."
    ),
    exact_only: bool = typer.Option(
        False, "--exact-only", help="Only identical bytes (same sha256); no vector search, much faster."
    ),
    verify: bool = typer.Option(
        True,
        "--verify/--no-verify",
        help="Confirm each near pair found by the "
        "embedding by the two files' pixels (aligned, then compared at 128 px; the files of "
        "candidate pairs are read). --no-verify: the embedding alone "
        "decides (then use a higher threshold).",
    ),
    as_json: bool = JSON,
    csv_file: Path | None = typer.Option(
        None,
        "--csv",
        dir_okay=False,
        help="Write one row per image of "
        "a group (group, path, keep yes/no, score to the keeper, kind, size, "
        "width, height, mtime, sha256, same_file: a link to the keeper's "
        "file) to this file.",
    ),
    uri: str | None = URI,
    collection: str | None = COLLECTION,
) -> None:
    """Find groups of indexed images that are the same picture; nothing is deleted or moved.

    Exact duplicates have identical bytes (the stored sha256); near duplicates are pairs whose
    embeddings' cosine similarity is at or above --threshold (resized, re-compressed, lightly
    cropped or re-coloured copies) and whose pixels confirm it (unless --no-verify), joined into
    groups (connected components). Each group shows
    its kind (exact or near), its weakest link, and per image the size, dimensions and score to
    the suggested keeper (largest pixel count, then oldest mtime), marked `keep`; `link` marks the
    keeper's own file under another name (a symbolic or hard link: removing it frees nothing).

    The scan is batched Milvus searches of the stored vectors (no model is loaded); the pixel
    check reads only the files of candidate pairs (one that cannot be read keeps the embedding's
    decision and is named on stderr). Exit codes:
    0 (also when no duplicates are found), 1 Milvus or collection trouble, 2 a bad option.
    """
    if as_json and csv_file is not None:
        fail("give --json or --csv, not both", code=2)
    from tqdm import tqdm

    try:
        with open_client(uri, collection, None, None) as client:
            where = absolute(folder) if folder else None
            with tqdm(
                total=client.store.count(where),
                unit="img",
                desc="scanning",
                dynamic_ncols=True,
                disable=None,
                leave=False,
            ) as bar:
                report = client.duplicates(threshold, folder, exact_only=exact_only, verify=verify, on_rows=bar.update)
    except BadQueryError as exc:
        fail(str(exc), code=2)
    except VitsearchError as exc:
        fail(str(exc))
    for path, reason in report.unverified.items():
        typer.echo(
            f"not checked by its pixels (the embedding decided): {printable(path)}: {printable(reason)}", err=True
        )
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
        return
    if csv_file is not None:
        try:
            with open(csv_file, "w", newline="", encoding="utf-8", errors="surrogateescape") as out:
                report.write_csv(out)
        except OSError as exc:
            fail(f"cannot write {printable(str(csv_file))}: {exc.strerror}")
    for number, group in enumerate(report.groups, 1):
        typer.echo(f"group {number}: {group.kind}, {len(group.images)} images, weakest link {group.min_score:.4f}")
        for im in group.images:
            mark = "keep" if im.path == group.keep else "link" if im.same_file else ""
            typer.echo(
                f"  {mark:<4}  {im.score:.4f}  {f'{im.width}x{im.height}':>11}  {im.size:>11,} B  {printable(im.path)}"
            )
        if group.kind == "near":
            index = {p: i for i, p in enumerate(group.paths, 1)}
            typer.echo(
                "  pairs: "
                + ", ".join(
                    f"{index[p.a]}-{index[p.b]} {p.score:.4f}"
                    + (f" (pixels {p.pixels:.3f})" if p.pixels is not None else "")
                    for p in group.pairs
                )
            )
    how = (
        "exact duplicates only"
        if exact_only
        else f"threshold {report.threshold:g}" + (", pixels checked" if verify else ", embedding alone")
    )
    typer.echo(
        f"{len(report.groups)} group{'' if len(report.groups) == 1 else 's'}, {report.duplicates} "
        f"duplicate{'' if report.duplicates == 1 else 's'} among {report.images:,} images "
        f"({how}, {report.seconds:.1f} s)" + (f"; CSV written to {printable(str(csv_file))}" if csv_file else "")
    )
