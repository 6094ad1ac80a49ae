"""/api/v1/task-types: the task types live pools handle, and the input schema each declares."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from control_plane.api.deps import ControlPlaneDep, DbConn, require
from control_plane.auth import READ, Principal

router = APIRouter(prefix="/api/v1", tags=["task types"])
Reader = Annotated[Principal, Depends(require(READ))]


class TaskTypePool(BaseModel):
    id: str
    skills: list[str]
    live_agents: int
    input_schema: dict[str, Any] | None = Field(description="the JSON schema this pool's agents declared, if any")


class TaskTypePublic(BaseModel):
    type: str
    pools: list[TaskTypePool] = Field(description="live pools that handle the type")


@router.get("/task-types", response_model=list[TaskTypePublic], operation_id="list_task_types",
            summary="Task types of live pools, with the pools and their input schemas")
async def list_task_types(conn: DbConn, cp: ControlPlaneDep, _: Reader) -> list[TaskTypePublic]:
    rows = await conn.fetch(
        """SELECT t.type, p.id, p.skills, p.input_schemas -> t.type AS input_schema, count(a.id) AS live_agents
           FROM pools p CROSS JOIN LATERAL unnest(p.types) AS t(type)
           JOIN agents a ON a.pool_id = p.id AND a.state IN ('active', 'paused')
                        AND a.last_heartbeat > now() - make_interval(secs => $1)
           GROUP BY t.type, p.id ORDER BY t.type, p.id""",
        cp.settings.heartbeat_ttl_s,
    )
    types: dict[str, TaskTypePublic] = {}
    for row in rows:
        entry = types.setdefault(row["type"], TaskTypePublic(type=row["type"], pools=[]))
        entry.pools.append(TaskTypePool(id=row["id"], skills=list(row["skills"]), live_agents=row["live_agents"],
                                        input_schema=row["input_schema"]))
    return list(types.values())
