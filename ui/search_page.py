"""The search page: upload a photo (or take one with the camera), see the most similar images.

A page of the app (:mod:`vitsearch.ui.app`). All searching goes through
:class:`~vitsearch.search.client.SearchClient`; this file is layout and state only. Files with
identical bytes are shown as one result with a "+N copies" count unless the sidebar says
otherwise (``collapse_duplicates``).

Relevance feedback: "+" on a result adds it to the examples, "−" to the negatives; the query is
then the photo (or the "More like this" item) and the examples together, minus the negatives
(``SearchClient.search_examples``), shown as a strip above the results, each removable.

The sidebar's "Taken between" keeps the photos taken in a range of days (both included: capture
time, EXIF or else the file's modification time, local time), and "Sort" lists the close matches
by that date; each result shows its capture date ("file date" where it is the modification time)
and camera.

Session state: ``similar`` holds the path of the indexed item that "More like this" asked for
(None when the query is the uploaded or camera image); ``examples`` and ``negatives`` the paths of
indexed items added with "+" and "−" (or the Map page's "Search with these"); ``box`` the region
drawn on the photo (:mod:`.region`), which the photo's searches are then for.
"""

from __future__ import annotations

import os
import time
from datetime import date, datetime, timedelta
from typing import Any

import streamlit as st

from vitsearch.search.client import Hit, SearchClient
from vitsearch.search.config import Settings
from vitsearch.search.errors import BadImageError
from vitsearch.search.images import IMAGE_EXTENSIONS
from vitsearch.search.paths import printable
from vitsearch.search.query import MAX_EXAMPLES, Stored
from vitsearch.search.thumbnails import THUMB_PX, to_jpeg
from vitsearch.ui.common import (
    GRID_COLUMNS,
    cached_thumbnail,
    collection_client,
    ensure_encoder,
    folder_count,
    guarded,
    indexed_thumbnail,
    literal_markdown,
)
from vitsearch.ui.region import clear_box, region_picker

UPLOAD_TYPES = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
K_DEFAULT, K_MAX = 12, 100
#: Neighbours the "Query expansion" toggle expands with.
EXPAND_N = 2
#: Longest side of the full-size view, in pixels.
VIEW_PX = 1600
#: Width of an example's thumbnail in the strip above the results, in pixels.
STRIP_PX = 72
#: Earliest and latest day the "Taken between" picker offers (the years an EXIF date may have).
DATE_MIN, DATE_MAX = date(1826, 1, 1), date(2200, 12, 31)
#: The "Sort" choices: :data:`~vitsearch.search.when.SORTS` as a person reads them.
SORT_LABELS = {"score": "Score", "date": "Date, newest first", "date-asc": "Date, oldest first"}


def show_similar(path: str | None) -> None:
    """A new query (an item's "More like this", or back to the photo): the examples are cleared."""
    st.session_state["similar"] = path
    st.session_state["examples"] = st.session_state["negatives"] = st.session_state["box"] = None


def add_example(path: str, key: str) -> None:
    """ "+" or "−" on a result: ``path`` into ``examples`` or ``negatives`` (out of the other)."""
    other = "negatives" if key == "examples" else "examples"
    st.session_state[other] = [p for p in st.session_state.get(other) or [] if p != path]
    chosen = st.session_state.get(key) or []
    if path not in chosen and len(chosen) < MAX_EXAMPLES - 1:
        st.session_state[key] = [*chosen, path]


def drop_example(path: str) -> None:
    for key in ("examples", "negatives"):
        st.session_state[key] = [p for p in st.session_state.get(key) or [] if p != path]


def examples_strip(examples: list[str], negatives: list[str], query: str | None) -> None:
    """What the query is made of: the photo or item, then each example ("+") and negative ("−")
    as a small thumbnail with a button that takes it out; "Back to my photo" resets."""
    settings = Settings()
    uri, collection = settings.resolved_uri(), settings.collection
    with st.container(horizontal=True, vertical_alignment="bottom"):
        if query:
            st.markdown(f"Like {literal_markdown(query)}")
        for sign, paths in (("+", examples), ("−", negatives)):
            for path in paths:
                with st.container(width=STRIP_PX + 16, gap="small"):
                    thumb = indexed_thumbnail(uri, collection, path)
                    if thumb is not None:
                        st.image(thumb, width=STRIP_PX)
                    st.button(
                        f"{sign} ✕",
                        key=f"drop-{sign}-{path}",
                        help=f"{'Like' if sign == '+' else 'Not like'} {printable(path)}: click to take it out",
                        on_click=drop_example,
                        args=(path,),
                    )
        st.button("Back to my photo", key="clear-examples", on_click=show_similar, args=(None,))


