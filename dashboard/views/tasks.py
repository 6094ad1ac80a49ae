"""Tasks: the filtered, live, cursor-paged list; one task with its attempts, transitions and live
logs; cancel and retry. Every read and write is the API's own route function."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from control_plane.api import tasks as api_tasks
from control_plane.api.models import TaskPage, TaskStatus
from dashboard.web import (
    CP,
    Conn,
    ConsoleRoute,
    action,
    back,
    console_of,
    query_model,
    reader,
    remote,
    render,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
Lister = reader("list_tasks")
Reader = reader("get_task")
LogReader = reader("task_logs")
Canceller = action("cancel_task")
Retrier = action("retry_task")

STATES: tuple[str, ...] = TaskStatus.__args__  # type: ignore[attr-defined]


class TaskFilters(BaseModel):
    """The list's filters, kept in the page's URL."""

    model_config = ConfigDict(extra="ignore")
    status: TaskStatus | None = None
    type: str | None = Field(default=None, max_length=100)
    pool: str | None = Field(default=None, max_length=200)
    agent: str | None = Field(default=None, max_length=200)
    since: datetime | None = Field(default=None, description="created at or after (UTC when no zone is given)")
    before: datetime | None = Field(default=None, description="created before (UTC when no zone is given)")
    cursor: str | None = Field(default=None, max_length=500)

    @field_validator("since", "before")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        # a datetime-local field sends no zone: the page says its times are UTC
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value

    def query(self) -> dict[str, object]:
        """The filters as the page's URL keeps them (the cursor apart)."""
        return {"status": self.status, "type": self.type, "pool": self.pool, "agent": self.agent,
                "since": _local(self.since), "before": _local(self.before)}


def _local(value: datetime | None) -> str | None:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if value is not None else None


async def _page(request: Request, conn: Conn, who: Lister, filters: TaskFilters) -> TaskPage:
    return await api_tasks.list_tasks(
        conn, request.app.state.control_plane.settings, who.principal, status=filters.status, type=filters.type,
        agent=filters.agent, pool=filters.pool, cursor=filters.cursor, limit=console_of(request).settings.page_size,
        created_since=filters.since, created_before=filters.before,
    )


@router.get("/tasks")
async def task_list(request: Request, conn: Conn, who: Lister) -> Response:
    filters = query_model(request, TaskFilters)
    page = await _page(request, conn, who, filters)
    return render(request, who, "tasks.html", page=page, filters=filters, states=STATES)


@router.get("/tasks/rows")
async def task_rows(request: Request, conn: Conn, who: Lister) -> Response:
    """The rows of the list as it is now: what the live list swaps in after a change."""
    filters = query_model(request, TaskFilters)
    page = await _page(request, conn, who, filters)
    return render(request, who, "_task_rows.html", page=page, filters=filters)


@router.get("/tasks/{task_id}")
async def task_detail(task_id: UUID, request: Request, conn: Conn, who: Reader) -> Response:
    task = await api_tasks.get_task(task_id, conn, who.principal, remote(request))
    return render(request, who, "task.html", task=task)


@router.get("/tasks/{task_id}/state")
async def task_state(task_id: UUID, request: Request, conn: Conn, who: Reader) -> Response:
    """Status, attempts and transitions as they are now (swapped in live)."""
    task = await api_tasks.get_task(task_id, conn, who.principal, remote(request))
    return render(request, who, "_task_state.html", task=task)


@router.get("/tasks/{task_id}/logs")
async def task_logs(
    task_id: UUID, request: Request, cp: CP, who: LogReader,
    after: str | None = None,
    last_event_id: Annotated[str | None, Header(alias="Last-Event-ID", max_length=40)] = None,
) -> Response:
    """The API's log follow stream; a reconnecting browser resumes after the last line it got."""
    return await api_tasks.task_logs(task_id, cp, request.app.state.hub, who.principal,
                                     after=last_event_id or after, limit=None, follow=True)


@router.post("/tasks/{task_id}/cancel")
async def cancel(task_id: UUID, request: Request, conn: Conn, cp: CP, who: Canceller) -> Response:
    await api_tasks.cancel_task(task_id, conn, cp, who.principal, remote(request))
    return back(f"/tasks/{task_id}")


@router.post("/tasks/{task_id}/retry")
async def retry(task_id: UUID, request: Request, conn: Conn, cp: CP, who: Retrier) -> Response:
    await api_tasks.retry_task(task_id, conn, cp, who.principal, remote(request))
    return back(f"/tasks/{task_id}")
