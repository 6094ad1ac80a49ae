"""What is worth telling about each subject, read from the state it lives in, and the events a change makes.

The facts of a subject are a small JSON object computed in SQL from the tables that own the state
(incidents, their RCA, approvals). ``notify_subjects`` keeps the facts last told; a subject whose
current facts differ is *changed*, and the difference names the events (``incident.opened``,
``incident.rca_ready``, ...). Reading state rather than listening for notifications means nothing
is missed when a process was down: the next scan sees the difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import asyncpg

SubjectKind = Literal["incident", "approval"]

# While the kill switch is on, a subject with a remediation that has not been applied yet carries who paused
# it and why; a subject with none carries nothing (so its facts, and its message, stay as they were).
_LIVE = "'proposed', 'preflight', 'dry_run', 'awaiting_approval', 'applying'"
_KILL_SWITCH = """coalesce((SELECT jsonb_build_object('kill_switch', jsonb_build_object(
                      'by', c.changed_by, 'reason', c.reason, 'at', c.changed_at))
                  FROM remediation_control c WHERE c.paused), '{}'::jsonb)"""

_INCIDENT_FACTS = f"""
    SELECT i.id::text AS subject_id, jsonb_build_object(
        'status', i.status, 'severity', round(i.severity::numeric, 2), 'title', i.title,
        'services', to_jsonb(i.services), 'opened_at', i.opened_at,
        'acknowledged_by', i.acknowledged_by, 'resolved_by', i.resolved_by,
        'rca', CASE WHEN r.status = 'done' AND jsonb_array_length(coalesce(r.result->'causes', '[]')) > 0
                    THEN jsonb_build_object(
                        'service', r.result->'causes'->0->>'service',
                        'category', r.result->'causes'->0->>'category',
                        'confidence', round((r.result->'causes'->0->>'confidence')::numeric, 2),
                        'summary', r.result->>'summary') END,
        'remediations', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                             'id', m.id, 'action', m.action, 'target', m.target, 'state', m.state,
                             'reason', left(m.state_reason, 200)) ORDER BY m.created_at, m.id), '[]')
                         FROM remediations m WHERE m.incident_id = i.id)
    ) || CASE WHEN EXISTS (SELECT 1 FROM remediations m WHERE m.incident_id = i.id AND m.state IN ({_LIVE}))
              THEN {_KILL_SWITCH} ELSE '{{}}'::jsonb END AS facts
    FROM incidents i LEFT JOIN rca_results r ON r.incident_id = i.id
"""

_APPROVAL_FACTS = f"""
    SELECT a.id AS subject_id, jsonb_build_object(
        'state', a.state, 'risk', a.risk, 'title', a.subject_summary, 'subject_kind', a.subject_kind,
        'subject_id', a.subject_id, 'link', a.subject_link, 'reason', a.state_reason,
        'min_approvals', a.min_approvals, 'expires_at', a.expires_at, 'requested_by', a.requested_by,
        'approvals', (SELECT count(*) FROM approval_decisions d WHERE d.approval_id = a.id AND d.decision = 'approve'),
        'decisions', (SELECT coalesce(jsonb_agg(jsonb_build_object('who', d.principal, 'decision', d.decision,
                                                                   'via', d.via, 'at', d.at) ORDER BY d.id), '[]')
                      FROM approval_decisions d WHERE d.approval_id = a.id),
        'opened_at', a.created_at
    ) || CASE WHEN a.subject_kind = 'remediation' AND EXISTS (
                  SELECT 1 FROM remediations m WHERE m.id::text = a.subject_id AND m.state IN ({_LIVE}))
              THEN {_KILL_SWITCH} ELSE '{{}}'::jsonb END AS facts
    FROM approvals a
