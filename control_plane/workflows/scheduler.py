"""Cron triggers: the loop that starts the runs of workflows whose schedule came due.

One row per scheduled workflow (``workflow_schedules``) holds the next fire time. Each round takes
the due rows (``FOR UPDATE SKIP LOCKED``: several control planes may run the loop), starts the runs
the missed-run policy asks for, and moves ``next_at`` past now, all in one transaction per
schedule. Each run is created under the idempotency key ``schedule:<workflow>:<fire time>``, so a
fire time starts at most one run whatever crashes in between.

Missed-run policies, for fire times older than ``DEVART_WORKFLOW_SCHEDULE_GRACE_S`` when the loop
sees them (the control plane was down): ``skip`` runs none of them (only a fire time within the
grace runs), ``run_once`` runs one run for all of them, ``run_all`` one run per fire time, at most
``DEVART_WORKFLOW_MAX_CATCH_UP_RUNS`` (the latest ones).
"""

from __future__ import annotations

import logging
from collections import deque
from datetime import UTC, datetime, timedelta

import asyncpg

from control_plane.audit import audit
from control_plane.loops import LoopService
from control_plane.workflows.engine import NewRun, WorkflowEngine

log = logging.getLogger("devart.workflows.schedule")

SCHEDULER = "schedule"
"""The principal scheduled runs are created by."""
_MAX_COUNTED = 100_000


def fire_times(due: list[datetime], now: datetime, *, missed: str, grace_s: float, catch_up: int) -> list[datetime]:
    """Which of the ``due`` fire times (oldest first, all <= now) get a run."""
    if not due:
        return []
    cutoff = now - timedelta(seconds=grace_s)
    on_time = [t for t in due if t >= cutoff]
    late = [t for t in due if t < cutoff]
    if missed == "run_all":
        return (late + on_time)[-catch_up:]
    if missed == "run_once":
        return [due[-1]]
    return on_time[-1:]


class WorkflowScheduler(LoopService):
    name = "workflow-scheduler"

    def __init__(self, pool: asyncpg.Pool, engine: WorkflowEngine, *, interval_s: float) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._engine = engine

    async def run_once(self) -> None:
        async with self._pool.acquire() as conn:
            names = await conn.fetch(
                "SELECT workflow FROM workflow_schedules WHERE next_at <= now() ORDER BY next_at LIMIT 100"
            )
            for row in names:
                await self.fire(conn, row["workflow"])

    async def fire(self, conn: asyncpg.Connection, workflow: str) -> int:
        """Start the due runs of one schedule; returns how many were started."""
        settings = self._engine.workflow_settings
        async with conn.transaction():
            row = await conn.fetchrow(
                """SELECT *, now() AS now FROM workflow_schedules WHERE workflow = $1 AND next_at <= now()
                   FOR UPDATE SKIP LOCKED""",
                workflow,
            )
            if row is None:
                return 0
            definition = await self._engine.definition(conn, workflow, row["version"])
            schedule = definition.schedule
            if schedule is None:  # cannot happen: rows exist only for versions with a schedule
                return 0
            now = row["now"].astimezone(UTC)
            # the latest fire times are all any policy needs; an outage of years stops counting
            due: deque[datetime] = deque(maxlen=settings.max_catch_up_runs)
            at, count = row["next_at"], 0
            while at <= now and count < _MAX_COUNTED:
                due.append(at)
                count += 1
                at = schedule.cron.next_after(at)
            chosen = fire_times(list(due), now, missed=row["missed"], grace_s=settings.schedule_grace_s,
                                catch_up=settings.max_catch_up_runs)
            for fire_at in chosen:
                run, replayed = await self._engine.start_run(conn, NewRun(
                    workflow=workflow, version=row["version"], inputs=schedule.inputs, trigger="schedule",
                    created_by=SCHEDULER, idempotency_key=f"schedule:{workflow}:{fire_at.isoformat()}",
                ))
                if not replayed:
                    await audit(conn, actor=SCHEDULER, action="run.create", target=str(run["id"]),
                                detail={"workflow": workflow, "version": row["version"],
                                        "fire_at": fire_at.isoformat()})
            if count > len(chosen):
                log.warning("schedule of %s: %d fire time(s) due, %d run(s) started (missed: %s)",
                            workflow, count, len(chosen), row["missed"])
            await conn.execute(
                "UPDATE workflow_schedules SET next_at = $2, last_at = $3 WHERE workflow = $1",
                workflow, schedule.cron.next_after(now), now,
            )
            return len(chosen)
