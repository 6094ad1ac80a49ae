"""Workflow engine overhead: a 100-step fan-out/fan-in run against the same tasks driven by a client.

    python -m bench.workflows [--fan 98] [--rounds 5] [--slots 100]

``devart serve`` and a ``python -m agents.noop`` agent (``--slots`` slots, so the fan-out never
waits for a slot) run as subprocesses on an embedded pgserver (or ``--database-url``) with their
production defaults. Each round runs the same DAG of no-op tasks twice, alternating:

- **engine**: one run of the workflow ``root -> w0..w{fan-1} -> join`` (``fan + 2`` steps) started over
  ``POST /api/v1/workflows/{name}/runs``; the engine schedules every step in the transaction of the
  task end that made it ready.
- **client** (the peer): the same tasks submitted directly by the fastest client we can write: it
  LISTENs on Postgres for task transitions, submits ``root``, then the fan-out in one
  ``POST /api/v1/tasks/batch`` the moment root succeeded, then ``join`` when the last one did.

Figures come from Postgres timestamps (one clock for both; each is the start of the transaction
that wrote it), per round:

- *overhead*: from the run's start (the run row, or root's task row for the client) to the last
  step's start (join's attempt ``started_at``), minus the tasks' own time on that path (root's and
  the last fan-out task's attempt ``finished_at - started_at``): what the orchestration costs.
- *per step*: each step's attempt ``started_at`` minus the moment it became ready (the run's
  start for root, root's ``finished_at`` for the fan-out, the last fan-out ``finished_at`` for join),
  p50/p99 over every step of every round.

The first round of each is a warm-up and not counted.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench.dispatch import _delete_names, _postgres, _process, _wait_until
from bench.options import settings_parser
from bench.percentiles import p50_p99
from control_plane.api.hub import events_of
from control_plane.serving import free_port

MODES = ("engine", "client")
WORKFLOW = "bench-fan"


class WorkflowBenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_BENCH_", extra="ignore")

    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/",
                          validation_alias=AliasChoices("amqp_url", "AMQP_URL", "DEVART_BENCH_AMQP_URL"),
                          description="RabbitMQ the control plane and the agent use")
    database_url: str | None = Field(default=None, description="Postgres (a scratch database); unset = embedded pgserver")
    fan: int = Field(default=98, ge=1, le=400, description="parallel steps between root and join (fan + 2 steps)")
    rounds: int = Field(default=5, ge=1, description="measured rounds of each mode (after one warm-up round)")
    slots: int = Field(default=100, ge=1, description="slots of the noop agent")
    phase_timeout_s: float = Field(default=120.0, gt=0, description="longest wait for one run")


@dataclass
class Step:
    name: str
    created: datetime
    started: datetime
    finished: datetime


@dataclass
class Round:
    """One execution of the DAG: its start and every step's timestamps."""

    start: datetime
    steps: dict[str, Step]

    def _ms(self, a: datetime, b: datetime) -> float:
        return (b - a).total_seconds() * 1000.0

    def overheads_ms(self) -> dict[str, float]:
        """Per step: run start -> its start, minus the own time of the tasks on its path."""
        root = self.steps["root"]
        fan = [s for n, s in self.steps.items() if n not in ("root", "join")]
        last = max(fan, key=lambda s: s.finished)
        own_root = self._ms(root.started, root.finished)
        own = {"root": 0.0, **{s.name: own_root for s in fan},
               "join": own_root + self._ms(last.started, last.finished)}
        return {name: self._ms(self.start, step.started) - own[name] for name, step in self.steps.items()}

    def step_latencies_ms(self) -> list[float]:
        """Per step: the moment it became ready -> its start."""
        root = self.steps["root"]
        fan = [s for n, s in self.steps.items() if n not in ("root", "join")]
        ready_join = max(s.finished for s in fan)
        return ([self._ms(self.start, root.started)] + [self._ms(root.finished, s.started) for s in fan]
                + [self._ms(ready_join, self.steps["join"].started)])


@dataclass
class Results:
    settings: WorkflowBenchSettings
    rounds: dict[str, list[Round]] = field(default_factory=lambda: {m: [] for m in MODES})


def definition(fan: int) -> dict[str, Any]:
    noop: dict[str, Any] = {"type": "noop", "requires": ["noop"]}
    return {"name": WORKFLOW, "steps": {
        "root": noop,
        **{f"w{i}": {**noop, "needs": ["root"]} for i in range(fan)},
        "join": {**noop, "needs": [f"w{i}" for i in range(fan)]},
    }}