def clear_dates() -> None:
    """ "Any date": the "Taken between" range emptied."""
    st.session_state["taken"] = ()


def date_bounds(taken: Any) -> tuple[date | None, date | None]:
    """The "Taken between" picker's days as ``(after, before)`` for the client: the first day
    at midnight and the day after the last (the last day included); a range still being picked
    (its first day only) has no end, an empty one no bounds."""
    days = list(taken) if isinstance(taken, (list, tuple)) else [taken] if isinstance(taken, date) else []
    after = days[0] if days else None
    before = days[1] + timedelta(days=1) if len(days) > 1 else None
    return after, before


def capture_text(meta: dict[str, Any]) -> str:
    """A hit's capture date (local ``YYYY-MM-DD HH:MM``, "file date" where it is the file's
    modification time) and camera, as plain text: ``""`` for a row without them (a collection
    indexed before vitsearch stored them). Camera names come from the files' EXIF: show this
    only as plain text or through :func:`literal_markdown`."""
    source = meta.get("date_source") or ""
    parts = []
    if source and meta.get("taken_at") is not None:
        when = datetime.fromtimestamp(float(meta["taken_at"])).strftime("%Y-%m-%d %H:%M")
        parts.append(f"{when} (file date)" if source == "mtime" else when)
    if meta.get("camera"):
        parts.append(str(meta["camera"]))
    return " · ".join(parts)


def sidebar(client: SearchClient) -> tuple[float, dict[str, Any]]:
    """Collection facts and the search controls; returns ``(min_score, options)``, the options
    being the client's keyword arguments (``k``, ``folder``, ``collapse_duplicates``, ``expand``,
    ``after``, ``before``, ``sort``)."""
    with st.sidebar:
        st.header("Collection")
        stats = client.stats()
        folders = folder_count(stats["uri"], stats["collection"], stats["count"])
        with st.container(horizontal=True):
            st.metric("Images", f"{stats['count']:,}")
            if folders is not None:
                st.metric("Folders", f"{folders:,}")
        st.markdown(f"**Model** {literal_markdown(model_name(stats['model']))}")
        with st.expander("Details"):
            st.markdown(
                f"**Collection** {literal_markdown(stats['collection'])}  \n"
                f"**URI** {literal_markdown(stats['uri'])}  \n"
                f"**Model** {literal_markdown(stats['model'])}  \n"
                f"**Embedding** {stats['dim']}-d, {stats['pooling'].upper()} token  \n"
                f"**Space** {literal_markdown(stats['space'])}  \n"
                f"**Runtime** {stats['runtime']} (queries: {stats['query_runtime']})  \n"
                f"**Index** {stats['index_type']} ({stats['metric_type']})"
            )
        st.header("Search")
        k = st.slider("Results (top-k)", 1, K_MAX, K_DEFAULT, key="k")
        min_score = st.slider(
            "Minimum score",
            0.0,
            1.0,
            0.0,
            0.01,
            key="min_score",
            help="Cosine similarity in the collection's space: 1 is identical; once the "
            "collection is whitened, unrelated images score near 0.",
        )
        folder = st.text_input(
            "Folder", key="folder", placeholder="/photos/2024", help="Only images in this folder or below it."
        )
        taken = st.date_input(
            "Taken between",
            value=[],
            min_value=DATE_MIN,
            max_value=DATE_MAX,
            format="YYYY-MM-DD",
            key="taken",
            help="Only photos taken on these days, both included (EXIF date, else the file's "
            "modification time; local time). Empty: any date.",
        )
        if taken:
            st.button("Any date", key="any-date", on_click=clear_dates)
        sort = st.selectbox(
            "Sort",
            list(SORT_LABELS),
            format_func=SORT_LABELS.get,
            key="sort",
            help="By date: the close matches first, by when they were taken, then the other results by score.",
        )
        collapse = st.checkbox(
            "Collapse identical copies",
            value=True,
            key="collapse",
            help="Files with the same bytes (sha256) are one result with a '+N copies' count.",
        )
        expand = st.toggle(
            "Query expansion",
            value=False,
            key="expand",
            help=f"Search again with the query averaged with its {EXPAND_N} nearest results "
            f"(αQE): more results of the same kind of thing.",
        )
    after, before = date_bounds(taken)
    options = {
        "k": k,
        "folder": folder.strip() or None,
        "collapse_duplicates": collapse,
        "expand": EXPAND_N if expand else 0,
        "after": after,
        "before": before,
        "sort": sort,
    }
    return min_score, options


