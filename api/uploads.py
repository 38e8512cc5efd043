"""Request bodies bounded in size before they are parsed, and in time.

An upload (``multipart/form-data``) over ``--max-upload-mb``, or any other body (the JSON of
``/search/similar`` and ``/search/vector``) over ``VITSEARCH_API_MAX_JSON_KB``, is refused with
413 without being stored or parsed, from its ``Content-Length`` or, when it is streamed, as soon
as it passes the limit. A body that has not all arrived ``VITSEARCH_API_BODY_TIMEOUT_S`` seconds
after the app began to read it (a client that announces more than it sends, or sends it a
trickle at a time) gets 408, and its connection is closed.
"""

from __future__ import annotations

import asyncio

from .schemas import AsciiJSONResponse

#: Bytes a request may carry beyond the upload itself (multipart headers, other form fields).
OVERHEAD_BYTES = 1 << 20


class BodyTooLarge(Exception):
    """Raised into the app from ``receive`` when the body passes the limit."""


class BodyTimeout(Exception):
    """Raised into the app from ``receive`` when the body is not in by the deadline."""


class BodyLimit:
    """ASGI middleware: 413 ``{"detail": ...}`` for an upload over ``upload_bytes`` +
    :data:`OVERHEAD_BYTES` or another body over ``json_bytes``; 408 for a body not received
    within ``timeout_s`` of the app's first read. Both close the connection.

    Args:
        upload_bytes: the largest upload, in bytes (``--max-upload-mb``).
        json_bytes: the largest body that is not an upload, in bytes (``VITSEARCH_API_MAX_JSON_KB``).
        timeout_s: seconds a body may take to arrive, from the app's first read of it
            (``VITSEARCH_API_BODY_TIMEOUT_S``).
    """

    def __init__(self, app, upload_bytes: int, json_bytes: int, timeout_s: float):
        self.app = app
        self.upload_bytes, self.json_bytes, self.timeout_s = upload_bytes, json_bytes, timeout_s

    def _limit(self, content_type: str) -> tuple[int, str]:
        """The most bytes a body of ``content_type`` may have, and the limit's name for a message."""
        if content_type.lower().lstrip().startswith("multipart/form-data"):
            return (
                self.upload_bytes + OVERHEAD_BYTES,
                f"the upload limit of {self.upload_bytes / 2**20:g} MB "
                f"(vitsearch serve --max-upload-mb, or VITSEARCH_MAX_UPLOAD_MB)",
            )
        return self.json_bytes, (
            f"the limit of {self.json_bytes / 1024:g} KB for a request body that is not an "
            f"upload (VITSEARCH_API_MAX_JSON_KB)"
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {
            name: value.decode("latin-1")
            for name, value in scope["headers"]
            if name in (b"content-length", b"content-type")
        }
        max_bytes, limit = self._limit(headers.get(b"content-type", ""))
        try:
            length = int(headers.get(b"content-length", "0"))
        except ValueError:
            length = 0  # uvicorn refuses a malformed Content-Length before the app sees it
        if length > max_bytes:
            return await _closing(413, f"request body is {_size(length)}, over {limit}")(scope, receive, send)
        seen, done, started = 0, False, False
        deadline: float | None = None
        failure: AsciiJSONResponse | None = None

        async def bounded_receive():
            nonlocal seen, done, deadline, failure
            if done:  # the body is in: what comes next is the disconnect, whenever it comes
                return await receive()
            loop = asyncio.get_running_loop()
            if deadline is None:
                deadline = loop.time() + self.timeout_s
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                failure = _closing(
                    408,
                    f"request body not received within {self.timeout_s:g} s ({_size(seen)} of "
                    f"{_size(length) if length else 'it'} came; VITSEARCH_API_BODY_TIMEOUT_S)",
                )
                raise BodyTimeout() from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    failure = _closing(413, f"request body is over {_size(max_bytes)}, over {limit}")
                    raise BodyTooLarge()
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        async def tracked_send(message):
            nonlocal started
            if failure is not None and not started:  # the app's own error for a body it could not read: ours instead
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, bounded_receive, tracked_send)
        except (BodyTooLarge, BodyTimeout):
            pass
        if failure is not None and not started:
            await failure(scope, receive, send)


def _closing(status: int, detail: str) -> AsciiJSONResponse:
    """A ``{"detail": ...}`` answer that closes the connection (its body is not read to the end)."""
    return AsciiJSONResponse({"detail": detail}, status_code=status, headers={"Connection": "close"})


def _size(n: int) -> str:
    """``n`` bytes for a message: bytes below a KB, KB below a MB, else MB."""
    if n < 1024:
        return f"{n:,} bytes"
    return f"{n / 1024:.1f} KB" if n < 2**20 else f"{n / 2**20:.1f} MB"
