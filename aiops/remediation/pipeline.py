"""The remediation pipeline: every remediation moves one persisted step at a time.

``proposed -> preflight -> dry_run -> awaiting_approval -> applying -> verifying -> successful |
failed | inconclusive``, or ``refused | expired | error | suggested`` with the reason. Each step runs
in a transaction holding the remediation's row lock (``FOR UPDATE SKIP LOCKED``, so several workers
may run), and commits its result with the state change, the step row, the audit row and the event.

Applying is two transactions. The first re-checks the kill switch and the limits under one advisory
lock (so a burst cannot overrun them) and records ``apply_started_at``; the second makes the change
and records ``applied_at``. A worker that dies between the two leaves ``apply_started_at`` without
``applied_at``: a devart action (its change commits with ``applied_at`` or not at all) is applied
then, a Kubernetes one (whose change may have happened) ends in ``error`` and is never applied
twice.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import asyncpg
from pydantic import ValidationError

from aiops.remediation import store, verify
from aiops.remediation.actions import CATALOGUE, Action, Context, DevartOps, DryRunUnsupported, Plan, Refused
from aiops.remediation.kube import Kube, KubeError
from aiops.remediation.policy import Decision, Policy
from aiops.remediation.settings import RemediationSettings
from aiops.traces.source import SpanSource

log = logging.getLogger("devart.remediation")

WORKER = "remediation-worker"
POLICY = "policy"
_GATE_LOCK = "devart.remediation.gate"
_APPLY_LEASE_S = 5.0
"""Between the gate and the apply the row is not due: no second worker takes it in that gap."""
_AGENT_SERVICE = "devart-agent-"
_RCA_ACTIONS = {"requeue": "requeue_dead"}


class RemediationError(ValueError):
    """A proposal the catalogue or the policy refuses; ``field`` names the input at fault."""

    def __init__(self, message: str, *, field: str | None = None, status: int = 422) -> None:
        super().__init__(message)
        self.message, self.field, self.status = message, field, status


class ApprovalRequests(Protocol):
    """Creates the approval of a remediation in the caller's transaction; returns its id."""

    async def request(self, conn: asyncpg.Connection, *, remediation_id: UUID, summary: str, link: str, risk: str,
                      requested_by: str, expires_at: datetime, roles: tuple[str, ...], principals: tuple[str, ...],
                      min_approvals: int) -> str: ...


