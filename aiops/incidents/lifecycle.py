"""One step of the incident lifecycle: alerts become anomalies, anomalies open, join or resolve incidents.

Runs inside the caller's transaction. Per step: active anomalies follow their series (latest
anomalous step, peak, excerpt, calm steps); a fired alert with a known fingerprint reactivates its
anomaly (deduplication); a new fingerprint joins a correlated incident (:mod:`grouping`) or opens
one unless a silence or maintenance window covers it; an incident whose anomalies are all inactive
resolves on its own. An anomaly becomes inactive when its series' episode recovers, i.e. its value
is back near the baseline it had before the alert (:mod:`aiops.incidents.episode`), not when the
detector goes quiet. Listeners hear ``opened``, ``updated`` (a new or re-fired anomaly) and ``resolved``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID, uuid4

import asyncpg

from aiops.incidents import store
from aiops.incidents.grouping import CallGraph, correlated_incident
from aiops.incidents.model import (
    Anomaly,
    Direction,
    Excerpt,
    Fingerprint,
    Incident,
    MaintenanceWindow,
    Silence,
)
from aiops.incidents.severity import severity
from aiops.incidents.store import IncidentEvent

AUTO_RESOLVER = "aiops"


@dataclass(frozen=True, slots=True)
class Observation:
    """One tracked series at one step, after its detector and alerting rules ran."""

    service: str
    operation: str
    signal: str
    value: float
    score: float
    anomalous: bool
    fired: Direction | None
    recovered: bool
    calm_steps: int
    baseline: float | None
    """The median of the lead-in the series' ongoing episode is judged against (None outside one)."""
    in_episode: bool
    recent: Excerpt

    @property
    def series(self) -> tuple[str, str, str]:
        """``(service, operation, signal)``."""
        return self.service, self.operation, self.signal


@dataclass(frozen=True, slots=True)
class LifecyclePolicy:
    """The knobs of the lifecycle (from :class:`aiops.settings.AiopsSettings`)."""

    step_ns: int
    correlation_window_ns: int
    excerpt_max_points: int


@dataclass(slots=True)
class StepReport:
    """What one step did, by incident id."""

    events: dict[UUID, IncidentEvent] = field(default_factory=dict)
    suppressed: list[Fingerprint] = field(default_factory=list)
    orphaned: list[tuple[str, str, str]] = field(default_factory=list)
    """Series in an episode with no active anomaly (silenced, or resolved by hand): their episode ends."""

    def ids(self, event: IncidentEvent) -> list[UUID]:
        """Incidents that had ``event`` in this step."""
        return [key for key, seen in self.events.items() if seen == event]


async def apply_step(
    conn: asyncpg.Connection,
    *,
    step_start_ns: int,
    observations: Sequence[Observation],
    graph: CallGraph,
    policy: LifecyclePolicy,
) -> StepReport:
    """Apply one step's observations to the unresolved incidents and write the changes."""
    step_end_ns = step_start_ns + policy.step_ns
    at = _datetime(step_start_ns)
    incidents = await store.unresolved_incidents(conn)
    silences = await store.list_silences(conn, active_at=at)
    windows = await store.list_maintenance_windows(conn, active_at=at)
    report = StepReport()
    changed: set[UUID] = set()
    by_fingerprint = {a.fingerprint: (i, a) for i in incidents for a in i.anomalies}
    observed = {o.series for o in observations}

    for incident in incidents:
        for anomaly in incident.anomalies:
            if anomaly.active and (anomaly.service, anomaly.operation, anomaly.signal) not in observed:
                # the series is no longer tracked (evicted): nothing could ever recover it
                anomaly.active = False
                changed.add(incident.id)

    for obs in observations:
        for incident in incidents:
            for anomaly in incident.anomalies:
                if anomaly.active and (anomaly.service, anomaly.operation, anomaly.signal) == obs.series:
                    _follow(anomaly, obs, step_start_ns, step_end_ns, policy.excerpt_max_points)
                    changed.add(incident.id)
        if obs.fired is None:
            continue
        fingerprint = Fingerprint(
            service=obs.service, operation=obs.operation, signal=obs.signal, direction=obs.fired
        )
        known = by_fingerprint.get(fingerprint.text)
        if known is not None:
            incident, anomaly = known
            anomaly.active, anomaly.calm_steps, anomaly.last_ns = True, 0, step_end_ns
            anomaly.occurrences += 1
            anomaly.peak_score = max(anomaly.peak_score, obs.score)
            report.events.setdefault(incident.id, "updated")
            changed.add(incident.id)
            continue
        anomaly = _new_anomaly(obs, fingerprint, step_start_ns, step_end_ns)
        joined = correlated_incident(
            incidents, service=obs.service, at_ns=step_start_ns, window_ns=policy.correlation_window_ns, graph=graph
        )
        if joined is None:
            if _suppressed(fingerprint, at, silences, windows):
                report.suppressed.append(fingerprint)
                continue
            joined = _open(anomaly, _datetime(step_end_ns))
            incidents.append(joined)
            report.events[joined.id] = "opened"
        else:
            joined.anomalies.append(anomaly)
            report.events.setdefault(joined.id, "updated")
        by_fingerprint[fingerprint.text] = (joined, anomaly)
        changed.add(joined.id)

    for incident in incidents:
        if incident.id not in changed:
            continue
        _summarise(incident)
        if not any(a.active for a in incident.anomalies):
            incident.status, incident.ended_ns = "resolved", incident.last_anomaly_ns
            incident.resolved_at, incident.resolved_by = _datetime(step_end_ns), AUTO_RESOLVER
            report.events[incident.id] = "resolved"
        await store.save_incident(conn, incident)
        if incident.id in report.events:
            await store.notify(conn, incident, report.events[incident.id])
    active = {
        (a.service, a.operation, a.signal)
        for i in incidents if i.status != "resolved" for a in i.anomalies if a.active
    }
    report.orphaned = [o.series for o in observations if o.in_episode and o.series not in active]
    return report


