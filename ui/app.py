"""The vitsearch page: upload a photo (or take one with the camera), see the most similar images.

Started by ``vitsearch ui`` (``streamlit run`` on this file), which passes the collection through
``VITSEARCH_URI``, ``VITSEARCH_COLLECTION`` and ``VITSEARCH_MAX_UPLOAD_MB``. All searching goes
through :class:`~vitsearch.search.client.SearchClient`; this file is layout and state only.

Session state: ``similar`` holds the path of the indexed item that "More like this" asked for
(None when the query is the uploaded or camera image).
"""
from __future__ import annotations

import logging
import os
import re
import time

import streamlit as st

from vitsearch.search.application import configure

configure()  # this page is an application: quiet the libraries' own logs (before pymilvus loads)

from vitsearch.search.client import Hit, SearchClient  # noqa: E402
from vitsearch.search.config import Settings  # noqa: E402
from vitsearch.search.errors import BadImageError, CollectionNotFoundError, VitsearchError  # noqa: E402
from vitsearch.search.images import IMAGE_EXTENSIONS, Limits  # noqa: E402
from vitsearch.search.paths import printable  # noqa: E402
from vitsearch.search.thumbnails import THUMB_PX, thumbnail, to_jpeg  # noqa: E402

log = logging.getLogger("vitsearch.ui")

