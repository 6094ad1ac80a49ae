"""What an incident is: its anomalies (one per fingerprint), lifecycle status, silences and maintenance windows."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

IncidentStatus = Literal["open", "acknowledged", "resolved"]
Direction = Literal["up", "down"]
INCIDENT_STATUSES: tuple[IncidentStatus, ...] = ("open", "acknowledged", "resolved")


class Fingerprint(BaseModel):
    """The identity of an anomaly: the same series deviating the same way is the same anomaly."""

    model_config = ConfigDict(frozen=True)

    service: str
    operation: str
    signal: str
    direction: Direction

    @property
    def text(self) -> str:
        """A stable string form (a JSON array, so no separator can collide with a name)."""
        return json.dumps([self.service, self.operation, self.signal, self.direction])


class Excerpt(BaseModel):
    """Recent values of an anomalous series, up to and around the anomaly (NaN stored as null)."""

    timestamps_ns: list[int] = Field(default_factory=list)
    values: list[float | None] = Field(default_factory=list)


class Anomaly(BaseModel):
    """One fingerprint's deviation inside an incident; repeated alerts of it update this record."""

    fingerprint: str
    service: str
    operation: str
    signal: str
    direction: Direction
    first_ns: int = Field(description="start of the first anomalous step, Unix ns")
    last_ns: int = Field(description="end of the latest anomalous (not calm) step, Unix ns")
    peak_score: float = Field(description="highest detector score seen, in [0, 1]")
    baseline: float | None = Field(description="typical value before the anomaly (median of the excerpt's lead-in)")
    peak_value: float | None = Field(description="the value furthest from the baseline while anomalous")
    relative_change: float | None = Field(description="(peak_value - baseline) / |baseline|, when defined")
    active: bool = Field(description="false once the series has been calm for the recovery steps")
    calm_steps: int = Field(description="consecutive calm steps since the last anomalous one")
    occurrences: int = Field(description="how many times this fingerprint fired within the incident")
    excerpt: Excerpt


class Incident(BaseModel):
    """An incident and its anomalies (the row of table ``incidents`` plus ``incident_anomalies``)."""

    id: UUID
    status: IncidentStatus
    title: str
    severity: float = Field(description="0..1, from the size and breadth of the deviation")
    services: list[str]
    opened_at: datetime
    updated_at: datetime
    started_ns: int = Field(description="start of the first anomalous step, Unix ns")
    ended_ns: int | None = Field(description="end of the last anomalous step, Unix ns; null until resolved")
    last_anomaly_ns: int = Field(description="end of the latest anomalous step of any anomaly, Unix ns")
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    anomalies: list[Anomaly] = Field(default_factory=list)


class Silence(BaseModel):
    """Suppresses opening incidents for anomalies matching every given matcher until ``expires_at``."""

    id: UUID
    service: str | None
    operation: str | None
    signal: str | None
    comment: str
    created_by: str
    created_at: datetime
    expires_at: datetime

    def matches(self, fingerprint: Fingerprint) -> bool:
        """Whether every matcher that is set equals the fingerprint's field."""
        return all(
            want is None or want == have
            for want, have in (
                (self.service, fingerprint.service),
                (self.operation, fingerprint.operation),
                (self.signal, fingerprint.signal),
            )
        )


class MaintenanceWindow(BaseModel):
    """A time range in which no incident opens (for one service, or for all when ``service`` is null)."""

    id: UUID
    service: str | None
    comment: str
    created_by: str
    created_at: datetime
    starts_at: datetime
    ends_at: datetime

    def covers(self, service: str, at: datetime) -> bool:
        """Whether this window suppresses ``service`` at ``at``."""
        return (self.service is None or self.service == service) and self.starts_at <= at < self.ends_at
