"""The approvals inbox: pending approvals with their context; approve or refuse with a comment."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from control_plane import approvals
from control_plane.api import approvals as api_approvals
from control_plane.approvals import ApprovalState
from dashboard.web import (
    Conn,
    ConsoleRoute,
    action,
    back,
    console_of,
    form_model,
    query_model,
    reader,
    remote,
    render,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
Lister = reader("list_approvals")
Reader = reader("get_approval")
Approver = action("approve_approval")
Refuser = action("refuse_approval")
STATES: tuple[str, ...] = ApprovalState.__args__  # type: ignore[attr-defined]


class ApprovalFilters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    state: ApprovalState | Literal["any"] = "pending"
    cursor: str | None = Field(default=None, max_length=500)


@router.get("/approvals")
async def inbox(request: Request, conn: Conn, who: Lister) -> Response:
    filters = query_model(request, ApprovalFilters)
    page = await api_approvals.list_approvals(
        conn, who.principal, state=None if filters.state == "any" else filters.state,
        limit=console_of(request).settings.page_size, cursor=filters.cursor,
    )
    return render(request, who, "approvals.html", nav="approvals", page=page, filters=filters, states=STATES)


@router.get("/approvals/rows")
async def inbox_rows(request: Request, conn: Conn, who: Lister) -> Response:
    filters = query_model(request, ApprovalFilters)
    page = await api_approvals.list_approvals(
        conn, who.principal, state=None if filters.state == "any" else filters.state,
        limit=console_of(request).settings.page_size, cursor=filters.cursor,
    )
    return render(request, who, "_approval_rows.html", page=page)


@router.get("/approvals/{approval_id}")
async def detail(approval_id: str, request: Request, conn: Conn, who: Reader) -> Response:
    approval = await api_approvals.get_approval(approval_id, conn, who.principal)
    return render(request, who, "approval.html", nav="approvals", approval=approval)


@router.post("/approvals/{approval_id}/approve")
async def approve(approval_id: str, request: Request, conn: Conn, who: Approver) -> Response:
    body = await form_model(request, api_approvals.DecisionIn)
    await approvals.decide(conn, approval_id, who.principal, "approve", "console", body.comment, remote=remote(request))
    return back(f"/approvals/{approval_id}")


@router.post("/approvals/{approval_id}/refuse")
async def refuse(approval_id: str, request: Request, conn: Conn, who: Refuser) -> Response:
    body = await form_model(request, api_approvals.DecisionIn)
    await approvals.decide(conn, approval_id, who.principal, "refuse", "console", body.comment, remote=remote(request))
    return back(f"/approvals/{approval_id}")
