"""/api/v1/workflows and /api/v1/runs: definitions (versioned), runs, cancel and re-run."""

from __future__ import annotations

import json
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Header, Query, Request, Response, status

from control_plane.api.deps import ControlPlaneDep, DbConn, Remote, SettingsDep, require, retry_rollback
from control_plane.api.workflow_models import (
    RunCreate,
    RunDetail,
    RunPage,
    RunPublic,
    RunState,
    RunTrigger,
    WorkflowDetail,
    WorkflowList,
    WorkflowPublic,
)
from control_plane.audit import audit
from control_plane.auth import CREATE_TASKS, OPERATE_TASKS, READ, Principal
from control_plane.errors import InvalidInput
from control_plane.telemetry import server_traceparent
from control_plane.workflows import store
from control_plane.workflows.definition import DefinitionError, load_document, parse_definition
from control_plane.workflows.engine import NewRun

router = APIRouter(prefix="/api/v1", tags=["workflows"])

Reader = Annotated[Principal, Depends(require(READ))]
Runner = Annotated[Principal, Depends(require(CREATE_TASKS))]
Operator = Annotated[Principal, Depends(require(OPERATE_TASKS))]
IdempotencyKey = Annotated[str | None, Header(max_length=200, description="same key + same body = same run")]
_YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml")


def definition_error(exc: DefinitionError) -> InvalidInput:
    """A 422 naming the first bad path (``body.<path>``); the message lists every problem."""
    path, _ = exc.problems[0]
    return InvalidInput(str(exc), field="body" if path in ("", "body") else f"body.{path}")


async def _workflow_public(conn: asyncpg.Connection, row: asyncpg.Record) -> dict[str, Any]:
    schedule = await store.schedule_of(conn, row["name"])
    return {
        "name": row["name"], "version": row["version"], "digest": row["digest"], "created_by": row["created_by"],
        "created_at": row["created_at"], "definition": row["document"],
        "schedule": dict(schedule) if schedule is not None and schedule["version"] == row["version"] else None,
    }


@router.post(
    "/workflows", status_code=status.HTTP_201_CREATED, response_model=WorkflowPublic, operation_id="apply_workflow",
    summary="Create a workflow or a new version of it (YAML or JSON body); an unchanged definition answers 200",
    openapi_extra={"requestBody": {"content": {
        "application/json": {"schema": {"type": "object"}}, "application/yaml": {"schema": {"type": "string"}}}}},
)
async def apply_workflow(
    request: Request, response: Response, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote
) -> dict[str, Any]:
    body = await request.body()
    limit = cp.workflows.workflow_settings.max_definition_bytes
    if len(body) > limit:
        raise InvalidInput(f"a definition is at most {limit} bytes", field="body")
    media = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    try:
        if media in _YAML_TYPES:
            document = load_document(body.decode("utf-8", errors="replace"))
        elif media == "application/json":
            try:
                document = json.loads(body)
            except ValueError as exc:
                raise DefinitionError([("body", f"not valid JSON: {exc}")]) from None
        else:
            raise InvalidInput(f"send the definition as application/json or application/yaml, not {media}",
                               field="Content-Type")
        definition = parse_definition(document, cp.workflows.limits)
    except DefinitionError as exc:
        raise definition_error(exc) from None
    async with conn.transaction():
        row, created = await store.apply_workflow(conn, definition, created_by=who.name)
        if created:
            await audit(conn, actor=who.name, action="workflow.apply", target=f"{row['name']}@{row['version']}",
                        detail={"digest": row["digest"]}, remote=remote)
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/api/v1/workflows/{row['name']}"
    return await _workflow_public(conn, row)


@router.get("/workflows", response_model=WorkflowList, operation_id="list_workflows",
            summary="Every workflow at its latest version")
async def list_workflows(conn: DbConn, _: Reader) -> dict[str, Any]:
    return {"items": [await _workflow_public(conn, row) for row in await store.list_workflows(conn)]}


@router.get("/workflows/{name}", response_model=WorkflowDetail, operation_id="get_workflow",
            summary="A workflow (latest version, or ?version=) and its versions")
