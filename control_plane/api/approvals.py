"""/api/v1/approvals: list and read approvals; approve or refuse them (supervisor, admin)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from control_plane import approvals
from control_plane.api.deps import DbConn, Remote, require, retry_rollback
from control_plane.approvals import Approval, ApprovalState
from control_plane.auth import DECIDE_APPROVALS, READ, Principal

router = APIRouter(prefix="/api/v1/approvals", tags=["approvals"])
Reader = Annotated[Principal, Depends(require(READ))]
Decider = Annotated[Principal, Depends(require(DECIDE_APPROVALS))]


class ApprovalPage(BaseModel):
    items: list[Approval] = Field(description="approvals, newest first, with their decisions")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class DecisionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field(default="", max_length=2000, description="why, for the record")


@router.get("", response_model=ApprovalPage, operation_id="list_approvals", summary="Approvals, newest first")
async def list_approvals(
    conn: DbConn,
    _: Reader,
    state: Annotated[ApprovalState | None, Query()] = None,
    subject_kind: Annotated[str | None, Query(min_length=1, max_length=100)] = None,
    subject_id: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> ApprovalPage:
    items, next_cursor = await approvals.list_approvals(
        conn, state=state, subject_kind=subject_kind, subject_id=subject_id, limit=limit, cursor=cursor
    )
    return ApprovalPage(items=items, next_cursor=next_cursor)


@router.get("/{approval_id}", response_model=Approval, operation_id="get_approval", summary="One approval")
async def get_approval(approval_id: str, conn: DbConn, _: Reader) -> Approval:
    return await approvals.get_approval(conn, approval_id)


@router.post("/{approval_id}/approve", response_model=Approval, operation_id="approve_approval",
             summary="Approve (idempotent for the same principal)")
async def approve(approval_id: str, conn: DbConn, who: Decider, remote: Remote, body: DecisionIn | None = None) -> Approval:
    comment = (body or DecisionIn()).comment
    return await retry_rollback(lambda: approvals.decide(conn, approval_id, who, "approve", "api", comment, remote=remote))


@router.post("/{approval_id}/refuse", response_model=Approval, operation_id="refuse_approval",
             summary="Refuse (one refusal ends the approval)")
async def refuse(approval_id: str, conn: DbConn, who: Decider, remote: Remote, body: DecisionIn | None = None) -> Approval:
    comment = (body or DecisionIn()).comment
    return await retry_rollback(lambda: approvals.decide(conn, approval_id, who, "refuse", "api", comment, remote=remote))
