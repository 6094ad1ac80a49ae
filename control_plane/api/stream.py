"""/api/v1/events: a server-sent event stream of state changes (Postgres LISTEN/NOTIFY, fanned out
by the process's one :class:`~control_plane.api.hub.EventHub`)."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from starlette.types import Receive, Scope, Send

from control_plane.api.deps import HubDep, require_outside_transaction
from control_plane.api.hub import EventHub, Stream
from control_plane.api.sse import SSE_HEADERS, http_chunk, server_transport
from control_plane.auth import READ, Principal

router = APIRouter(prefix="/api/v1", tags=["events"])


class EventStreamResponse(Response):
    """An event stream: the response starts it and ends it; in between the hub writes its chunks to
    the connection. It ends when the stream is closed (revoked, too slow, server stopping: a last
    ``: closed (<why>)`` comment) or when the client leaves."""

    media_type = "text/event-stream"

    def __init__(self, hub: EventHub, stream: Stream) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers({**SSE_HEADERS, "Transfer-Encoding": "chunked"})  # the hub writes chunks
        self._hub, self._stream = hub, stream

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self._stream
        watcher = asyncio.ensure_future(_close_when_gone(stream, receive))
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            transport = server_transport(scope)
            self._hub.attach(stream, transport)
            await stream.ended()
            if transport.is_closing():  # dropped or left: return once the server has seen it too
                await watcher
                return
            if stream.reason:
                transport.write(http_chunk(f": closed ({stream.reason})\n\n".encode()))
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            watcher.cancel()
            stream.close()


async def _close_when_gone(stream: Stream, receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    stream.close("client gone")


@router.get("/events", operation_id="stream_events",
            summary="Live task state changes (text/event-stream); 429 past the stream limits",
            response_class=EventStreamResponse, status_code=200)  # the class takes no status_code for OpenAPI to read
async def stream_events(hub: HubDep, who: Annotated[Principal, Depends(require_outside_transaction(READ))]) -> Response:
    return EventStreamResponse(hub, hub.open(who))
