"""Request bodies bounded before they are parsed: an upload over ``--max-upload-mb`` is refused
with 413 without being stored, from its ``Content-Length`` or, when it is streamed, as soon as
it passes the limit."""
from __future__ import annotations

from .schemas import AsciiJSONResponse

#: Bytes a request may carry beyond the upload itself (multipart headers, other form fields, a
#: JSON body's query vector).
OVERHEAD_BYTES = 1 << 20


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` when the body passes the limit."""


class BodyLimit:
    """ASGI middleware: 413 ``{"detail": ...}`` for a request body over ``upload_bytes`` +
    :data:`OVERHEAD_BYTES`.

    Args:
        upload_bytes: the largest upload, in bytes (``--max-upload-mb``).
    """

    def __init__(self, app, upload_bytes: int):
        self.app = app
        self.upload_bytes = upload_bytes
        self.max_bytes = upload_bytes + OVERHEAD_BYTES

    def _too_large(self, size: str) -> AsciiJSONResponse:
        return AsciiJSONResponse(
            {"detail": f"request body is {size}, over the upload limit of {self.upload_bytes / 2**20:g} MB "
                       f"(vitsearch serve --max-upload-mb, or VITSEARCH_MAX_UPLOAD_MB)"},
            status_code=413, headers={"Connection": "close"})

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length > self.max_bytes:
                    return await self._too_large(f"{length / 2**20:.1f} MB")(scope, receive, send)
                break
        seen, over, started = 0, False, False

        async def bounded_receive():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    raise BodyTooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if over and not started:  # the app's own error for a body it could not read: ours instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except BodyTooLarge:
            pass
        if over and not started:
            await self._too_large(f"over {self.max_bytes / 2**20:.1f} MB")(scope, receive, send)
