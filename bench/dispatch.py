"""Dispatch throughput and latency on one broker: the raw aio-pika floor, Celery, and devart's full path.

    python -m bench.dispatch [--tasks 2000] [--light-tasks 200] [--slots 8] [--profile-dir DIR]

Every system runs no-op tasks on the same RabbitMQ, with names under a private prefix
(``bench-<random>.``) that are deleted at the end. Consumers get the same number of slots.

- **raw**: the driver publishes a persistent message with publisher confirms to a quorum queue; an
  echo process (``bench.raw_echo``, prefetch = slots) publishes a confirmed reply and acks.
- **celery**: ``bench.celery_app`` on a real ``celery worker --pool=threads`` subprocess
  (concurrency = slots), submit with confirms, results through ``rpc://``.
- **devart**: ``devart serve`` subprocess (REST API, Postgres, outbox relay, events consumer) and a
  ``python -m agents.noop`` subprocess; tasks submitted over HTTP, completion read from Postgres.

Figures:

- *tasks/s*: ``--tasks`` tasks submitted with ``--concurrency`` in flight; from just before the
  first submit to the moment the driver has seen every task complete (raw: reply received; Celery:
  result received; devart: ``tasks.status = 'succeeded'`` seen by a poll every 20 ms).
- *light load*: ``--light-tasks`` tasks one at a time (the next is submitted once the previous one
  completed, at most ``--light-rate`` per second). *submit->start*: raw has none; Celery: driver
  wall clock before ``apply_async`` to the task body's ``time.time()``; devart: ``tasks.created_at``
  to ``attempts.started_at`` (Postgres clock; both are the start times of the transactions that
  wrote them). *submit->done*: raw: publish to reply received; Celery: before ``apply_async`` to
  the result in the driver; devart: ``tasks.created_at`` to ``tasks.finished_at``.

``--profile-dir`` samples the control plane and the agent with py-spy during devart's throughput
run and prints where their CPU time goes, per task.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import aio_pika
import aiohttp
import asyncpg
import numpy as np
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bench.cpu import CpuMeter, children, pids_by_command
from bench.pyspy import Profile, profile_processes

SYSTEMS = ("raw", "celery", "devart")
_QUORUM = {"x-queue-type": "quorum"}
_T = TypeVar("_T")


class DispatchBenchSettings(BaseSettings):
    """Loads, sizes and limits of one benchmark run (flags override the environment)."""

    model_config = SettingsConfigDict(env_prefix="DEVART_BENCH_", extra="ignore", populate_by_name=True)

    amqp_url: str = Field(
        default="amqp://guest:guest@127.0.0.1:5672/",
        validation_alias=AliasChoices("amqp_url", "AMQP_URL", "DEVART_BENCH_AMQP_URL"),
        description="RabbitMQ shared by every system",
    )
    database_url: str | None = Field(
        default=None, description="Postgres for devart (a scratch database); unset = embedded pgserver in a temp dir"
    )
    systems: str = Field(default=",".join(SYSTEMS), description="comma-separated subset of raw,celery,devart")
    tasks: int = Field(default=2000, ge=1, description="tasks of the throughput load")
    concurrency: int = Field(default=32, ge=1, description="submissions in flight during the throughput load")
    light_tasks: int = Field(default=200, ge=1, description="tasks of the light load, one at a time")
    light_rate: float = Field(default=50.0, gt=0, description="most light-load submissions per second")
    warmup_tasks: int = Field(default=50, ge=0, description="tasks run before measuring, not counted")
    slots: int = Field(default=8, ge=1, description="concurrent tasks per consumer (agent slots, Celery concurrency)")
    batch_size: int = Field(
        default=50, ge=0, description="tasks per POST /api/v1/tasks/batch in devart's extra batched load; 0 = skip it"
    )
    batch_concurrency: int = Field(default=4, ge=1, description="batch requests in flight during the batched load")
    phase_timeout_s: float = Field(default=120.0, gt=0, description="longest wait for one phase to complete")
    profile_dir: Path | None = Field(default=None, description="sample devart's processes with py-spy, write here")
    profile_rate: int = Field(default=250, ge=1, le=2000, description="py-spy samples per second")

    @field_validator("systems")
    @classmethod
    def _known_systems(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(names) - set(SYSTEMS))
        if unknown or not names:
            raise ValueError(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
        return ",".join(names)

    def selected(self) -> list[str]:
        return self.systems.split(",")


@dataclass
class Result:
    """What one system achieved; latencies in milliseconds."""

    system: str
    tasks_per_s: float
    start_ms: list[float] = field(default_factory=list)
    done_ms: list[float] = field(default_factory=list)
    extra: dict[str, str] = field(default_factory=dict)
    cpu_ms: dict[str, float] = field(default_factory=dict)
    """CPU milliseconds per task of each process group during the throughput load."""


# --- shared helpers -----------------------------------------------------------------------------


async def _bounded(n: int, limit: int, fn: Callable[[int], Awaitable[_T]]) -> list[_T]:
    """Call ``fn(0..n-1)`` with at most ``limit`` calls in flight; results in call order."""
    results: list[Any] = [None] * n
    indices = iter(range(n))

    async def worker() -> None:
        for i in indices:
            results[i] = await fn(i)

    await asyncio.gather(*(worker() for _ in range(min(limit, n))))
    return results


async def _one_at_a_time(n: int, rate: float, fn: Callable[[int], Awaitable[_T]]) -> list[_T]:
    """Call ``fn`` n times sequentially, starting at most ``rate`` calls per second."""
    loop = asyncio.get_running_loop()
    results = []
    for i in range(n):
        due = loop.time() + 1.0 / rate
        results.append(await fn(i))
        await asyncio.sleep(max(0.0, due - loop.time()))
    return results


async def _wait_until(condition: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str,
                      interval_s: float = 0.02) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not await condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"timed out after {timeout_s:g}s waiting for {what}")
        await asyncio.sleep(interval_s)


async def _measure(n: int, load: Awaitable[object], groups: dict[str, Callable[[], list[int]]]
                   ) -> tuple[float, dict[str, float]]:
    """Run ``load`` (``n`` tasks); returns tasks/s and each group's CPU milliseconds per task."""
    groups = {**groups, "benchmark driver": lambda: [os.getpid()], "rabbitmq (whole broker)": _broker_pids}
    meter = CpuMeter(groups)
    await asyncio.to_thread(meter.start)
    began = time.perf_counter()
    await load
    rate = n / (time.perf_counter() - began)
    await asyncio.to_thread(meter.stop)
    return rate, {name: used * 1000.0 / n for name, used in meter.used_s.items()}