UPLOAD_TYPES = sorted(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
GRID_COLUMNS = 4
K_DEFAULT, K_MAX = 12, 100
#: Seconds a search keeps retrying an unreachable Milvus before the page says so.
RETRY_S = 5.0


@st.cache_resource(show_spinner="Opening the collection and loading its encoder…")
def open_client(uri: str, collection: str) -> SearchClient:
    """One client per server process and collection: the Milvus connection and the encoder are
    made once and shared by every browser session. Not cached when it raises (the collection
    may be indexed later)."""
    settings = Settings()
    settings = settings.model_copy(update={"retry_s": min(settings.retry_s, RETRY_S)})
    client = SearchClient(uri=uri, collection=collection, settings=settings)
    _ = client.encoder  # load the model now, not on the first search
    return client


@st.cache_data(max_entries=4096, show_spinner=False)
def cached_thumbnail(path: str, size: int, sha256: str) -> bytes | None:
    """JPEG thumbnail of an indexed file, cached by the row's path, size and sha256 (what is
    shown is always the indexed bytes: see :func:`~vitsearch.search.thumbnails.thumbnail`)."""
    try:
        return thumbnail({"path": path, "size": size, "sha256": sha256}, limits=Limits.from_settings(Settings()))
    except BadImageError as exc:
        log.warning("no thumbnail: %s", printable(str(exc)))
        return None


_MARKDOWN_SYNTAX = re.compile(r"([!-/:-@\[-`{-~])")


def literal_markdown(text: str) -> str:
    """Markdown that shows ``text`` as it is: every ASCII punctuation character backslash-escaped
    (CommonMark lets any be), control characters and bytes that are not UTF-8 spelled out
    (:func:`~vitsearch.search.store.printable`). For file names and messages that hold them,
    where Streamlit only takes Markdown (``st.error``, ``st.caption``)."""
    return _MARKDOWN_SYNTAX.sub(r"\\\1", printable(text))


def show_similar(path: str | None) -> None:
    st.session_state["similar"] = path


def sidebar(client: SearchClient) -> tuple[int, float, str]:
    """Collection facts and the search controls; returns ``(k, min_score, folder)``."""
    with st.sidebar:
        st.header("Collection")
        stats = client.stats()
        st.metric("Images", f"{stats['count']:,}")
        st.markdown(
            f"**Model** {literal_markdown(stats['model'])}  \n"
            f"**Embedding** {stats['dim']}-d, {stats['pooling'].upper()} token  \n"
            f"**Index** {stats['index_type']} ({stats['metric_type']})  \n"
            f"**Collection** {literal_markdown(stats['collection'])}  \n"
            f"**URI** {literal_markdown(stats['uri'])}")
        st.header("Search")
        k = st.slider("Results (top-k)", 1, K_MAX, K_DEFAULT, key="k")
        min_score = st.slider("Minimum score", 0.0, 1.0, 0.0, 0.01, key="min_score",
                              help="Cosine similarity of the CLS embeddings: 1 is identical.")
        folder = st.text_input("Folder", key="folder", placeholder="/photos/2024",
                               help="Only images in this folder or below it.")
    return k, min_score, folder.strip()


def query_image(max_upload_mb: int):
    """The uploaded or camera image as ``(name, bytes)``, or None. Shows errors itself."""
    source = st.segmented_control("Query", ["Upload", "Camera"], default="Upload", key="source",
                                  label_visibility="collapsed", on_change=show_similar, args=(None,))
    if source == "Camera":
        shot = st.camera_input("Take a photo", key="camera", on_change=show_similar, args=(None,))
        return ("camera photo", shot.getvalue()) if shot is not None else None
    upload = st.file_uploader("Drop a photo to find similar images", type=UPLOAD_TYPES, key="upload",
                              max_upload_size=max_upload_mb, on_change=show_similar, args=(None,))
    if upload is None:
        return None
    if upload.size > max_upload_mb * 1024 * 1024:
        st.error(literal_markdown(f"{upload.name} is {upload.size / 2**20:.1f} MB: the limit is {max_upload_mb} MB "
                                  f"(vitsearch ui --max-upload-mb, or VITSEARCH_MAX_UPLOAD_MB)"))
        return None
    return upload.name, upload.getvalue()


def results_grid(hits: list[Hit]) -> None:
    """Thumbnails of the hits in rows of :data:`GRID_COLUMNS`, each with "More like this". File
    and folder names are plain text, never Markdown."""
    for start in range(0, len(hits), GRID_COLUMNS):
        for col, (rank, hit) in zip(st.columns(GRID_COLUMNS), enumerate(hits[start:start + GRID_COLUMNS], start + 1)):
            with col.container(border=True):
                meta = hit.metadata
                thumb = cached_thumbnail(hit.path, int(meta["size"]), meta["sha256"])
                if thumb is None:
                    st.warning("changed since it was indexed, or gone: run vitsearch index again")
                else:
                    st.image(thumb, width="stretch")
                st.markdown(f"**{hit.score:.3f}**")
                st.text(printable(os.path.basename(hit.path)), help=printable(hit.path))
                st.caption(literal_markdown(meta["folder"]))
                st.button("More like this", key=f"more-{rank}", on_click=show_similar, args=(hit.path,))


def main() -> None:
    st.set_page_config(page_title="vitsearch", page_icon="🔎", layout="wide")
    st.title("vitsearch")
    settings = Settings()
    uri, collection = settings.resolved_uri(), settings.collection
    try:
        client = open_client(uri, collection)
    except CollectionNotFoundError:
        st.info(f"Collection {literal_markdown(collection)} at {literal_markdown(uri)} has no images yet: "
                f"index a folder first: `vitsearch index DIR`")
        st.button("Check again")
        return
    except VitsearchError as exc:
        st.error(f"Cannot open the collection: {literal_markdown(str(exc))}")
        st.button("Retry")
        return
    k, min_score, folder = sidebar(client)

    query = query_image(settings.max_upload_mb)  # always drawn, so the upload survives "More like this"
    similar = st.session_state.get("similar")
    started = time.perf_counter()
    if similar:
        with st.container(horizontal=True, vertical_alignment="center"):
            st.markdown(f"More like {literal_markdown(os.path.basename(similar))} "
                        f"({literal_markdown(os.path.dirname(similar))})")
            st.button("Back to my photo", on_click=show_similar, args=(None,))
        hits = client.search_similar(similar, k=k, folder=folder or None)
    elif query is not None:
        name, data = query
        picture = client.load(data, name)  # decoded as the indexer decodes: reduced scale, same limits
        st.image(to_jpeg(picture, 2 * THUMB_PX), width=THUMB_PX)
        st.text(printable(name))
        with st.spinner("Searching…"):
            hits = client.search(picture, k=k, folder=folder or None)
    else:
        return
    elapsed_ms = 1000 * (time.perf_counter() - started)
    shown = [h for h in hits if h.score >= min_score]
    st.caption(f"{len(shown)} result{'' if len(shown) == 1 else 's'} in {elapsed_ms:.0f} ms"
               + (f" ({len(hits) - len(shown)} below score {min_score:.2f})" if len(shown) < len(hits) else ""))
    if not shown:
        st.info("No indexed image matches: lower the minimum score or clear the folder filter.")
    results_grid(shown)


def run() -> None:
    """The page, with every error shown on it rather than as a traceback."""
    try:
        main()
    except VitsearchError as exc:
        st.error(literal_markdown(str(exc)))
    except Exception as exc:  # the page must never show a traceback; the server log keeps it
        log.exception("unexpected error")
        st.error(literal_markdown(f"Unexpected error ({type(exc).__name__}: {exc}); the server log has the details."))


run()
