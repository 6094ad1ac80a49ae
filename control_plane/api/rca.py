"""/api/v1/incidents/{id}/rca: the stored root cause analysis of an incident, and the supervisor's
confirmation or correction of its cause (fed to the similar-incident memory and the calibration set)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
from fastapi import APIRouter, Depends, Response, status
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from aiops.rca import normalise_service, remember
from aiops.rca.model import Category
from aiops.rca.worker import RcaStatus
from control_plane.api.deps import DbConn, Remote, require
from control_plane.audit import audit
from control_plane.auth import OPERATE_INCIDENTS, READ, Principal
from control_plane.errors import Conflict, InvalidInput, NotFound

router = APIRouter(prefix="/api/v1/incidents", tags=["rca"])

Reader = Annotated[Principal, Depends(require(READ))]
Supervisor = Annotated[Principal, Depends(require(OPERATE_INCIDENTS))]

_UNFINISHED = ("pending", "running")
_COLUMNS = """status, result::text AS result, similar_incidents::text AS similar_incidents, attempts, last_error,
    updated_at, confirmed_service, confirmed_category, resolving_action, feedback_note, confirmed_by, confirmed_at"""


class SimilarIncidentPublic(BaseModel):
    incident_id: str
    cause_service: str = Field(description="the confirmed cause of that incident")
    category: Category
    remediation: str = Field(description="the action that resolved it, as the supervisor recorded it")
    summary: str
    distance: float = Field(description="cosine distance of the fault signatures (0 = same shape)")
    confirmed_at: datetime


class RcaFeedbackPublic(BaseModel):
    service: str
    category: Category | None
    resolving_action: str | None
    note: str | None
    confirmed_by: str
    confirmed_at: datetime


class RcaPublic(BaseModel):
    incident_id: UUID
    status: RcaStatus = Field(description="pending/running until analysed; then done, failed or insufficient_data")
    attempts: int
    last_error: str | None
    result: dict[str, Any] | None = Field(
        description="the RcaResult: status, causes (service, score, confidence, category, evidence, "
        "recommendations), reason, summary, stats"
    )
    similar: list[SimilarIncidentPublic] = Field(description="the most similar confirmed past incidents")
    feedback: RcaFeedbackPublic | None
    updated_at: datetime | None


class RcaFeedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    service: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] = Field(
        description="the service that really caused the incident"
    )
    category: Category | None = Field(
        default=None, description="its fault category; defaults to the category RCA gave that service"
    )
    resolving_action: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = Field(
        default=None, description="what resolved the incident, shown to whoever meets a similar one"
    )
    note: Annotated[str, StringConstraints(max_length=2000)] | None = None


@router.get(
    "/{incident_id}/rca",
    response_model=RcaPublic,
    operation_id="get_incident_rca",
    summary="Root cause analysis of an incident (202 while it is still pending)",
    responses={202: {"model": RcaPublic, "description": "not analysed yet"}},
)
async def get_incident_rca(incident_id: UUID, response: Response, conn: DbConn, _: Reader) -> RcaPublic:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM rca_results WHERE incident_id = $1", incident_id)
    if row is None:
        await _require_incident(conn, incident_id)
        response.status_code = status.HTTP_202_ACCEPTED
        return RcaPublic(incident_id=incident_id, status="pending", attempts=0, last_error=None, result=None,
                         similar=[], feedback=None, updated_at=None)
    if row["status"] in _UNFINISHED:
        response.status_code = status.HTTP_202_ACCEPTED
    return _public(incident_id, row)


@router.post(
    "/{incident_id}/rca/feedback",
    response_model=RcaPublic,
    operation_id="confirm_incident_cause",
    summary="Confirm or correct the root cause of an incident",
)
async def confirm_incident_cause(
    incident_id: UUID, body: RcaFeedback, conn: DbConn, who: Supervisor, remote: Remote
) -> RcaPublic:
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT status, result::text AS result, signature, embedding::text AS embedding, resolving_action "
            "FROM rca_results "
            "WHERE incident_id = $1 FOR UPDATE",
            incident_id,
        )
        if row is None:
            await _require_incident(conn, incident_id)
        if row is None or row["status"] in _UNFINISHED:
            raise Conflict(f"the root cause analysis of incident {incident_id} has not finished yet; "
                           "send feedback once it has", field="incident_id")
        result = json.loads(row["result"]) if row["result"] else None
        causes = result["causes"] if result else []
        service = normalise_service(body.service)
        category = body.category or next((c["category"] for c in causes if c["service"] == service), None)
        if category is None:
            raise InvalidInput(f"category is required: {service!r} is not among the causes RCA found",
                               field="body.category")
        await conn.execute(
            """UPDATE rca_results
               SET confirmed_service = $2, confirmed_category = $3, resolving_action = coalesce($4, resolving_action),
                   feedback_note = $5, confirmed_by = $6, confirmed_at = now(), updated_at = now()
               WHERE incident_id = $1""",
            incident_id, service, category, body.resolving_action, body.note, who.name,
        )
        await conn.execute("DELETE FROM rca_memory WHERE incident_id = $1", str(incident_id))
        if row["embedding"] is not None:
            await remember(
                conn, incident_id=str(incident_id), signature=row["signature"], embedding=json.loads(row["embedding"]),
                cause_service=service, category=category, summary=result["summary"] if result else "",
                remediation=body.resolving_action or row["resolving_action"] or "",
            )
        correct = await _record_calibration_sample(conn, incident_id, result, service)
        await audit(
            conn, actor=who.name, action="incident.rca.feedback", target=str(incident_id), remote=remote,
            detail={"service": service, "category": category, "resolving_action": body.resolving_action,
                    "rca_was_right": correct},
        )
        updated = await conn.fetchrow(f"SELECT {_COLUMNS} FROM rca_results WHERE incident_id = $1", incident_id)
    return _public(incident_id, updated)


async def _record_calibration_sample(
    conn: asyncpg.Connection, incident_id: UUID, result: dict[str, Any] | None, service: str
) -> bool | None:
    """Label the top cause's calibration features with the confirmed truth; None when RCA named no cause."""
    if not result or not result["causes"]:
        return None
    top, stats = result["causes"][0], result["stats"]
    features = [1.0, stats["feature_top_score"], stats["feature_margin"], stats["feature_agreement"]]
    correct = normalise_service(top["service"]) == service
    await conn.execute(
        """INSERT INTO rca_calibration_samples (incident_id, features, predicted_service, confidence, correct)
           VALUES ($1, $2, $3, $4, $5)
           ON CONFLICT (incident_id) DO UPDATE SET correct = EXCLUDED.correct, created_at = now()""",
        incident_id, features, top["service"], top["confidence"], correct,
    )
    return correct


async def _require_incident(conn: asyncpg.Connection, incident_id: UUID) -> None:
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM incidents WHERE id = $1)", incident_id):
        raise NotFound(f"no incident with id {incident_id}", field="incident_id")


def _public(incident_id: UUID, row: asyncpg.Record) -> RcaPublic:
    feedback = None
    if row["confirmed_service"] is not None:
        feedback = RcaFeedbackPublic(
            service=row["confirmed_service"], category=row["confirmed_category"],
            resolving_action=row["resolving_action"], note=row["feedback_note"], confirmed_by=row["confirmed_by"],
            confirmed_at=row["confirmed_at"],
        )
    return RcaPublic(
        incident_id=incident_id,
        status=row["status"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        result=json.loads(row["result"]) if row["result"] else None,
        similar=[SimilarIncidentPublic.model_validate(s) for s in json.loads(row["similar_incidents"])],
        feedback=feedback,
        updated_at=row["updated_at"],
    )
