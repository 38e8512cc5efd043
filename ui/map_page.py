"""The Map page: the whole collection as a 2-D scatter (:mod:`~vitsearch.search.embedding_map`),
similar images close together, coloured by cluster, folder or capture date.

A page of the app (:mod:`vitsearch.ui.app`, at ``/map``). The map is read as kept with the
collection (computed first, once, when there is none or it is stale: ``vitsearch map`` does it
ahead). The scatter is WebGL (plotly ``scattergl``); hovering names the file and its cluster
(plotly's hover labels are text: no thumbnail there); clicking a point shows its thumbnail with
"More like this" (on the Search page); a box or lasso selection is listed, downloadable as
CSV, and searched with as examples ("Search with these", up to
:data:`~vitsearch.search.query.MAX_EXAMPLES`: the Search page's ``examples``). Each cluster is labelled on the plot by its number and, under it, by its most central image.

Coloured by date, the points take a continuous colour scale of their capture time (``taken_at``,
read once per map and image count: :func:`load_dates`), with dates on the colour bar; points of no
known date (a collection not yet upgraded) are grey.

Session state: ``map_selected`` holds the row indices of the selection (set by the chart's
selection callback); ``similar`` is the Search page's (see :mod:`.search_page`).
"""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import os

import numpy as np
import streamlit as st

from vitsearch.search.config import Settings
from vitsearch.search.embedding_map import EmbeddingMap, capture_times
from vitsearch.search.paths import printable, stored_path
from vitsearch.search.query import MAX_EXAMPLES
from vitsearch.ui.common import GRID_COLUMNS, collection_client, guarded, indexed_thumbnail, open_client

#: Folders coloured apart (the most populous); the others share one colour.
FOLDERS_COLOURED = 20
#: Clusters whose most central image is shown under the map (largest first).
CLUSTERS_SHOWN = 12
#: Rows of a selection listed on the page (the CSV holds them all).
SELECTION_LISTED = 200
#: Colour of the points of no cluster (noise), and of the folders not coloured apart.
NOISE_COLOUR = "#b0b0b0"
#: Marker size in pixels (smaller for large maps).
MARKER_PX = (6, 3)
#: What "Colour by" offers.
COLOURINGS = ["Cluster", "Folder", "Date"]
#: The colour scale of capture dates (oldest to newest), and about how many dates its bar names.
DATE_SCALE, DATE_TICKS = "Viridis", 5
#: Formats of the colour bar's dates, the coarsest that tells its ticks apart first.
TICK_FORMATS = ("%Y-%m", "%Y-%m-%d", "%Y-%m-%d %H:%M")


@st.cache_data(max_entries=4, show_spinner="Computing the map (once; `vitsearch map` does it ahead)…")
def load_map(uri: str, collection: str, recompute: int) -> EmbeddingMap:
    """The collection's map (kept, or computed and kept), per server process; ``recompute``
    counts the "Recompute" clicks (a new count computes it again)."""
    from vitsearch.search.embedding_map import embedding_map
    from vitsearch.ui.common import open_client

    return embedding_map(open_client(uri, collection).store, recompute=recompute > 0)


@st.cache_data(max_entries=4, show_spinner="Reading the capture dates…")
def load_dates(
    uri: str, collection: str, map_id: str, count: int, physical: str | None, _emap: EmbeddingMap
) -> tuple[np.ndarray, np.ndarray]:
    """The capture dates of the map's images (:func:`~vitsearch.search.embedding_map.capture_times`),
    read once per map (``map_id``), image count and physical collection (an upgrade that adds the
    dates copies the rows to a new one), not on every rerun (it reads every row of the
    collection): ``(taken, hover)``, ``taken`` the ``(N,) float64`` Unix seconds (NaN:
    unknown) and ``hover`` their :func:`date_labels`."""
    taken, file_date = capture_times(open_client(uri, collection).store, _emap)
    return taken, date_labels(taken, file_date)


