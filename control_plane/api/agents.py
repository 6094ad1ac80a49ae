"""/api/v1/agents and /api/v1/pools: who is connected, what they can do, and how busy they are."""

from __future__ import annotations

import base64
import logging
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Depends, status
from pydantic import BaseModel, ConfigDict, Field

from agents.sdk.messages import ControlCommand
from control_plane.agent_keys import register_agent
from control_plane.api.deps import ControlPlaneDep, DbConn, Remote, require
from control_plane.api.models import AgentPublic, CommandAccepted, PoolPublic
from control_plane.audit import audit
from control_plane.auth import OPERATE_AGENTS, POOL_ID, READ, REGISTER_AGENT, Principal
from control_plane.errors import Conflict, Forbidden, NotFound, http_status
from control_plane.outbox import OutboxMessage, enqueue

log = logging.getLogger("devart.api")
router = APIRouter(prefix="/api/v1", tags=["agents"])
Reader = Annotated[Principal, Depends(require(READ))]
Operator = Annotated[Principal, Depends(require(OPERATE_AGENTS))]
Registrant = Annotated[Principal, Depends(require(REGISTER_AGENT))]


class AgentRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    agent_id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$", description="the agent process's id")
    pool_id: str = Field(pattern=POOL_ID.pattern, description="the pool the agent takes tasks from; the token must "
                         "be scoped to it (an unscoped token: any pool, refused in production)")


class AgentKeys(BaseModel):
    agent_id: str
    event_key: str = Field(description="base64 HMAC-SHA256 key the agent signs its events with; shown once")
    control_plane_key: str = Field(description="base64 Ed25519 public key that signs task messages and commands")


@router.post("/agents/register", response_model=AgentKeys, operation_id="register_agent",
             summary="An agent process (agent token) gets its event key and the control plane's public key")
async def register(body: AgentRegistration, conn: DbConn, cp: ControlPlaneDep, who: Registrant,
                   remote: Remote) -> AgentKeys:
    try:
        async with conn.transaction():  # a savepoint: a refusal undoes the registration, not its audit row
            key = await register_agent(conn, who, body.agent_id, body.pool_id,
                                       unscoped_tokens=cp.settings.environment != "production")
            await audit(conn, actor=who.name, action="agent.register", target=body.agent_id,
                        detail={"pool_id": body.pool_id}, remote=remote)
    except (Forbidden, Conflict) as refused:
        log.warning("refused an agent registration from %s: %s", remote, refused.message)
        await audit(conn, actor=who.name, action="agent.register_refused", target=body.agent_id,
                    detail={"pool_id": body.pool_id, "status": http_status(refused), "reason": refused.message},
                    remote=remote)
        refused.recorded = True
        raise
    return AgentKeys(agent_id=body.agent_id, event_key=base64.b64encode(key).decode(),
                     control_plane_key=base64.b64encode(cp.signer.public_key).decode())

_AGENTS = """
SELECT a.*, p.skills, p.types,
       a.state <> 'gone' AND a.last_heartbeat > now() - make_interval(secs => $1) AS live,
       coalesce((SELECT array_agg(t.id) FROM tasks t WHERE t.agent_id = a.id AND t.status = 'running'), '{}')
           AS running_tasks
FROM agents a JOIN pools p ON p.id = a.pool_id
"""


def _agent(row: asyncpg.Record) -> AgentPublic:
    return AgentPublic.model_validate(dict(row))


@router.get("/agents", response_model=list[AgentPublic], operation_id="list_agents", summary="Agents, live first")
async def list_agents(conn: DbConn, cp: ControlPlaneDep, _: Reader, include_gone: bool = False) -> list[AgentPublic]:
    rows = await conn.fetch(
        _AGENTS + " WHERE $2 OR a.state <> 'gone' ORDER BY live DESC, a.last_heartbeat DESC LIMIT 1000",
        cp.settings.heartbeat_ttl_s, include_gone,
    )
    return [_agent(r) for r in rows]


@router.get("/agents/{agent_id}", response_model=AgentPublic, operation_id="get_agent", summary="One agent")
async def get_agent(agent_id: str, conn: DbConn, cp: ControlPlaneDep, _: Reader) -> AgentPublic:
    row = await conn.fetchrow(_AGENTS + " WHERE a.id = $2", cp.settings.heartbeat_ttl_s, agent_id)
    if row is None:
        raise NotFound(f"agent {agent_id} does not exist", field="agent_id")
    return _agent(row)


async def _command(
    conn: asyncpg.Connection, cp: ControlPlaneDep, agent_id: str, action: Literal["drain", "pause", "resume"],
    who: Principal, remote: str,
) -> CommandAccepted:
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM agents WHERE id = $1 AND state <> 'gone'", agent_id) is None:
            raise NotFound(f"agent {agent_id} is not connected", field="agent_id")
        body = ControlCommand(action=action, reason=f"{action} requested by {who.name}").model_dump_json().encode()
        await enqueue(conn, [OutboxMessage(cp.topology.control, f"agent.{agent_id}", body)])
        await audit(conn, actor=who.name, action=f"agent.{action}", target=agent_id, remote=remote)
    return CommandAccepted(agent_id=agent_id, action=action)


@router.post("/agents/{agent_id}/drain", response_model=CommandAccepted, status_code=status.HTTP_202_ACCEPTED,
             operation_id="drain_agent", summary="Finish running tasks, take no more, then leave")
async def drain_agent(agent_id: str, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote) -> CommandAccepted:
    return await _command(conn, cp, agent_id, "drain", who, remote)


@router.post("/agents/{agent_id}/pause", response_model=CommandAccepted, status_code=status.HTTP_202_ACCEPTED,
             operation_id="pause_agent", summary="Take no new tasks until resumed")
async def pause_agent(agent_id: str, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote) -> CommandAccepted:
    return await _command(conn, cp, agent_id, "pause", who, remote)


@router.post("/agents/{agent_id}/resume", response_model=CommandAccepted, status_code=status.HTTP_202_ACCEPTED,
             operation_id="resume_agent", summary="Take tasks again")
async def resume_agent(agent_id: str, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote) -> CommandAccepted:
    return await _command(conn, cp, agent_id, "resume", who, remote)


@router.get("/pools", response_model=list[PoolPublic], operation_id="list_pools", summary="Agent pools and their load")
async def list_pools(conn: DbConn, cp: ControlPlaneDep, _: Reader) -> list[PoolPublic]:
    rows = await conn.fetch(
        """SELECT p.id, p.skills, p.types,
                  count(a.id) FILTER (WHERE a.state IN ('active', 'paused')
                                      AND a.last_heartbeat > now() - make_interval(secs => $1)) AS live_agents,
                  coalesce(sum(a.free_slots) FILTER (WHERE a.state = 'active'
                                      AND a.last_heartbeat > now() - make_interval(secs => $1)), 0) AS free_slots,
                  (SELECT count(*) FROM tasks t WHERE t.pool_id = p.id AND t.status = 'queued') AS queue_depth,
                  (SELECT count(*) FROM tasks t WHERE t.pool_id = p.id AND t.status = 'running') AS in_flight
           FROM pools p LEFT JOIN agents a ON a.pool_id = p.id
           GROUP BY p.id ORDER BY p.id""",
        cp.settings.heartbeat_ttl_s,
    )
    return [PoolPublic.model_validate(dict(r)) for r in rows]