_STEPS = """
SELECT t.id, t.created_at, a.started_at, a.finished_at
FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt
WHERE t.id = ANY($1::uuid[])
"""


class _Driver:
    """Both modes over HTTP; completions seen through Postgres notifications (LISTEN devart_events)."""

    def __init__(self, http: aiohttp.ClientSession, db: asyncpg.Pool, timeout_s: float) -> None:
        self._http, self._db, self._timeout_s = http, db, timeout_s
        self._waiting: dict[str, asyncio.Future[None]] = {}

    def on_event(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for line in events_of(payload):
            self._ended(json.loads(line))

    def _ended(self, event: dict[str, Any]) -> None:
        key = {"task": "task_id", "run": "run_id"}.get(event.get("kind", ""))
        if key is None or event.get("to") not in ("succeeded", "failed", "dead", "cancelled", "timed_out"):
            return
        future = self._waiting.pop(str(event[key]), None)
        if future is None or future.done():
            return
        if event["to"] == "succeeded":
            future.set_result(None)
        else:
            future.set_exception(RuntimeError(f"{event['kind']} {event[key]} ended {event['to']}: {event.get('reason')}"))

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        async with self._http.post(path, json=body) as response:
            if response.status not in (200, 201):
                raise RuntimeError(f"POST {path} answered {response.status}: {(await response.text())[:500]}")
            return await response.json()

    async def _until_done(self, ids: list[str], check: str) -> None:
        """Wait for the notifications of ``ids``; ``check`` (SQL, $1 = uuid[]) finds those already done."""
        loop = asyncio.get_running_loop()
        futures = [self._waiting.setdefault(i, loop.create_future()) for i in ids]
        done = {str(r[0]) for r in await self._db.fetch(check, [uuid.UUID(i) for i in ids])}
        for i in done:  # ended before we listened for it: its notification went unclaimed
            future = self._waiting.pop(i, None)
            if future is not None and not future.done():
                future.set_result(None)
        await asyncio.wait_for(asyncio.gather(*futures), self._timeout_s)

    async def _tasks_done(self, ids: list[str]) -> None:
        await self._until_done(ids, "SELECT id FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'succeeded'")

    async def engine(self, fan: int) -> Round:
        run = await self._post(f"/api/v1/workflows/{WORKFLOW}/runs", {"inputs": {}})
        await self._until_done([run["id"]],
                               "SELECT id FROM workflow_runs WHERE id = ANY($1::uuid[]) AND state = 'succeeded'")
        rows = await self._db.fetch("SELECT job, task_id FROM run_steps WHERE run_id = $1", uuid.UUID(run["id"]))
        start = await self._db.fetchval("SELECT created_at FROM workflow_runs WHERE id = $1", uuid.UUID(run["id"]))
        return await self._round(start, {r["job"]: str(r["task_id"]) for r in rows})

    async def client(self, fan: int) -> Round:
        noop = {"type": "noop", "requires": ["noop"]}
        root = (await self._post("/api/v1/tasks", noop))["id"]
        await self._tasks_done([root])
        batch = await self._post("/api/v1/tasks/batch", {"tasks": [noop] * fan})
        fanned = [t["id"] for t in batch["tasks"]]
        await self._tasks_done(fanned)
        join = (await self._post("/api/v1/tasks", noop))["id"]
        await self._tasks_done([join])
        start = await self._db.fetchval("SELECT created_at FROM tasks WHERE id = $1", uuid.UUID(root))
        return await self._round(start, {"root": root, **{f"w{i}": t for i, t in enumerate(fanned)}, "join": join})

    async def _round(self, start: datetime, task_ids: dict[str, str]) -> Round:
        rows = {str(r["id"]): r for r in await self._db.fetch(_STEPS, [uuid.UUID(t) for t in task_ids.values()])}
        return Round(start, {name: Step(name, rows[t]["created_at"], rows[t]["started_at"], rows[t]["finished_at"])
                             for name, t in task_ids.items()})


async def run(settings: WorkflowBenchSettings, workdir: Path, *, prefix: str | None = None) -> Results:
    from control_plane.auth import create_token
    from control_plane.db import SERVICE_ROLE, connect, create_pool, migrate_database

    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}."
    results = Results(settings)
    async with _postgres(settings, workdir) as database:  # type: ignore[arg-type]
        database_url = database.url
        await migrate_database(database_url)
        conn = await connect(database_url)
        try:
            _, token = await create_token(conn, name=f"{prefix}bench", role="supervisor", created_by="bench")
            _, agent_token = await create_token(conn, name=f"{prefix}agent", role="agent", created_by="bench")
        finally:
            await conn.close()
        port = free_port()
        env = dict(os.environ, DATABASE_URL=database_url, AMQP_URL=settings.amqp_url, DEVART_BROKER_PREFIX=prefix,
                   DEVART_EMBEDDED_BROKER="false", DEVART_HOME=str(workdir / "home"), DEVART_LOG_LEVEL="WARNING",
                   DEVART_BROKER_QUEUE_EXPIRES_S="60")
        db = await create_pool(database_url, role=SERVICE_ROLE, min_size=1, max_size=4)
        listener = await db.acquire()
        http = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=settings.phase_timeout_s))
        driver = _Driver(http, db, settings.phase_timeout_s)
        pool_ids: list[str] = []
        try:
            async with _process([sys.executable, "-m", "control_plane.cli", "serve", "--port", str(port)], env=env,
                                log_path=workdir / "serve.log") as serve:
                async def api_ready() -> bool:
                    serve.check_alive()
                    try:
                        async with http.get("/readyz") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await _wait_until(api_ready, timeout_s=60, what="devart serve to be ready", interval_s=0.1)
                agent_env = dict(env, DEVART_AGENT_API_URL=f"http://127.0.0.1:{port}", DEVART_AGENT_TOKEN=agent_token)
                async with _process([sys.executable, "-m", "agents.noop", "--slots", str(settings.slots),
                                     "--skills", "noop"], env=agent_env, log_path=workdir / "agent.log") as agent:
                    async def agent_ready() -> bool:
                        agent.check_alive()
                        return bool(await db.fetchval(
                            "SELECT count(*) FROM agents WHERE pid = $1 AND state = 'active'", agent.pid))

                    await _wait_until(agent_ready, timeout_s=30, what="the noop agent's hello")
                    await listener.add_listener("devart_events", driver.on_event)
                    await driver._post("/api/v1/workflows", definition(settings.fan))
                    for number in range(settings.rounds + 1):
                        for mode in MODES:
                            measured = await getattr(driver, mode)(settings.fan)
                            if number:  # round 0 warms both paths up
                                results.rounds[mode].append(measured)
                    serve.check_alive()
                    pool_ids = [r["id"] for r in await db.fetch("SELECT id FROM pools")]
        finally:
            await http.close()
            await listener.remove_listener("devart_events", driver.on_event)
            await db.release(listener)
            await db.close()
        await _delete_names(settings.amqp_url,
                            [f"{prefix}devart.control.events", f"{prefix}devart.dead",
                             *(f"{prefix}devart.pool.{p}" for p in pool_ids)],
                            [f"{prefix}devart.{name}" for name in ("tasks", "retry", "dead", "events", "control")])
    return results