def query_image(max_upload_mb: int):
    """The uploaded or camera image as ``(name, bytes)``, or None. Shows errors itself."""
    source = st.segmented_control(
        "Query",
        ["Upload", "Camera"],
        default="Upload",
        key="source",
        label_visibility="collapsed",
        on_change=show_similar,
        args=(None,),
    )
    if source == "Camera":
        shot = st.camera_input("Take a photo", key="camera", on_change=show_similar, args=(None,))
        return ("camera photo", shot.getvalue()) if shot is not None else None
    upload = st.file_uploader(
        "Drop a photo to find similar images",
        type=UPLOAD_TYPES,
        key="upload",
        max_upload_size=max_upload_mb,
        on_change=show_similar,
        args=(None,),
    )
    if upload is None:
        return None
    if upload.size > max_upload_mb * 1024 * 1024:
        st.error(
            literal_markdown(
                f"{upload.name} is {upload.size / 2**20:.1f} MB: the limit is {max_upload_mb} MB "
                f"(vitsearch ui --max-upload-mb, or VITSEARCH_MAX_UPLOAD_MB)"
            )
        )
        return None
    return upload.name, upload.getvalue()


def model_name(model: str) -> str:
    """A model as a person names it: a hub id as it is, a local folder by its last part."""
    return os.path.basename(model.rstrip("/")) if os.sep in model else model


def full_view(hit: Hit) -> None:
    """Open one result in a dialog titled with its file name: the image at full size (at most
    :data:`VIEW_PX` on its longest side, from the indexed bytes only) beside its path to copy,
    its size and date, and "More like this"."""
    st.dialog(printable(os.path.basename(hit.path)), width="large")(_view)(hit)


def _view(hit: Hit) -> None:
    meta = hit.metadata
    client = collection_client()
    if client is None:
        return
    picture, facts = st.columns([3, 2])
    try:
        picture.image(client.thumbnail(hit.path, VIEW_PX), width="content")
    except BadImageError as exc:
        picture.warning(literal_markdown(f"Cannot show it: {exc}: run vitsearch index again"))
    with facts:
        st.code(printable(hit.path), language=None, wrap_lines=True)  # its copy button copies the path
        modified = datetime.fromtimestamp(float(meta["mtime"])).strftime("%Y-%m-%d %H:%M")
        st.caption(
            f"{int(meta['width'])} × {int(meta['height'])} pixels, {int(meta['size']) / 2**20:.2f} MB, "
            f"modified {modified}; score {hit.score:.3f}" + (", a close match" if hit.match else "")
        )
        taken = capture_text(meta)
        if taken:
            st.caption(literal_markdown(f"Taken {taken}"))
        if st.button("More like this", key="view-more", type="primary", on_click=show_similar, args=(hit.path,)):
            st.rerun()  # the whole page, not only the dialog: it closes and shows the new results


