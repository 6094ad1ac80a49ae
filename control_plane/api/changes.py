"""/api/v1/changes: the change log (deployments, configuration edits) that RCA correlates with incidents.

CI records a deployment after it rolls one out; an operator records a configuration edit. Recording
needs ``changes:record`` (ci, supervisor, admin) and is audited; reading needs ``read``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Depends, Query, status
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from aiops.rca.changes import record_change, recorded_changes, to_ns
from aiops.rca.model import Change
from control_plane.api.deps import DbConn, Remote, require
from control_plane.audit import audit
from control_plane.auth import READ, RECORD_CHANGES, Principal
from control_plane.errors import InvalidInput

router = APIRouter(prefix="/api/v1/changes", tags=["changes"])

Reader = Annotated[Principal, Depends(require(READ))]
Recorder = Annotated[Principal, Depends(require(RECORD_CHANGES))]
_FUTURE_SLACK_S = 300


class ChangeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Literal["deployment", "config"] = Field(description="what changed")
    service: str = Field(min_length=1, max_length=200, description="the service it changed (a pod name is fine)")
    at: AwareDatetime | None = Field(default=None, description="when it took effect; default: now")
    detail: str = Field(default="", max_length=2000, description="e.g. 'image api:1.4.2 -> 1.5.0'")


class ChangePublic(BaseModel):
    id: UUID
    kind: str
    service: str
    at: datetime
    detail: str
    recorded_by: str
    recorded_at: datetime


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ChangePublic, operation_id="record_change",
             summary="Record a deployment or configuration change")
async def create(body: ChangeCreate, conn: DbConn, who: Recorder, remote: Remote) -> ChangePublic:
    now = datetime.now(UTC)
    at = body.at or now
    if (at - now).total_seconds() > _FUTURE_SLACK_S:
        raise InvalidInput(f"at must not be more than {_FUTURE_SLACK_S}s in the future", field="body.at")
    async with conn.transaction():
        row = await record_change(conn, Change(body.kind, body.service, to_ns(at), body.detail), recorded_by=who.name)
        await audit(conn, actor=who.name, action="change.record", target=str(row["id"]),
                    detail={"kind": body.kind, "service": body.service}, remote=remote)
    return ChangePublic.model_validate(dict(row))


@router.get("", response_model=list[ChangePublic], operation_id="list_changes",
            summary="Recorded changes, newest first")
async def list_changes(
    conn: DbConn,
    _: Reader,
    since: AwareDatetime | None = None,
    until: AwareDatetime | None = None,
    service: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[ChangePublic]:
    rows = await recorded_changes(conn, since=since, until=until, service=service, limit=limit)
    return [ChangePublic.model_validate(dict(r)) for r in rows]
