"""The Job sweeper: deletes sandbox Jobs whose task is already terminal.

An agent that dies (or loses its lease) while its Job runs leaves the Job behind; the control
plane then times the task out, cancels it or retries it on another attempt, but nobody is left to
delete that Job. The sweeper lists the devart Jobs of the sandbox namespace through
``KubernetesSandbox.sweep_finished_jobs`` and deletes those whose task Postgres says is terminal.
"""

from __future__ import annotations

import logging
from uuid import UUID

import asyncpg

from agents.sandbox.kubernetes import KubernetesSandbox, KubernetesSandboxSettings
from control_plane.loops import LoopService
from control_plane.tasks import TERMINAL

log = logging.getLogger("devart.k8s_sweeper")


class JobSweeper(LoopService):
    """Every ``interval_s``, deletes (propagation ``Background``) the Jobs of terminal tasks.

    A Job whose task id is not a task of this database (malformed, or another installation
    sharing the namespace) is left alone. The sweeper owns its API client: ``stop()`` closes it.
    """

    name = "k8s-sweeper"

    def __init__(self, pool: asyncpg.Pool, sandbox: KubernetesSandboxSettings, *, interval_s: float) -> None:
        super().__init__(interval_s)
        self._pool = pool
        self._sandbox = KubernetesSandbox(sandbox)

    async def run_once(self) -> None:
        await self.sweep()

    async def sweep(self) -> list[str]:
        """Delete the Jobs of terminal tasks once; returns their names."""
        deleted = await self._sandbox.sweep_finished_jobs(self._is_terminal)
        if deleted:
            log.info("deleted %d sandbox Job(s) of terminal tasks: %s", len(deleted), ", ".join(deleted))
        return deleted

    async def stop(self) -> None:
        await super().stop()
        await self._sandbox.aclose()

    async def _is_terminal(self, task_id: str) -> bool:
        try:
            key = UUID(task_id)
        except ValueError:
            return False
        status = await self._pool.fetchval("SELECT status FROM tasks WHERE id = $1", key)
        return status in TERMINAL
