"""Agents and pools: who is connected (online from heartbeats), slots in use, running tasks, and
the pools' capacity; drain, pause and resume an agent."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response

from control_plane.api import agents as api_agents
from dashboard.web import CP, Conn, ConsoleRoute, action, back, reader, remote, render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
Lister = reader("list_agents")
Drainer = action("drain_agent")
Pauser = action("pause_agent")
Resumer = action("resume_agent")
COMMANDS = {"drain": api_agents.drain_agent, "pause": api_agents.pause_agent, "resume": api_agents.resume_agent}


async def _context(conn: Conn, cp: CP, who: Lister, include_gone: bool) -> dict[str, object]:
    return {"agents": await api_agents.list_agents(conn, cp, who.principal, include_gone=include_gone),
            "pools": await api_agents.list_pools(conn, cp, who.principal), "include_gone": include_gone}


@router.get("/agents")
async def agent_list(request: Request, conn: Conn, cp: CP, who: Lister, include_gone: bool = False) -> Response:
    return render(request, who, "agents.html", nav="agents", **await _context(conn, cp, who, include_gone))


@router.get("/agents/live")
async def agent_rows(request: Request, conn: Conn, cp: CP, who: Lister, include_gone: bool = False) -> Response:
    return render(request, who, "_agents.html", **await _context(conn, cp, who, include_gone))


async def _command(request: Request, conn: Conn, cp: CP, who: object, agent_id: str,
                   command: Literal["drain", "pause", "resume"]) -> Response:
    await COMMANDS[command](agent_id, conn, cp, who.principal, remote(request))  # type: ignore[attr-defined]
    return back("/agents")


@router.post("/agents/{agent_id}/drain")
async def drain(agent_id: str, request: Request, conn: Conn, cp: CP, who: Drainer) -> Response:
    return await _command(request, conn, cp, who, agent_id, "drain")


@router.post("/agents/{agent_id}/pause")
async def pause(agent_id: str, request: Request, conn: Conn, cp: CP, who: Pauser) -> Response:
    return await _command(request, conn, cp, who, agent_id, "pause")


@router.post("/agents/{agent_id}/resume")
async def resume(agent_id: str, request: Request, conn: Conn, cp: CP, who: Resumer) -> Response:
    return await _command(request, conn, cp, who, agent_id, "resume")
