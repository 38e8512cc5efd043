"""The vitsearch app: three pages, Search (:mod:`.search_page`, the default), Duplicates
(:mod:`.duplicates_page`, at ``/duplicates``) and Map (:mod:`.map_page`, at ``/map``).

Started by ``vitsearch ui`` (``streamlit run`` on this file), which passes the collection through
``VITSEARCH_URI``, ``VITSEARCH_COLLECTION`` and ``VITSEARCH_MAX_UPLOAD_MB``. This file only sets
the process up and routes (``st.navigation``); the pages share :mod:`.common`.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from vitsearch.search.application import configure

configure()  # this app is an application: quiet the libraries' own logs (before pymilvus loads)

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="vitsearch", page_icon="🔎", layout="wide")
st.navigation(
    [
        st.Page(HERE / "search_page.py", title="Search", icon=":material/search:", default=True),
        st.Page(HERE / "duplicates_page.py", title="Duplicates", icon=":material/content_copy:", url_path="duplicates"),
        st.Page(HERE / "map_page.py", title="Map", icon=":material/scatter_plot:", url_path="map"),
    ]
).run()