def _broker_pids() -> list[int]:
    return pids_by_command("beam.smp")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def _process(argv: list[str], *, env: dict[str, str], log_path: Path) -> AsyncIterator[_Child]:
    """A child process, stopped with SIGTERM (then killed) on exit; its output goes to ``log_path``."""
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, stdout=out, stderr=asyncio.subprocess.STDOUT)
        try:
            yield _Child(proc, " ".join(argv[:4]), log_path)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


@dataclass
class _Child:
    proc: asyncio.subprocess.Process
    what: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        """Raise with the tail of its output if the process has exited."""
        if self.proc.returncode is not None:
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.what} exited with {self.proc.returncode}:\n{tail}")


async def _consumers(amqp_url: str, queue: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return 0
        return declared.declaration_result.consumer_count or 0


async def _delete_names(amqp_url: str, queues: list[str], exchanges: list[str]) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in queues:
            channel = await connection.channel()
            try:
                await channel.queue_delete(name)
            except aio_pika.exceptions.ChannelClosed:
                pass
        for name in exchanges:
            channel = await connection.channel()
            try:
                await channel.exchange_delete(name)
            except aio_pika.exceptions.ChannelClosed:
                pass


# --- raw aio-pika floor -------------------------------------------------------------------------


async def bench_raw(settings: DispatchBenchSettings, prefix: str, workdir: Path) -> Result:
    """Round trips through a quorum queue and an echo process, with confirms both ways."""
    requests_name, replies_name = f"{prefix}raw.requests", f"{prefix}raw.replies"
    connection = await aio_pika.connect_robust(settings.amqp_url)
    try:
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            await channel.declare_queue(requests_name, durable=True, arguments=_QUORUM)
            replies = await channel.declare_queue(replies_name, durable=True, arguments=_QUORUM)
            loop = asyncio.get_running_loop()
            waiting: dict[str, asyncio.Future[float]] = {}

            async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                future = waiting.pop(message.correlation_id or "", None)
                if future is not None and not future.done():
                    future.set_result(loop.time())

            await replies.consume(on_reply, no_ack=True)

            async def round_trip(_: int) -> float:
                key = uuid.uuid4().hex
                arrived = waiting[key] = loop.create_future()
                sent = loop.time()
                await channel.default_exchange.publish(
                    aio_pika.Message(b"{}", correlation_id=key, reply_to=replies_name,
                                     delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                    routing_key=requests_name, mandatory=True,
                )
                return (await asyncio.wait_for(arrived, settings.phase_timeout_s) - sent) * 1000.0

            argv = [sys.executable, "-m", "bench.raw_echo", settings.amqp_url, requests_name, str(settings.slots)]
            log_path = workdir / "raw_echo.log"
            async with _process(argv, env=dict(os.environ), log_path=log_path) as echo:
                async def echo_ready() -> bool:
                    echo.check_alive()
                    return await _consumers(settings.amqp_url, requests_name) > 0

                await _wait_until(echo_ready, timeout_s=30, what="the echo consumer")
                await _bounded(settings.warmup_tasks, settings.concurrency, round_trip)
                done = await _one_at_a_time(settings.light_tasks, settings.light_rate, round_trip)
                rate, cpu = await _measure(settings.tasks, _bounded(settings.tasks, settings.concurrency, round_trip),
                                           {"echo consumer": lambda: [echo.pid]})
    finally:
        await _delete_names(settings.amqp_url, [requests_name, replies_name], [])
    return Result("raw aio-pika", rate, done_ms=done, cpu_ms=cpu)


# --- Celery -------------------------------------------------------------------------------------


def _celery_light(settings: DispatchBenchSettings) -> tuple[list[float], list[float]]:
    """Blocking Celery client: warm-up, then the light load (run in a thread)."""
    from celery.result import ResultSet

    from bench.celery_app import noop

    timeout = settings.phase_timeout_s
    ResultSet([noop.apply_async() for _ in range(max(settings.warmup_tasks, 1))]).get(timeout=timeout)
    start_ms, done_ms = [], []
    for _ in range(settings.light_tasks):
        due = time.monotonic() + 1.0 / settings.light_rate
        submitted = time.time()
        started = noop.apply_async().get(timeout=timeout)
        done_ms.append((time.time() - submitted) * 1000.0)
        start_ms.append((started - submitted) * 1000.0)
        time.sleep(max(0.0, due - time.monotonic()))
    return start_ms, done_ms


def _celery_load(settings: DispatchBenchSettings) -> None:
    """Blocking Celery client: submit the throughput load, wait for every result."""
    from celery.result import ResultSet

    from bench.celery_app import noop

    ResultSet([noop.apply_async() for _ in range(settings.tasks)]).get(timeout=settings.phase_timeout_s)


async def bench_celery(settings: DispatchBenchSettings, prefix: str, workdir: Path) -> Result:
    """A real Celery worker subprocess (threads pool, concurrency = slots) running no-op tasks."""
    from bench.celery_app import configure, shutdown

    queue = f"{prefix}celery"
    broker = settings.amqp_url.rstrip("/") + "//"
    configure(broker, queue)
    env = dict(os.environ, BENCH_CELERY_BROKER=broker, BENCH_CELERY_QUEUE=queue)
    argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool=threads",
            f"--concurrency={settings.slots}", "--without-heartbeat", "--without-gossip", "--without-mingle",
            "--loglevel=WARNING", "-Q", queue]
    log_path = workdir / "celery.log"
    # Celery's result backend and producer pool are per thread: every client call runs on this one
    # thread so that shutdown() closes the connections the benchmark actually opened.
    client = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-client")
    loop = asyncio.get_running_loop()
    try:
        async with _process(argv, env=env, log_path=log_path) as worker:
            async def worker_ready() -> bool:
                worker.check_alive()
                return await _consumers(settings.amqp_url, queue) > 0

            await _wait_until(worker_ready, timeout_s=60, what="the Celery worker")
            start_ms, done_ms = await loop.run_in_executor(client, _celery_light, settings)
            async def load() -> None:  # a coroutine, so the load starts only once the meter runs
                await loop.run_in_executor(client, _celery_load, settings)

            rate, cpu = await _measure(settings.tasks, load(),
                                       {"celery worker": lambda: [worker.pid, *children(worker.pid)]})
    finally:
        await loop.run_in_executor(client, shutdown)
        client.shutdown()
        await _delete_names(settings.amqp_url, [queue], [queue])
    return Result("celery", rate, start_ms=start_ms, done_ms=done_ms, cpu_ms=cpu)


# --- devart -------------------------------------------------------------------------------------


@asynccontextmanager
async def _database(
    settings: DispatchBenchSettings, workdir: Path
) -> AsyncIterator[tuple[str, dict[str, Callable[[], list[int]]]]]:
    """``DATABASE_URL``, or an embedded pgserver in ``workdir`` (removed on exit).

    Also yields how to find the Postgres processes (only for the embedded one).
    """
    if settings.database_url:
        yield settings.database_url, {}
        return
    import pgserver

    data = workdir / "postgres"
    server = await asyncio.to_thread(pgserver.get_server, data, cleanup_mode="delete")
    postmaster = int((await asyncio.to_thread((data / "postmaster.pid").read_text)).split()[0])
    try:
        yield server.get_uri(), {"postgres": lambda: [postmaster, *children(postmaster)]}
    finally:
        await asyncio.to_thread(server.cleanup)


_LATENCIES = """
SELECT extract(epoch FROM a.started_at - t.created_at) * 1000 AS start_ms,
       extract(epoch FROM t.finished_at - t.created_at) * 1000 AS done_ms
FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt
WHERE t.id = ANY($1::uuid[])
"""


class _DevartDriver:
    """Submits no-op tasks over HTTP and watches them complete in Postgres."""

    def __init__(self, http: aiohttp.ClientSession, db: asyncpg.Pool, timeout_s: float) -> None:
        self._http = http
        self._db = db
        self._timeout_s = timeout_s
        self._finished: dict[str, asyncio.Future[None]] = {}
        self.submit_ms: list[float] = []

    async def submit(self, _: int = 0) -> str:
        began = time.perf_counter()
        async with self._http.post("/api/v1/tasks", json={"type": "noop"}) as response:
            if response.status != 201:
                raise RuntimeError(f"submit answered {response.status}: {(await response.text())[:500]}")
            task_id = (await response.json())["id"]
        self.submit_ms.append((time.perf_counter() - began) * 1000.0)
        return task_id

    def on_transition(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        change = json.loads(payload)
        if change.get("to") == "succeeded":
            future = self._finished.pop(change["task_id"], None)
            if future is not None and not future.done():
                future.set_result(None)

    async def healthz(self, _: int) -> float:
        """Milliseconds of one liveness request: the HTTP stack alone."""
        began = time.perf_counter()
        async with self._http.get("/healthz") as response:
            response.raise_for_status()
            await response.read()
        return (time.perf_counter() - began) * 1000.0

    async def submit_and_wait(self, _: int) -> str:
        """Submit one task and return once Postgres says it finished (LISTEN on transitions)."""
        task_id = await self.submit()
        finished = self._finished[task_id] = asyncio.get_running_loop().create_future()
        # It may have finished before the answer came back, so its notification went unclaimed.
        if await self._db.fetchval("SELECT status = 'succeeded' FROM tasks WHERE id = $1", uuid.UUID(task_id)):
            self._finished.pop(task_id, None)
            return task_id
        await asyncio.wait_for(finished, self._timeout_s)
        return task_id

    async def submit_batch(self, size: int) -> list[str]:
        async with self._http.post("/api/v1/tasks/batch", json={"tasks": [{"type": "noop"}] * size}) as response:
            if response.status != 201:
                raise RuntimeError(f"batch submit answered {response.status}: {(await response.text())[:500]}")
            return [task["id"] for task in (await response.json())["tasks"]]

    async def run(self, n: int, concurrency: int) -> list[str]:
        """Submit ``n`` tasks one per request and wait until all succeeded."""
        return await self._wait_all(await _bounded(n, concurrency, self.submit))

    async def run_batches(self, n: int, size: int, concurrency: int) -> list[str]:
        """Submit ``n`` tasks ``size`` per request and wait until all succeeded."""
        sizes = [min(size, n - start) for start in range(0, n, size)]
        batches = await _bounded(len(sizes), concurrency, lambda i: self.submit_batch(sizes[i]))
        return await self._wait_all([task_id for batch in batches for task_id in batch])

    async def _wait_all(self, ids: list[str]) -> list[str]:
        keys = [uuid.UUID(i) for i in ids]

        async def all_succeeded() -> bool:
            async with self._db.acquire() as conn:
                count = await conn.fetchval(
                    "SELECT count(*) FROM tasks WHERE id = ANY($1::uuid[]) AND status = 'succeeded'", keys
                )
            return count == len(keys)

        await _wait_until(all_succeeded, timeout_s=self._timeout_s, what=f"{len(keys)} devart tasks to succeed")
        return ids

    async def latencies(self, ids: list[str]) -> tuple[list[float], list[float]]:
        async with self._db.acquire() as conn:
            rows = await conn.fetch(_LATENCIES, [uuid.UUID(i) for i in ids])
        return [float(r["start_ms"]) for r in rows], [float(r["done_ms"]) for r in rows]


async def bench_devart(
    settings: DispatchBenchSettings, prefix: str, workdir: Path
) -> tuple[list[Result], Profile | None]:
    """``devart serve`` + a noop agent as subprocesses; REST in, Postgres out. With ``batch_size``,
    a second throughput load submits through the batch endpoint ("devart batch")."""
    from control_plane.auth import create_token
    from control_plane.db import connect, create_pool, migrate_database

    async with _database(settings, workdir) as (database_url, postgres):
        await migrate_database(database_url)
        conn = await connect(database_url)
        try:
            _, token = await create_token(conn, name=f"{prefix}bench", role="ci", created_by="bench")
            _, agent_token = await create_token(conn, name=f"{prefix}agent", role="agent", created_by="bench")
        finally:
            await conn.close()
        port = _free_port()
        env = dict(os.environ, DATABASE_URL=database_url, AMQP_URL=settings.amqp_url, DEVART_BROKER_PREFIX=prefix,
                   DEVART_EMBEDDED_BROKER="false", DEVART_HOME=str(workdir / "home"), DEVART_LOG_LEVEL="WARNING")
        serve_log, agent_log = workdir / "serve.log", workdir / "agent.log"
        db = await create_pool(database_url, min_size=1, max_size=4)
        listener = await db.acquire()
        # aiohttp rather than httpx: the lighter client leaves more of the two cores to the system
        # measured (httpx took about 4.5 ms of CPU per request here, more than the control plane).
        http = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                                     timeout=aiohttp.ClientTimeout(total=settings.phase_timeout_s),
                                     connector=aiohttp.TCPConnector(limit=settings.concurrency))
        driver = _DevartDriver(http, db, settings.phase_timeout_s)
        batched: tuple[float, dict[str, float]] | None = None
        try:
            async with _process([sys.executable, "-m", "control_plane.cli", "serve", "--port", str(port)], env=env,
                          log_path=serve_log) as serve:
                async def api_ready() -> bool:
                    serve.check_alive()
                    try:
                        async with http.get("/readyz") as response:
                            return response.status == 200
                    except aiohttp.ClientError:
                        return False

                await _wait_until(api_ready, timeout_s=60, what="devart serve to be ready", interval_s=0.1)
                # DEVART_AGENT_API_URL: registration only; DEVART_API_URL would also export its spans
                agent_env = dict(env, DEVART_AGENT_API_URL=f"http://127.0.0.1:{port}", DEVART_AGENT_TOKEN=agent_token)
                async with _process([sys.executable, "-m", "agents.noop", "--slots", str(settings.slots), "--skills", "noop"],
                              env=agent_env, log_path=agent_log) as agent:
                    async def agent_ready() -> bool:
                        agent.check_alive()
                        return bool(await db.fetchval(
                            "SELECT count(*) FROM agents WHERE pid = $1 AND state = 'active'", agent.pid))

                    await _wait_until(agent_ready, timeout_s=30, what="the noop agent's hello")
                    await listener.add_listener("devart_events", driver.on_transition)
                    await driver.run(settings.warmup_tasks, settings.concurrency)
                    light = await _one_at_a_time(settings.light_tasks, settings.light_rate, driver.submit_and_wait)
                    light_submit_ms = list(driver.submit_ms[-settings.light_tasks:])
                    healthz_ms = await _one_at_a_time(50, settings.light_rate, driver.healthz)
                    groups = {"control plane": lambda: [serve.pid], "agent": lambda: [agent.pid], **postgres}
                    async with profile_processes({"control plane": serve.pid, "agent": agent.pid},
                                                 settings.profile_dir, rate=settings.profile_rate,
                                                 tasks=settings.tasks) as profile:
                        rate, cpu = await _measure(settings.tasks, driver.run(settings.tasks, settings.concurrency),
                                                   groups)
                    if profile is not None:
                        profile.cpu_ms = {name: cpu[name] for name in ("control plane", "agent")}
                    if settings.batch_size:
                        batched = await _measure(
                            settings.tasks,
                            driver.run_batches(settings.tasks, settings.batch_size, settings.batch_concurrency), groups)
                    start_ms, done_ms = await driver.latencies(light)
                    pool_ids = [r["id"] for r in await db.fetch("SELECT id FROM pools")]
        finally:
            await http.close()
            await listener.remove_listener("devart_events", driver.on_transition)
            await db.release(listener)
            await db.close()
        topology_queues = [f"{prefix}devart.control.events", f"{prefix}devart.dead",
                           *(f"{prefix}devart.pool.{p}" for p in pool_ids)]
        exchanges = [f"{prefix}devart.{name}" for name in ("tasks", "retry", "dead", "events", "control")]
        await _delete_names(settings.amqp_url, topology_queues, exchanges)
    results = [Result("devart", rate, start_ms=start_ms, done_ms=done_ms, cpu_ms=cpu,
                      extra={"POST /api/v1/tasks answered p50/p99 (light)": _p50_p99(light_submit_ms),
                             "GET /healthz answered p50/p99 (idle)": _p50_p99(healthz_ms)})]
    if batched is not None:
        results.append(Result("devart batch", batched[0], cpu_ms=batched[1], extra={
            "load": f"{settings.batch_size} tasks per request, {settings.batch_concurrency} requests in flight"}))
    return results, profile


# --- report -------------------------------------------------------------------------------------


def _p50_p99(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return f"{p50:.1f} / {p99:.1f} ms"


def report(results: list[Result], settings: DispatchBenchSettings) -> str:
    """The printed table, ratios and targets."""
    lines = [
        f"dispatch benchmark: {settings.tasks} tasks at {settings.concurrency} in flight, "
        f"{settings.light_tasks} light-load tasks one at a time, {settings.slots} slots per consumer, "
        f"{os.cpu_count()} CPUs",
        "",
        f"{'system':<14}{'tasks/s':>10}   {'submit->start p50/p99':<24}{'submit->done p50/p99':<24}",
    ]
    for r in results:
        lines.append(f"{r.system:<14}{r.tasks_per_s:>10.0f}   {_p50_p99(r.start_ms):<24}{_p50_p99(r.done_ms):<24}")
        lines.extend(f"{'':<14}{key}: {value}" for key, value in r.extra.items())
    lines.append("")
    lines.append("CPU per task during the throughput load (ms; the broker's figure includes anyone else using it)")
    for r in results:
        parts = ", ".join(f"{name} {ms:.2f}" for name, ms in r.cpu_ms.items())
        lines.append(f"  {r.system:<14}total {sum(r.cpu_ms.values()):6.2f}: {parts}")
    by_name = {r.system: r for r in results}
    devart = by_name.get("devart")
    if devart is not None:
        lines.append("")
        for name in ("devart", "devart batch"):
            for peer in ("celery", "raw aio-pika"):
                if name in by_name and peer in by_name:
                    ratio = by_name[name].tasks_per_s / by_name[peer].tasks_per_s
                    lines.append(f"{name} / {peer}: {ratio:.2f}x tasks/s")
        p50, p99 = np.percentile(np.asarray(devart.start_ms), [50, 99])
        celery = by_name.get("celery")
        if celery is not None:
            ratio = devart.tasks_per_s / celery.tasks_per_s
            lines.append(f"target devart >= 1.5x Celery tasks/s: {'met' if ratio >= 1.5 else 'NOT met'} ({ratio:.2f}x)")
        lines.append(f"target submit->start p50 <= 5 ms: {'met' if p50 <= 5 else 'NOT met'} ({p50:.1f} ms)")
        lines.append(f"target submit->start p99 <= 25 ms: {'met' if p99 <= 25 else 'NOT met'} ({p99:.1f} ms)")
    return "\n".join(lines)


async def run(
    settings: DispatchBenchSettings, workdir: Path, *, prefix: str | None = None
) -> tuple[list[Result], Profile | None]:
    """Run the selected systems one after the other (scratch files in ``workdir``).

    Every broker name starts with ``prefix`` (default ``bench-<random>.``) and is deleted at the
    end. Returns the results and devart's profile (None without ``profile_dir``).
    """
    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}."
    results: list[Result] = []
    profile = None
    runners = {"raw": bench_raw, "celery": bench_celery}
    for system in settings.selected():
        if system == "devart":
            measured, profile = await bench_devart(settings, prefix, workdir)
        else:
            measured = [await runners[system](settings, prefix, workdir)]
        results.extend(measured)
        for result in measured:
            print(f"  {result.system}: {result.tasks_per_s:.0f} tasks/s", file=sys.stderr, flush=True)
    return results, profile


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.dispatch", description=__doc__.splitlines()[0])
    for name, info in DispatchBenchSettings.model_fields.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, help=info.description)
    return parser


def main(argv: list[str] | None = None) -> None:
    flags = {k: v for k, v in vars(_parser().parse_args(argv)).items() if v is not None}
    settings = DispatchBenchSettings(**flags)
    workdir = Path(tempfile.mkdtemp(prefix="devart-bench-"))
    workdir.chmod(0o755)  # as root, pgserver runs Postgres as another user that must reach its data
    try:
        results, profile = asyncio.run(run(settings, workdir))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(report(results, settings))
    if profile is not None:
        print()
        print(profile.report())


if __name__ == "__main__":
    main()
