"""Dead letters: what reached the dead-letter queue and why, and their replay (a retry of the task)."""

from __future__ import annotations

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from control_plane.api import dead_letters as api_dead_letters
from dashboard.web import CP, Conn, ConsoleRoute, action, back, console_of, reader, remote, render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
Lister = reader("list_dead_letters")
Replayer = action("replay_dead_letter")


@router.get("/dead-letters")
async def dead_letter_list(request: Request, conn: Conn, who: Lister,
                           before: int | None = Query(default=None, ge=1, le=2**63 - 1)) -> Response:
    page = await api_dead_letters.list_dead_letters(conn, who.principal, before=before,
                                                    limit=console_of(request).settings.page_size)
    return render(request, who, "dead_letters.html", nav="dead_letters", page=page)


@router.post("/dead-letters/{dead_letter_id}/replay")
async def replay(dead_letter_id: int, request: Request, conn: Conn, cp: CP, who: Replayer) -> Response:
    task = await api_dead_letters.replay_dead_letter(dead_letter_id, conn, cp, who.principal, remote(request))
    return back(f"/tasks/{task.id}")
