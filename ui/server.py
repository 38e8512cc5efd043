"""The page's server: ``vitsearch ui`` runs ``streamlit run`` on this file, which serves the app
(:mod:`.app`) as Streamlit's ASGI app (``st.App``) behind
:class:`~vitsearch.api.hosts.AllowedHosts`, so that every HTTP request and websocket handshake
for a ``Host`` the page is not served on, and every websocket from another origin, is refused
with 400 (a web page's DNS rebinding).

The names come from ``VITSEARCH_ALLOWED_HOSTS``, which ``vitsearch ui`` sets to the loopback
names, its ``--host`` and its ``--allowed-hosts``. Streamlit's own ``server.allowedHosts`` is not
enough: it guards the websocket only, not the page's files, media and uploads.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st
from starlette.middleware import Middleware

from vitsearch.api.hosts import AllowedHosts
from vitsearch.search.config import Settings

#: Streamlit's liveness probe, answered for any Host (it says "ok" and nothing else).
HEALTH = "/_stcore/health"

app = st.App(
    Path(__file__).resolve().parent / "app.py",
    middleware=[Middleware(AllowedHosts, hosts=Settings().allowed_hosts, open_paths={HEALTH})],
)