def results_grid(hits: list[Hit]) -> None:
    """Thumbnails of the hits in rows of :data:`GRID_COLUMNS`, each with "View" (the full-size
    view) and "More like this". File and folder names are plain text, never Markdown."""
    for start in range(0, len(hits), GRID_COLUMNS):
        for col, (rank, hit) in zip(st.columns(GRID_COLUMNS), enumerate(hits[start : start + GRID_COLUMNS], start + 1)):
            with col.container(border=True):
                meta = hit.metadata
                thumb = cached_thumbnail(hit.path, int(meta["size"]), meta["sha256"])
                if thumb is None:
                    st.warning("changed since it was indexed, or gone: run vitsearch index again")
                else:
                    st.image(thumb, width="stretch")
                st.markdown(
                    f"**{hit.score:.3f}**" + ("  :green-badge[match]" if hit.match else ""),
                    help="A close match: the same object, scene or product." if hit.match else None,
                )
                st.text(printable(os.path.basename(hit.path)), help=printable(hit.path))
                st.caption(literal_markdown(meta["folder"]))
                taken = capture_text(meta)
                if taken:
                    st.caption(literal_markdown(taken))
                if hit.copies:
                    st.caption(
                        f"+{len(hit.copies)} {'copy' if len(hit.copies) == 1 else 'copies'}",
                        help="  \n".join(literal_markdown(p) for p in hit.copies),
                    )
                with st.container(horizontal=True):
                    if st.button("View", key=f"view-{rank}", help="Full size, path, size and date"):
                        full_view(hit)
                    st.button("More like this", key=f"more-{rank}", on_click=show_similar, args=(hit.path,))
                    st.button(
                        "+",
                        key=f"plus-{rank}",
                        help="Like this: add it to the query",
                        on_click=add_example,
                        args=(hit.path, "examples"),
                    )
                    st.button(
                        "−",
                        key=f"minus-{rank}",
                        help="Not like this: push what resembles it down",
                        on_click=add_example,
                        args=(hit.path, "negatives"),
                    )


def main() -> None:
    st.title("vitsearch")
    client = collection_client()
    if client is None:
        return
    min_score, options = sidebar(client)

    query = query_image(Settings().max_upload_mb)  # always drawn, so the upload survives "More like this"
    similar = st.session_state.get("similar")
    examples, negatives = st.session_state.get("examples") or [], st.session_state.get("negatives") or []
    started = time.perf_counter()
    picture = None
    if query is not None and not similar:
        name, data = query
        picture = client.load(data, name)  # decoded as the indexer decodes: reduced scale, same limits
        st.image(to_jpeg(picture, 2 * THUMB_PX), width=min(THUMB_PX, picture.width))  # never blown up
        st.text(printable(name))
        with st.expander("Search a region", expanded=st.session_state.get("box") is not None):
            st.caption("Drag a box on the photo: the results are then for what is inside it.")
            box = region_picker(data, name, client.limits)
            if box is not None:
                st.button(f"Whole photo (box {box.text()})", key="whole-photo", on_click=clear_box)
                picture = client.load(data, name, box=box)  # the region cut from the full-size photo
    if examples or negatives:
        label = os.path.basename(similar) if similar else (query[0] if picture is not None else None)
        examples_strip(examples, negatives, label)
        positive = [picture] if picture is not None else [Stored(similar)] if similar else []
        positive += [Stored(p) for p in examples]
        if not positive:
            st.info('Add a photo, or "+" a result: a query needs something to be like.')
            return
        if picture is not None:
            ensure_encoder(client)
        with st.spinner("Searching…"):
            hits = client.search_examples(positive, [Stored(p) for p in negatives], **options)
    elif similar:
        with st.container(horizontal=True, vertical_alignment="center"):
            st.markdown(
                f"More like {literal_markdown(os.path.basename(similar))} "
                f"({literal_markdown(os.path.dirname(similar))})"
            )
            st.button("Back to my photo", on_click=show_similar, args=(None,))
        hits = client.search_similar(similar, **options)
    elif picture is not None:
        ensure_encoder(client)
        with st.spinner("Searching…"):
            hits = client.search(picture, **options)
    else:
        return
    elapsed_ms = 1000 * (time.perf_counter() - started)
    shown = [h for h in hits if h.score >= min_score]
    st.caption(
        f"{len(shown)} result{'' if len(shown) == 1 else 's'} in {elapsed_ms:.0f} ms"
        + (f" ({len(hits) - len(shown)} below score {min_score:.2f})" if len(shown) < len(hits) else "")
    )
    if not shown:
        st.info("No indexed image matches: lower the minimum score, or clear the folder or the dates.")
    elif not any(h.match for h in hits):
        st.info("No close match in this collection: these are only the nearest images.")
    results_grid(shown)


guarded(main)
