"""The approval object against a real control plane: rules, outcome handlers, expiry, API, events, audit."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from agents.sdk import BrokerSettings
from control_plane import approvals
from control_plane.approvals import Approval, create_approval, decide, expire_due, register_outcome_handler
from control_plane.db import connect
from control_plane.errors import Conflict, Forbidden, InvalidInput
from control_plane.settings import Settings
from tests.support.system import client, fast_settings, make_token, wait_for


@dataclass(frozen=True)
class Who:
    name: str
    role: str


ALICE, BOB, CAROL = Who("alice", "supervisor"), Who("bob", "supervisor"), Who("carol", "admin")


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await connect(database_url)
    yield connection
    await connection.close()


@pytest.fixture
def outcomes() -> list[tuple[str, str]]:
    """Outcomes seen by a ``test_subject`` handler; the handler writes a row in the deciding transaction."""
    seen: list[tuple[str, str]] = []

    async def handler(conn: asyncpg.Connection, approval: Approval) -> None:
        if approval.subject.id == "explodes":
            raise RuntimeError("owner failed")
        await conn.execute("INSERT INTO audit_log (actor, action, target) VALUES ('owner', $1, $2)",
                           f"subject.{approval.state}", approval.subject.id)
        seen.append((approval.subject.id, approval.state))

    register_outcome_handler("test_subject", handler)
    return seen


async def _new(conn: asyncpg.Connection, subject_id: str = "s1", **overrides: object) -> Approval:
    values: dict[str, object] = dict(
        subject_kind="test_subject", subject_id=subject_id, summary="restart api", link="/x", risk="medium",
        requested_by="alice", expires_at=datetime.now(UTC) + timedelta(hours=1),
    )
    values.update(overrides)
    return await create_approval(conn, **values)  # type: ignore[arg-type]


async def test_approve_runs_the_owner_handler_in_the_same_transaction(
    conn: asyncpg.Connection, outcomes: list[tuple[str, str]]
) -> None:
    approval = await _new(conn)
    assert approval.state == "pending" and approval.id.startswith("apr_") and len(approval.id) > 20
    decided = await decide(conn, approval.id, BOB, "approve", "api", "looks right")
    assert decided.state == "approved" and decided.decided_at is not None
    assert [(d.who, d.decision, d.via, d.comment) for d in decided.decisions] == [("bob", "approve", "api", "looks right")]
    assert outcomes == [("s1", "approved")]
    assert await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'subject.approved'") == 1

    failing = await _new(conn, "explodes")
    with pytest.raises(RuntimeError, match="owner failed"):
        await decide(conn, failing.id, BOB, "approve", "telegram")
    again = await approvals.get_approval(conn, failing.id)
    assert again.state == "pending" and again.decisions == []  # the decision rolled back with the owner


async def test_a_decision_inside_the_callers_transaction_commits_with_it(conn: asyncpg.Connection) -> None:
    tx = conn.transaction()
    await tx.start()
    approval = await _new(conn, "atomic")
    await tx.rollback()
    assert await conn.fetchval("SELECT count(*) FROM approvals") == 0
    approval = await _new(conn, "atomic")
    assert (await approvals.get_approval(conn, approval.id)).subject.id == "atomic"


async def test_prevent_self_roles_principals_and_min_approvals(
    conn: asyncpg.Connection, outcomes: list[tuple[str, str]]
) -> None:
    approval = await _new(conn, min_approvals=2)
    with pytest.raises(Forbidden, match="prevent_self"):
        await decide(conn, approval.id, ALICE, "approve", "api")
    with pytest.raises(Forbidden, match="may not decide"):
        await decide(conn, approval.id, Who("vic", "viewer"), "approve", "api")
    first = await decide(conn, approval.id, BOB, "approve", "console")
    assert first.state == "pending" and first.approvals == 1 and outcomes == []
    assert (await decide(conn, approval.id, BOB, "approve", "telegram")).decisions == first.decisions  # idempotent
    with pytest.raises(Conflict, match="already chose approve"):
        await decide(conn, approval.id, BOB, "refuse", "api")
    second = await decide(conn, approval.id, CAROL, "approve", "api")
    assert second.state == "approved" and outcomes == [("s1", "approved")]
    with pytest.raises(Conflict, match="already approved"):
        await decide(conn, approval.id, Who("dave", "admin"), "refuse", "api")

    allowed_self = await _new(conn, "mine", prevent_self=False)
    assert (await decide(conn, allowed_self.id, ALICE, "approve", "api")).state == "approved"

    named = await _new(conn, "named", roles=(), principals=("carol",))
    with pytest.raises(Forbidden, match="not an approver"):
        await decide(conn, named.id, BOB, "approve", "api")
    refused = await decide(conn, named.id, CAROL, "refuse", "telegram", "not now")
    assert refused.state == "refused" and "refused by carol" in refused.state_reason
    assert outcomes[-1] == ("named", "refused")


async def test_bad_approvals_are_refused_naming_the_field(conn: asyncpg.Connection) -> None:
    cases = {
        "risk": dict(risk="enormous"),
        "expires_at": dict(expires_at=datetime.now(UTC) - timedelta(seconds=1)),
        "approvers.roles": dict(roles=("viewer",)),
        "approvers": dict(roles=(), principals=()),
        "min_approvals": dict(roles=(), principals=("bob",), min_approvals=2),
        "subject.summary": dict(summary=""),
    }
    for field, overrides in cases.items():
        with pytest.raises(InvalidInput) as caught:
            await _new(conn, **overrides)
        assert caught.value.field == field


async def test_expiry_ends_pending_approvals_and_later_decisions_conflict(
    conn: asyncpg.Connection, outcomes: list[tuple[str, str]]
) -> None:
    approval = await _new(conn, "late", expires_at=datetime.now(UTC) + timedelta(milliseconds=300))
    keep = await _new(conn, "keep")

    async def past_expiry() -> bool:
        return await conn.fetchval("SELECT now() > $1::timestamptz", approval.expires_at)

    await wait_for(past_expiry, timeout_s=5, what="the expiry time")
    with pytest.raises(Conflict, match="expired"):
        await decide(conn, approval.id, BOB, "approve", "api")
    assert [a.id for a in await expire_due(conn)] == [approval.id]
    assert (await approvals.get_approval(conn, approval.id)).state == "expired"
    assert (await approvals.get_approval(conn, keep.id)).state == "pending"
    assert outcomes == [("late", "expired")]
    with pytest.raises(Conflict, match="expired"):
        await decide(conn, approval.id, BOB, "approve", "api")
    cancelled = await approvals.cancel(conn, keep.id, by="owner", reason="run cancelled")
    assert cancelled.state == "cancelled" and outcomes == [("late", "expired")]


@pytest.fixture
def settings(database_url: str, broker_settings: BrokerSettings) -> Settings:
    return fast_settings(database_url, broker_settings, approval_expiry_interval_s=0.1)


async def test_api_lists_decides_streams_and_audits(
    base_url: str, admin: httpx.AsyncClient, database_url: str, conn: asyncpg.Connection,
    outcomes: list[tuple[str, str]],
) -> None:
    approval = await _new(conn, "via-api", requested_by="someone-else")
    streamed: list[dict[str, object]] = []
    async with admin.stream("GET", "/api/v1/events") as events:
        lines = events.aiter_lines()
        assert await anext(lines) == ": connected"
        async with client(base_url, await make_token(database_url, "viewer")) as viewer:
            assert (await viewer.get(f"/api/v1/approvals/{approval.id}")).json()["state"] == "pending"
            assert (await viewer.post(f"/api/v1/approvals/{approval.id}/approve")).status_code == 403
        async with client(base_url, await make_token(database_url, "supervisor", "sup")) as sup:
            done = await sup.post(f"/api/v1/approvals/{approval.id}/approve", json={"comment": "go"})
            assert done.status_code == 200, done.text
            body = done.json()
            assert body["state"] == "approved" and body["decisions"][0]["who"] == "sup"
            assert body["decisions"][0]["via"] == "api" and body["subject"]["link"] == "/x"
            again = await sup.post(f"/api/v1/approvals/{approval.id}/approve")
            assert again.status_code == 200 and len(again.json()["decisions"]) == 1
            bad = await sup.post(f"/api/v1/approvals/{approval.id}/refuse", json={"comment": 5})
            assert bad.status_code == 422 and bad.json()["error"]["field"] == "body.comment"
        expiring = await _new(conn, "soon", expires_at=datetime.now(UTC) + timedelta(milliseconds=300))

        async def expired() -> bool:
            return (await admin.get(f"/api/v1/approvals/{expiring.id}")).json()["state"] == "expired"

        await wait_for(expired, timeout_s=10, what="the expiry loop")
        late = await admin.post(f"/api/v1/approvals/{expiring.id}/approve")
        assert late.status_code == 409 and late.json()["error"]["field"] == "approval_id"
        assert (await admin.get("/api/v1/approvals/apr_nothing")).status_code == 404

        async for line in lines:
            if line.startswith("data: ") and '"kind": "approval"' in line:
                streamed.append(json.loads(line.removeprefix("data: ")))
                if {s["event"] for s in streamed} >= {"approved", "expired"}:
                    break

    # the first approval's "created" was committed just before the stream subscribed: the stream may or
    # may not carry it (events are fanned out in batches), so only what came after is compared
    seen = [(s["approval_id"], s["event"]) for s in streamed]
    assert [e for e in seen if e != (approval.id, "created")] == [
        (approval.id, "approved"), (expiring.id, "created"), (expiring.id, "expired")]
    page = (await admin.get("/api/v1/approvals", params={"state": "approved"})).json()
    assert [a["id"] for a in page["items"]] == [approval.id]
    listed = (await admin.get("/api/v1/approvals", params={"subject_kind": "test_subject", "limit": 1})).json()
    rest = (await admin.get("/api/v1/approvals", params={"subject_kind": "test_subject", "cursor": listed["next_cursor"]})).json()
    assert {a["id"] for a in listed["items"] + rest["items"]} == {approval.id, expiring.id}
    assert (await admin.get("/api/v1/approvals", params={"state": "maybe"})).json()["error"]["field"] == "query.state"
    actions = await conn.fetch("SELECT action, actor FROM audit_log WHERE target = $1 ORDER BY id", approval.id)
    assert [(a["action"], a["actor"]) for a in actions] == [("approval.create", "someone-else"), ("approval.approve", "sup")]
    assert outcomes == [("via-api", "approved"), ("soon", "expired")]
