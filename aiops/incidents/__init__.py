"""Incidents: anomalies fingerprinted, grouped by call path, opened, acknowledged and resolved."""

from aiops.incidents.errors import IncidentError, IncidentNotFound, IncidentStateError, InvalidIncidentInput
from aiops.incidents.model import (
    INCIDENT_STATUSES,
    Anomaly,
    Direction,
    Excerpt,
    Fingerprint,
    Incident,
    IncidentStatus,
    MaintenanceWindow,
    Silence,
)
from aiops.incidents.pipeline import IncidentPipeline, StepResult
from aiops.incidents.store import get_incident

__all__ = [
    "INCIDENT_STATUSES",
    "Anomaly",
    "Direction",
    "Excerpt",
    "Fingerprint",
    "Incident",
    "IncidentError",
    "IncidentNotFound",
    "IncidentPipeline",
    "IncidentStateError",
    "IncidentStatus",
    "InvalidIncidentInput",
    "MaintenanceWindow",
    "Silence",
    "StepResult",
    "get_incident",
]