def local_time(seconds: float) -> dt.datetime:
    """``seconds`` since the epoch as a local date and time (as ``vitsearch search`` shows them)."""
    try:
        return dt.datetime.fromtimestamp(seconds)
    except (OverflowError, OSError, ValueError):  # out of the platform's range: UTC arithmetic
        return dt.datetime(1970, 1, 1) + dt.timedelta(seconds=seconds)


def date_labels(taken: np.ndarray, file_date: np.ndarray) -> np.ndarray:
    """``(N,) object`` each date as hovering shows it (``2024-05-01 18:30``, local time, with
    "(file date)" where it is the file's modification time); "" where unknown (NaN)."""
    out = np.full(len(taken), "", dtype=object)
    for i in np.flatnonzero(np.isfinite(taken)).tolist():
        out[i] = local_time(float(taken[i])).strftime("%Y-%m-%d %H:%M") + (" (file date)" if file_date[i] else "")
    return out


def date_ticks(low: float, high: float) -> tuple[list[float], list[str]]:
    """The colour bar's ticks from ``low`` to ``high`` (Unix seconds): about :data:`DATE_TICKS`
    evenly spaced times, both ends included, and their dates in the coarsest of
    :data:`TICK_FORMATS` that tells them apart."""
    if not high > low:
        return [low], [local_time(low).strftime("%Y-%m-%d")]
    values = np.linspace(low, high, DATE_TICKS).tolist()
    for fmt in TICK_FORMATS:
        text = [local_time(v).strftime(fmt) for v in values]
        if len(set(text)) == len(text):
            break
    return values, text


def selection_csv(emap: EmbeddingMap, rows: list[int]) -> bytes:
    """The selected rows as CSV: path (stored form, as ``vitsearch export`` writes it), folder,
    x, y, cluster."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "folder", "x", "y", "cluster"])
    for i in rows:
        path = emap.paths[i]
        x, y = emap.xy[i].tolist()
        w.writerow(
            [stored_path(path), stored_path(os.path.dirname(path)), f"{x:.5f}", f"{y:.5f}", int(emap.cluster[i])]
        )
    return buf.getvalue().encode("utf-8")


def groups(emap: EmbeddingMap, colour: str) -> list[tuple[str, np.ndarray]]:
    """``(legend name, row indices)`` of each trace: clusters (noise last), or the most populous
    folders (the rest as "other folders")."""
    if colour == "Cluster":
        ids = sorted(set(emap.cluster.tolist()), key=lambda c: (c < 0, c))
        return [("noise" if c < 0 else f"cluster {c}", np.flatnonzero(emap.cluster == c)) for c in ids]
    folders = np.asarray(emap.folders, dtype=object)
    names, counts = np.unique(folders, return_counts=True)
    top = [str(n) for n in names[np.argsort(-counts, kind="stable")][:FOLDERS_COLOURED]]
    out = [(printable(f) or "/", np.flatnonzero(folders == f)) for f in top]
    rest = np.flatnonzero(~np.isin(folders, top))
    return out + ([("other folders", rest)] if len(rest) else [])


def date_traces(emap: EmbeddingMap, names: np.ndarray, size: int, taken: np.ndarray, hover: np.ndarray) -> list:
    """Colouring by date: one ``scattergl`` trace of the dated points, ``marker.color`` their
    capture times on :data:`DATE_SCALE` with dates on its colour bar, and one grey trace "no
    date" of the others; ``customdata`` ``[row index, cluster]`` as :func:`figure`'s."""

    known = np.isfinite(taken)
    traces = []
    rows = np.flatnonzero(known)
    if len(rows):
        values = taken[rows]
        low, high = float(values.min()), float(values.max())
        tickvals, ticktext = date_ticks(low, high)
        marker = {
            "size": size,
            "color": values,
            "colorscale": DATE_SCALE,
            "cmin": low,
            "cmax": high if high > low else low + 1,
            "colorbar": {"title": {"text": "taken"}, "tickvals": tickvals, "ticktext": ticktext},
        }
        traces.append(points(emap, rows, names, "taken", marker, "<br>%{text}", showlegend=False, text=hover[rows]))
    rows = np.flatnonzero(~known)
    if len(rows):
        traces.append(points(emap, rows, names, "no date", {"size": size, "color": NOISE_COLOUR}, "<br>no date"))
    return traces


