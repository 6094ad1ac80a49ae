"""/api/v1/events: a server-sent event stream of state changes (Postgres LISTEN/NOTIFY, fanned out
by the process's one :class:`~control_plane.api.hub.EventHub`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from control_plane.api.deps import HubDep, require_for_stream
from control_plane.api.hub import EventHub, Stream
from control_plane.api.sse import KEEPALIVE, sse_response
from control_plane.auth import READ, Principal

router = APIRouter(prefix="/api/v1", tags=["events"])


@router.get("/events", operation_id="stream_events",
            summary="Live task state changes (text/event-stream); 429 past the stream limits",
            response_class=StreamingResponse)
async def stream_events(hub: HubDep, who: Annotated[Principal, Depends(require_for_stream(READ))]) -> StreamingResponse:
    stream = hub.open(who)
    return sse_response(_frames(hub, stream), on_close=stream.close)


async def _frames(hub: EventHub, stream: Stream) -> AsyncIterator[bytes]:
    try:
        yield b": connected\n\n"
        async for item in hub.notifications(stream):
            if item is None:
                yield KEEPALIVE
            elif item.event_frames:
                yield item.event_frames
        if stream.reason:
            yield f": closed ({stream.reason})\n\n".encode()
    finally:
        stream.close()
