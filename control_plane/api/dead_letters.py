"""/api/v1/dead-letters: messages that reached ``devart.dead`` (kept in ``dead_letters``), and their
replay: a dead letter that names a task replays it as a retry of that task (a fresh attempt budget).
Supervisors and admins only, as row-level security has it: a body may carry a task's input."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from agents.sdk.messages import safe_text
from control_plane import dead_letters
from control_plane import tasks as task_store
from control_plane.api.deps import ControlPlaneDep, DbConn, Remote, require
from control_plane.api.models import TaskPublic
from control_plane.audit import audit
from control_plane.auth import OPERATE_TASKS, Principal
from control_plane.errors import Conflict, NotFound

router = APIRouter(prefix="/api/v1/dead-letters", tags=["dead letters"])
Operator = Annotated[Principal, Depends(require(OPERATE_TASKS))]


class DeadLetterPublic(BaseModel):
    id: int
    task_id: UUID | None = Field(description="the task the message named; null when its body named none")
    task_type: str | None
    task_status: str | None = Field(description="the task's status now (replayable when dead, failed, ...)")
    reason: str
    at: datetime
    headers: dict[str, Any]
    body: str = Field(description="the message body as text (its first 2,000 bytes, undecodable bytes replaced)")
    body_bytes: int


class DeadLetterPage(BaseModel):
    items: list[DeadLetterPublic]
    next_before: int | None = Field(description="pass as `before` for the next page; null at the end")


@router.get("", response_model=DeadLetterPage, operation_id="list_dead_letters", summary="Dead letters, newest first")
async def list_dead_letters(
    conn: DbConn, _: Operator,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> DeadLetterPage:
    rows, next_before = await dead_letters.list_dead_letters(conn, limit=limit, before=before)
    return DeadLetterPage(items=[DeadLetterPublic.model_validate(dict(r) | {"body": safe_text(bytes(r["body"]).decode(errors="replace"))})
                                 for r in rows], next_before=next_before)


@router.post("/{dead_letter_id}/replay", response_model=TaskPublic, operation_id="replay_dead_letter",
             summary="Replay a dead letter: retry the task it names")
async def replay_dead_letter(
    dead_letter_id: int, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote
) -> TaskPublic:
    task_id = await conn.fetchval("SELECT task_id FROM dead_letters WHERE id = $1", dead_letter_id)
    exists = task_id is not None or await conn.fetchval("SELECT 1 FROM dead_letters WHERE id = $1", dead_letter_id)
    if not exists:
        raise NotFound(f"no dead letter {dead_letter_id}", field="dead_letter_id")
    if task_id is None:
        raise Conflict(f"dead letter {dead_letter_id} names no task (its body could not be read): nothing to replay",
                       field="dead_letter_id")
    row = await task_store.retry_task(
        conn, task_id, actor=who.name, topology=cp.topology, agent_ttl_s=cp.settings.heartbeat_ttl_s,
        attempts_budget=cp.settings.default_max_attempts,
    )
    await audit(conn, actor=who.name, action="dead_letter.replay", target=str(dead_letter_id), remote=remote,
                detail={"task_id": str(task_id)})
    return TaskPublic.model_validate(dict(row))
