"""The guard against DNS rebinding, for the HTTP API and the page alike: only the ``Host`` names a
server is served on get an answer.

A web page the user visits can point its own name at 127.0.0.1 once it is loaded ("DNS
rebinding") and then call a server on the user's machine as its own origin: the browser sends
the page's name in ``Host`` (and, on a websocket, in ``Origin``), and a server that does not
look answers it, token-less API and page included. So :class:`AllowedHosts` answers 400 to an
HTTP request or a websocket handshake whose ``Host`` is not one of the names the server is
served on (:func:`~vitsearch.search.config.served_hosts`: the loopback names, ``--host``,
``--allowed-hosts``), and to a websocket whose ``Origin`` is not on one of them. It imports
nothing heavy: the page's server (:mod:`vitsearch.ui.server`) loads it before the app sets the
process up.
"""

from __future__ import annotations

import json
import logging
import urllib.parse
from collections.abc import Iterable

from starlette.responses import Response

from vitsearch.search.config import host_name, served_hosts

log = logging.getLogger(__name__)


class AllowedHosts:
    """ASGI middleware: 400 ``{"detail": ...}`` (``Connection: close``) for an HTTP request or a
    websocket handshake without exactly one ``Host`` header naming one of ``hosts`` (any port),
    and for a websocket whose ``Origin`` is not ``http(s)://`` one of them (a missing ``Origin``
    passes: only browsers send one, and they always do). Other scopes (lifespan) and
    ``open_paths`` pass unchecked.

    Args:
        hosts: the names besides the loopback ones (``localhost``, ``127.0.0.1``, ``[::1]``).
        open_paths: paths answered for any ``Host``: liveness probes, which send the address
            they probe and learn nothing but "ok".

    Raises:
        ValueError: an entry of ``hosts`` is not a host name or address.
    """

    def __init__(self, app, hosts: Iterable[str] = (), open_paths: Iterable[str] = ()):
        self.app = app
        self.hosts = frozenset(served_hosts("", hosts))
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket") or scope["path"] in self.open_paths:
            return await self.app(scope, receive, send)
        reason = self.refusal(scope)
        if reason is None:
            return await self.app(scope, receive, send)
        log.warning("refused %s %r: %s", scope["type"], scope["path"], reason)
        body = json.dumps({"detail": reason}, ensure_ascii=True).encode("ascii")
        response = Response(body, 400, {"Connection": "close"}, media_type="application/json")
        await response(scope, receive, send)  # on a websocket: the handshake's answer, never 101

    def refusal(self, scope) -> str | None:
        """Why a request of this ``scope`` is refused (one line), or None when it is not."""
        hosts = [value for name, value in scope["headers"] if name == b"host"]
        if len(hosts) != 1:
            return f"a request needs exactly one Host header, this one has {len(hosts)}"
        host = hosts[0].decode("latin-1")
        if host_name(host) not in self.hosts:
            return (
                f"Host {_shown(host)} is not a name this server is served on ({', '.join(sorted(self.hosts))}); "
                f"to reach it by that name, add it to --allowed-hosts (VITSEARCH_ALLOWED_HOSTS)"
            )
        origins = [value for name, value in scope["headers"] if name == b"origin"]
        if scope["type"] == "websocket" and origins:
            origin = origins[0].decode("latin-1")
            parts = urllib.parse.urlsplit(origin) if len(origins) == 1 else None
            if not parts or parts.scheme not in ("http", "https") or host_name(parts.netloc) not in self.hosts:
                return f"a websocket from origin {_shown(origin)} is refused: not a page of this server"
        return None


def _shown(text: str, limit: int = 100) -> str:
    """A header's value quoted for a message, cut to about ``limit`` characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."
