"""Incidents: the list; one incident with the signal around each anomaly plotted, its root cause
analysis (ranked causes, confidence, evidence, exemplar traces), similar past incidents and its
remediations; acknowledge, resolve, silence, confirm or correct the cause. Remediations: one
remediation's pipeline and dry-run diff, and the kill switch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from aiops.incidents.model import Anomaly, IncidentStatus
from control_plane.api import incidents as api_incidents
from control_plane.api import rca as api_rca
from control_plane.api import remediations as api_remediations
from dashboard.svg import series_plot
from dashboard.web import (
    CP,
    Conn,
    ConsoleRoute,
    action,
    back,
    console_of,
    form_model,
    local_path,
    query_model,
    reader,
    remote,
    render,
)

router = APIRouter(route_class=ConsoleRoute, include_in_schema=False)
Lister = reader("list_incidents")
Reader = reader("get_incident")
Acknowledger = action("acknowledge_incident")
Resolver = action("resolve_incident")
Silencer = action("create_silence")
Confirmer = action("confirm_incident_cause")
RemediationReader = reader("get_remediation")
Pauser = action("pause_remediation")
Resumer = action("resume_remediation")
STATUSES: tuple[str, ...] = IncidentStatus.__args__  # type: ignore[attr-defined]


class IncidentFilters(BaseModel):
    model_config = ConfigDict(extra="ignore")
    status: IncidentStatus | None = None
    service: str | None = Field(default=None, max_length=200)
    cursor: str | None = Field(default=None, max_length=500)


class SilenceForm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service: str | None = Field(default=None, max_length=200)
    operation: str | None = Field(default=None, max_length=200)
    signal: str | None = Field(default=None, max_length=200)
    hours: float = Field(gt=0, le=24 * 30, description="how long the silence lasts")
    comment: str = Field(default="", max_length=1000)


class SwitchForm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field(default="", max_length=500)
    back: str = Field(default="/incidents", max_length=2000, description="the page to show afterwards")


def _plot(anomaly: Anomaly) -> object:
    points = [(t / 1e9, v) for t, v in zip(anomaly.excerpt.timestamps_ns, anomaly.excerpt.values, strict=False)
              if v is not None]
    if points:
        last = points[-1][0]
        points = [((x - last) / 60, y) for x, y in points]
        window = ((anomaly.first_ns / 1e9 - last) / 60, (anomaly.last_ns / 1e9 - last) / 60)
    else:
        window = None
    return series_plot(points, highlight=window,
                       title=f"{anomaly.signal} of {anomaly.service} {anomaly.operation}, anomaly shaded",
                       y_label=f"{anomaly.signal} (x: minutes before the last value)")


async def _incidents(request: Request, conn: Conn, who: Lister, filters: IncidentFilters) -> object:
    return await api_incidents.list_incidents(conn, who.principal, status_=filters.status, service=filters.service,
                                              limit=console_of(request).settings.page_size, cursor=filters.cursor)


@router.get("/incidents")
async def incident_list(request: Request, conn: Conn, who: Lister) -> Response:
    filters = query_model(request, IncidentFilters)
    page = await _incidents(request, conn, who, filters)
    return render(request, who, "incidents.html", nav="incidents", page=page, filters=filters, statuses=STATUSES)


@router.get("/incidents/rows")
async def incident_rows(request: Request, conn: Conn, who: Lister) -> Response:
    filters = query_model(request, IncidentFilters)
    return render(request, who, "_incident_rows.html", page=await _incidents(request, conn, who, filters))


@router.get("/incidents/{incident_id}")
async def incident_detail(incident_id: UUID, request: Request, conn: Conn, cp: CP, who: Reader) -> Response:
    incident = await api_incidents.get_incident(incident_id, conn, who.principal)
    rca = await api_rca.get_incident_rca(incident_id, Response(), conn, who.principal)
    remediations = await api_remediations.list_remediations(conn, who.principal, incident_id=incident_id, limit=50)
    control = await api_remediations.get_status(conn, cp, who.principal)
    return render(request, who, "incident.html", nav="incidents", incident=incident, rca=rca,
                  plots=[(a, _plot(a)) for a in incident.anomalies], remediations=remediations, control=control,
                  categories=api_rca.Category.__args__)  # type: ignore[attr-defined]


@router.post("/incidents/{incident_id}/acknowledge")
async def acknowledge(incident_id: UUID, request: Request, conn: Conn, who: Acknowledger) -> Response:
    await api_incidents.acknowledge_incident(incident_id, conn, who.principal, remote(request))
    return back(f"/incidents/{incident_id}")


@router.post("/incidents/{incident_id}/resolve")
async def resolve(incident_id: UUID, request: Request, conn: Conn, who: Resolver) -> Response:
    await api_incidents.resolve_incident(incident_id, conn, who.principal, remote(request))
    return back(f"/incidents/{incident_id}")


@router.post("/incidents/{incident_id}/silence")
async def silence(incident_id: UUID, request: Request, conn: Conn, who: Silencer) -> Response:
    form = await form_model(request, SilenceForm)
    body = api_incidents.SilenceCreate(service=form.service, operation=form.operation, signal=form.signal,
                                       expires_at=datetime.now(UTC) + timedelta(hours=form.hours), comment=form.comment)
    await api_incidents.create_silence(body, conn, who.principal, remote(request))
    return back(f"/incidents/{incident_id}")


@router.post("/incidents/{incident_id}/cause")
async def confirm_cause(incident_id: UUID, request: Request, conn: Conn, who: Confirmer) -> Response:
    body = await form_model(request, api_rca.RcaFeedback)
    await api_rca.confirm_incident_cause(incident_id, body, conn, who.principal, remote(request))
    return back(f"/incidents/{incident_id}")


@router.get("/remediations/{remediation_id}")
async def remediation_detail(remediation_id: UUID, request: Request, conn: Conn, who: RemediationReader) -> Response:
    remediation = await api_remediations.get_remediation(remediation_id, conn, who.principal)
    return render(request, who, "remediation.html", nav="incidents", remediation=remediation)


@router.post("/remediation/pause")
async def pause(request: Request, conn: Conn, cp: CP, who: Pauser) -> Response:
    form = await form_model(request, SwitchForm)
    await api_remediations.pause(conn, cp, who.principal, remote(request),
                                 api_remediations.ControlChange(reason=form.reason))
    return back(local_path(form.back))


@router.post("/remediation/resume")
async def resume(request: Request, conn: Conn, cp: CP, who: Resumer) -> Response:
    form = await form_model(request, SwitchForm)
    await api_remediations.resume(conn, cp, who.principal, remote(request),
                                  api_remediations.ControlChange(reason=form.reason))
    return back(local_path(form.back))