def report(results: Results) -> str:
    s = results.settings
    rows: list[tuple[str, dict[str, tuple[float, float]]]] = [
        ("run start -> each step's start, beyond the tasks' own time (all steps)",
         {m: p50_p99([ms for r in results.rounds[m] for ms in r.overheads_ms().values()]) for m in MODES}),
        ("run start -> the last step's start, beyond the tasks' own time (per run)",
         {m: p50_p99([r.overheads_ms()["join"] for r in results.rounds[m]]) for m in MODES}),
        ("a step ready -> its start (all steps)",
         {m: p50_p99([ms for r in results.rounds[m] for ms in r.step_latencies_ms()]) for m in MODES}),
    ]
    lines = [f"{s.fan + 2}-step fan-out/fan-in (root -> {s.fan} parallel -> join) of no-op tasks, {s.rounds} round(s) "
             f"of each after a warm-up, agent with {s.slots} slots; p50 / p99 in ms:",
             f"  {'':74} {'engine':>17}   {'client (peer)':>17}   engine/client p50"]
    for label, by_mode in rows:
        (e50, e99), (c50, c99) = by_mode["engine"], by_mode["client"]
        lines.append(f"  {label:74} {e50:7.1f} / {e99:7.1f}   {c50:7.1f} / {c99:7.1f}   {e50 / c50:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = vars(settings_parser(WorkflowBenchSettings, prog="python -m bench.workflows", doc=__doc__).parse_args(argv))
    settings = WorkflowBenchSettings(**args)
    with tempfile.TemporaryDirectory(prefix="devart-bench-workflows-") as tmp:
        os.chmod(tmp, 0o755)  # pgserver runs Postgres as its own user when we are root
        print(report(asyncio.run(run(settings, Path(tmp)))))


if __name__ == "__main__":
    main()
