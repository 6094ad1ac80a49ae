"""Server-sent events: the framing, the streaming response around a generator, and the connection
an event stream's chunks are written to."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask
from starlette.types import Scope


def sse_frame(event: str, data: Any, *, id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data, default=str, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


CONNECTED = b": connected\n\n"
KEEPALIVE = b": keepalive\n\n"
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def sse_response(frames: AsyncIterator[bytes], *, on_close: Callable[[], None]) -> StreamingResponse:
    """Stream ``frames``; ``on_close`` runs when the response ends, even if the client left before
    the first frame (the generator's own ``finally`` would then never run)."""
    return StreamingResponse(frames, media_type="text/event-stream", headers=SSE_HEADERS,
                             background=BackgroundTask(on_close))


def http_chunk(data: bytes) -> bytes:
    """``data`` as one chunk of an HTTP/1.1 chunked body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


class Transport(Protocol):
    """What the hub uses of a connection's transport (asyncio's or uvloop's)."""

    def write(self, data: bytes) -> None: ...
    def is_closing(self) -> bool: ...
    def get_write_buffer_size(self) -> int: ...
    def abort(self) -> None: ...
    def get_extra_info(self, name: str) -> Any: ...


SERVER_SEND = "devart.server_send"
"""Scope key of the HTTP server's own ``send``, before any middleware wraps it (set by the app)."""


def server_transport(scope: Scope) -> Transport:
    """The transport of the request's connection. ASGI has no way to reach it: uvicorn's ``send``
    is a method of its request cycle, which holds the transport (httptools and h11 alike)."""
    transport = getattr(getattr(scope.get(SERVER_SEND), "__self__", None), "transport", None)
    if not all(hasattr(transport, name) for name in ("write", "is_closing", "get_write_buffer_size", "abort")):
        raise RuntimeError("event streams need uvicorn: this server's send holds no transport")
    return transport  # type: ignore[return-value]