class Pipeline:
    """Proposes remediations from stored RCA results and advances every remediation that is due."""

    def __init__(
        self, pool: asyncpg.Pool, *, policy: Policy, settings: RemediationSettings, approvals: ApprovalRequests,
        kube: Kube | None = None, ops: DevartOps | None = None, source: SpanSource | None = None,
    ) -> None:
        self._pool = pool
        self.policy = policy
        self.settings = settings
        self._approvals = approvals
        self._kube = kube
        self._ops = ops
        self._source = source

    def close(self) -> None:
        if self._kube is not None:
            self._kube.close()

    # proposals

    async def propose(
        self, conn: asyncpg.Connection, *, action: str, target: str, namespace: str = "",
        input: dict[str, Any] | None = None, reason: str, origin: str, proposed_by: str,
        incident_id: UUID | None = None, category: str | None = None, confidence: float | None = None,
    ) -> tuple[UUID, bool]:
        """Validate and store a proposal; returns ``(id, created)``. Raises :class:`RemediationError`."""
        chosen = CATALOGUE.get(action)
        if chosen is None:
            raise RemediationError(f"unknown action {action!r}; see GET /api/v1/remediation/actions", field="body.action")
        try:
            chosen.Input.model_validate(input or {})
        except ValidationError as exc:
            first = exc.errors()[0]
            path = ".".join(str(p) for p in first["loc"])
            raise RemediationError(f"input.{path}: {first['msg']}", field=f"body.input.{path}".rstrip(".")) from exc
        if chosen.kind == "kubernetes" and not namespace and action not in ("cordon", "uncordon"):
            raise RemediationError("Kubernetes actions need a namespace", field="body.namespace")
        if chosen.kind == "kubernetes" and namespace and not self.policy.namespace_allowed(namespace):
            raise RemediationError(f"namespace {namespace!r} is not in the policy's allow-list", field="body.namespace",
                                   status=403)
        decision = self.policy.decide(action, namespace, target)
        if decision.mode == "off":
            raise RemediationError(f"policy {decision.rule} turns {action} off for {target}", field="body.action",
                                   status=403)
        mode, why = decision.mode, f"policy {decision.rule}: {decision.mode}"
        if origin != "rca" and mode == "suggest":
            mode, why = "approve", f"proposed by {proposed_by}; policy {decision.rule} is suggest, so it needs approval"
        if mode == "auto" and origin != "manual" and (confidence is None or confidence < decision.min_confidence):
            mode, why = "approve", (f"confidence {confidence if confidence is not None else 'unknown'} is below "
                                    f"{decision.min_confidence} for auto; needs approval")
        async with conn.transaction():
            return await store.propose(
                conn, action=action, target=target, namespace=namespace, input=input or {},
                reason=f"{reason} ({why})", origin=origin, proposed_by=proposed_by, mode=mode,  # type: ignore[arg-type]
                incident_id=incident_id, category=category, confidence=confidence,
            )

    async def propose_from_rca(self) -> int:
        """One proposal per analysed, unresolved incident without one: the first recommendation of its top
        cause that the policy does not turn off (the escalation ladder proposes the rest)."""
        created = 0
        async with self._pool.acquire() as conn:
            rows = await conn.fetch(
                """SELECT r.incident_id, r.result::text AS result FROM rca_results r
                   JOIN incidents i ON i.id = r.incident_id
                   WHERE r.status = 'done' AND i.status <> 'resolved'
                     AND NOT EXISTS (SELECT 1 FROM remediations m WHERE m.incident_id = r.incident_id)
                   ORDER BY r.updated_at LIMIT 100"""
            )
            for row in rows:
                causes = json.loads(row["result"]).get("causes") or []
                if not causes:
                    continue
                top = causes[0]
                for action, target, namespace, data in await self._candidates(conn, top):
                    try:
                        _, made = await self.propose(
                            conn, action=action, target=target, namespace=namespace, input=data,
                            reason=f"RCA: {top['service']} ({top['category']}, confidence {top['confidence']:.2f})",
                            origin="rca", proposed_by=POLICY, incident_id=row["incident_id"],
                            category=top["category"], confidence=top["confidence"],
                        )
                    except RemediationError as exc:
                        log.info("RCA recommendation %s %s not proposed: %s", action, target, exc.message)
                        continue
                    created += made
                    break
        return created

    async def _candidates(self, conn: asyncpg.Connection, cause: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
        """RCA's recommendations as (action, target, namespace, input); a devart agent's service becomes
        its pool (drain it, then tell people)."""
        service = cause["service"]
        if service.startswith(_AGENT_SERVICE):
            pools = await conn.fetch(
                "SELECT DISTINCT pool_id FROM agents WHERE name = $1 AND state <> 'gone'", service[len(_AGENT_SERVICE):]
            )
            if len(pools) == 1:
                pool = pools[0]["pool_id"]
                return [("drain_pool", pool, "", {}), ("notify", service, "", {})]
        out = []
        for rec in cause.get("recommendations") or []:
            action = _RCA_ACTIONS.get(rec["action"], rec["action"])
            if action not in CATALOGUE:
                continue
            kind = CATALOGUE[action].kind
            out.append((action, rec["target"], self.settings.default_namespace if kind == "kubernetes" else "", {}))
        return out

    # the kill switch

    async def set_paused(self, conn: asyncpg.Connection, *, paused: bool, by: str, reason: str) -> dict[str, Any]:
        async with conn.transaction():
            return await store.set_paused(conn, paused=paused, by=by, reason=reason)

    # approvals

    async def approval_outcome(self, conn: asyncpg.Connection, remediation_id: UUID, state: str, reason: str,
                               by: str) -> None:
        """The approval of a remediation ended (in the deciding transaction)."""
        row = await conn.fetchrow("SELECT state FROM remediations WHERE id = $1 FOR UPDATE", remediation_id)
        if row is None or row["state"] != "awaiting_approval":
            return
        if state == "approved":
            await store.transition(conn, remediation_id, "applying", f"{reason}; waiting to apply", actor=by)
        elif state in ("refused", "expired"):
            await store.transition(conn, remediation_id, state, reason, actor=by)  # type: ignore[arg-type]

    # the worker

    async def run_once(self) -> int:
        """Propose from new RCA results, then advance every due remediation one step; returns steps taken."""
        await self.propose_from_rca()
        async with self._pool.acquire() as conn:
            ids = await store.due(conn, limit=self.settings.batch)
        steps = 0
        for remediation_id in ids:
            try:
                steps += await self.advance(remediation_id)
            except (OSError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError):
                raise
            except Exception:
                log.exception("remediation %s step failed", remediation_id)
                await self._error(remediation_id)
        return steps

    async def _error(self, remediation_id: UUID) -> None:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await store.get(conn, remediation_id, lock=True)
            if row is not None and row["state"] in store.ACTIVE and row["apply_started_at"] is None:
                await store.transition(conn, remediation_id, "error", "an unexpected error stopped this step (see logs)",
                                       actor=WORKER)

    def _plan(self, row: dict[str, Any]) -> tuple[Action, Plan]:
        action = CATALOGUE[row["action"]]
        decision = self.policy.decide(row["action"], row["namespace"], row["target"])
        return action, Plan(row["id"], row["action"], row["target"], row["namespace"],
                            action.Input.model_validate(row["input"]), decision, row["incident_id"])

    async def advance(self, remediation_id: UUID) -> int:
        """Take the next step of one remediation if it is due and not locked by another worker."""
        async with self._pool.acquire() as conn:
            async with conn.transaction():
                row = await store.get(conn, remediation_id, lock=True)
                if row is None or row["state"] not in store.ACTIVE or row["next_at"] > datetime.now(UTC):
                    return 0
                action, plan = self._plan(row)
                ctx = Context(conn, self._kube, self._ops, warnings=list(row["warnings"]))
                step = getattr(self, f"_{row['state']}")
                apply_now = await step(ctx, row, action, plan)
            if apply_now:
                await self._apply(conn, remediation_id)
        return 1

    async def _proposed(self, ctx: Context, row: dict[str, Any], action: Action, plan: Plan) -> bool:
        try:
            found = await action.preflight(ctx, plan)
            limit = await _limits(ctx.conn, row, plan.decision, self.policy, gate=False)
            if limit is not None:
                raise Refused(limit[1])
        except Refused as refusal:
            await store.transition(ctx.conn, row["id"], "refused", str(refusal), actor=POLICY)
            return False
        mode = row["mode"]
        if found.get("gitops_handling") == "approve" and mode == "auto":
            mode = "approve"
            ctx.warnings.append(f"managed by {found['gitops']}: needs approval (policy gitops: approve)")
        await store.transition(ctx.conn, row["id"], "preflight", _summary("preflight passed", found, ctx.warnings),
                               actor=WORKER, preflight=found, mode=mode, warnings=ctx.warnings)
        return False

    async def _preflight(self, ctx: Context, row: dict[str, Any], action: Action, plan: Plan) -> bool:
        try:
            dry = await action.dry_run(ctx, plan)
        except DryRunUnsupported as refusal:
            await store.transition(ctx.conn, row["id"], "refused", str(refusal), actor=WORKER)
            return False
        except Refused as refusal:
            await store.transition(ctx.conn, row["id"], "refused", str(refusal), actor=WORKER)
            return False
        changes = len(dry.get("changes", []))
        await store.transition(ctx.conn, row["id"], "dry_run", f"dry-run: {changes} change(s), nothing applied",
                               actor=WORKER, dry_run=dry, warnings=ctx.warnings)
        return False

    async def _dry_run(self, ctx: Context, row: dict[str, Any], action: Action, plan: Plan) -> bool:
        mode, decision = row["mode"], plan.decision
        if mode == "suggest":
            await store.transition(ctx.conn, row["id"], "suggested",
                                   f"policy {decision.rule} is suggest: shown, never applied automatically", actor=POLICY)
            return False
        if mode == "approve":
            approval = decision.approval
            approval_id = await self._approvals.request(
                ctx.conn, remediation_id=row["id"], summary=_describe(row), link=f"/api/v1/remediations/{row['id']}",
                risk=max(action.risk, approval.risk, key=_RISK_ORDER.index), requested_by=row["proposed_by"],
                expires_at=datetime.now(UTC) + timedelta(seconds=approval.expires), roles=approval.roles,
                principals=approval.principals, min_approvals=approval.min_approvals,
            )
            await store.transition(ctx.conn, row["id"], "awaiting_approval", f"approval {approval_id} requested",
                                   actor=POLICY, approval_id=approval_id)
            return False
        await store.transition(ctx.conn, row["id"], "applying", f"policy {decision.rule} is auto; waiting to apply",
                               actor=POLICY)
        return False

    async def _applying(self, ctx: Context, row: dict[str, Any], action: Action, plan: Plan) -> bool:
        conn = ctx.conn
        if row["apply_started_at"] is not None:
            if action.kind == "kubernetes":
                await store.transition(conn, row["id"], "error", "interrupted while applying: whether the change was "
                                       "made is unknown, so it is not applied again; check the target", actor=WORKER)
                return False
            return True  # a devart action's change commits with applied_at: nothing happened, apply it now
        if await store.is_paused(conn):
            await store.update(conn, row["id"], next_in_s=self.settings.interval_s,
                               state_reason="held: remediation is paused (kill switch)")
            return False
        limit = await _limits(conn, row, plan.decision, self.policy, gate=True)
        if limit is not None and limit[0] == "wait":
            await store.update(conn, row["id"], next_in_s=self.settings.interval_s, state_reason=limit[1])
            return False
        if limit is not None:
            await store.transition(conn, row["id"], "refused", limit[1], actor=POLICY)
            return False
        await store.transition(conn, row["id"], "applying", "applying now", actor=WORKER,
                               next_in_s=_APPLY_LEASE_S, apply_started_at=datetime.now(UTC))
        return True

    async def _apply(self, conn: asyncpg.Connection, remediation_id: UUID) -> None:
        async with conn.transaction():
            row = await conn.fetchrow(
                "SELECT id FROM remediations WHERE id = $1 AND state = 'applying' AND applied_at IS NULL FOR UPDATE",
                remediation_id,
            )
            if row is None:
                return
            row = await store.get(conn, remediation_id)
            assert row is not None
            if await store.is_paused(conn):  # paused after the gate: nothing was applied yet
                await store.update(conn, remediation_id, next_in_s=self.settings.interval_s, apply_started_at=None,
                                   state_reason="held: remediation is paused (kill switch)")
                return
            action, plan = self._plan(row)
            ctx = Context(conn, self._kube, self._ops, warnings=list(row["warnings"]))
            try:
                result = await action.apply(ctx, plan, row["dry_run"] or {})
            except Refused as refusal:
                await store.transition(conn, remediation_id, "failed", f"not applied: {refusal}", actor=WORKER)
                return
            except KubeError as error:
                await store.transition(conn, remediation_id, "error", f"apply failed: {error}", actor=WORKER)
                return
            await store.transition(conn, remediation_id, "verifying", _summary("applied", result, []), actor=WORKER,
                                   apply_result=result, applied_at=datetime.now(UTC),
                                   next_in_s=self.settings.rollout_poll_s, warnings=ctx.warnings)

    async def _verifying(self, ctx: Context, row: dict[str, Any], action: Action, plan: Plan) -> bool:
        conn, spec, state = ctx.conn, plan.decision.verify, row["verification"]
        if state.get("rollout") != "done":
            status, why = await action.rollout(ctx, plan, row["apply_result"] or {})
            waited = (datetime.now(UTC) - row["applied_at"]).total_seconds()
            if status == "progressing" and waited > spec.rollout_timeout:
                status, why = "failed", f"rollout not done after {spec.rollout_timeout:.0f}s: {why}"
            if status == "failed":
                await self._finish(conn, row, "failed", why)
            elif status == "progressing":
                await store.update(conn, row["id"], next_in_s=self.settings.rollout_poll_s,
                                   verification={**state, "rollout": "progressing", "rollout_detail": why})
            elif not self._has_signal(action, row):
                await self._finish(conn, row, "successful", f"{why}; no incident signal to check")
            else:
                await store.update(conn, row["id"], next_in_s=spec.interval,
                                   verification={**state, "rollout": "done", "rollout_detail": why})
            return False
        point = await self._probe(conn, action, row, spec.interval)
        points = [*state.get("points", []), point.json()]
        failures = sum(1 for p in points if p["ok"] is False)
        verification = {**state, "points": points}
        if failures > spec.failure_limit:
            await self._finish(conn, row, "failed", f"signal check failed {failures} time(s): {point.detail}",
                               verification=verification)
        elif len(points) >= spec.count:
            passed = sum(1 for p in points if p["ok"])
            outcome = "successful" if passed else "inconclusive"
            await self._finish(conn, row, outcome, f"{passed} of {len(points)} checks passed, {failures} failed; "
                               f"last: {point.detail}", verification=verification)
        else:
            await store.update(conn, row["id"], next_in_s=spec.interval, verification=verification)
        return False

    def _has_signal(self, action: Action, row: dict[str, Any]) -> bool:
        if action.kind == "devart" and action.name in ("drain_pool", "pause_pool", "drain_agent", "pause_agent"):
            return True
        return action.kind == "kubernetes" and row["incident_id"] is not None and self._source is not None

    async def _probe(self, conn: asyncpg.Connection, action: Action, row: dict[str, Any], window_s: float) -> verify.Point:
        if action.kind == "devart":
            pool = row["target"] if action.name.endswith("_pool") else None
            agents = (row["apply_result"] or {}).get("agents", [])
            return await verify.task_failures(conn, pool=pool, agents=agents, window_s=window_s)
        assert self._source is not None
        return await verify.incident_signal(conn, self._source, row["incident_id"], window_s=window_s)

    async def _finish(self, conn: asyncpg.Connection, row: dict[str, Any], outcome: str, reason: str,
                      **columns: Any) -> None:
        await store.transition(conn, row["id"], outcome, reason, actor=WORKER, **columns)  # type: ignore[arg-type]
        if row["incident_id"] is None:
            return
        if outcome == "successful":
            await conn.execute(
                "UPDATE incidents SET resolved_by_remediation = $2 WHERE id = $1 AND resolved_by_remediation IS NULL",
                row["incident_id"], row["id"],
            )
            await conn.execute(
                "UPDATE rca_results SET resolving_action = coalesce(resolving_action, $2) WHERE incident_id = $1",
                row["incident_id"], f"{_describe(row)} (remediation {row['id']})",
            )
            return
        await self._escalate(conn, row, f"{outcome}: {reason}")

    async def _escalate(self, conn: asyncpg.Connection, row: dict[str, Any], why: str) -> None:
        """The next rung of the incident kind's ladder, or a person after the last one."""
        ladder = self.policy.ladder(row["category"])
        rest = ladder[ladder.index(row["action"]) + 1:] if row["action"] in ladder else ()
        for action in rest:
            try:
                new_id, made = await self.propose(
                    conn, action=action, target=row["target"], namespace=row["namespace"], input={},
                    reason=f"escalation after {row['action']} {why}"[:900], origin="escalation", proposed_by=POLICY,
                    incident_id=row["incident_id"], category=row["category"], confidence=row["confidence"],
                )
            except RemediationError as exc:
                log.info("escalation to %s skipped: %s", action, exc.message)
                continue
            if made:
                await store.note(conn, row["id"], "escalated", f"escalated to {action} ({new_id})", actor=POLICY)
                return
        await store.note(conn, row["id"], "handed_over",
                         f"escalation ladder exhausted after {row['action']}: a person must take over", actor=POLICY)


_RISK_ORDER = ["low", "medium", "high", "critical"]


async def _limits(conn: asyncpg.Connection, row: dict[str, Any], decision: Decision, policy: Policy, *,
                  gate: bool) -> tuple[str, str] | None:
    """``("refuse" | "wait", reason)`` when cooldown, rate limits or concurrency stop an apply now.
    At the gate the check runs under one advisory lock, so concurrent workers see each other's applies."""
    if gate:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", _GATE_LOCK)
    same = await conn.fetchrow(
        """SELECT max(apply_started_at) AS last,
                  count(*) FILTER (WHERE apply_started_at > now() - make_interval(secs => $5)) AS recent
           FROM remediations WHERE action = $1 AND target = $2 AND namespace = $3 AND id <> $4
             AND apply_started_at IS NOT NULL""",
        row["action"], row["target"], row["namespace"], row["id"], decision.rate_limit.per,
    )
    if same["last"] is not None and decision.cooldown_s and same["last"] > datetime.now(UTC) - timedelta(seconds=decision.cooldown_s):
        return "refuse", (f"cooldown: {row['action']} {row['target']} was applied at {same['last'].isoformat()}, "
                          f"within {decision.cooldown_s:.0f}s")
    if same["recent"] >= decision.rate_limit.count:
        return "refuse", (f"rate limit: {same['recent']} applies of {row['action']} on {row['target']} in "
                          f"{decision.rate_limit.per:.0f}s (limit {decision.rate_limit.count})")
    overall = policy.spec.global_rate_limit
    total = await conn.fetchval(
        "SELECT count(*) FROM remediations WHERE id <> $1 AND apply_started_at > now() - make_interval(secs => $2)",
        row["id"], overall.per,
    )
    if total >= overall.count:
        return "refuse", f"global rate limit: {total} applies in {overall.per:.0f}s (limit {overall.count})"
    if not gate:
        return None
    busy = await conn.fetchval(
        """SELECT count(*) FROM remediations WHERE target = $1 AND namespace = $2 AND id <> $3
             AND ((state = 'applying' AND apply_started_at IS NOT NULL) OR state = 'verifying')""",
        row["target"], row["namespace"], row["id"],
    )
    if busy >= decision.max_concurrent_per_target:
        return "wait", f"waiting: {busy} remediation(s) in progress on {row['target']}"
    return None


def _describe(row: dict[str, Any]) -> str:
    where = f"{row['namespace']}/{row['target']}" if row["namespace"] else row["target"]
    return f"{row['action']} {where}"


def _summary(what: str, found: dict[str, Any], warnings: list[str]) -> str:
    detail = ", ".join(f"{k}={v}" for k, v in found.items() if not isinstance(v, dict | list))
    return what + (f" ({detail})" if detail else "") + ("; warnings: " + "; ".join(warnings) if warnings else "")