async def get_workflow(
    name: str, conn: DbConn, _: Reader, version: Annotated[int | None, Query(ge=1)] = None
) -> dict[str, Any]:
    row = await store.get_workflow(conn, name, version)
    versions = [dict(v) for v in await store.workflow_versions(conn, name)]
    return await _workflow_public(conn, row) | {"versions": versions}


@router.post("/workflows/{name}/runs", status_code=status.HTTP_201_CREATED, response_model=RunPublic,
             operation_id="start_run", summary="Start a run of a workflow")
async def start_run(
    name: str, body: RunCreate, response: Response, conn: DbConn, cp: ControlPlaneDep, who: Runner, remote: Remote,
    idempotency_key: IdempotencyKey = None,
    traceparent: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> RunPublic:
    limit = cp.workflows.workflow_settings.max_inputs_bytes
    if len(json.dumps(body.inputs, separators=(",", ":"))) > limit:
        raise InvalidInput(f"inputs are larger than {limit} bytes", field="body.inputs")
    await store.get_workflow(conn, name, body.version)
    row, replayed = await cp.workflows.start_run(conn, NewRun(
        workflow=name, version=body.version, inputs=body.inputs, trigger="api", created_by=who.name,
        traceparent=server_traceparent() or traceparent, idempotency_key=idempotency_key,
    ))
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        await audit(conn, actor=who.name, action="run.create", target=str(row["id"]),
                    detail={"workflow": name, "version": row["version"]}, remote=remote)
    response.headers["Location"] = f"/api/v1/runs/{row['id']}"
    return RunPublic.model_validate(dict(row))


@router.get("/runs", response_model=RunPage, operation_id="list_runs", summary="List runs, newest first")
async def list_runs(
    conn: DbConn, settings: SettingsDep, _: Reader,
    workflow: Annotated[str | None, Query(max_length=100)] = None,
    state: RunState | None = None,
    trigger: RunTrigger | None = None,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> RunPage:
    size = limit or settings.page_size_default
    if size > settings.page_size_max:
        raise InvalidInput(f"limit must be at most {settings.page_size_max}", field="query.limit")
    rows, next_cursor = await store.list_runs(conn, limit=size, cursor=cursor, workflow=workflow, state=state,
                                              trigger=trigger)
    return RunPage(items=[RunPublic.model_validate(dict(r)) for r in rows], next_cursor=next_cursor)


@router.get("/runs/{run_id}", response_model=RunDetail, operation_id="get_run",
            summary="A run with its steps (state, attempts, outputs, skip reasons, task ids, timings) and history")
async def get_run(run_id: UUID, conn: DbConn, _: Reader) -> RunDetail:
    row = await store.get_run(conn, run_id)
    return RunDetail.model_validate(dict(row) | {
        "steps": [dict(j) for j in await store.run_jobs(conn, run_id)],
        "transitions": [dict(t) for t in await store.run_transitions(conn, run_id)],
    })


@router.post("/runs/{run_id}/cancel", response_model=RunPublic, operation_id="cancel_run",
             summary="Cancel a run: running steps' tasks are cancelled, then the finally steps run")
async def cancel_run(run_id: UUID, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote) -> RunPublic:
    row = await retry_rollback(lambda: cp.workflows.cancel_run(conn, run_id, actor=who.name,
                                                          reason=f"cancelled by {who.name}"))
    await audit(conn, actor=who.name, action="run.cancel", target=str(run_id), remote=remote)
    return RunPublic.model_validate(dict(row))


@router.post("/runs/{run_id}/rerun", status_code=status.HTTP_201_CREATED, response_model=RunPublic,
             operation_id="rerun_run",
             summary="Re-run a failed or cancelled run from its failed steps, keeping the outputs upstream of them")
async def rerun_run(
    run_id: UUID, response: Response, conn: DbConn, cp: ControlPlaneDep, who: Operator, remote: Remote,
    idempotency_key: IdempotencyKey = None,
    traceparent: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> RunPublic:
    row, replayed = await retry_rollback(lambda: cp.workflows.rerun(
        conn, run_id, actor=who.name, traceparent=server_traceparent() or traceparent, idempotency_key=idempotency_key))
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        await audit(conn, actor=who.name, action="run.rerun", target=str(row["id"]),
                    detail={"rerun_of": str(run_id)}, remote=remote)
    response.headers["Location"] = f"/api/v1/runs/{row['id']}"
    return RunPublic.model_validate(dict(row))

