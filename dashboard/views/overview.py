"""The overview: tasks by state, throughput and failure rate over the last hour, open incidents,
pending approvals, and the pools with their capacity."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from control_plane import overview
from control_plane.api import agents as api_agents
from control_plane.api import approvals as api_approvals
from control_plane.api import incidents as api_incidents
from dashboard.svg import series_plot
from dashboard.views.tasks import STATES
from dashboard.web import CP, Conn, ConsoleRoute, reader, render

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
Reader = reader("list_tasks")
WINDOW_S, BUCKETS = 3600, 30


async def _context(conn: Conn, cp: CP, who: Reader) -> dict[str, object]:
    buckets = await overview.finished_per_bucket(conn, window_s=WINDOW_S, buckets=BUCKETS)
    minutes = [(-(len(buckets) - i) * WINDOW_S / BUCKETS / 60, b) for i, b in enumerate(buckets)]
    return {
        "counts": await overview.counts_by_status(conn),
        "throughput": series_plot([(m, b.finished / (WINDOW_S / BUCKETS / 60)) for m, b in minutes],
                                  title="Tasks finished per minute, last hour", y_label="tasks/min (x: minutes ago)"),
        "failures": series_plot([(m, b.failure_rate * 100) for m, b in minutes], colour="#b3261e",
                                title="Failure rate of finished tasks, last hour", y_label="% failed (x: minutes ago)"),
        "incidents": (await api_incidents.list_incidents(conn, who.principal, status_="open", limit=10)).items,
        "approvals": (await api_approvals.list_approvals(conn, who.principal, state="pending", limit=10)).items,
        "pools": await api_agents.list_pools(conn, cp, who.principal),
    }


@router.get("/")
async def home(request: Request, conn: Conn, cp: CP, who: Reader) -> Response:
    return render(request, who, "overview.html", states=STATES, **await _context(conn, cp, who))


@router.get("/overview/live")
async def live(request: Request, conn: Conn, cp: CP, who: Reader) -> Response:
    return render(request, who, "_overview.html", states=STATES, **await _context(conn, cp, who))