def _follow(anomaly: Anomaly, obs: Observation, step_start_ns: int, step_end_ns: int, max_points: int) -> None:
    anomaly.calm_steps = obs.calm_steps
    if obs.recovered:
        anomaly.active = False
    excerpt = anomaly.excerpt
    if len(excerpt.timestamps_ns) < max_points and (not excerpt.timestamps_ns or excerpt.timestamps_ns[-1] < step_start_ns):
        excerpt.timestamps_ns.append(step_start_ns)
        excerpt.values.append(_finite(obs.value))
    if obs.anomalous:
        anomaly.last_ns = step_end_ns
        anomaly.peak_score = max(anomaly.peak_score, obs.score)
        _update_peak(anomaly, obs.value)


def _new_anomaly(obs: Observation, fingerprint: Fingerprint, step_start_ns: int, step_end_ns: int) -> Anomaly:
    anomaly = Anomaly(
        fingerprint=fingerprint.text,
        service=obs.service,
        operation=obs.operation,
        signal=obs.signal,
        direction=fingerprint.direction,
        first_ns=step_start_ns,
        last_ns=step_end_ns,
        peak_score=obs.score,
        baseline=obs.baseline,
        peak_value=None,
        relative_change=None,
        active=True,
        calm_steps=0,
        occurrences=1,
        excerpt=obs.recent.model_copy(deep=True),
    )
    _update_peak(anomaly, obs.value)
    return anomaly


def _update_peak(anomaly: Anomaly, value: float) -> None:
    if not math.isfinite(value):
        return
    reference = anomaly.baseline if anomaly.baseline is not None else 0.0
    if anomaly.peak_value is None or abs(value - reference) > abs(anomaly.peak_value - reference):
        anomaly.peak_value = value
    if anomaly.baseline:
        anomaly.relative_change = (anomaly.peak_value - anomaly.baseline) / abs(anomaly.baseline)


def _open(anomaly: Anomaly, at: datetime) -> Incident:
    return Incident(
        id=uuid4(),
        status="open",
        title="",
        severity=0.0,
        services=[anomaly.service],
        opened_at=at,
        updated_at=at,
        started_ns=anomaly.first_ns,
        ended_ns=None,
        last_anomaly_ns=anomaly.last_ns,
        acknowledged_at=None,
        acknowledged_by=None,
        resolved_at=None,
        resolved_by=None,
        anomalies=[anomaly],
    )


def _summarise(incident: Incident) -> None:
    anomalies = incident.anomalies
    incident.services = sorted({a.service for a in anomalies})
    incident.started_ns = min(a.first_ns for a in anomalies)
    incident.last_anomaly_ns = max(a.last_ns for a in anomalies)
    incident.severity = severity(anomalies)
    top = max(anomalies, key=lambda a: (a.peak_score, -a.first_ns))
    title = f"{top.signal} {top.direction} on {top.service} {top.operation}"
    if len(anomalies) > 1:
        title += f" and {len(anomalies) - 1} more across {', '.join(incident.services)}"
    incident.title = title


def _suppressed(
    fingerprint: Fingerprint, at: datetime, silences: Sequence[Silence], windows: Sequence[MaintenanceWindow]
) -> bool:
    return any(s.matches(fingerprint) for s in silences) or any(w.covers(fingerprint.service, at) for w in windows)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, UTC)
