"""Workflow runs: the list; one run with its DAG (server-rendered SVG), step states and skip reasons,
links to the step tasks and approvals; cancel and re-run."""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from control_plane.api import workflows as api_workflows
from control_plane.api.workflow_models import JobPublic, RunDetail, RunState, RunTrigger
from dashboard.svg import Node, dag
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
Lister = reader("list_runs")
Reader = reader("get_run")
Canceller = action("cancel_run")
Rerunner = action("rerun_run")
STATES: tuple[str, ...] = RunState.__args__  # type: ignore[attr-defined]


class RunFilters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    workflow: str | None = Field(default=None, max_length=100)
    state: RunState | None = None
    trigger: RunTrigger | None = None
    cursor: str | None = Field(default=None, max_length=500)


def _needs(step: dict[str, Any]) -> list[str]:
    needs = step.get("needs") or []
    return list(needs) if isinstance(needs, list | dict) else [str(needs)]


def run_graph(run: RunDetail, definition: dict[str, Any]) -> list[Node]:
    """One node per job; a job needs every job of the steps its step needs. ``finally`` jobs come
    after the main jobs that nothing else needs."""
    steps = definition.get("steps") or {}
    jobs_of: dict[str, list[JobPublic]] = {}
    for job in run.steps:
        jobs_of.setdefault(job.step, []).append(job)
    needed = {need for name in steps for need in _needs(steps[name])}
    leaves = [j.job for j in run.steps if j.phase == "main" and j.step not in needed]

    def href(job: JobPublic) -> str | None:
        if job.task_id:
            return f"/tasks/{job.task_id}"
        return f"/approvals/{job.approval_id}" if job.approval_id else None

    nodes = []
    for job in run.steps:
        if job.phase == "finally":
            needs = tuple(leaves)
        else:
            needs = tuple(j.job for need in _needs(steps.get(job.step, {})) for j in jobs_of.get(need, []))
        nodes.append(Node(job.job, job.job, job.state, needs, href(job)))
    return nodes


async def _page(request: Request, conn: Conn, who: Lister, filters: RunFilters) -> Any:
    return await api_workflows.list_runs(
        conn, request.app.state.control_plane.settings, who.principal, workflow=filters.workflow,
        state=filters.state, trigger=filters.trigger, cursor=filters.cursor, limit=console_of(request).settings.page_size,
    )


@router.get("/runs")
async def run_list(request: Request, conn: Conn, who: Lister) -> Response:
    filters = query_model(request, RunFilters)
    return render(request, who, "runs.html", nav="runs", page=await _page(request, conn, who, filters),
                  filters=filters, states=STATES)


@router.get("/runs/rows")
async def run_rows(request: Request, conn: Conn, who: Lister) -> Response:
    filters = query_model(request, RunFilters)
    return render(request, who, "_run_rows.html", page=await _page(request, conn, who, filters))


async def _run(run_id: UUID, conn: Conn, who: Reader) -> dict[str, Any]:
    run = await api_workflows.get_run(run_id, conn, who.principal)
    workflow = await api_workflows.get_workflow(run.workflow, conn, who.principal, version=run.version)
    return {"run": run, "graph": dag(run_graph(run, workflow["definition"]), title=f"{run.workflow} run {run.id}")}


@router.get("/runs/{run_id}")
async def run_detail(run_id: UUID, request: Request, conn: Conn, who: Reader) -> Response:
    return render(request, who, "run.html", nav="runs", **await _run(run_id, conn, who))


@router.get("/runs/{run_id}/state")
async def run_state(run_id: UUID, request: Request, conn: Conn, who: Reader) -> Response:
    return render(request, who, "_run_state.html", **await _run(run_id, conn, who))


@router.post("/runs/{run_id}/cancel")
async def cancel(run_id: UUID, request: Request, conn: Conn, cp: CP, who: Canceller) -> Response:
    await api_workflows.cancel_run(run_id, conn, cp, who.principal, remote(request))
    return back(f"/runs/{run_id}")


@router.post("/runs/{run_id}/rerun")
async def rerun(run_id: UUID, request: Request, conn: Conn, cp: CP, who: Rerunner) -> Response:
    new = await api_workflows.rerun_run(run_id, Response(), conn, cp, who.principal, remote(request))
    return back(f"/runs/{new.id}")
