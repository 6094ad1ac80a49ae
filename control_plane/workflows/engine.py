"""The workflow engine: runs advanced by events, in the transaction of the event that moved them.

Nothing polls a run. A run moves when something happens to it: it is created, one of its steps'
tasks ends (``tasks_ended``, called by whoever applies a terminal task event, in that transaction),
it is cancelled, or a run ahead of it in its concurrency group finishes. Each time, ``_advance``
locks the run, decides every job that can be decided (skip, fail, start its task) and finishes the
run when nothing is left; tasks are created through the outbox in that same transaction, so a crash
at any point either loses the whole step or none of it.

Locks are always taken in one order: the concurrency group's advisory lock, then the run's row,
then task rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from agents.sdk.topology import Topology
from control_plane import approvals
from control_plane import tasks as task_store
from control_plane.errors import Conflict, InvalidInput, NotFound
from control_plane.settings import Settings
from control_plane.workflows.definition import (
    Definition,
    DefinitionError,
    Limits,
    StepSpec,
    parse_definition,
    resolve_inputs,
)
from control_plane.workflows.expressions import ExpressionError, evaluate, render_value, truthy
from control_plane.workflows.outputs import OutputsTooLarge, extract
from control_plane.workflows.settings import WorkflowSettings

log = logging.getLogger("devart.workflows")

TERMINAL_JOB = frozenset({"succeeded", "failed", "skipped", "cancelled"})
ACTIVE_RUN = ("queued", "running", "cancelling")
FINISHED_RUN = frozenset({"succeeded", "failed", "cancelled"})
_TASK_TO_JOB = {"succeeded": "succeeded", "failed": "failed", "dead": "failed", "timed_out": "failed",
                "cancelled": "cancelled"}
_ENGINE = "workflow-engine"
APPROVAL_SUBJECT = "workflow_step"
"""The approvals' subject kind of approval steps; the subject id is ``<run id>/<job>``."""


@dataclass
class _Job:
    """One row of ``run_steps``, as the engine works on it."""

    job: str
    step: str
    phase: str
    state: str
    matrix: dict[str, Any] | None
    outputs: dict[str, Any] | None
    task_id: UUID | None
    approval_id: str | None = None


@dataclass
class _Run:
    row: asyncpg.Record
    definition: Definition
    jobs: list[_Job]
    state: str = ""
    changed: bool = False

    def __post_init__(self) -> None:
        self.state = self.row["state"]

    @property
    def id(self) -> UUID:
        return self.row["id"]

    def of_step(self, step: str) -> list[_Job]:
        return [j for j in self.jobs if j.step == step]


@dataclass
class NewRun:
    workflow: str
    version: int | None
    inputs: dict[str, Any]
    trigger: str
    created_by: str
    traceparent: str | None = None
    idempotency_key: str | None = None
    rerun_of: UUID | None = None
    reuse: dict[str, asyncpg.Record] = field(default_factory=dict)
    """Jobs of an earlier run kept as they ended (a re-run's succeeded upstream)."""
    concurrency: tuple[str, str] | None = None
    """(group, on_conflict) in place of the definition's: a trigger that knows what the run is about
    (a pull request) keeps such runs in one group whatever the definition says."""


def aggregate(states: Sequence[str]) -> str | None:
    """A step's result from its jobs' states; None while any job is still open."""
    if not states or any(s not in TERMINAL_JOB for s in states):
        return None
    if "failed" in states:
        return "failed"
    if "cancelled" in states:
        return "cancelled"
    if all(s == "skipped" for s in states):
        return "skipped"
    return "succeeded"


def matrix_label(values: dict[str, Any]) -> str:
    return ",".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in values.items())


