"""A box drawn on the uploaded photo, for searching that region only (the Search page's "Search a
region").

The photo is shown as the background of a plotly chart whose axes are the photo's full-size
pixels (after its EXIF orientation: what ``SearchClient.search(box=)`` takes), y pointing down.
Plotly selects only on traces that hold points, so four transparent points at the corners make
the box tool available; the chart's box selection (``st.plotly_chart(on_select=...)``) gives its
x and y ranges, rounded and clipped to the photo.

Session state: ``box`` holds the drawn :class:`~vitsearch.search.query.Box` (None: the whole photo).
"""

from __future__ import annotations

import base64
import functools

import streamlit as st

from vitsearch.search.images import Limits, decode_sized
from vitsearch.search.query import Box
from vitsearch.search.thumbnails import THUMB_PX, to_jpeg

#: Height of the chart the box is drawn on, in pixels.
CHART_PX = 420
#: Widest the chart gets (a panorama), in pixels.
CHART_MAX_WIDTH_PX = 900


def clear_box() -> None:
    st.session_state["box"] = None


def _remember_box(size: tuple[int, int]) -> None:
    """The chart's selection callback: its box, in full-size pixels, into ``box``."""
    event = st.session_state.get("region_chart") or {}
    boxes = (event.get("selection") or {}).get("box") or []
    st.session_state["box"] = box_of(boxes[-1], size) if boxes else None


def box_of(selection: dict, size: tuple[int, int]) -> Box | None:
    """A plotly box selection (``{"x": [x0, x1], "y": [y0, y1]}``, in any order) as a
    :class:`Box` of the photo's ``(width, height)``, clipped to it; None when nothing is left."""
    width, height = size
    (x0, x1), (y0, y1) = sorted(selection["x"]), sorted(selection["y"])
    left, top = max(0, round(x0)), max(0, round(y0))
    right, bottom = min(width, round(x1)), min(height, round(y1))
    if right - left < 1 or bottom - top < 1:
        return None
    return Box(left, top, right - left, bottom - top)


def region_picker(data: bytes, name: str, limits: Limits) -> Box | None:
    """Draw the photo (``data``, decoded at reduced scale) on a chart where a box can be drawn;
    returns the box drawn (full-size pixels) or None for the whole photo.

    Raises:
        BadImageError: the photo cannot be decoded (as the search itself would say).
    """
    import plotly.graph_objects as go

    small, (width, height) = decode_sized(data, name, 2 * THUMB_PX, limits)
    source = "data:image/jpeg;base64," + base64.b64encode(to_jpeg(small, 2 * THUMB_PX)).decode()
    fig = go.Figure(
        go.Scatter(
            x=[0, width, 0, width],
            y=[0, 0, height, height],
            mode="markers",
            marker={"opacity": 0},
            hoverinfo="skip",
        )
    )
    fig.add_layout_image(
        source=source, xref="x", yref="y", x=0, y=0, sizex=width, sizey=height, sizing="stretch", layer="below"
    )
    box = st.session_state.get("box")
    if box is not None:
        fig.add_shape(type="rect", x0=box.x, y0=box.y, x1=box.x + box.w, y1=box.y + box.h, line={"color": "red"})
    fig.update_layout(
        height=CHART_PX,
        width=max(120, min(CHART_MAX_WIDTH_PX, round(CHART_PX * width / height))),
        margin={"l": 0, "r": 0, "t": 0, "b": 0},
        dragmode="select",
        showlegend=False,
        xaxis={"visible": False, "range": [0, width], "constrain": "domain"},
        yaxis={"visible": False, "range": [height, 0], "scaleanchor": "x", "constrain": "domain"},
    )
    st.plotly_chart(
        fig,
        key="region_chart",
        on_select=functools.partial(_remember_box, (width, height)),
        selection_mode=("box",),
        width="content",
        config={"displayModeBar": False},
    )
    return box
