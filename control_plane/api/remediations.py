"""/api/v1/remediations and /api/v1/remediation: the pipeline of each remediation, the catalogue,
hand-made proposals, and the kill switch."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Query, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from aiops.remediation import store
from aiops.remediation.actions import CATALOGUE
from aiops.remediation.pipeline import RemediationError
from aiops.remediation.store import State
from control_plane import approvals
from control_plane.api.deps import ControlPlaneDep, DbConn, Remote, require
from control_plane.audit import audit
from control_plane.auth import CONTROL_REMEDIATION, PROPOSE_REMEDIATIONS, READ, Principal
from control_plane.errors import Forbidden, InvalidInput, NotFound

router = APIRouter(prefix="/api/v1", tags=["remediation"])
Reader = Annotated[Principal, Depends(require(READ))]
Proposer = Annotated[Principal, Depends(require(PROPOSE_REMEDIATIONS))]
Admin = Annotated[Principal, Depends(require(CONTROL_REMEDIATION))]
_Name = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9_.:/-]+$")]


class ActionPublic(BaseModel):
    name: str
    kind: str = Field(description="kubernetes, devart or notify")
    risk: str
    summary: str
    input_schema: dict[str, Any] = Field(description="JSON schema of the action's input")


class ControlPublic(BaseModel):
    paused: bool = Field(description="the kill switch: while true nothing is applied")
    changed_by: str
    reason: str
    changed_at: datetime
    policy: str = Field(description="where the remediation policy came from")


class ControlChange(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)


class RemediationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    action: str = Field(min_length=1, max_length=100, description="a name from GET /api/v1/remediation/actions")
    target: _Name = Field(description="Deployment, pod or node name; pool, agent or task id; task type")
    namespace: Annotated[str, StringConstraints(max_length=63, pattern=r"^[a-z0-9-]*$")] = Field(
        default="", description="Kubernetes namespace (empty for devart and node targets)")
    input: dict[str, Any] = Field(default_factory=dict, description="the action's input")
    reason: str = Field(min_length=1, max_length=1000, description="why, for the record")


class StepPublic(BaseModel):
    state: str
    reason: str
    actor: str
    at: datetime


class RemediationPublic(BaseModel):
    id: UUID
    action: str
    target: str
    namespace: str
    input: dict[str, Any]
    reason: str
    incident_id: UUID | None
    category: str | None
    confidence: float | None
    origin: str
    proposed_by: str
    mode: str
    state: State
    state_reason: str
    preflight: dict[str, Any] | None
    dry_run: dict[str, Any] | None = Field(description="the server-side dry-run: {changes: [{path, from, to}]}")
    apply_result: dict[str, Any] | None
    verification: dict[str, Any]
    approval_id: str | None
    warnings: list[str]
    applied_at: datetime | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class RemediationDetail(RemediationPublic):
    steps: list[StepPublic] = Field(description="every step, oldest first")
    approval: approvals.Approval | None
    paused: bool


class RemediationPage(BaseModel):
    items: list[RemediationPublic]
    next_cursor: str | None
    paused: bool


@contextmanager
def _errors() -> Iterator[None]:
    try:
        yield
    except RemediationError as exc:
        raise (Forbidden if exc.status == 403 else InvalidInput)(exc.message, field=exc.field) from exc
    except store.BadCursor as exc:
        raise InvalidInput(str(exc), field="query.cursor") from exc


@router.get("/remediation/actions", response_model=list[ActionPublic], operation_id="list_remediation_actions",
            summary="The action catalogue with each input schema")
async def list_actions(_: Reader) -> list[ActionPublic]:
    return [ActionPublic(name=a.name, kind=a.kind, risk=a.risk, summary=a.summary, input_schema=a.schema())
            for a in CATALOGUE.values()]


async def _control(conn: DbConn, cp: ControlPlaneDep) -> ControlPublic:
    return ControlPublic(**await store.control(conn), policy=cp.remediation.policy.source)


@router.get("/remediation/status", response_model=ControlPublic, operation_id="get_remediation_status",
            summary="Whether remediation is paused, and by whom")
async def get_status(conn: DbConn, cp: ControlPlaneDep, _: Reader) -> ControlPublic:
    return await _control(conn, cp)


@router.post("/remediation/pause", response_model=ControlPublic, operation_id="pause_remediation",
             summary="Kill switch: apply nothing until resumed (survives restarts)")
async def pause(conn: DbConn, cp: ControlPlaneDep, who: Admin, remote: Remote,
                body: ControlChange | None = None) -> ControlPublic:
    return await _switch(conn, cp, who, remote, paused=True, reason=(body or ControlChange()).reason)


@router.post("/remediation/resume", response_model=ControlPublic, operation_id="resume_remediation",
             summary="Lift the kill switch")
async def resume(conn: DbConn, cp: ControlPlaneDep, who: Admin, remote: Remote,
                 body: ControlChange | None = None) -> ControlPublic:
    return await _switch(conn, cp, who, remote, paused=False, reason=(body or ControlChange()).reason)


async def _switch(conn: DbConn, cp: ControlPlaneDep, who: Principal, remote: str, *, paused: bool,
                  reason: str) -> ControlPublic:
    async with conn.transaction():
        await cp.remediation.set_paused(conn, paused=paused, by=who.name, reason=reason)
        await audit(conn, actor=who.name, action="remediation.pause" if paused else "remediation.resume",
                    detail={"reason": reason}, remote=remote)
    return await _control(conn, cp)


@router.post("/remediations", response_model=RemediationDetail, status_code=status.HTTP_201_CREATED,
             operation_id="propose_remediation", summary="Propose a remediation by hand")
async def propose(body: RemediationCreate, conn: DbConn, cp: ControlPlaneDep, who: Proposer,
                  remote: Remote) -> RemediationDetail:
    async with conn.transaction():
        with _errors():
            remediation_id, _ = await cp.remediation.propose(
                conn, action=body.action, target=body.target, namespace=body.namespace, input=body.input,
                reason=body.reason, origin="manual", proposed_by=who.name,
            )
        await audit(conn, actor=who.name, action="remediation.propose", target=str(remediation_id),
                    detail=body.model_dump(mode="json"), remote=remote)
    return await _detail(conn, remediation_id)


@router.get("/remediations", response_model=RemediationPage, operation_id="list_remediations",
            summary="Remediations, newest first")
async def list_remediations(
    conn: DbConn, _: Reader,
    state: Annotated[State | None, Query()] = None,
    incident_id: Annotated[UUID | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> RemediationPage:
    with _errors():
        items, next_cursor = await store.list_page(conn, state=state, incident_id=incident_id, limit=limit,
                                                   cursor=cursor)
    return RemediationPage(items=[RemediationPublic(**i) for i in items], next_cursor=next_cursor,
                           paused=await store.is_paused(conn))


@router.get("/remediations/{remediation_id}", response_model=RemediationDetail, operation_id="get_remediation",
            summary="One remediation: its whole pipeline, dry-run diff, approval and verification")
async def get_remediation(remediation_id: UUID, conn: DbConn, _: Reader) -> RemediationDetail:
    return await _detail(conn, remediation_id)


async def _detail(conn: DbConn, remediation_id: UUID) -> RemediationDetail:
    row = await store.get(conn, remediation_id)
    if row is None:
        raise NotFound(f"no remediation {remediation_id}", field="remediation_id")
    approval = await approvals.get_approval(conn, row["approval_id"]) if row["approval_id"] else None
    return RemediationDetail(**row, steps=[StepPublic(**s) for s in await store.steps(conn, remediation_id)],
                             approval=approval, paused=await store.is_paused(conn))
