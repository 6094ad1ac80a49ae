"""Works through the delivery inbox: each stored delivery, in one transaction, becomes the runs its
triggers ask for (and their check-run rows), or an outcome saying why not, and is marked done.

The delivery row is locked for that transaction; a process killed before the commit leaves it
``received`` and nothing started, so the next processor does the work, exactly once. Runs of one
pull request share the concurrency group ``github:<repo>#<number>`` with ``cancel_pending``: at
most one running and one pending; a new push cancels the pending one.
"""

from __future__ import annotations

import logging
from typing import Any
from uuid import UUID

import asyncpg

from control_plane.errors import DomainError
from control_plane.github.settings import GitHubSettings
from control_plane.github.triggers import Plan, Target, plan
from control_plane.github.webhooks import INBOX_CHANNEL
from control_plane.loops import ListeningLoop
from control_plane.workflows.engine import NewRun, WorkflowEngine

log = logging.getLogger("devart.github")

ACTOR = "github"
REPORT_CHANNEL = "devart_github"
_MERGE_EVENTS = {("pull_request_review", "submitted"), ("pull_request_review", "dismissed"),
                 ("pull_request", "labeled"), ("pull_request", "unlabeled")}


def concurrency_group(target: Target) -> str:
    where = f"#{target.number}" if target.number is not None else f"@{target.head_sha}"
    return f"github:{target.repo}{where}"


class DeliveryProcessor(ListeningLoop):
    name = "github-deliveries"

    def __init__(self, pool: asyncpg.Pool, settings: GitHubSettings, engine: WorkflowEngine) -> None:
        super().__init__(pool, INBOX_CHANNEL, settings.process_interval_s)
        self._settings = settings
        self._engine = engine

    async def run_once(self) -> None:
        await self.try_listen()
        while await self.process_one():
            pass

    async def process_one(self) -> bool:
        """Process the oldest waiting delivery; False when there is none."""
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT delivery_id, event, action, installation_id, payload FROM github_deliveries
                   WHERE state = 'received' ORDER BY received_at LIMIT 1 FOR UPDATE SKIP LOCKED"""
            )
            if row is None:
                return False
            outcome, runs = await self._apply(conn, row)
            await conn.execute(
                """UPDATE github_deliveries SET state = 'done', outcome = $2, runs = $3, processed_at = now()
                   WHERE delivery_id = $1""",
                row["delivery_id"], outcome[:1000], runs,
            )
            log.info("github delivery %s (%s): %s", row["delivery_id"], row["event"], outcome)
            return True

    async def _apply(self, conn: asyncpg.Connection, row: asyncpg.Record) -> tuple[str, list[UUID]]:
        event, payload = row["event"], row["payload"]
        if event == "ping":
            return "pong", []
        gate = (event, row["action"]) in _MERGE_EVENTS and await self._merge_due(conn, payload)
        p = plan(self._settings.config, event, payload, row["installation_id"])
        if p.target is None or not (p.starts or p.rerun_check_run):
            return ("the merge gate looks again" if gate else p.outcome), []
        outcomes: list[str] = []
        runs: list[UUID] = []
        for index, (workflow, inputs) in enumerate(p.starts):
            new = NewRun(workflow=workflow, version=None, inputs=inputs, trigger="webhook", created_by=ACTOR,
                         idempotency_key=f"github:{row['delivery_id']}:{index}",
                         concurrency=(concurrency_group(p.target), "cancel_pending"))
            run_id = await self._start(conn, row["delivery_id"], p, workflow, outcomes,
                                       lambda new=new: self._engine.start_run(conn, new))
            if run_id is not None:
                runs.append(run_id)
        if p.rerun_check_run is not None:
            run_id = await self._rerun(conn, row["delivery_id"], p, outcomes)
            if run_id is not None:
                runs.append(run_id)
        return "; ".join(outcomes), runs

    async def _start(self, conn: asyncpg.Connection, delivery_id: str, p: Plan, workflow: str, outcomes: list[str],
                     start: Any) -> UUID | None:
        assert p.target is not None
        try:
            async with conn.transaction():
                run, _ = await start()
                await _track(conn, delivery_id, p.target, run["id"], f"{self._settings.check_name}/{workflow}")
        except DomainError as exc:
            outcomes.append(f"error: {workflow}: {exc.message}")
            return None
        outcomes.append(f"started run {run['id']} of {workflow}")
        return UUID(str(run["id"]))

    async def _rerun(self, conn: asyncpg.Connection, delivery_id: str, p: Plan, outcomes: list[str]) -> UUID | None:
        assert p.target is not None
        old = await conn.fetchrow(
            """SELECT c.run_id, c.name, r.state, r.workflow, r.inputs FROM github_checks c
               JOIN workflow_runs r ON r.id = c.run_id WHERE c.repo = $1 AND c.check_run_id = $2""",
            p.target.repo, p.rerun_check_run,
        )
        if old is None:
            outcomes.append(f"ignored: check run {p.rerun_check_run} is not one of devart's")
            return None
        group = (concurrency_group(p.target), "cancel_pending")
        key = f"github:{delivery_id}:rerun"
        if old["state"] in ("failed", "cancelled"):
            def start() -> Any:
                return self._engine.rerun(conn, old["run_id"], actor=ACTOR, traceparent=None, idempotency_key=key,
                                          concurrency=group)
        else:
            new = NewRun(workflow=old["workflow"], version=None, inputs=old["inputs"], trigger="webhook",
                         created_by=ACTOR, idempotency_key=key, concurrency=group)

            def start() -> Any:
                return self._engine.start_run(conn, new)
        return await self._start(conn, delivery_id, p, old["workflow"], outcomes, start)

    async def _merge_due(self, conn: asyncpg.Connection, payload: dict[str, Any]) -> bool:
        """A review or a label changed: the merge gate looks at the pull request again (False when
        devart reports nothing on it)."""
        repo = (payload.get("repository") or {}).get("full_name")
        number = (payload.get("pull_request") or {}).get("number")
        updated = await conn.fetchval(
            """UPDATE github_pulls SET merge_due = true, available_at = least(available_at, now())
               WHERE repo = $1 AND number = $2 RETURNING 1""",
            repo, number,
        )
        if updated:
            await conn.execute("SELECT pg_notify($1, '')", REPORT_CHANNEL)
        return bool(updated)


async def _track(conn: asyncpg.Connection, delivery_id: str, target: Target, run_id: UUID, name: str) -> None:
    """The run's check-run row and, for a pull request, its summary-comment row (caller's transaction)."""
    if target.number is not None:
        await conn.execute(
            """INSERT INTO github_pulls (repo, number, installation_id, head_sha) VALUES ($1, $2, $3, $4)
               ON CONFLICT (repo, number) DO UPDATE SET head_sha = EXCLUDED.head_sha,
                   installation_id = coalesce(EXCLUDED.installation_id, github_pulls.installation_id),
                   revision = github_pulls.revision + 1, available_at = least(github_pulls.available_at, now()),
                   merge_state = 'none', merge_reason = '', updated_at = now()""",
            target.repo, target.number, target.installation_id, target.head_sha,
        )
    await conn.execute(
        """INSERT INTO github_checks (run_id, delivery_id, repo, number, installation_id, head_sha, name)
           VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (run_id) DO NOTHING""",
        run_id, delivery_id, target.repo, target.number, target.installation_id, target.head_sha, name,
    )
    await conn.execute("SELECT pg_notify($1, '')", REPORT_CHANNEL)
