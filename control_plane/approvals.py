"""Approvals: one object for "a person must say yes first", answerable from any surface.

A subject owner (a remediation, a workflow step) calls :func:`create_approval` inside its own
transaction; people answer with :func:`decide` (the API, the console and Telegram all call it, naming
their channel in ``via``); :func:`expire_due` ends what nobody answered in time. Every change is
audited and notified on ``devart_events`` (``kind: approval``) in the transaction that makes it.

When an approval reaches ``approved``, ``refused`` or ``expired``, the handler registered for its
subject kind (:func:`register_outcome_handler`) runs in that same transaction, so the owner's
reaction (the remediation moves on, the workflow step ends) commits with the decision or not at all.

Lock order: the subject, then the approval. Owners lock their subject (a workflow run) before they
create or cancel its approval; a decision or an expiry first takes the subject's lock through the
``lock`` the owner registered, then the approval's. Taken the other way round, a decision and a
cancel of the same run would each hold one lock and wait for the other.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, Protocol

import asyncpg
from pydantic import BaseModel, Field

from control_plane.audit import audit
from control_plane.errors import Conflict, Forbidden, InvalidInput, NotFound
from control_plane.loops import LoopService

ApprovalState = Literal["pending", "approved", "refused", "expired", "cancelled"]
APPROVAL_STATES: tuple[ApprovalState, ...] = ("pending", "approved", "refused", "expired", "cancelled")
Risk = Literal["low", "medium", "high", "critical"]
RISKS: tuple[Risk, ...] = ("low", "medium", "high", "critical")
Decision = Literal["approve", "refuse"]
Via = Literal["api", "console", "telegram"]
VIAS: tuple[Via, ...] = ("api", "console", "telegram")
DECIDING_ROLES = frozenset({"supervisor", "admin"})
"""Only these roles may ever decide; ``approver_roles`` is a subset of them."""
MAX_TTL = timedelta(days=30)
ID_PREFIX = "apr_"
EVENTS_CHANNEL = "devart_events"
_EXPIRE_BATCH = 100


class Approver(Protocol):
    """Who decides: a :class:`control_plane.auth.Principal`, or a Telegram user mapped to one."""

    @property
    def name(self) -> str: ...

    @property
    def role(self) -> str: ...


class Subject(BaseModel):
    kind: str = Field(description="what is approved: remediation, workflow_step, ...")
    id: str = Field(description="the subject's id in its owner's terms")
    summary: str = Field(description="one line a person can decide on")
    link: str = Field(description="where to see the subject (an API path or console URL)")


class Approvers(BaseModel):
    roles: list[str] = Field(description="any principal with one of these roles may decide")
    principals: list[str] = Field(description="these named principals may decide (whatever their role)")


class ApprovalDecision(BaseModel):
    who: str
    role: str
    decision: Decision
    via: Via
    at: datetime
    comment: str


class Approval(BaseModel):
    id: str = Field(description="opaque id")
    subject: Subject
    risk: Risk
    approvers: Approvers
    min_approvals: int
    prevent_self: bool = Field(description="the requester may not decide")
    requested_by: str
    state: ApprovalState
    state_reason: str
    created_at: datetime
    updated_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decisions: list[ApprovalDecision] = Field(description="every decision, oldest first")

    @property
    def approvals(self) -> int:
        return sum(1 for d in self.decisions if d.decision == "approve")


OutcomeHandler = Callable[[asyncpg.Connection, Approval], Awaitable[None]]
SubjectLock = Callable[[asyncpg.Connection, str], Awaitable[None]]
_HANDLERS: dict[str, OutcomeHandler] = {}
_LOCKS: dict[str, SubjectLock] = {}


def register_outcome_handler(subject_kind: str, handler: OutcomeHandler, *, lock: SubjectLock | None = None) -> None:
    """Run ``handler(conn, approval)`` in the transaction where an approval of ``subject_kind``
    becomes approved, refused or expired (not cancelled: only the owner cancels). An exception in
    the handler rolls the decision back. ``lock(conn, subject_id)`` takes the owner's lock on the
    subject; a decision or an expiry calls it before it locks the approval (the module's lock
    order). Registering a kind twice replaces both."""
    _HANDLERS[subject_kind] = handler
    if lock is None:
        _LOCKS.pop(subject_kind, None)
    else:
        _LOCKS[subject_kind] = lock


async def create_approval(
    conn: asyncpg.Connection,
    *,
    subject_kind: str,
    subject_id: str,
    summary: str,
    link: str = "",
    risk: Risk,
    requested_by: str,
    expires_at: datetime,
    roles: Sequence[str] = ("supervisor", "admin"),
    principals: Sequence[str] = (),
    min_approvals: int = 1,
    prevent_self: bool = True,
    remote: str = "",
) -> Approval:
    """A pending approval, created, audited and notified in the caller's transaction (if any)."""
    _check_new(subject_kind, subject_id, summary, link, risk, expires_at, roles, principals, min_approvals)
    approval_id = ID_PREFIX + secrets.token_urlsafe(16)
    async with conn.transaction():
        await conn.execute(
            """INSERT INTO approvals (id, subject_kind, subject_id, subject_summary, subject_link, risk,
                   approver_roles, approver_principals, min_approvals, prevent_self, requested_by, expires_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
            approval_id, subject_kind, subject_id, summary, link, risk, sorted(set(roles)), sorted(set(principals)),
            min_approvals, prevent_self, requested_by, expires_at,
        )
        approval = await get_approval(conn, approval_id)
        await audit(conn, actor=requested_by, action="approval.create", target=approval_id,
                    detail={"subject_kind": subject_kind, "subject_id": subject_id, "risk": risk}, remote=remote)
        await _notify(conn, approval, "created")
    return approval


def _check_new(
    kind: str, subject_id: str, summary: str, link: str, risk: str, expires_at: datetime, roles: Sequence[str],
    principals: Sequence[str], min_approvals: int,
) -> None:
    if not kind.strip() or len(kind) > 100:
        raise InvalidInput("subject kind must be 1-100 characters", field="subject.kind")
    if not subject_id.strip() or len(subject_id) > 200:
        raise InvalidInput("subject id must be 1-200 characters", field="subject.id")
    if not summary.strip() or len(summary) > 1000:
        raise InvalidInput("summary must be 1-1000 characters", field="subject.summary")
    if len(link) > 2000:
        raise InvalidInput("link must be at most 2000 characters", field="subject.link")
    if risk not in RISKS:
        raise InvalidInput(f"risk must be one of {', '.join(RISKS)}", field="risk")
    if expires_at.tzinfo is None:
        raise InvalidInput("expires_at needs a time zone", field="expires_at")
    now = datetime.now(UTC)
    if not now < expires_at <= now + MAX_TTL:
        raise InvalidInput(f"expires_at must be in the future and within {MAX_TTL.days} days", field="expires_at")
    bad = sorted(set(roles) - DECIDING_ROLES)
    if bad:
        raise InvalidInput(f"approver roles must be among {sorted(DECIDING_ROLES)}, not {bad}", field="approvers.roles")
    if not roles and not principals:
        raise InvalidInput("name at least one approver role or principal", field="approvers")
    if any(not p.strip() or len(p) > 100 for p in principals):
        raise InvalidInput("principal names must be 1-100 characters", field="approvers.principals")
    if not 1 <= min_approvals <= 10:
        raise InvalidInput("min_approvals must be between 1 and 10", field="min_approvals")
    if not roles and min_approvals > len(set(principals)):
        raise InvalidInput("min_approvals exceeds the named principals", field="min_approvals")


async def _lock(conn: asyncpg.Connection, approval_id: str) -> Approval:
    """The approval locked for a decision or an expiry, its subject locked first (the lock order)."""
    subject = await conn.fetchrow("SELECT subject_kind, subject_id FROM approvals WHERE id = $1", approval_id)
    if subject is not None and subject["subject_kind"] in _LOCKS:
        await _LOCKS[subject["subject_kind"]](conn, subject["subject_id"])
    return await get_approval(conn, approval_id, lock=True)


async def get_approval(conn: asyncpg.Connection, approval_id: str, *, lock: bool = False) -> Approval:
    row = await conn.fetchrow(
        f"SELECT * FROM approvals WHERE id = $1{' FOR UPDATE' if lock else ''}", approval_id
    )
    if row is None:
        raise NotFound(f"no approval {approval_id}", field="approval_id")
    decisions = await conn.fetch(
        "SELECT * FROM approval_decisions WHERE approval_id = $1 ORDER BY id", approval_id
    )
    return _approval(row, decisions)


async def list_approvals(
    conn: asyncpg.Connection, *, state: ApprovalState | None = None, subject_kind: str | None = None,
    subject_id: str | None = None, limit: int = 50, cursor: str | None = None,
) -> tuple[list[Approval], str | None]:
    """Newest first; returns the page and the next page's cursor (None at the end)."""
    after_at, after_id = _decode_cursor(cursor) if cursor else (None, None)
    rows = await conn.fetch(
        """SELECT * FROM approvals
           WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR subject_kind = $2)
             AND ($3::text IS NULL OR subject_id = $3)
             AND ($4::timestamptz IS NULL OR (created_at, id) < ($4, $5::text))
           ORDER BY created_at DESC, id DESC LIMIT $6""",
        state, subject_kind, subject_id, after_at, after_id, limit + 1,
    )
    page_rows = rows[:limit]
    decisions = await conn.fetch(
        "SELECT * FROM approval_decisions WHERE approval_id = ANY($1::text[]) ORDER BY id",
        [r["id"] for r in page_rows],
    )
    by_id: dict[str, list[asyncpg.Record]] = {}
    for d in decisions:
        by_id.setdefault(d["approval_id"], []).append(d)
    page = [_approval(r, by_id.get(r["id"], [])) for r in page_rows]
    next_cursor = _encode_cursor(page[-1].created_at, page[-1].id) if len(rows) > limit else None
    return page, next_cursor


async def decide(
    conn: asyncpg.Connection, approval_id: str, principal: Approver, decision: Decision, via: Via,
    comment: str = "", *, remote: str = "",
) -> Approval:
    """Record ``principal``'s decision; the same decision again changes nothing.

    Raises :class:`Forbidden` when the principal is not an approver or is the requester under
    ``prevent_self``, :class:`Conflict` when the approval has expired or was already decided
    otherwise (or when the principal reverses their own decision).
    """
    if decision not in ("approve", "refuse"):
        raise InvalidInput("decision must be approve or refuse", field="decision")
    if via not in VIAS:
        raise InvalidInput(f"via must be one of {', '.join(VIAS)}", field="via")
    if len(comment) > 2000:
        raise InvalidInput("comment must be at most 2000 characters", field="body.comment")
    async with conn.transaction():
        approval = await _lock(conn, approval_id)
        mine = next((d for d in approval.decisions if d.who == principal.name), None)
        if mine is not None:
            if mine.decision == decision:
                return approval  # a double tap, a retried request: idempotent
            raise Conflict(f"{principal.name} already chose {mine.decision} on this approval", field="decision")
        if approval.state == "expired" or (approval.state == "pending" and approval.expires_at <= datetime.now(UTC)):
            raise Conflict(f"approval {approval_id} expired at {approval.expires_at.isoformat()}", field="approval_id")
        if approval.state != "pending":
            raise Conflict(f"approval {approval_id} is already {approval.state}", field="approval_id")
        _check_approver(approval, principal)
        await conn.execute(
            """INSERT INTO approval_decisions (approval_id, principal, role, decision, via, comment)
               VALUES ($1, $2, $3, $4, $5, $6)""",
            approval_id, principal.name, principal.role, decision, via, comment,
        )
        await audit(conn, actor=principal.name, action=f"approval.{decision}", target=approval_id,
                    detail={"via": via, "comment": comment, "subject_kind": approval.subject.kind,
                            "subject_id": approval.subject.id}, remote=remote)
        approval = await get_approval(conn, approval_id)
        outcome: ApprovalState | None = None
        if decision == "refuse":
            outcome, reason = "refused", f"refused by {principal.name} via {via}"
        elif approval.approvals >= approval.min_approvals:
            outcome, reason = "approved", f"approved by {', '.join(d.who for d in approval.decisions)}"
        if outcome is None:
            await _notify(conn, approval, "decision")
            return approval
        return await _finish(conn, approval, outcome, reason)


def _check_approver(approval: Approval, principal: Approver) -> None:
    if principal.role not in DECIDING_ROLES:
        raise Forbidden(f"role '{principal.role}' may not decide approvals", field="principal")
    if approval.prevent_self and principal.name == approval.requested_by:
        raise Forbidden("the requester may not decide their own approval (prevent_self)", field="principal")
    if principal.role not in approval.approvers.roles and principal.name not in approval.approvers.principals:
        raise Forbidden(f"{principal.name} is not an approver of {approval.id}", field="principal")


async def cancel(conn: asyncpg.Connection, approval_id: str, *, by: str, reason: str) -> Approval:
    """The subject's owner withdraws a pending approval (no outcome handler runs: the owner knows)."""
    async with conn.transaction():
        approval = await get_approval(conn, approval_id, lock=True)
        if approval.state == "cancelled":
            return approval
        if approval.state != "pending":
            raise Conflict(f"approval {approval_id} is already {approval.state}", field="approval_id")
        await conn.execute(
            """UPDATE approvals SET state = 'cancelled', state_reason = $2, decided_at = now(), updated_at = now()
               WHERE id = $1""",
            approval_id, reason[:500],
        )
        await audit(conn, actor=by, action="approval.cancel", target=approval_id, detail={"reason": reason})
        approval = await get_approval(conn, approval_id)
        await _notify(conn, approval, "cancelled")
    return approval


async def expire_due(conn: asyncpg.Connection, *, limit: int = _EXPIRE_BATCH) -> list[Approval]:
    """Expire pending approvals past their time (each in its own transaction, with its handler)."""
    ids = await conn.fetch(
        "SELECT id FROM approvals WHERE state = 'pending' AND expires_at <= now() ORDER BY expires_at LIMIT $1", limit
    )
    expired = []
    for row in ids:
        async with conn.transaction():
            approval = await _lock(conn, row["id"])
            if approval.state != "pending":
                continue
            await audit(conn, actor="approval-expiry", action="approval.expire", target=approval.id)
            expired.append(await _finish(conn, approval, "expired", f"nobody decided by {approval.expires_at.isoformat()}"))
    return expired


async def _finish(conn: asyncpg.Connection, approval: Approval, state: ApprovalState, reason: str) -> Approval:
    await conn.execute(
        "UPDATE approvals SET state = $2, state_reason = $3, decided_at = now(), updated_at = now() WHERE id = $1",
        approval.id, state, reason[:500],
    )
    approval = await get_approval(conn, approval.id)
    handler = _HANDLERS.get(approval.subject.kind)
    if handler is not None:
        await handler(conn, approval)
    await _notify(conn, approval, state)
    return approval


async def _notify(conn: asyncpg.Connection, approval: Approval, event: str) -> None:
    payload = {
        "kind": "approval", "event": event, "approval_id": approval.id, "state": approval.state,
        "subject_kind": approval.subject.kind, "subject_id": approval.subject.id, "risk": approval.risk,
        "approvals": approval.approvals, "min_approvals": approval.min_approvals,
    }
    await conn.execute("SELECT pg_notify($1, $2)", EVENTS_CHANNEL, json.dumps(payload))


def _approval(row: asyncpg.Record, decisions: Sequence[asyncpg.Record]) -> Approval:
    return Approval(
        id=row["id"],
        subject=Subject(kind=row["subject_kind"], id=row["subject_id"], summary=row["subject_summary"],
                        link=row["subject_link"]),
        risk=row["risk"],
        approvers=Approvers(roles=list(row["approver_roles"]), principals=list(row["approver_principals"])),
        min_approvals=row["min_approvals"], prevent_self=row["prevent_self"], requested_by=row["requested_by"],
        state=row["state"], state_reason=row["state_reason"], created_at=row["created_at"],
        updated_at=row["updated_at"], expires_at=row["expires_at"], decided_at=row["decided_at"],
        decisions=[
            ApprovalDecision(who=d["principal"], role=d["role"], decision=d["decision"], via=d["via"], at=d["at"],
                             comment=d["comment"])
            for d in decisions
        ],
    )


def _encode_cursor(at: datetime, approval_id: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([at.isoformat(), approval_id]).encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, approval_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        return datetime.fromisoformat(at), str(approval_id)
    except (ValueError, TypeError) as exc:
        raise InvalidInput("cursor is not one this API returned", field="query.cursor") from exc


class ApprovalExpiry(LoopService):
    """Expires pending approvals past their ``expires_at``, every ``interval_s``."""

    name = "approval-expiry"

    def __init__(self, pool: asyncpg.Pool, *, interval_s: float) -> None:
        super().__init__(interval_s)
        self._pool = pool

    async def run_once(self) -> None:
        async with self._pool.acquire() as conn:
            while len(await expire_due(conn)) == _EXPIRE_BATCH:
                pass
