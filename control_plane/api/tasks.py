"""/api/v1/tasks: create, list, get, cancel, retry, logs."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from pydantic import AwareDatetime

from control_plane import identity
from control_plane import tasks as task_store
from control_plane.api.deps import (
    ControlPlaneDep,
    DbConn,
    HubDep,
    Remote,
    SettingsDep,
    remote_address,
    require,
    require_outside_transaction,
)
from control_plane.api.hub import EventHub, Stream
from control_plane.api.models import (
    LogLinePublic,
    LogPage,
    TaskBatch,
    TaskBatchCreate,
    TaskCreate,
    TaskDetail,
    TaskPage,
    TaskPublic,
    TaskStatus,
)
from control_plane.api.sse import KEEPALIVE, sse_frame, sse_response
from control_plane.audit import audit
from control_plane.auth import CREATE_TASKS, OPERATE_TASKS, READ, READ_ENV, Principal
from control_plane.errors import InvalidInput
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from control_plane.telemetry import server_traceparent

router = APIRouter(prefix="/api/v1/tasks", tags=["tasks"])

Reader = Annotated[Principal, Depends(require(READ))]
# A submit holds no request transaction: a single task is written in one shared with concurrent ones,
# a batch in one of its own, so that both are published by this process once committed.
Creator = Annotated[Principal, Depends(require_outside_transaction(CREATE_TASKS))]
Operator = Annotated[Principal, Depends(require(OPERATE_TASKS))]


def _public(row: asyncpg.Record) -> TaskPublic:
    return TaskPublic.model_validate(dict(row))


def _new_task(body: TaskCreate, settings: Settings) -> task_store.NewTask:
    if len(json.dumps(body.input, separators=(",", ":"))) > settings.max_input_bytes:
        raise InvalidInput(f"input is larger than {settings.max_input_bytes} bytes", field="body.input")
    for name in ("timeout_s", "start_timeout_s", "deadline_s"):
        value = getattr(body, name)
        if value is not None and value > settings.max_timeout_s:
            raise InvalidInput(f"{name} must be at most {settings.max_timeout_s}", field=f"body.{name}")
    if body.max_attempts is not None and body.max_attempts > settings.max_attempts_limit:
        raise InvalidInput(f"max_attempts must be at most {settings.max_attempts_limit}", field="body.max_attempts")
    backoff = body.backoff.model_dump(exclude_none=True) if body.backoff else {}
    return task_store.NewTask(
        type=body.type,
        input=body.input,
        requires=sorted(set(body.requires)),
        timeout_s=body.timeout_s or settings.default_timeout_s,
        start_timeout_s=body.start_timeout_s or settings.default_start_timeout_s,
        deadline_s=body.deadline_s or settings.default_deadline_s,
        max_attempts=body.max_attempts or settings.default_max_attempts,
        backoff={
            "base_s": backoff.get("base_s", settings.backoff_base_s),
            "factor": backoff.get("factor", settings.backoff_factor),
            "cap_s": backoff.get("cap_s", settings.backoff_cap_s),
            "jitter": backoff.get("jitter", settings.backoff_jitter),
        },
        sandbox=body.sandbox,
    )


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=TaskPublic, operation_id="create_task",
    summary="Submit a task",
)
async def create_task(
    body: TaskCreate,
    request: Request,
    who: Creator,
    idempotency_key: Annotated[str | None, Header(max_length=200, description="same key + same body = same task")] = None,
) -> Response:
    # The control plane, the caller's address and traceparent are read from the request, not declared
    # as dependencies and headers: each one FastAPI solves costs more than the read.
    cp: ControlPlane = request.app.state.control_plane
    new = _new_task(body, cp.settings)
    submitter = _submitter(cp, who, await remote_address(request), request.headers.get("traceparent"))
    row, replayed = await cp.submissions.submit(who, new, submitter, idempotency_key=idempotency_key)
    headers = {"Location": f"/api/v1/tasks/{row['id']}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return _created(_public(row), headers)


@router.post(
    "/batch", status_code=status.HTTP_201_CREATED, response_model=TaskBatch, operation_id="create_tasks",
    summary="Submit several tasks at once, all or none",
)
async def create_tasks(
    body: TaskBatchCreate,
    request: Request,
    who: Creator,
    idempotency_key: Annotated[str | None, Header(max_length=200, description="same key + same body = same tasks")] = None,
) -> Response:
    cp: ControlPlane = request.app.state.control_plane
    settings = cp.settings
    if len(body.tasks) > settings.max_batch_tasks:
        raise InvalidInput(f"a batch holds at most {settings.max_batch_tasks} tasks, not {len(body.tasks)}",
                           field="body.tasks")
    new = []
    for i, task in enumerate(body.tasks):
        try:
            new.append(_new_task(task, settings))
        except InvalidInput as exc:
            raise InvalidInput(exc.message, field=f"body.tasks.{i}.{(exc.field or '').removeprefix('body.')}") from exc
    submitter = _submitter(cp, who, await remote_address(request), request.headers.get("traceparent"))
    rows, replayed = await cp.submissions.submit_batch(who, new, submitter, idempotency_key=idempotency_key)
    return _created(TaskBatch(tasks=[_public(row) for row in rows]), {"Idempotent-Replayed": "true"} if replayed else {})


def _created(model: TaskPublic | TaskBatch, headers: dict[str, str]) -> Response:
    # The submit path's answer serialised once by pydantic, instead of FastAPI validating the model
    # again against response_model and encoding it in Python (response_model still documents it).
    return Response(model.model_dump_json(), status_code=status.HTTP_201_CREATED, headers=headers,
                    media_type="application/json")


def _submitter(cp: ControlPlane, who: Principal, remote: str, traceparent: str | None) -> task_store.Submitter:
    return task_store.Submitter(
        created_by=who.name,
        # the request's server span (itself a child of the client's traceparent, if any) parents the publish
        traceparent=server_traceparent() or traceparent,
        topology=cp.topology, agent_ttl_s=cp.settings.heartbeat_ttl_s, remote=remote,
    )


@router.get("", response_model=TaskPage, operation_id="list_tasks", summary="List tasks, newest first")
async def list_tasks(
    conn: DbConn,
    settings: SettingsDep,
    _: Reader,
    status: TaskStatus | None = None,
    type: str | None = None,
    agent: str | None = None,
    pool: str | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    created_since: Annotated[AwareDatetime | None, Query(description="only tasks created at or after this time")] = None,
    created_before: Annotated[AwareDatetime | None, Query(description="only tasks created before this time")] = None,
) -> TaskPage:
    size = limit or settings.page_size_default
    if size > settings.page_size_max:
        raise InvalidInput(f"limit must be at most {settings.page_size_max}", field="query.limit")
    rows, next_cursor = await task_store.list_tasks(
        conn, limit=size, cursor=cursor, status=status, type=type, agent_id=agent, pool_id=pool,
        created_since=created_since, created_before=created_before,
    )
    return TaskPage(items=[_public(r) for r in rows], next_cursor=next_cursor)


REDACTED = "***"


def _shown_input(task_input: dict, who: Principal) -> dict:
    """The task's input as ``who`` may see it: without ``tasks:read-env`` (viewer, ci), the values of
    its plain ``env`` are redacted and only the keys shown. ``secret_env`` holds references to a
    secret store, never values, and is shown as it is."""
    env = task_input.get("env")
    if not isinstance(env, dict) or not env or who.can(READ_ENV):
        return task_input
    return task_input | {"env": dict.fromkeys(env, REDACTED)}


@router.get(
    "/{task_id}", response_model=TaskDetail, operation_id="get_task",
    summary="One task with its history; the values of input.env only for supervisors and admins",
)
async def get_task(task_id: UUID, conn: DbConn, who: Reader, remote: Remote) -> TaskDetail:
    row = await task_store.get_task(conn, task_id)
    shown = _shown_input(row["input"], who)
    if shown is row["input"] and row["input"].get("env"):
        await audit(conn, actor=who.name, action="task.read_env", target=str(task_id), remote=remote,
                    detail={"keys": sorted(row["input"]["env"])})
    return TaskDetail.model_validate(
        dict(row)
        | {
            "input": shown,
            "attempts": [dict(a) for a in await task_store.attempts(conn, task_id)],
            "transitions": [dict(t) for t in await task_store.transitions(conn, task_id)],
        }
    )


@router.post("/{task_id}/cancel", response_model=TaskPublic, operation_id="cancel_task", summary="Cancel a task")
async def cancel_task(task_id: UUID, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote) -> TaskPublic:
    async with conn.transaction():
        row = await task_store.cancel_task(
            conn, task_id, actor=who.name, reason=f"cancelled by {who.name}", topology=cp.topology
        )
        await cp.workflows.tasks_ended(conn, [task_id])
    await audit(conn, actor=who.name, action="task.cancel", target=str(task_id), remote=remote)
    return _public(row)


@router.post("/{task_id}/retry", response_model=TaskPublic, operation_id="retry_task", summary="Retry a finished task")
async def retry_task(task_id: UUID, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote) -> TaskPublic:
    row = await task_store.retry_task(
        conn, task_id, actor=who.name, topology=cp.topology, agent_ttl_s=cp.settings.heartbeat_ttl_s,
        attempts_budget=cp.settings.default_max_attempts,
    )
    await audit(conn, actor=who.name, action="task.retry", target=str(task_id), remote=remote)
    return _public(row)


def _parse_after(after: str | None) -> int | None:
    if after is None:
        return None
    if not after.isdigit() or int(after) >= 2**63:
        raise InvalidInput("after must be a position as returned in next_after", field="query.after")
    return int(after)


@router.get(
    "/{task_id}/logs", response_model=LogPage, operation_id="task_logs",
    summary="Task log lines; ?follow=true streams them as server-sent events until the task ends",
    description="With ?follow=true: `log` events (one line each), a `status` event (the task) whenever its "
    "status or reason changes, and one `end` event when the task has ended.",
)
async def task_logs(
    task_id: UUID,
    cp: ControlPlaneDep,
    hub: HubDep,
    who: Annotated[Principal, Depends(require_outside_transaction(READ))],
    after: Annotated[str | None, Query(max_length=40)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    follow: bool = False,
) -> LogPage | Response:
    settings = cp.settings
    size = min(limit or settings.log_page_max, settings.log_page_max)
    position = _parse_after(after)
    async with identity.acting_as(cp.pool, who) as conn:  # not for the request's lifetime: a follow may last hours
        await task_store.get_task(conn, task_id)
        if not follow:
            rows = await task_store.task_logs(conn, task_id, after=position, limit=size)
    if follow:
        stream = hub.open(who, task_id=task_id)
        return sse_response(_follow_logs(cp, hub, stream, who, task_id, position, size), on_close=stream.close)
    return LogPage(
        lines=[LogLinePublic.model_validate(dict(r)) for r in rows],
        next_after=str(rows[-1]["position"]) if rows else None,
    )


async def _follow_logs(
    cp: ControlPlane, hub: EventHub, stream: Stream, who: Principal, task_id: UUID, position: int | None, size: int
) -> AsyncIterator[bytes]:
    seen: tuple[str, str] | None = None
    try:
        while not stream.closed:
            async with identity.acting_as(cp.pool, who) as conn:
                rows = await task_store.task_logs(conn, task_id, after=position, limit=size)
                task = await task_store.get_task(conn, task_id)
            if (task["status"], task["status_reason"]) != seen:
                seen = (task["status"], task["status_reason"])
                yield sse_frame("status", _public(task).model_dump(mode="json"))
            for row in rows:
                position = row["position"]
                yield sse_frame("log", LogLinePublic.model_validate(dict(row)).model_dump(mode="json"),
                                id=str(position))
            if len(rows) == size:
                continue
            if task["status"] in task_store.TERMINAL:
                yield sse_frame("end", {"status": task["status"]})
                return
            async for news in hub.news(stream):  # only this task's logs and events
                if news:
                    break
                yield KEEPALIVE
    finally:
        stream.close()