class WorkflowEngine:
    """Owns no connection: every method works inside the caller's connection (and transaction)."""

    def __init__(self, settings: Settings, workflow_settings: WorkflowSettings, topology: Topology) -> None:
        self.settings = settings
        self.workflow_settings = workflow_settings
        self.topology = topology
        self._definitions: dict[tuple[str, int], Definition] = {}

    @property
    def limits(self) -> Limits:
        s, w = self.settings, self.workflow_settings
        return Limits(max_steps=w.max_steps, max_matrix_jobs=w.max_matrix_jobs, max_timeout_s=s.max_timeout_s,
                      max_attempts=s.max_attempts_limit)

    async def definition(self, conn: asyncpg.Connection, name: str, version: int) -> Definition:
        key = (name, version)
        if key not in self._definitions:
            document = await conn.fetchval("SELECT document FROM workflows WHERE name = $1 AND version = $2",
                                           name, version)
            if len(self._definitions) > 1000:
                self._definitions.clear()
            self._definitions[key] = parse_definition(document, self.limits)
        return self._definitions[key]

    # ----- starting runs

    async def start_run(self, conn: asyncpg.Connection, new: NewRun) -> tuple[asyncpg.Record, bool]:
        """Create a run (queued behind its concurrency group, or started); ``(run, replayed)``."""
        async with conn.transaction():
            if new.version is None:
                version = await conn.fetchval("SELECT max(version) FROM workflows WHERE name = $1", new.workflow)
                if version is None:
                    raise InvalidInput(f"workflow {new.workflow!r} does not exist", field="name")
            else:
                version = new.version
            definition = await self.definition(conn, new.workflow, version)
            try:
                inputs = resolve_inputs(definition.inputs, new.inputs)
            except DefinitionError as exc:
                path, message = exc.problems[0]
                raise InvalidInput(f"{path}: {message}", field=f"body.{path}") from None
            request_hash = hashlib.sha256(json.dumps(
                [new.workflow, new.version, new.inputs, str(new.rerun_of)], sort_keys=True).encode()).hexdigest()
            if new.idempotency_key is not None:
                existing = await self._by_key(conn, new.created_by, new.idempotency_key, request_hash)
                if existing is not None:
                    return existing, True
            group, on_conflict = new.concurrency or (None, "queue")
            if group is None and definition.concurrency is not None:
                rendered = definition.concurrency.group.render(
                    {"inputs": inputs, "workflow": {"name": definition.name, "version": version}})
                group = rendered if isinstance(rendered, str) else json.dumps(rendered)
                on_conflict = definition.concurrency.on_conflict
            if group is not None:
                await self._lock_group(conn, group)
            run_id = uuid.uuid4()
            try:
                async with conn.transaction():
                    await conn.execute(
                        """INSERT INTO workflow_runs (id, workflow, version, state, state_reason, inputs, trigger,
                               concurrency_group, rerun_of, idempotency_key, request_hash, created_by, traceparent)
                           VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7, $8, $9, $10, $11, $12)""",
                        run_id, new.workflow, version, "created", inputs, new.trigger, group, new.rerun_of,
                        new.idempotency_key, request_hash, new.created_by, new.traceparent,
                    )
            except asyncpg.UniqueViolationError:
                existing = await self._by_key(conn, new.created_by, new.idempotency_key or "", request_hash)
                if existing is None:
                    raise
                return existing, True
            await self._insert_jobs(conn, run_id, definition, new.reuse)
            await _transition(conn, run_id, None, None, "queued", new.created_by,
                              f"triggered by {new.trigger}" + (f", re-run of {new.rerun_of}" if new.rerun_of else ""))
            if group is None:
                await self._begin(conn, run_id, "started")
            else:
                await self._resolve_conflict(conn, run_id, group, on_conflict, new.created_by)
            return await conn.fetchrow("SELECT * FROM workflow_runs WHERE id = $1", run_id), False

    async def _by_key(self, conn: asyncpg.Connection, created_by: str, key: str, request_hash: str) -> asyncpg.Record | None:
        row = await conn.fetchrow("SELECT * FROM workflow_runs WHERE created_by = $1 AND idempotency_key = $2",
                                  created_by, key)
        if row is not None and row["request_hash"] != request_hash:
            raise Conflict(f"Idempotency-Key {key!r} was already used with a different request body",
                           field="Idempotency-Key")
        return row

    async def _insert_jobs(
        self, conn: asyncpg.Connection, run_id: UUID, definition: Definition, reuse: dict[str, asyncpg.Record]
    ) -> None:
        rows = []
        position = 0
        for spec in definition.all_steps().values():
            for job, matrix in spec.jobs():
                kept = reuse.get(job)
                rows.append((run_id, job, spec.name, spec.phase, position, matrix,
                             kept["state"] if kept else "waiting", kept["outputs"] if kept else None,
                             kept["task_id"] if kept else None, kept["run_id"] if kept else None,
                             kept["attempts"] if kept else 0, f"reused from run {kept['run_id']}" if kept else "",
                             kept["started_at"] if kept else None, kept["finished_at"] if kept else None))
            position += 1
        await conn.executemany(
            """INSERT INTO run_steps (run_id, job, step, phase, position, matrix, state, outputs, task_id, reused_from,
                                      attempts, reason, started_at, finished_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)""",
            rows,
        )

    async def _lock_group(self, conn: asyncpg.Connection, group: str) -> None:
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('devart.wfgroup:' || $1, 0))", group)

    async def _resolve_conflict(
        self, conn: asyncpg.Connection, run_id: UUID, group: str, on_conflict: str, actor: str
    ) -> None:
        others = await conn.fetch(
            """SELECT id, state FROM workflow_runs
               WHERE concurrency_group = $1 AND state = ANY($2::text[]) AND id <> $3 ORDER BY created_at""",
            group, list(ACTIVE_RUN), run_id,
        )
        if on_conflict in ("cancel_pending", "cancel_running"):
            for other in others:
                if other["state"] == "queued":
                    await self._cancel_locked(conn, other["id"], actor=actor,
                                              reason=f"superseded by run {run_id} (concurrency group {group})")
        if on_conflict == "cancel_running":
            for other in others:
                if other["state"] == "running":
                    await self._cancel_locked(conn, other["id"], actor=actor,
                                              reason=f"cancelled by run {run_id} (concurrency group {group})")
        await self._start_next_in_group(conn, group)
        state = await conn.fetchval("SELECT state FROM workflow_runs WHERE id = $1", run_id)
        if state == "queued":
            ahead = await conn.fetchval(
                """SELECT id FROM workflow_runs WHERE concurrency_group = $1 AND state = ANY($2::text[]) AND id <> $3
                   ORDER BY (state = 'queued'), created_at LIMIT 1""",
                group, list(ACTIVE_RUN), run_id,
            )
            await conn.execute("UPDATE workflow_runs SET state_reason = $2 WHERE id = $1", run_id,
                               f"waiting for run {ahead} (concurrency group {group})")

    async def _start_next_in_group(self, conn: asyncpg.Connection, group: str) -> None:
        """Start the oldest queued run of ``group`` when none of it is running (group lock held)."""
        busy = await conn.fetchval(
            "SELECT 1 FROM workflow_runs WHERE concurrency_group = $1 AND state IN ('running', 'cancelling') LIMIT 1",
            group,
        )
        if busy:
            return
        following = await conn.fetchval(
            """SELECT id FROM workflow_runs WHERE concurrency_group = $1 AND state = 'queued'
               ORDER BY created_at, id LIMIT 1""",
            group,
        )
        if following is not None:
            await self._begin(conn, following, f"started (first in concurrency group {group})")

    async def _begin(self, conn: asyncpg.Connection, run_id: UUID, reason: str) -> None:
        await conn.execute(
            """UPDATE workflow_runs SET state = 'running', state_reason = $2, started_at = now(), updated_at = now()
               WHERE id = $1""",
            run_id, reason,
        )
        await _transition(conn, run_id, None, "queued", "running", _ENGINE, reason)
        await self._advance(conn, run_id)

    # ----- advancing

    async def _load(self, conn: asyncpg.Connection, run_id: UUID) -> _Run | None:
        """Lock the run (group first, then the row) and read its jobs."""
        group = await conn.fetchval("SELECT concurrency_group FROM workflow_runs WHERE id = $1", run_id)
        if group is not None:
            await self._lock_group(conn, group)
        row = await conn.fetchrow("SELECT * FROM workflow_runs WHERE id = $1 FOR UPDATE", run_id)
        if row is None:
            return None
        definition = await self.definition(conn, row["workflow"], row["version"])
        jobs = [
            _Job(r["job"], r["step"], r["phase"], r["state"], r["matrix"], r["outputs"], r["task_id"], r["approval_id"])
            for r in await conn.fetch(
                "SELECT job, step, phase, state, matrix, outputs, task_id, approval_id FROM run_steps "
                "WHERE run_id = $1 ORDER BY position, job", run_id)
        ]
        return _Run(row, definition, jobs)

    async def _advance(self, conn: asyncpg.Connection, run_id: UUID) -> None:
        run = await self._load(conn, run_id)
        if run is not None:
            await self._advance_loaded(conn, run)

    async def _advance_loaded(self, conn: asyncpg.Connection, run: _Run) -> None:
        if run.state not in ("running", "cancelling"):
            return
        d = run.definition
        while True:
            run.changed = False
            await self._fail_fast(conn, run)
            results = {name: aggregate([j.state for j in run.of_step(name)]) for name in d.steps}
            if run.state == "running":
                for job in [j for j in run.jobs if j.phase == "main" and j.state == "waiting"]:
                    await self._decide(conn, run, job, d.steps[job.step], results)
            main_open = any(j.state not in TERMINAL_JOB for j in run.jobs if j.phase == "main")
            if not main_open:
                for job in [j for j in run.jobs if j.phase == "finally" and j.state == "waiting"]:
                    await self._decide(conn, run, job, d.finally_steps[job.step], results)
            if all(j.state in TERMINAL_JOB for j in run.jobs):
                await self._finish(conn, run)
                return
            if not run.changed:
                return

    async def _decide(
        self, conn: asyncpg.Connection, run: _Run, job: _Job, spec: StepSpec, results: dict[str, str | None]
    ) -> None:
        """Skip, fail or start a waiting job whose needs have all ended; leave it otherwise."""
        if any(results[need] is None for need in spec.needs):
            return
        unmet = [f"{need}={results[need]}" for need, allowed in spec.needs.items() if results[need] not in allowed]
        if unmet:
            await self._end_job(conn, run, job, "skipped", skip_reason="needs_unmet: " + ", ".join(unmet))
            return
        context = self._context(run, job)
        try:
            if spec.condition is not None and not truthy(evaluate(spec.condition, context)):
                await self._end_job(conn, run, job, "skipped", skip_reason="if_false")
                return
            if spec.max_parallel is not None:
                running = sum(1 for j in run.of_step(spec.name) if j.state == "running")
                if running >= spec.max_parallel:
                    return
            if spec.approval is not None:
                summary = render_value(spec.approval.subject, context) or (
                    f"{run.definition.name}: approve step {job.job} of run {run.id}")
            else:
                task_input = render_value(spec.input, context)
        except ExpressionError as exc:
            await self._end_job(conn, run, job, "failed", reason=f"expression error: {exc}")
            return
        if spec.approval is not None:
            await self._request_approval(conn, run, job, spec, str(summary))
        else:
            await self._start_task(conn, run, job, spec, task_input)

    async def _request_approval(self, conn: asyncpg.Connection, run: _Run, job: _Job, spec: StepSpec,
                                summary: str) -> None:
        rule = spec.approval
        assert rule is not None
        approval = await approvals.create_approval(
            conn, subject_kind=APPROVAL_SUBJECT, subject_id=f"{run.id}/{job.job}", summary=summary[:500],
            link=f"/api/v1/runs/{run.id}", risk=rule.risk, requested_by=run.row["created_by"],  # type: ignore[arg-type]
            expires_at=datetime.now(UTC) + timedelta(seconds=rule.timeout_s), roles=rule.roles,
            principals=rule.principals, min_approvals=rule.min, prevent_self=rule.prevent_self,
        )
        await conn.execute(
            """UPDATE run_steps SET state = 'running', approval_id = $3, started_at = now(), reason = $4
               WHERE run_id = $1 AND job = $2""",
            run.id, job.job, approval.id, f"waiting for approval {approval.id} until {approval.expires_at.isoformat()}",
        )
        await _transition(conn, run.id, job.job, job.state, "running", _ENGINE, f"approval {approval.id}")
        job.state, job.approval_id = "running", approval.id

    async def lock_approval_subject(self, conn: asyncpg.Connection, subject_id: str) -> None:
        """Lock the run of an approval step before its approval is locked (the approvals' lock order:
        every engine path holds the run's lock when it creates or cancels a step's approval)."""
        run_id, _, _ = subject_id.partition("/")
        try:
            await conn.execute("SELECT 1 FROM workflow_runs WHERE id = $1 FOR UPDATE", UUID(run_id))
        except ValueError:
            return  # not a subject this engine made: the approval's own checks answer

    async def approval_decided(self, conn: asyncpg.Connection, approval: approvals.Approval) -> None:
        """The approvals' outcome handler for approval steps (in the deciding transaction): the
        step succeeds when approved, fails when refused, fails or is skipped when expired."""
        run_id_text, _, job_name = approval.subject.id.partition("/")
        run = await self._load(conn, UUID(run_id_text))
        if run is None:
            return
        job = next((j for j in run.jobs if j.job == job_name and j.approval_id == approval.id), None)
        if job is None or job.state != "running":
            return
        rule = run.definition.steps[job.step].approval
        if approval.state == "approved":
            deciders = ", ".join(d.who for d in approval.decisions if d.decision == "approve")
            await self._end_job(conn, run, job, "succeeded", reason=f"approved by {deciders}", actor=deciders)
        elif approval.state == "refused":
            refusal = next(d for d in approval.decisions if d.decision == "refuse")
            why = f"refused by {refusal.who}" + (f": {refusal.comment}" if refusal.comment else "")
            await self._end_job(conn, run, job, "failed", reason=why, actor=refusal.who)
        elif approval.state == "expired" and rule is not None and rule.on_expire == "skip":
            await self._end_job(conn, run, job, "skipped", skip_reason="approval_expired", actor="approval-expiry")
        elif approval.state == "expired":
            await self._end_job(conn, run, job, "failed", reason="approval expired: nobody decided in time",
                                actor="approval-expiry")
        else:
            return
        await self._advance_loaded(conn, run)

    def _context(self, run: _Run, job: _Job) -> dict[str, Any]:
        d = run.definition
        steps: dict[str, Any] = {}
        for name, spec in d.all_steps().items():
            jobs = run.of_step(name)
            status = aggregate([j.state for j in jobs])
            if status is None:
                status = "running" if any(j.state == "running" for j in jobs) else "waiting"
            if spec.matrix:
                outputs: Any = {matrix_label(j.matrix or {}): j.outputs or {} for j in jobs}
            else:
                outputs = (jobs[0].outputs or {}) if jobs else {}
            steps[name] = {"status": status, "outputs": outputs}
        return {
            "inputs": run.row["inputs"], "matrix": job.matrix or {}, "steps": steps,
            "workflow": {"name": d.name, "version": run.row["version"]},
            "run": {"id": str(run.id), "trigger": run.row["trigger"], "outcome": self._outcome(run)},
        }

    def _outcome(self, run: _Run) -> str:
        """The run's verdict from what has ended so far."""
        if run.state == "cancelling":
            return "cancelled"
        if any(j.state in ("failed", "cancelled") for j in run.jobs if j.phase == "main"):
            return "failed"
        if any(j.state == "failed" for j in run.jobs if j.phase == "finally"):
            return "failed"
        return "succeeded"

    async def _start_task(
        self, conn: asyncpg.Connection, run: _Run, job: _Job, spec: StepSpec, task_input: Any
    ) -> None:
        s = self.settings
        if len(json.dumps(task_input, separators=(",", ":"))) > s.max_input_bytes:
            await self._end_job(conn, run, job, "failed", reason=f"input is larger than {s.max_input_bytes} bytes")
            return
        backoff = {"base_s": s.backoff_base_s, "factor": s.backoff_factor, "cap_s": s.backoff_cap_s,
                   "jitter": s.backoff_jitter} | spec.backoff
        new = task_store.NewTask(
            type=spec.type, input=task_input, requires=list(spec.requires),
            timeout_s=spec.timeout_s or s.default_timeout_s, max_attempts=spec.max_attempts or s.default_max_attempts,
            backoff=backoff, sandbox=spec.sandbox, start_timeout_s=s.default_start_timeout_s,
        )
        submitter = task_store.Submitter(
            created_by=run.row["created_by"], traceparent=run.row["traceparent"], topology=self.topology,
            agent_ttl_s=s.heartbeat_ttl_s,
        )
        task, _ = await task_store.create_task(conn, new, submitter, idempotency_key=f"run:{run.id}:{job.job}")
        await conn.execute(
            """UPDATE run_steps SET state = 'running', task_id = $3, attempts = $4, started_at = now(), reason = $5
               WHERE run_id = $1 AND job = $2""",
            run.id, job.job, task["id"], max(1, task["attempt"]), f"task {task['id']} {task['status']}",
        )
        await _transition(conn, run.id, job.job, job.state, "running", _ENGINE, f"task {task['id']}")
        job.state, job.task_id = "running", task["id"]

    async def _end_job(
        self, conn: asyncpg.Connection, run: _Run, job: _Job, state: str, *, reason: str = "",
        skip_reason: str | None = None, outputs: dict[str, Any] | None = None, attempts: int | None = None,
        actor: str = _ENGINE,
    ) -> None:
        await conn.execute(
            """UPDATE run_steps SET state = $3, skip_reason = $4, reason = $5, outputs = coalesce($6, outputs),
                      attempts = coalesce($7, attempts), finished_at = now()
               WHERE run_id = $1 AND job = $2""",
            run.id, job.job, state, skip_reason, reason or skip_reason or "", outputs, attempts,
        )
        await _transition(conn, run.id, job.job, job.state, state, actor, skip_reason or reason)
        job.state = state
        if outputs is not None:
            job.outputs = outputs
        run.changed = True

    async def _fail_fast(self, conn: asyncpg.Connection, run: _Run) -> None:
        for name, spec in run.definition.steps.items():
            if not spec.matrix or not spec.fail_fast:
                continue
            jobs = run.of_step(name)
            failed = next((j for j in jobs if j.state == "failed"), None)
            if failed is None:
                continue
            for job in jobs:
                if job.state in ("waiting", "running"):
                    await self._cancel_job(conn, run, job, f"fail_fast: {failed.job} failed", _ENGINE)

    async def _cancel_job(self, conn: asyncpg.Connection, run: _Run, job: _Job, reason: str, actor: str) -> None:
        if job.state == "running" and job.approval_id is not None:
            pending = await conn.fetchval("SELECT state = 'pending' FROM approvals WHERE id = $1", job.approval_id)
            if pending:
                await approvals.cancel(conn, job.approval_id, by=actor, reason=reason)
        if job.state == "running" and job.task_id is not None:
            status = await conn.fetchval("SELECT status FROM tasks WHERE id = $1", job.task_id)
            if status in task_store.CANCELLABLE:
                await task_store.cancel_task(conn, job.task_id, actor=actor, reason=reason, topology=self.topology)
        await self._end_job(conn, run, job, "cancelled", reason=reason, actor=actor)

    async def _finish(self, conn: asyncpg.Connection, run: _Run) -> None:
        state = self._outcome(run)
        bad = [j.job for j in run.jobs if j.state in ("failed", "cancelled")]
        if state == "cancelled":
            reason = run.row["state_reason"] or "cancelled"
        elif state == "failed":
            reason = "not succeeded: " + ", ".join(bad[:20]) + (" ..." if len(bad) > 20 else "")
        else:
            reason = "every step succeeded or was skipped"
        await conn.execute(
            """UPDATE workflow_runs SET state = $2, state_reason = $3, finished_at = now(), updated_at = now()
               WHERE id = $1""",
            run.id, state, reason,
        )
        await _transition(conn, run.id, None, run.state, state, _ENGINE, reason)
        run.state = state
        if run.row["concurrency_group"] is not None:
            await self._start_next_in_group(conn, run.row["concurrency_group"])

    # ----- reacting to tasks

    async def tasks_ended(self, conn: asyncpg.Connection, task_ids: Sequence[UUID]) -> None:
        """Tasks that may have reached their final state (caller's transaction): end their jobs and
        advance their runs. Unknown tasks, tasks of no run and tasks still going are ignored."""
        if not task_ids:
            return
        rows = await conn.fetch(
            """SELECT DISTINCT s.run_id FROM run_steps s JOIN tasks t ON t.id = s.task_id
               WHERE s.task_id = ANY($1::uuid[]) AND s.state = 'running' AND t.status = ANY($2::text[])
               ORDER BY s.run_id""",
            list(task_ids), list(task_store.TERMINAL),
        )
        for row in rows:
            await self._guarded(conn, row["run_id"], self._apply_task_ends(conn, row["run_id"], task_ids))

    async def _apply_task_ends(self, conn: asyncpg.Connection, run_id: UUID, task_ids: Sequence[UUID]) -> None:
        run = await self._load(conn, run_id)
        if run is None:
            return
        ended = await conn.fetch(
            """SELECT s.job, t.status, t.result, t.status_reason, t.attempt FROM run_steps s JOIN tasks t ON t.id = s.task_id
               WHERE s.run_id = $1 AND s.task_id = ANY($2::uuid[]) AND s.state = 'running' AND t.status = ANY($3::text[])""",
            run_id, list(task_ids), list(task_store.TERMINAL),
        )
        by_name = {j.job: j for j in run.jobs}
        for row in ended:
            job = by_name[row["job"]]
            spec = run.definition.all_steps()[job.step]
            state = _TASK_TO_JOB[row["status"]]
            outputs = None
            reason = f"task {row['status']}" + (f": {row['status_reason']}" if row["status_reason"] else "")
            if state == "succeeded" and spec.outputs:
                try:
                    outputs = extract(row["result"], spec.outputs, max_bytes=self.workflow_settings.max_outputs_bytes)
                except OutputsTooLarge as exc:
                    state, reason = "failed", str(exc)
            await self._end_job(conn, run, job, state, reason=reason[:500], outputs=outputs, attempts=row["attempt"],
                                actor="task")
        await self._advance_loaded(conn, run)

    async def _guarded(self, conn: asyncpg.Connection, run_id: UUID, work: Any) -> None:
        """Run ``work`` in a savepoint; a bug in the engine fails the run instead of the task events
        that triggered it (which must be applied whatever happens to the workflow)."""
        try:
            async with conn.transaction():
                await work
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, asyncpg.TransactionRollbackError, OSError):
            raise
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.exception("workflow engine failed on run %s; failing the run", run_id)
            async with conn.transaction():
                await conn.execute(
                    """UPDATE workflow_runs SET state = 'failed', state_reason = $2, finished_at = now(), updated_at = now()
                       WHERE id = $1 AND state IN ('queued', 'running', 'cancelling')""",
                    run_id, f"engine error: {exc}"[:500],
                )
                await _transition(conn, run_id, None, None, "failed", _ENGINE, f"engine error: {exc}"[:500])

    # ----- operator actions

    async def cancel_run(self, conn: asyncpg.Connection, run_id: UUID, *, actor: str, reason: str) -> asyncpg.Record:
        """Cancel a run: waiting steps are cancelled, running ones have their tasks cancelled, then
        the ``finally`` steps run and the run ends ``cancelled``."""
        async with conn.transaction():
            row = await conn.fetchrow("SELECT state FROM workflow_runs WHERE id = $1", run_id)
            if row is None:
                raise NotFound(f"run {run_id} does not exist", field="run_id")
            if row["state"] not in ("queued", "running"):
                raise Conflict(f"run {run_id} is {row['state']}; only queued or running runs can be cancelled")
            await self._cancel_locked(conn, run_id, actor=actor, reason=reason)
            return await conn.fetchrow("SELECT * FROM workflow_runs WHERE id = $1", run_id)

    async def _cancel_locked(self, conn: asyncpg.Connection, run_id: UUID, *, actor: str, reason: str) -> None:
        run = await self._load(conn, run_id)
        if run is None or run.state not in ("queued", "running"):
            return
        if run.state == "queued":
            for job in run.jobs:
                if job.state == "waiting":
                    await self._end_job(conn, run, job, "cancelled", reason=reason, actor=actor)
            await conn.execute(
                """UPDATE workflow_runs SET state = 'cancelled', state_reason = $2, finished_at = now(), updated_at = now()
                   WHERE id = $1""",
                run_id, reason,
            )
            await _transition(conn, run_id, None, "queued", "cancelled", actor, reason)
            return
        await conn.execute("UPDATE workflow_runs SET state = 'cancelling', state_reason = $2, updated_at = now() "
                           "WHERE id = $1", run_id, reason)
        await _transition(conn, run_id, None, "running", "cancelling", actor, reason)
        run.state = "cancelling"
        run.row = await conn.fetchrow("SELECT * FROM workflow_runs WHERE id = $1", run_id)
        for job in run.jobs:
            if job.phase == "main" and job.state in ("waiting", "running"):
                await self._cancel_job(conn, run, job, reason, actor)
        await self._advance_loaded(conn, run)

    async def rerun(self, conn: asyncpg.Connection, run_id: UUID, *, actor: str, traceparent: str | None,
                    idempotency_key: str | None = None,
                    concurrency: tuple[str, str] | None = None) -> tuple[asyncpg.Record, bool]:
        """A new run of the same version and inputs that keeps the old run's succeeded jobs whose
        upstream all succeeded too (with their outputs) and runs everything else again."""
        old = await conn.fetchrow("SELECT * FROM workflow_runs WHERE id = $1", run_id)
        if old is None:
            raise NotFound(f"run {run_id} does not exist", field="run_id")
        if old["state"] not in ("failed", "cancelled"):
            raise Conflict(f"run {run_id} is {old['state']}; only failed or cancelled runs can be re-run")
        definition = await self.definition(conn, old["workflow"], old["version"])
        jobs = await conn.fetch("SELECT * FROM run_steps WHERE run_id = $1", run_id)
        by_step: dict[str, list[asyncpg.Record]] = {}
        for job in jobs:
            by_step.setdefault(job["step"], []).append(job)
        kept_steps = {
            name for name in definition.steps
            if all(j["state"] == "succeeded" for j in by_step.get(name, []))
            and all(all(j["state"] == "succeeded" for j in by_step.get(up, [])) for up in definition.ancestors(name))
        }
        reuse = {}
        for name in definition.steps:
            ancestors_kept = all(up in kept_steps for up in definition.ancestors(name))
            for job in by_step.get(name, []):
                if ancestors_kept and job["state"] == "succeeded":
                    reuse[job["job"]] = job
        return await self.start_run(conn, NewRun(
            workflow=old["workflow"], version=old["version"], inputs=old["inputs"], trigger="rerun",
            created_by=actor, traceparent=traceparent, idempotency_key=idempotency_key, rerun_of=run_id, reuse=reuse,
            concurrency=concurrency,
        ))


async def _transition(
    conn: asyncpg.Connection, run_id: UUID, job: str | None, from_state: str | None, to_state: str, actor: str,
    reason: str = "",
) -> None:
    await conn.execute(
        """INSERT INTO run_transitions (run_id, job, from_state, to_state, actor, reason)
           VALUES ($1, $2, $3, $4, $5, $6)""",
        run_id, job, from_state, to_state, actor, reason[:1000],
    )
