"""What the pages of the app share: the one client per server process, cached thumbnails,
Markdown that shows names as they are, opening the collection with a message when it cannot be
opened, and the guard that shows every error on the page rather than as a traceback."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

import streamlit as st

from vitsearch.search.client import SearchClient
from vitsearch.search.config import Settings
from vitsearch.search.errors import BadImageError, CollectionNotFoundError, VitsearchError
from vitsearch.search.images import Limits
from vitsearch.search.models import index_hint
from vitsearch.search.paths import printable
from vitsearch.search.thumbnails import THUMB_PX, thumbnail

log = logging.getLogger("vitsearch.ui")

#: Thumbnails per row of a grid.
GRID_COLUMNS = 4
#: Seconds a search keeps retrying an unreachable Milvus before the page says so.
RETRY_S = 5.0
#: Largest collection whose folders the sidebar counts.
FOLDERS_READ_MAX = 50_000


@st.cache_resource(show_spinner="Opening the collection…")
def open_client(uri: str, collection: str) -> SearchClient:
    """One client per server process and collection: the Milvus connection is made once and
    shared by every browser session and page, and so is the encoder, loaded by the first search
    that needs it (:func:`ensure_encoder`), so that the page draws at once. Not cached when it
    raises (the collection may be indexed later)."""
    settings = Settings()
    settings = settings.model_copy(update={"retry_s": min(settings.retry_s, RETRY_S)})
    return SearchClient(uri=uri, collection=collection, settings=settings)


def ensure_encoder(client: SearchClient) -> None:
    """Load the client's encoder, saying on the page what it waits for (the first image search
    of the server process only)."""
    if not client.encoder_loaded:
        with st.spinner(f"Loading the model {printable(client.encoder_info.model)} (first search only)…"):
            _ = client.encoder


@st.cache_data(ttl=60, show_spinner=False)
def folder_count(uri: str, collection: str, count: int) -> int | None:
    """Distinct folders of the collection's images (one read of the ``folder`` field, cached a
    minute and per image count); None above :data:`FOLDERS_READ_MAX` images, where the read would
    slow the page."""
    if count > FOLDERS_READ_MAX:
        return None
    return len({row["folder"] for row in open_client(uri, collection).store.iter_rows(["folder"])})


@st.cache_data(max_entries=4096, show_spinner=False)
def cached_thumbnail(path: str, size: int, sha256: str) -> bytes | None:
    """JPEG thumbnail of an indexed file, cached by the row's path, size and sha256 (what is
    shown is always the indexed bytes: see :func:`~vitsearch.search.thumbnails.thumbnail`)."""
    try:
        return thumbnail({"path": path, "size": size, "sha256": sha256}, limits=Limits.from_settings(Settings()))
    except BadImageError as exc:
        log.warning("no thumbnail: %s", printable(str(exc)))
        return None


@st.cache_data(max_entries=1024, show_spinner=False)
def indexed_thumbnail(uri: str, collection: str, path: str) -> bytes | None:
    """A JPEG thumbnail (at most ``THUMB_PX``) of an indexed file by its path alone, only from the
    indexed bytes (``SearchClient.thumbnail``); None where the file changed or is gone."""
    try:
        return open_client(uri, collection).thumbnail(path, THUMB_PX)
    except BadImageError:
        return None


_MARKDOWN_SYNTAX = re.compile(r"([!-/:-@\[-`{-~])")


def literal_markdown(text: str) -> str:
    """Markdown that shows ``text`` as it is: every ASCII punctuation character backslash-escaped
    (CommonMark lets any be), control characters and bytes that are not UTF-8 spelled out
    (:func:`~vitsearch.search.paths.printable`). For file names and messages that hold them,
    where Streamlit only takes Markdown (``st.error``, ``st.caption``)."""
    return _MARKDOWN_SYNTAX.sub(r"\\\1", printable(text))


def collection_client() -> SearchClient | None:
    """The client of the collection the settings name, or None after saying on the page why it
    cannot be opened (not indexed yet, Milvus unreachable), with a button to try again."""
    settings = Settings()
    uri, collection = settings.resolved_uri(), settings.collection
    try:
        return open_client(uri, collection)
    except CollectionNotFoundError:
        st.info(
            f"Collection {literal_markdown(collection)} at {literal_markdown(uri)} has no images yet: "
            f"index a folder first: `{index_hint(settings)}`"
        )
        st.button("Check again")
    except VitsearchError as exc:
        st.error(f"Cannot open the collection: {literal_markdown(str(exc))}")
        st.button("Retry")
    return None


def guarded(page: Callable[[], None]) -> None:
    """Run ``page`` with every error shown on it rather than as a traceback."""
    try:
        page()
    except VitsearchError as exc:
        st.error(literal_markdown(str(exc)))
    except Exception as exc:  # the page must never show a traceback; the server log keeps it
        log.exception("unexpected error")
        st.error(literal_markdown(f"Unexpected error ({type(exc).__name__}: {exc}); the server log has the details."))
