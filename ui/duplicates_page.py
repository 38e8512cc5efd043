"""The Duplicates page: groups of indexed images that are the same picture, to review.

A page of the app (:mod:`vitsearch.ui.app`, at ``/duplicates``) over
:meth:`~vitsearch.search.client.SearchClient.duplicates`: a threshold slider, exact copies only,
a folder; each group with its kind, weakest link and, per image, the thumbnail (only the indexed
bytes are shown, :func:`~vitsearch.search.thumbnails.thumbnail`), the score to the suggested
keeper, size and dimensions; the whole report as a CSV download. Nothing is deleted or moved.
"""

from __future__ import annotations

import os

import streamlit as st

from vitsearch.search.config import Settings
from vitsearch.search.duplicates import DuplicateGroup, DuplicateReport
from vitsearch.search.paths import printable
from vitsearch.ui.common import GRID_COLUMNS, cached_thumbnail, collection_client, guarded, literal_markdown

#: Groups drawn on the page at once, and images of one group (the CSV holds them all).
GROUPS_SHOWN, IMAGES_SHOWN = 50, 24
#: Seconds a scan's result is reused for the same settings (the collection may grow meanwhile).
SCAN_TTL_S = 300


@st.cache_data(ttl=SCAN_TTL_S, max_entries=16, show_spinner="Scanning the collection for duplicates…")
def scan(uri: str, collection: str, threshold: float | None, folder: str, exact_only: bool) -> DuplicateReport:
    """The duplicate report for these settings, shared by every session for :data:`SCAN_TTL_S`."""
    from vitsearch.ui.common import open_client

    return open_client(uri, collection).duplicates(threshold, folder or None, exact_only=exact_only)


def controls(default: float) -> tuple[float, bool, str]:
    """The sidebar: ``(threshold, exact_only, folder)``; ``default`` is the collection's default
    threshold (:meth:`~vitsearch.search.client.SearchClient.duplicate_threshold`)."""
    with st.sidebar:
        st.header("Duplicates")
        threshold = st.slider(
            "Similarity threshold",
            round(default - 0.3, 2),
            1.0,
            default,
            0.005,
            key="dup_threshold",
            format="%.3f",
            help="Cosine similarity of the embeddings (in the collection's space) at or above "
            "which two images are near-duplicate candidates, each then confirmed by the "
            f"two files' pixels; {default} was chosen for the default model on planted "
            "copies (see the docs' benchmark page).",
        )
        exact_only = st.checkbox("Identical bytes only", key="dup_exact", help="Same sha256; no vector search.")
        folder = st.text_input(
            "Folder",
            key="dup_folder",
            placeholder="/photos/2024",
            help="Only images in this folder or below it (both images of every pair).",
        )
        if st.button("Scan again", help="The result of a scan is kept for five minutes."):
            scan.clear()
    return threshold, exact_only, folder.strip()


def show_group(number: int, group: DuplicateGroup) -> None:
    """One group: a header line, then a grid of its images, the suggested keeper first."""
    with st.container(border=True, key=f"group-{number}"):
        st.markdown(
            f"**Group {number}** · {group.kind} · {len(group.images)} images · weakest link {group.min_score:.4f}"
        )
        shown = group.images[:IMAGES_SHOWN]
        for start in range(0, len(shown), GRID_COLUMNS):
            for col, im in zip(st.columns(GRID_COLUMNS), shown[start : start + GRID_COLUMNS]):
                with col:
                    thumb = cached_thumbnail(im.path, im.size, im.sha256)
                    if thumb is None:
                        st.warning("changed since it was indexed, or gone: run vitsearch index again")
                    else:
                        st.image(thumb, width="stretch")
                    keep = im.path == group.keep
                    st.markdown(
                        f"**{im.score:.4f}**"
                        + (" · :green-badge[keep]" if keep else "")
                        + (" · :orange-badge[link to the keeper]" if im.same_file else "")
                    )
                    st.text(printable(os.path.basename(im.path)), help=printable(im.path))
                    st.caption(literal_markdown(os.path.dirname(im.path)))
                    st.caption(f"{im.width}x{im.height} px · {im.size / 1024:,.1f} KiB")
        if len(group.images) > IMAGES_SHOWN:
            st.caption(f"{len(group.images) - IMAGES_SHOWN} more images of this group are in the CSV.")


def main() -> None:
    st.title("Duplicates")
    client = collection_client()
    if client is None:
        return
    threshold, exact_only, folder = controls(client.duplicate_threshold())
    settings = Settings()
    report = scan(
        settings.resolved_uri(), settings.collection, threshold, os.path.abspath(folder) if folder else "", exact_only
    )
    how = "identical bytes only" if exact_only else f"threshold {threshold:.3f}"
    st.caption(
        f"{len(report.groups)} group{'' if len(report.groups) == 1 else 's'}, {report.duplicates} "
        f"duplicate{'' if report.duplicates == 1 else 's'} among {report.images:,} images ({how}, "
        f"scanned in {report.seconds:.1f} s). Nothing is deleted or moved: the CSV lists every image "
        "of every group with the suggested keeper, for your own tools."
    )
    st.download_button(
        "Download CSV",
        report.csv_bytes(),
        file_name="duplicates.csv",
        mime="text/csv",
        key="dup_csv",
        disabled=not report.groups,
    )
    if not report.groups:
        st.info("No duplicates at this threshold: lower it to find looser copies.")
        return
    for number, group in enumerate(report.groups[:GROUPS_SHOWN], 1):
        show_group(number, group)
    if len(report.groups) > GROUPS_SHOWN:
        st.caption(f"{len(report.groups) - GROUPS_SHOWN} more groups are in the CSV.")


guarded(main)
