"""/api/v1/incidents: list, get, acknowledge, resolve; silences and maintenance windows.

Readers need ``read``; every mutation needs ``incidents:operate`` and is audited in its transaction.
Acknowledge and resolve notify ``devart_incidents`` and the live event stream like the AIOps service does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Depends, Query, Response, status
from pydantic import AwareDatetime, BaseModel, Field

from aiops.incidents import store as incident_store
from aiops.incidents.errors import IncidentError, IncidentNotFound, IncidentStateError
from aiops.incidents.model import Incident, IncidentStatus, MaintenanceWindow, Silence
from control_plane.api.deps import DbConn, Remote, require
from control_plane.audit import audit
from control_plane.auth import OPERATE_INCIDENTS, READ, Principal
from control_plane.errors import Conflict, InvalidInput, NotFound

router = APIRouter(prefix="/api/v1/incidents", tags=["incidents"])

Reader = Annotated[Principal, Depends(require(READ))]
Operator = Annotated[Principal, Depends(require(OPERATE_INCIDENTS))]
_NAME = Field(default=None, min_length=1, max_length=200)


class IncidentPage(BaseModel):
    items: list[Incident] = Field(description="incidents, newest first, without their anomalies")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page; null at the end")


class SilenceCreate(BaseModel):
    service: str | None = _NAME
    operation: str | None = _NAME
    signal: str | None = _NAME
    expires_at: AwareDatetime = Field(description="when the silence stops applying (with a time zone)")
    comment: str = Field(default="", max_length=1000)


class MaintenanceWindowCreate(BaseModel):
    service: str | None = Field(default=None, min_length=1, max_length=200, description="null: every service")
    starts_at: AwareDatetime
    ends_at: AwareDatetime
    comment: str = Field(default="", max_length=1000)


@contextmanager
def _domain_errors() -> Iterator[None]:
    try:
        yield
    except IncidentNotFound as exc:
        raise NotFound(exc.message, field=exc.field) from exc
    except IncidentStateError as exc:
        raise Conflict(exc.message, field=exc.field) from exc
    except IncidentError as exc:
        raise InvalidInput(exc.message, field=exc.field) from exc


@router.get("", response_model=IncidentPage, operation_id="list_incidents", summary="List incidents, newest first")
async def list_incidents(
    conn: DbConn,
    _: Reader,
    status_: Annotated[IncidentStatus | None, Query(alias="status")] = None,
    service: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> IncidentPage:
    with _domain_errors():
        items, next_cursor = await incident_store.list_incidents(
            conn, limit=limit, cursor=cursor, status=status_, service=service
        )
    return IncidentPage(items=items, next_cursor=next_cursor)


@router.get("/silences", response_model=list[Silence], operation_id="list_silences", summary="List silences")
async def list_silences(conn: DbConn, _: Reader, include_expired: bool = False) -> list[Silence]:
    return await incident_store.list_silences(conn, active_at=None if include_expired else datetime.now(UTC))


@router.post("/silences", response_model=Silence, status_code=status.HTTP_201_CREATED,
             operation_id="create_silence", summary="Silence matching anomalies until a time")
async def create_silence(body: SilenceCreate, conn: DbConn, who: Operator, remote: Remote) -> Silence:
    async with conn.transaction():
        with _domain_errors():
            silence = await incident_store.create_silence(
                conn, service=body.service, operation=body.operation, signal=body.signal,
                expires_at=body.expires_at, comment=body.comment, by=who.name, now=datetime.now(UTC),
            )
        await audit(conn, actor=who.name, action="incident.silence.create", target=str(silence.id),
                    detail=body.model_dump(mode="json"), remote=remote)
    return silence


@router.delete("/silences/{silence_id}", status_code=status.HTTP_204_NO_CONTENT,
               operation_id="delete_silence", summary="Remove a silence")
async def delete_silence(silence_id: UUID, conn: DbConn, who: Operator, remote: Remote) -> Response:
    async with conn.transaction():
        with _domain_errors():
            await incident_store.delete_silence(conn, silence_id=silence_id)
        await audit(conn, actor=who.name, action="incident.silence.delete", target=str(silence_id), remote=remote)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/maintenance-windows", response_model=list[MaintenanceWindow],
            operation_id="list_maintenance_windows", summary="List maintenance windows")
async def list_maintenance_windows(conn: DbConn, _: Reader) -> list[MaintenanceWindow]:
    return await incident_store.list_maintenance_windows(conn)


@router.post("/maintenance-windows", response_model=MaintenanceWindow, status_code=status.HTTP_201_CREATED,
             operation_id="create_maintenance_window", summary="No incidents open in a time range")
async def create_maintenance_window(
    body: MaintenanceWindowCreate, conn: DbConn, who: Operator, remote: Remote
) -> MaintenanceWindow:
    async with conn.transaction():
        with _domain_errors():
            window = await incident_store.create_maintenance_window(
                conn, service=body.service, starts_at=body.starts_at, ends_at=body.ends_at,
                comment=body.comment, by=who.name, now=datetime.now(UTC),
            )
        await audit(conn, actor=who.name, action="incident.maintenance.create", target=str(window.id),
                    detail=body.model_dump(mode="json"), remote=remote)
    return window


@router.delete("/maintenance-windows/{window_id}", status_code=status.HTTP_204_NO_CONTENT,
               operation_id="delete_maintenance_window", summary="Remove a maintenance window")
async def delete_maintenance_window(window_id: UUID, conn: DbConn, who: Operator, remote: Remote) -> Response:
    async with conn.transaction():
        with _domain_errors():
            await incident_store.delete_maintenance_window(conn, window_id=window_id)
        await audit(conn, actor=who.name, action="incident.maintenance.delete", target=str(window_id),
                    remote=remote)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{incident_id}", response_model=Incident, operation_id="get_incident",
            summary="One incident with its anomalies and their signal excerpts")
async def get_incident(incident_id: UUID, conn: DbConn, _: Reader) -> Incident:
    with _domain_errors():
        return await incident_store.get_incident(conn, incident_id)


@router.post("/{incident_id}/acknowledge", response_model=Incident, operation_id="acknowledge_incident",
             summary="Acknowledge an open incident")
async def acknowledge_incident(incident_id: UUID, conn: DbConn, who: Operator, remote: Remote) -> Incident:
    async with conn.transaction():
        with _domain_errors():
            incident = await incident_store.acknowledge(conn, incident_id=incident_id, by=who.name)
        await incident_store.notify(conn, incident, "acknowledged")
        await audit(conn, actor=who.name, action="incident.acknowledge", target=str(incident_id), remote=remote)
    return incident


@router.post("/{incident_id}/resolve", response_model=Incident, operation_id="resolve_incident",
             summary="Resolve an open or acknowledged incident by hand")
async def resolve_incident(incident_id: UUID, conn: DbConn, who: Operator, remote: Remote) -> Incident:
    async with conn.transaction():
        with _domain_errors():
            incident = await incident_store.resolve(conn, incident_id=incident_id, by=who.name)
        await incident_store.notify(conn, incident, "resolved")
        await audit(conn, actor=who.name, action="incident.resolve", target=str(incident_id), remote=remote)
    return incident
