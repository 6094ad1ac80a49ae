"""/api/v1/events: a server-sent event stream of task state changes (Postgres LISTEN/NOTIFY)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import StreamingResponse

from control_plane.api.deps import HubDep, require
from control_plane.api.sse import KEEPALIVE, KEEPALIVE_S, sse_response
from control_plane.auth import READ, Principal

router = APIRouter(prefix="/api/v1", tags=["events"])


@router.get("/events", operation_id="stream_events", summary="Live task state changes (text/event-stream)",
            response_class=StreamingResponse)
async def stream_events(hub: HubDep, _: Annotated[Principal, Depends(require(READ))]) -> StreamingResponse:
    return sse_response(_frames(hub))


async def _frames(hub: HubDep) -> AsyncIterator[bytes]:
    async with hub.subscribe() as queue:
        yield b": connected\n\n"
        async for item in hub.notifications(queue, idle_s=KEEPALIVE_S):
            if item is None:
                yield KEEPALIVE
            elif item[0] == "devart_events":
                yield f"event: {_kind(item[1])}\ndata: {item[1]}\n\n".encode()


def _kind(payload: str) -> str:
    """The SSE event name: the ``kind`` of the notification (task, incident, ...)."""
    try:
        return str(json.loads(payload).get("kind", "task"))
    except (ValueError, AttributeError):
        return "task"
