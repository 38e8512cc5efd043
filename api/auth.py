"""The optional bearer token (``VITSEARCH_API_TOKEN``): when set, every request for data must carry
``Authorization: Bearer TOKEN``, compared in constant time (``hmac.compare_digest``); liveness and
the API's own description (:data:`OPEN_PATHS`) need none."""

from __future__ import annotations

import hmac

from .schemas import AsciiJSONResponse

#: Routes open without the token: liveness (a load balancer's probe has no secret) and the API's
#: description, which holds no data: the OpenAPI document and its Swagger UI and ReDoc pages.
OPEN_PATHS = frozenset({"/healthz", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})


class BearerToken:
    """ASGI middleware answering 401 ``{"detail": ...}`` (``WWW-Authenticate: Bearer``) to a
    request without the right token. CORS preflights (``OPTIONS``) are answered before it."""

    def __init__(self, app, token: str):
        if not token:
            raise ValueError("the API token is empty")
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            return await self.app(scope, receive, send)
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, credentials = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    given = credentials.strip()
                break
        if not hmac.compare_digest(given, self._token):
            reason = "wrong bearer token" if given else "missing bearer token: send Authorization: Bearer TOKEN"
            response = AsciiJSONResponse({"detail": reason}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)