def points(emap: EmbeddingMap, rows: np.ndarray, names: np.ndarray, name: str, marker: dict, hover: str = "", **kw):
    """One ``scattergl`` trace of the map's ``rows`` (indices): ``customdata`` ``[row index,
    cluster]`` (what a click and the selection read), hover the file name (``names``, escaped)
    and the cluster, then ``hover`` (a plotly template); ``kw`` more of the trace's properties."""
    import plotly.graph_objects as go

    return go.Scattergl(
        x=emap.xy[rows, 0],
        y=emap.xy[rows, 1],
        mode="markers",
        name=name,
        marker={"opacity": 0.8, **marker},
        customdata=np.column_stack([rows, emap.cluster[rows]]),
        hovertext=names[rows],
        hovertemplate="%{hovertext}<br>cluster %{customdata[1]}" + hover + "<extra></extra>",
        **kw,
    )


def figure(emap: EmbeddingMap, colour: str, taken: np.ndarray | None = None, hover: np.ndarray | None = None):
    """The plotly figure: one ``scattergl`` trace per group, ``customdata`` ``[row index,
    cluster]``, and each cluster's number at its members' median position. Coloured by "Date":
    :func:`date_traces` of ``taken`` (``(N,) float64`` Unix seconds, NaN unknown; None: none
    known) and ``hover`` (``(N,)`` its :func:`date_labels`)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    # Plotly renders a subset of HTML in hover labels and legends (<b>, <a href>...): names escaped.
    names = np.asarray([html.escape(printable(os.path.basename(p))) for p in emap.paths], dtype=object)
    size = MARKER_PX[0] if len(emap.paths) <= 20_000 else MARKER_PX[1]
    fig = go.Figure()
    if colour == "Date":
        if taken is None:
            taken = np.full(len(emap.paths), np.nan)
        if hover is None:
            hover = date_labels(taken, np.zeros(len(taken), bool))
        fig.add_traces(date_traces(emap, names, size, taken, hover))
    else:
        for name, rows in groups(emap, colour):
            grey = {"color": NOISE_COLOUR} if name in ("noise", "other folders") else {}
            fig.add_trace(points(emap, rows, names, html.escape(name), {"size": size, **grey}))
    legend = {"itemsizing": "constant"}
    if colour == "Date":  # the colour bar takes the right: "no date" goes top left
        legend.update(x=0, y=1, xanchor="left", yanchor="top")
    for c in emap.labels:
        x, y = np.median(emap.xy[emap.cluster == c], axis=0).tolist()
        fig.add_annotation(x=x, y=y, text=str(c), showarrow=False, font={"size": 14, "color": "black"})
    fig.update_layout(
        height=700,
        margin={"l": 0, "r": 0, "t": 10, "b": 0},
        dragmode="lasso",
        colorway=qualitative.Alphabet,  # 26 colours: clusters 0 and 10 apart
        legend=legend,
        xaxis={"visible": False},
        yaxis={"visible": False, "scaleanchor": "x"},
    )
    return fig


def remember_selection() -> None:
    """The chart's selection callback: its points' row indices into ``map_selected``."""
    event = st.session_state.get("map_chart") or {}
    points = (event.get("selection") or {}).get("points") or []
    st.session_state["map_selected"] = sorted({int(p["customdata"][0]) for p in points if p.get("customdata")})


def more_like(path: str) -> None:
    st.session_state["similar"] = path
    st.session_state["examples"] = None


def search_with(paths: list[str]) -> None:
    st.session_state["examples"] = paths


def show_selection(emap: EmbeddingMap, uri: str, collection: str) -> None:
    rows = [i for i in st.session_state.get("map_selected") or [] if 0 <= i < len(emap.paths)]
    if not rows:
        st.caption("Click a point to see it; draw a lasso or a box to list a group and download it.")
        return
    if len(rows) == 1:
        path = emap.paths[rows[0]]
        picture, facts = st.columns([1, 2])
        thumb = indexed_thumbnail(uri, collection, path)
        if thumb is None:
            picture.warning("changed since it was indexed, or gone: run vitsearch index again")
        else:
            picture.image(thumb, width="content")
        with facts:
            st.code(printable(path), language=None, wrap_lines=True)
            st.caption(f"cluster {int(emap.cluster[rows[0]])}")
            if st.button("More like this", key="map-more", type="primary", on_click=more_like, args=(path,)):
                st.switch_page("search_page.py")
        return
    st.markdown(f"**{len(rows):,} images selected**")
    st.dataframe(
        {
            "path": [printable(emap.paths[i]) for i in rows[:SELECTION_LISTED]],
            "cluster": [int(emap.cluster[i]) for i in rows[:SELECTION_LISTED]],
        },
        hide_index=True,
        width="stretch",
    )
    with st.container(horizontal=True):
        st.download_button("Download CSV", selection_csv(emap, rows), "selection.csv", "text/csv", key="map-csv")
        many = len(rows) > MAX_EXAMPLES
        if st.button(
            "Search with these",
            key="map-examples",
            disabled=many,
            help=f"Select at most {MAX_EXAMPLES} images to search with them together"
            if many
            else "The images most like all of these, on the Search page",
            on_click=search_with,
            args=([emap.paths[i] for i in rows],),
        ):
            st.switch_page("search_page.py")


def show_clusters(emap: EmbeddingMap, uri: str, collection: str) -> None:
    """The most central image of the largest clusters, in a grid."""
    sizes = {c: int((emap.cluster == c).sum()) for c in emap.labels}
    shown = sorted(sizes, key=lambda c: -sizes[c])[:CLUSTERS_SHOWN]
    if not shown:
        return
    st.subheader("Clusters")
    for start in range(0, len(shown), GRID_COLUMNS):
        for col, c in zip(st.columns(GRID_COLUMNS), shown[start : start + GRID_COLUMNS]):
            with col.container(border=True):
                thumb = indexed_thumbnail(uri, collection, emap.labels[c][0])
                if thumb is not None:
                    st.image(thumb, width="stretch")
                st.caption(f"cluster {c} · {sizes[c]:,} images")


def main() -> None:
    st.title("Map")
    client = collection_client()
    if client is None:
        return
    settings = Settings()
    uri, collection = settings.resolved_uri(), settings.collection
    with st.sidebar:
        st.header("Map")
        colour = st.radio("Colour by", COLOURINGS, key="map_colour", horizontal=True)
        if st.button("Recompute", help="Lay the collection out again now (minutes for a large one)."):
            st.session_state["map_recompute"] = st.session_state.get("map_recompute", 0) + 1
            st.session_state["map_selected"] = []
    emap = load_map(uri, collection, st.session_state.get("map_recompute", 0))
    r = emap.record
    st.caption(
        f"{r['rows']:,} images, {r['clusters']} clusters ({r['method']}, {r['sampled']:,} laid out); "
        f"similar images lie close together. Hover for the name, click for the image."
    )
    taken = hover = None
    if colour == "Date":
        store = client.store
        count = store.count()  # first: it notices a collection moved (upgraded) meanwhile
        taken, hover = load_dates(uri, collection, r["id"], count, store.physical, emap)
        if not np.isfinite(taken).any():
            st.info(
                "This collection has no capture dates yet: the next `vitsearch index` into it adds them "
                "(it reads each file's EXIF; no image is embedded again)."
            )
    st.plotly_chart(
        figure(emap, colour, taken, hover),
        key="map_chart",
        on_select=remember_selection,
        selection_mode=("points", "box", "lasso"),
        width="stretch",
    )
    show_selection(emap, uri, collection)
    show_clusters(emap, uri, collection)


guarded(main)
