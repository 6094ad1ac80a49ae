"""devart's own actions: they work with no cluster, so the embedded default heals itself.

Drain or pause an agent pool or one agent (a control command through the outbox, like
``POST /api/v1/agents/{id}/drain``), requeue a pool's or a task type's dead tasks, retry one task,
cancel tasks stuck running. The control plane carries them out (:class:`DevartOps`) in the
pipeline's transaction.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from aiops.remediation.actions.base import Action, Context, DevartOps, Plan, Refused, Rollout

ACTOR = "remediation"


class _NoInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RequeueInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    match: Literal["type", "pool"] = Field(default="type", description="the target names a task type or a pool")
    limit: int = Field(default=50, ge=1, le=500, description="most tasks requeued")


class CancelStuckInput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    older_than_s: float = Field(default=3600.0, ge=60, description="running longer than this counts as stuck")
    limit: int = Field(default=50, ge=1, le=500, description="most tasks cancelled")


class _AgentsAction(Action):
    """Drain or pause every live agent of a pool (``scope = "pool"``) or one agent."""

    kind = "devart"
    Input = _NoInput
    command: ClassVar[Literal["drain", "pause"]]
    scope: ClassVar[Literal["pool", "agent"]]

    async def _agents(self, ctx: Context, plan: Plan) -> list[str]:
        column = "pool_id" if self.scope == "pool" else "id"
        rows = await ctx.conn.fetch(
            f"SELECT id FROM agents WHERE {column} = $1 AND state IN ('active', 'paused', 'draining') ORDER BY id",
            plan.target,
        )
        return [r["id"] for r in rows]

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        agents = await self._agents(ctx, plan)
        if not agents:
            raise Refused(f"no connected agent {'in pool ' if self.scope == 'pool' else ''}{plan.target}")
        if self.scope == "pool":
            others = await ctx.conn.fetchval(
                """SELECT count(*) FROM agents a JOIN pools p ON p.id = a.pool_id
                   WHERE a.pool_id <> $1 AND a.state = 'active'
                     AND p.types @> (SELECT types FROM pools WHERE id = $1)""",
                plan.target,
            )
            if not others:
                ctx.warnings.append(f"no other active pool handles {plan.target}'s task types: its tasks will wait")
        return {"agents": agents}

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        return {"changes": [{"path": f"agent {a}", "from": "active", "to": f"{self.command} requested"}
                            for a in await self._agents(ctx, plan)]}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        ops = ctx.require_ops()
        agents = await self._agents(ctx, plan)
        for agent in agents:
            await ops.command_agent(ctx.conn, agent, self.command, f"{self.command} by remediation {plan.id}")
        return {"agents": agents}

    async def rollout(self, ctx: Context, plan: Plan, applied: dict[str, Any]) -> Rollout:
        active = await ctx.conn.fetchval(
            "SELECT count(*) FROM agents WHERE id = ANY($1::text[]) AND state = 'active'", applied.get("agents", [])
        )
        if active:
            return "progressing", f"{active} agent(s) not yet {self.command}ed"
        return "done", f"{len(applied.get('agents', []))} agent(s) {'draining or gone' if self.command == 'drain' else 'paused'}"


class DrainPool(_AgentsAction):
    name, command, scope, risk = "drain_pool", "drain", "pool", "medium"
    summary = "Every agent of a pool finishes its tasks, takes no more, and leaves"


class PausePool(_AgentsAction):
    name, command, scope, risk = "pause_pool", "pause", "pool", "medium"
    summary = "Every agent of a pool stops taking tasks until resumed"


class DrainAgent(_AgentsAction):
    name, command, scope, risk = "drain_agent", "drain", "agent", "low"
    summary = "One agent finishes its tasks, takes no more, and leaves"


class PauseAgent(_AgentsAction):
    name, command, scope, risk = "pause_agent", "pause", "agent", "low"
    summary = "One agent stops taking tasks until resumed"


class RetryTask(Action):
    name, kind, risk = "retry_task", "devart", "low"
    summary = "A new attempt of one failed, dead, cancelled or timed-out task"
    Input = _NoInput

    async def _task(self, ctx: Context, plan: Plan) -> UUID:
        try:
            task_id = UUID(plan.target)
        except ValueError as exc:
            raise Refused(f"{plan.target!r} is not a task id") from exc
        status = await ctx.conn.fetchval("SELECT status FROM tasks WHERE id = $1", task_id)
        if status not in ("failed", "dead", "cancelled", "timed_out"):
            raise Refused(f"task {task_id} is {status or 'unknown'}; only finished unsuccessful tasks are retried")
        return task_id

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        await self._task(ctx, plan)
        return {}

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        await self._task(ctx, plan)
        return {"changes": [{"path": f"task {plan.target}", "from": "finished", "to": "queued"}]}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        task = await self._task(ctx, plan)
        await ctx.require_ops().retry_task(ctx.conn, task, actor=ACTOR, reason=f"retried by remediation {plan.id}")
        return {"task": str(task)}


class _TasksAction(Action):
    """Select a batch of tasks (preflight refuses when there is none), show each one's change, and
    hand each to the control plane in the pipeline's transaction."""

    kind = "devart"
    change: ClassVar[tuple[str, str]]
    """The task status before and after, as the dry-run shows it."""
    counted: ClassVar[str]
    """What the preflight calls the tasks it found."""

    def _query(self, plan: Plan) -> tuple[str, tuple[Any, ...]]:
        """The SQL selecting the tasks' ids, and its arguments."""
        raise NotImplementedError

    async def _select(self, ctx: Context, plan: Plan) -> list[UUID]:
        sql, args = self._query(plan)
        return [r["id"] for r in await ctx.conn.fetch(sql, *args)]

    def _none(self, plan: Plan) -> str:
        """Why there is nothing to do (the refusal)."""
        raise NotImplementedError

    async def _act(self, ops: DevartOps, ctx: Context, plan: Plan, task: UUID) -> None:
        raise NotImplementedError

    async def preflight(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        tasks = await self._select(ctx, plan)
        if not tasks:
            raise Refused(self._none(plan))
        return {self.counted: len(tasks)}

    async def dry_run(self, ctx: Context, plan: Plan) -> dict[str, Any]:
        before, after = self.change
        return {"changes": [{"path": f"task {t}", "from": before, "to": after} for t in await self._select(ctx, plan)]}

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        ops, tasks = ctx.require_ops(), await self._select(ctx, plan)
        for task in tasks:
            await self._act(ops, ctx, plan, task)
        return {"tasks": [str(t) for t in tasks]}


class RequeueDead(_TasksAction):
    name, risk, change, counted = "requeue_dead", "low", ("dead", "queued"), "dead"
    summary = "Retry the dead tasks of a task type or a pool"
    Input = RequeueInput

    def _query(self, plan: Plan) -> tuple[str, tuple[Any, ...]]:
        column = "type" if plan.input.match == "type" else "pool_id"  # type: ignore[attr-defined]
        return (f"SELECT id FROM tasks WHERE status = 'dead' AND {column} = $1 ORDER BY finished_at LIMIT $2",
                (plan.target, plan.input.limit))  # type: ignore[attr-defined]

    def _none(self, plan: Plan) -> str:
        return f"no dead tasks of {plan.input.match} {plan.target}"  # type: ignore[attr-defined]

    async def _act(self, ops: DevartOps, ctx: Context, plan: Plan, task: UUID) -> None:
        await ops.retry_task(ctx.conn, task, actor=ACTOR, reason=f"requeued by remediation {plan.id}")


class CancelStuck(_TasksAction):
    name, risk, change, counted = "cancel_stuck", "medium", ("running", "cancelled"), "stuck"
    summary = "Cancel a pool's tasks that have been running far too long"
    Input = CancelStuckInput

    def _query(self, plan: Plan) -> tuple[str, tuple[Any, ...]]:
        return ("""SELECT id FROM tasks WHERE status = 'running' AND pool_id = $1
                     AND started_at < now() - make_interval(secs => $2) ORDER BY started_at LIMIT $3""",
                (plan.target, plan.input.older_than_s, plan.input.limit))  # type: ignore[attr-defined]

    def _none(self, plan: Plan) -> str:
        return f"no task of pool {plan.target} is running longer than {plan.input.older_than_s:.0f}s"  # type: ignore[attr-defined]

    async def _act(self, ops: DevartOps, ctx: Context, plan: Plan, task: UUID) -> None:
        await ops.cancel_task(ctx.conn, task, actor=ACTOR, reason=f"stuck; cancelled by remediation {plan.id}")


class Notify(Action):
    name, kind, risk = "notify", "notify", "low"
    summary = "Tell people (the event stream and its subscribers); changes nothing"
    Input = _NoInput

    async def apply(self, ctx: Context, plan: Plan, dry: dict[str, Any]) -> dict[str, Any]:
        return {"notified": True}
