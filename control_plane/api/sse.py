"""Server-sent events: one framing function and the streaming response around a generator."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask


def sse_frame(event: str, data: Any, *, id: str | None = None) -> bytes:
    lines = [f"event: {event}"]
    if id is not None:
        lines.append(f"id: {id}")
    lines.append("data: " + json.dumps(data, default=str, separators=(",", ":")))
    return ("\n".join(lines) + "\n\n").encode()


KEEPALIVE = b": keepalive\n\n"


def sse_response(frames: AsyncIterator[bytes], *, on_close: Callable[[], None]) -> StreamingResponse:
    """Stream ``frames``; ``on_close`` runs when the response ends, even if the client left before
    the first frame (the generator's own ``finally`` would then never run)."""
    return StreamingResponse(
        frames, media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        background=BackgroundTask(on_close),
    )