"""
_FACTS = {"incident": (_INCIDENT_FACTS, "i.opened_at", "i.id::text"), "approval": (_APPROVAL_FACTS, "a.created_at", "a.id")}


@dataclass(frozen=True)
class Change:
    kind: SubjectKind
    subject_id: str
    facts: dict[str, Any]
    previous: dict[str, Any] | None

    @property
    def events(self) -> list[str]:
        if self.kind == "incident":
            return incident_events(self.previous, self.facts)
        return approval_events(self.previous, self.facts)


def incident_events(previous: dict[str, Any] | None, facts: dict[str, Any]) -> list[str]:
    events = []
    if previous is None:
        events.append("incident.opened")
    before = previous or {}
    if facts["status"] != before.get("status", "open"):
        events.append(f"incident.{facts['status']}")
    if facts.get("rca") and not before.get("rca"):
        events.append("incident.rca_ready")
    old = {r["id"]: r["state"] for r in before.get("remediations") or []}
    for remediation in facts.get("remediations") or []:
        if old.get(remediation["id"]) != remediation["state"]:
            events.append(f"remediation.{remediation['state']}")
    return events


def approval_events(previous: dict[str, Any] | None, facts: dict[str, Any]) -> list[str]:
    if previous is None:
        return ["approval.requested"] + ([f"approval.{facts['state']}"] if facts["state"] != "pending" else [])
    if facts["state"] != previous["state"]:
        return [f"approval.{facts['state']}"]
    if len(facts["decisions"]) != len(previous["decisions"]):
        return ["approval.decision"]
    return []


async def changed(conn: asyncpg.Connection, kind: SubjectKind, *, lookback_s: float, limit: int = 200) -> list[Change]:
    """Subjects created within ``lookback_s`` whose facts differ from those last told, oldest first."""
    query, created, _ = _FACTS[kind]
    rows = await conn.fetch(
        f"""WITH f AS ({query} WHERE {created} > now() - make_interval(secs => $1))
            SELECT f.subject_id, f.facts, s.facts AS previous FROM f
            LEFT JOIN notify_subjects s ON s.kind = $3 AND s.subject_id = f.subject_id
            WHERE s.facts IS DISTINCT FROM f.facts ORDER BY f.facts->>'opened_at' LIMIT $2""",
        lookback_s, limit, kind,
    )
    return [Change(kind, r["subject_id"], r["facts"], r["previous"]) for r in rows]


async def claim(conn: asyncpg.Connection, change: Change) -> Change | None:
    """Inside a transaction: lock the subject, re-read its facts and record them as told.

    Returns the change as it stands under the lock, or None when another process already told it.
    """
    await conn.execute(
        """INSERT INTO notify_subjects (kind, subject_id, facts) VALUES ($1, $2, 'null'::jsonb)
           ON CONFLICT DO NOTHING""",
        change.kind, change.subject_id,
    )
    previous = await conn.fetchval(
        "SELECT facts FROM notify_subjects WHERE kind = $1 AND subject_id = $2 FOR UPDATE",
        change.kind, change.subject_id,
    )
    facts = await current_facts(conn, change.kind, change.subject_id)
    if facts is None or facts == previous:
        return None
    await conn.execute(
        "UPDATE notify_subjects SET facts = $3, updated_at = now() WHERE kind = $1 AND subject_id = $2",
        change.kind, change.subject_id, facts,
    )
    return Change(change.kind, change.subject_id, facts, previous)


async def current_facts(conn: asyncpg.Connection, kind: SubjectKind, subject_id: str) -> dict[str, Any] | None:
    query, _, key = _FACTS[kind]
    return await conn.fetchval(f"SELECT facts FROM ({query} WHERE {key} = $1) f", subject_id)


async def told_facts(conn: asyncpg.Connection, kind: SubjectKind, subject_ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT subject_id, facts FROM notify_subjects WHERE kind = $1 AND subject_id = ANY($2::text[])",
        kind, subject_ids,
    )
    return {r["subject_id"]: r["facts"] for r in rows if r["facts"] is not None}
