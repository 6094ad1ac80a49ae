"""Errors of the incident store; the API maps them to HTTP statuses. ``field`` names the bad input."""

from __future__ import annotations


class IncidentError(Exception):
    """Base of the incident errors a caller caused."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class IncidentNotFound(IncidentError, LookupError):
    """No incident (or silence, or maintenance window) with that id."""


class IncidentStateError(IncidentError):
    """The requested transition is not allowed from the incident's current status."""


class InvalidIncidentInput(IncidentError, ValueError):
    """A matcher, time range or cursor that cannot be used."""
