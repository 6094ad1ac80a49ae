"""Dispatch throughput and latency on one broker: the raw aio-pika floor, Celery, and devart's full path.

    python -m bench.dispatch [--tasks 2000] [--light-tasks 200] [--slots 8] [--rounds 3] [--profile-dir DIR]

Every system runs no-op tasks on the same RabbitMQ, with names under a private prefix
(``bench-<random>.``) that are deleted at the end. Consumers get the same number of slots. The
systems run one after the other, ``--rounds`` times, each round starting with the next system, so
that a machine whose speed drifts (a shared VM's does, by up to 2x within minutes) moves every
system's figures alike; ratios are taken within each round.

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
import contextlib
import json
import os
import shutil
import signal
import statistics
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
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import asyncpg
from pydantic import AliasChoices, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sdk.connection import connect_robust
from bench.cpu import CpuMeter, children, pids_by_command
from bench.percentiles import p50_p99
from bench.pgstats import PgCounter, per_task
from bench.pyspy import Profile, profile_processes
from control_plane.api.hub import events_of
from control_plane.serving import free_port

SYSTEMS = ("raw", "celery", "celery-durable", "devart", "devart-baseline")
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
    systems: str = Field(default="raw,celery,celery-durable,devart",
                         description=f"comma-separated subset of {','.join(SYSTEMS)}")
    baseline: Path | None = Field(
        default=None, description="a checkout of an earlier devart, for the system devart-baseline: its control "
        "planes and agent run that checkout's code on a database its own migrations made, so that before and "
        "after are measured in the same rounds")
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
    control_planes: str = Field(
        default="1,2", description="comma-separated numbers of devart control planes to measure, one run each"
    )
    rounds: int = Field(
        default=3, ge=1, le=20, description="times every system runs, interleaved (round r starts with the r-th "
        "system): tasks/s and CPU per task are medians over the rounds, ratios medians of each round's ratio")
    phase_timeout_s: float = Field(default=120.0, gt=0, description="longest wait for one phase to complete")
    profile_dir: Path | None = Field(default=None, description="sample devart's processes with py-spy, write here")
    profile_rate: int = Field(default=250, ge=1, le=2000, description="py-spy samples per second")
    pg_stats: bool = Field(
        default=False, description="print devart's Postgres writes per task during the throughput load (WAL, rows "
        "per table, HOT updates, NOTIFYs); waits 11 s before and after the load for the statistics to settle")

    @field_validator("systems")
    @classmethod
    def _known_systems(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = sorted(set(names) - set(SYSTEMS))
        if unknown or not names:
            raise ValueError(f"unknown system(s) {unknown}; choose from {', '.join(SYSTEMS)}")
        return ",".join(names)

    @field_validator("control_planes")
    @classmethod
    def _counts(cls, value: str) -> str:
        try:
            counts = [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            counts = []
        if not counts or any(not 1 <= n <= 8 for n in counts):
            raise ValueError(f"control_planes must be numbers from 1 to 8, comma-separated, not {value!r}")
        return ",".join(map(str, counts))

    @model_validator(mode="after")
    def _baseline_given(self) -> DispatchBenchSettings:
        if "devart-baseline" in self.selected() and self.baseline is None:
            raise ValueError("the system devart-baseline needs baseline (a checkout of the code to compare with)")
        if self.baseline is not None and not (self.baseline / "control_plane" / "cli.py").is_file():
            raise ValueError(f"baseline {self.baseline} is not a devart checkout (no control_plane/cli.py)")
        return self

    def selected(self) -> list[str]:
        return self.systems.split(",")

    def control_plane_counts(self) -> list[int]:
        return [int(n) for n in self.control_planes.split(",")]


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
    pg_lines: list[str] = field(default_factory=list)
    """With ``--pg-stats``: Postgres's writes per task during the throughput load."""
    round_rates: list[float] = field(default_factory=list)
    """Tasks/s of each round, in round order (one entry for a single round)."""


def combine(rounds: list[list[Result]]) -> list[Result]:
    """One result per system out of every round's: tasks/s and CPU per task are the medians over the
    rounds (each round's rate kept in ``round_rates``), latencies pooled; the rest is round 1's."""
    by_name: dict[str, list[Result]] = {}
    for measured in rounds:
        for result in measured:
            by_name.setdefault(result.system, []).append(result)
    combined = []
    for name, results in by_name.items():
        first = results[0]
        cpu_ms = {group: statistics.median(r.cpu_ms[group] for r in results if group in r.cpu_ms)
                  for group in first.cpu_ms}
        combined.append(Result(
            name, statistics.median(r.tasks_per_s for r in results),
            start_ms=[ms for r in results for ms in r.start_ms], done_ms=[ms for r in results for ms in r.done_ms],
            extra=first.extra, cpu_ms=cpu_ms, pg_lines=first.pg_lines, round_rates=[r.tasks_per_s for r in results]))
    return combined


def ratio(system: Result, peer: Result) -> float:
    """``system``'s tasks/s over ``peer``'s: the median of the ratios within each round (neighbours in
    time, so a machine that speeds up or slows down between rounds moves both)."""
    return statistics.median(a / b for a, b in zip(system.round_rates, peer.round_rates, strict=True))


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


@asynccontextmanager
async def _process(
    argv: list[str], *, env: dict[str, str], log_path: Path, cwd: Path | None = None
) -> AsyncIterator[_Child]:
    """A child process, stopped with SIGTERM (then killed) on exit; its output goes to ``log_path``."""
    with log_path.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, env=env, cwd=cwd, stdout=out,
                                                    stderr=asyncio.subprocess.STDOUT)
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
    connection = await connect_robust(settings.amqp_url)
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
    """Blocking Celery client with the rpc backend: warm-up, then the light load (run in a thread)."""
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


def _celery_submit(n: int) -> list[str]:
    """Blocking Celery client: submit ``n`` no-op tasks (each confirmed by the broker); their ids."""
    from bench.celery_app import noop

    return [noop.apply_async().id for _ in range(n)]


def _celery_load(settings: DispatchBenchSettings) -> None:
    """Blocking Celery client: submit the throughput load, wait for every result."""
    from celery.result import ResultSet

    from bench.celery_app import noop

    ResultSet([noop.apply_async() for _ in range(settings.tasks)]).get(timeout=settings.phase_timeout_s)


class _CeleryResults:
    """The durable peer's results, read from its Postgres table the way devart's driver reads tasks.

    (Celery's own client polls the database backend through a new connection per poll outside a
    worker, which would charge Celery for the driver's choice.)"""

    def __init__(self, db: asyncpg.Pool, timeout_s: float) -> None:
        self._db = db
        self._timeout_s = timeout_s

    async def wait_all(self, ids: list[str]) -> None:
        async def all_done() -> bool:
            count = await self._db.fetchval(
                "SELECT count(*) FROM celery_taskmeta WHERE task_id = ANY($1::text[]) AND status = 'SUCCESS'", ids)
            return count == len(ids)

        await _wait_until(all_done, timeout_s=self._timeout_s, what=f"{len(ids)} Celery results")

    async def wait_one(self, task_id: str) -> float:
        """Poll every 2 ms until the result is stored; returns the task body's start time."""
        found: list[bytes] = []

        async def stored() -> bool:
            row = await self._db.fetchval(
                "SELECT result FROM celery_taskmeta WHERE task_id = $1 AND status = 'SUCCESS'", task_id)
            if row is not None:
                found.append(row)
            return row is not None

        await _wait_until(stored, timeout_s=self._timeout_s, what=f"Celery result {task_id}", interval_s=0.002)
        return float(json.loads(found[0]))  # the result column holds the task's return value as JSON


async def bench_celery(
    settings: DispatchBenchSettings, prefix: str, workdir: Path, database: _Postgres | None = None
) -> Result:
    """A real Celery worker subprocess (threads pool, concurrency = slots) running no-op tasks.

    Without ``database``: results through ``rpc://`` (the fast peer). With it: the durable peer,
    results and started states stored in a scratch database of that Postgres (SQLAlchemy)."""
    from bench.celery_app import configure, shutdown

    durable = database is not None
    queue = f"{prefix}celery{'-durable' if durable else ''}"
    broker = settings.amqp_url.rstrip("/") + "//"
    async with contextlib.AsyncExitStack() as stack:
        backend, db = "rpc://", None
        if database is not None:
            url = await stack.enter_async_context(database.scratch("bench_celery"))
            backend = "db+" + url.replace("postgresql://", "postgresql+psycopg2://", 1)
            db = await asyncpg.create_pool(url, min_size=1, max_size=2)
            stack.push_async_callback(db.close)
        configure(broker, queue, backend)
        env = dict(os.environ, BENCH_CELERY_BROKER=broker, BENCH_CELERY_QUEUE=queue, BENCH_CELERY_BACKEND=backend)
        # The durable peer runs Celery's usual prefork pool: in a threads pool its database backend
        # opens a new connection for every result (SQLAlchemy NullPool outside a forked worker).
        argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker",
                "--pool=prefork" if durable else "--pool=threads",
                f"--concurrency={settings.slots}", "--without-heartbeat", "--without-gossip", "--without-mingle",
                "--loglevel=WARNING", "-Q", queue]
        log_path = workdir / f"{queue.removeprefix(prefix)}.log"
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
                groups = {"celery worker": lambda: [worker.pid, *children(worker.pid)]}
                if db is None:
                    start_ms, done_ms = await loop.run_in_executor(client, _celery_light, settings)

                    async def load() -> None:  # a coroutine, so the load starts only once the meter runs
                        await loop.run_in_executor(client, _celery_load, settings)
                else:
                    assert database is not None
                    groups.update(database.cpu_group())
                    results = _CeleryResults(db, settings.phase_timeout_s)
                    await results.wait_all(await loop.run_in_executor(client, _celery_submit,
                                                                      max(settings.warmup_tasks, 1)))
                    start_ms, done_ms = [], []
                    for _ in range(settings.light_tasks):
                        due = loop.time() + 1.0 / settings.light_rate
                        submitted = time.time()
                        [task_id] = await loop.run_in_executor(client, _celery_submit, 1)
                        started = await results.wait_one(task_id)
                        done_ms.append((time.time() - submitted) * 1000.0)
                        start_ms.append((started - submitted) * 1000.0)
                        await asyncio.sleep(max(0.0, due - loop.time()))

                    async def load() -> None:
                        await results.wait_all(await loop.run_in_executor(client, _celery_submit, settings.tasks))

                rate, cpu = await _measure(settings.tasks, load(), groups)
        finally:
            await loop.run_in_executor(client, shutdown)
            client.shutdown()
            await _delete_names(settings.amqp_url, [queue], [queue])
    extra = {"results": "Postgres (SQLAlchemy), started state tracked"} if durable else {"results": "rpc://"}
    return Result("celery durable" if durable else "celery", rate, start_ms=start_ms, done_ms=done_ms, cpu_ms=cpu,
                  extra=extra)


# --- devart -------------------------------------------------------------------------------------


@dataclass
class _Postgres:
    """The Postgres server of a run: ``--database-url``'s, or an embedded pgserver in a temp dir.

    Each system that needs a database gets a scratch one of its own on it (:meth:`scratch`)."""

    url: str
    postmaster: int | None = None
    """The embedded server's postmaster, whose backends are the "postgres" CPU figure."""

    def pids(self) -> list[int]:
        return [self.postmaster, *children(self.postmaster)] if self.postmaster else []

    def cpu_group(self) -> dict[str, Callable[[], list[int]]]:
        return {"postgres": self.pids} if self.postmaster else {}

    @asynccontextmanager
    async def scratch(self, name: str) -> AsyncIterator[str]:
        """A new, empty database ``<server's database>_<name>``, dropped on exit; yields its URL."""
        parts = urlsplit(self.url)
        database = f"{parts.path.lstrip('/') or 'postgres'}_{name}"
        admin = await asyncpg.connect(self.url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            await admin.execute(f'CREATE DATABASE "{database}"')
        finally:
            await admin.close()
        try:
            yield urlunsplit(parts._replace(path="/" + database))
        finally:
            admin = await asyncpg.connect(self.url)
            try:
                await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            finally:
                await admin.close()


@asynccontextmanager
async def _postgres(settings: DispatchBenchSettings, workdir: Path) -> AsyncIterator[_Postgres]:
    if settings.database_url:
        yield _Postgres(settings.database_url)
        return
    import pgserver

    data = workdir / "postgres"
    server = await asyncio.to_thread(pgserver.get_server, data, cleanup_mode="delete")
    postmaster = int((await asyncio.to_thread((data / "postmaster.pid").read_text)).split()[0])
    try:
        yield _Postgres(server.get_uri(), postmaster)
    finally:
        await asyncio.to_thread(server.cleanup)


_LATENCIES = """
SELECT extract(epoch FROM a.started_at - t.created_at) * 1000 AS start_ms,
       extract(epoch FROM t.finished_at - t.created_at) * 1000 AS done_ms
FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt
WHERE t.id = ANY($1::uuid[])
"""

# Where a light-load task's milliseconds go: each span of its trace (the control plane's own, from
# the span store) as the p50 offset of its start and end from tasks.created_at (the transaction's
# start, on the same clock), then the agent's start and the task's end.
_TIMELINE = """
WITH light AS (
    SELECT t.id, t.created_at, t.finished_at, a.started_at, decode(t.trace_id, 'hex') AS trace_id
    FROM tasks t JOIN attempts a ON a.task_id = t.id AND a.attempt = t.attempt WHERE t.id = ANY($1::uuid[])
), steps AS (
    SELECT s.name, min(s.start_ns / 1e6 - extract(epoch FROM l.created_at) * 1000) AS start_ms,
           max(s.end_ns / 1e6 - extract(epoch FROM l.created_at) * 1000) AS end_ms
    FROM light l JOIN spans s ON s.trace_id = l.trace_id GROUP BY l.id, s.name
    UNION ALL
    SELECT 'agent started', extract(epoch FROM started_at - created_at) * 1000, NULL FROM light
    UNION ALL
    SELECT 'finished', extract(epoch FROM finished_at - created_at) * 1000, NULL FROM light
)
SELECT name, count(*) AS n, percentile_cont(0.5) WITHIN GROUP (ORDER BY start_ms) AS start_ms,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY end_ms) AS end_ms
FROM steps GROUP BY name ORDER BY start_ms
"""


class _DevartDriver:
    """Submits no-op tasks over HTTP and watches them complete in Postgres."""

    def __init__(self, http: list[aiohttp.ClientSession], db: asyncpg.Pool, timeout_s: float) -> None:
        self._sessions = http
        self._turn = 0
        self._db = db
        self._timeout_s = timeout_s
        self._finished: dict[str, asyncio.Future[None]] = {}
        self.submit_ms: list[float] = []

    @property
    def _http(self) -> aiohttp.ClientSession:
        """The next control plane's API, in turn (a load balancer's round robin)."""
        self._turn += 1
        return self._sessions[self._turn % len(self._sessions)]

    async def submit(self, _: int = 0) -> str:
        began = time.perf_counter()
        async with self._http.post("/api/v1/tasks", json={"type": "noop"}) as response:
            if response.status != 201:
                raise RuntimeError(f"submit answered {response.status}: {(await response.text())[:500]}")
            task_id = (await response.json())["id"]
        self.submit_ms.append((time.perf_counter() - began) * 1000.0)
        return task_id

    def on_transition(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        for line in events_of(payload):
            change = json.loads(line)
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

    async def timeline(self, ids: list[str]) -> str:
        """The light load's steps, p50 ms from ``tasks.created_at``: ``name start[-end]`` in start order."""
        async with self._db.acquire() as conn:
            rows = await conn.fetch(_TIMELINE, [uuid.UUID(i) for i in ids])
        return "; ".join(
            f"{r['name']} {r['start_ms']:.1f}" + (f"-{r['end_ms']:.1f}" if r["end_ms"] is not None else "")
            + ("" if r["n"] == len(ids) else f" ({r['n']} of {len(ids)})") for r in rows)


async def bench_devart(
    settings: DispatchBenchSettings, prefix: str, workdir: Path, database: _Postgres, *, control_planes: int = 1,
    batched_load: bool = True, code: Path | None = None,
) -> tuple[list[Result], Profile | None]:
    """``control_planes`` x ``devart serve`` + a noop agent as subprocesses on a scratch database;
    REST in (round robin over the control planes), Postgres out. With ``batch_size`` and
    ``batched_load``, a second throughput load submits through the batch endpoint ("devart batch").
    With ``code``, the processes run that checkout ("devart baseline"), on its own migrations, unprofiled."""
    from control_plane.auth import create_token
    from control_plane.db import SERVICE_ROLE, connect, create_pool, migrate_database

    name = "devart" if code is None else "devart baseline"
    if control_planes > 1:
        name += f" {control_planes}cp"
    cwd = code  # ``python -m`` puts the working directory first on the path, ahead of the installed checkout
    async with database.scratch(name.replace(" ", "_")) as database_url, contextlib.AsyncExitStack() as stack:
        env = dict(os.environ, DATABASE_URL=database_url, AMQP_URL=settings.amqp_url, DEVART_BROKER_PREFIX=prefix,
                   DEVART_EMBEDDED_BROKER="false", DEVART_HOME=str(workdir / "home"), DEVART_LOG_LEVEL="WARNING")
        if code is None:
            await migrate_database(database_url)
        else:
            async with _process([sys.executable, "-m", "control_plane.cli", "migrate"], env=env, cwd=cwd,
                                log_path=workdir / "baseline-migrate.log") as migrating:
                if await migrating.proc.wait() != 0:
                    migrating.check_alive()
        conn = await connect(database_url)
        try:
            _, token = await create_token(conn, name=f"{prefix}bench", role="ci", created_by="bench")
            _, agent_token = await create_token(conn, name=f"{prefix}agent", role="agent", created_by="bench")
        finally:
            await conn.close()
        ports = [free_port() for _ in range(control_planes)]
        db = await create_pool(database_url, role=SERVICE_ROLE, min_size=1, max_size=4)
        stack.push_async_callback(db.close)
        listener = await db.acquire()
        stack.push_async_callback(db.release, listener)
        # aiohttp rather than httpx: the lighter client leaves more of the two cores to the system
        # measured (httpx took about 4.5 ms of CPU per request here, more than the control plane).
        sessions = []
        for port in ports:
            session = aiohttp.ClientSession(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"},
                timeout=aiohttp.ClientTimeout(total=settings.phase_timeout_s),
                # idle connections closed before uvicorn's keep-alive timeout (5 s) closes them: a request
                # sent on one the server is closing is reset (seen when a phase's tail took over 5 s)
                connector=aiohttp.TCPConnector(limit=settings.concurrency, keepalive_timeout=4))
            stack.push_async_callback(session.close)
            sessions.append(session)
        driver = _DevartDriver(sessions, db, settings.phase_timeout_s)
        batched: tuple[float, dict[str, float]] | None = None
        serves = []
        for i, port in enumerate(ports):
            serve = await stack.enter_async_context(_process(
                [sys.executable, "-m", "control_plane.cli", "serve", "--port", str(port)], env=env, cwd=cwd,
                log_path=workdir / f"serve-{name}-{i}.log"))
            serves.append(serve)

            async def api_ready(serve: _Child = serve, session: aiohttp.ClientSession = sessions[i]) -> bool:
                serve.check_alive()
                try:
                    async with session.get("/readyz") as response:
                        return response.status == 200
                except aiohttp.ClientError:
                    return False

            await _wait_until(api_ready, timeout_s=60, what="devart serve to be ready", interval_s=0.1)
        # DEVART_AGENT_API_URL: registration only; DEVART_API_URL would also export its spans
        agent_env = dict(env, DEVART_AGENT_API_URL=f"http://127.0.0.1:{ports[0]}", DEVART_AGENT_TOKEN=agent_token)
        agent = await stack.enter_async_context(_process(
            [sys.executable, "-m", "agents.noop", "--slots", str(settings.slots), "--skills", "noop"],
            env=agent_env, cwd=cwd, log_path=workdir / f"agent-{name}.log"))

        async def agent_ready() -> bool:
            agent.check_alive()
            return bool(await db.fetchval("SELECT count(*) FROM agents WHERE pid = $1 AND state = 'active'", agent.pid))

        await _wait_until(agent_ready, timeout_s=30, what="the noop agent's hello")
        await listener.add_listener("devart_events", driver.on_transition)
        stack.push_async_callback(listener.remove_listener, "devart_events", driver.on_transition)
        await driver.run(settings.warmup_tasks, settings.concurrency)
        light = await _one_at_a_time(settings.light_tasks, settings.light_rate, driver.submit_and_wait)
        light_submit_ms = list(driver.submit_ms[-settings.light_tasks:])
        healthz_ms = await _one_at_a_time(50, settings.light_rate, driver.healthz)
        groups = {"control plane": lambda: [s.pid for s in serves], "agent": lambda: [agent.pid],
                  **database.cpu_group()}
        profiled = {"control plane": serves[0].pid, "agent": agent.pid} if control_planes == 1 and code is None else {}
        counter = None
        if settings.pg_stats:
            counter = PgCounter(await stack.enter_async_context(db.acquire()))
            await counter.start()
            stack.push_async_callback(counter.stop)
            before = await counter.snapshot()
        async with profile_processes(profiled, settings.profile_dir if profiled else None,
                                     rate=settings.profile_rate, tasks=settings.tasks) as profile:
            rate, cpu = await _measure(settings.tasks, driver.run(settings.tasks, settings.concurrency), groups)
        pg_lines = per_task(before, await counter.snapshot(), settings.tasks) if counter is not None else []
        if profile is not None:
            profile.cpu_ms = {name: cpu[name] for name in ("control plane", "agent")}
        if settings.batch_size and batched_load:
            batched = await _measure(
                settings.tasks, driver.run_batches(settings.tasks, settings.batch_size, settings.batch_concurrency),
                groups)
        start_ms, done_ms = await driver.latencies(light)
        timeline = await driver.timeline(light)
        pool_ids = [r["id"] for r in await db.fetch("SELECT id FROM pools")]
        await stack.aclose()
        topology_queues = [f"{prefix}devart.control.events", f"{prefix}devart.dead",
                           *(f"{prefix}devart.pool.{p}" for p in pool_ids)]
        exchanges = [f"{prefix}devart.{name}" for name in ("tasks", "retry", "dead", "events", "control")]
        await _delete_names(settings.amqp_url, topology_queues, exchanges)
    results = [Result(name, rate, start_ms=start_ms, done_ms=done_ms, cpu_ms=cpu, pg_lines=pg_lines,
                      extra={"POST /api/v1/tasks answered p50/p99 (light)": _p50_p99(light_submit_ms),
                             "GET /healthz answered p50/p99 (idle)": _p50_p99(healthz_ms),
                             "light-load timeline, p50 ms from tasks.created_at": timeline})]
    if batched is not None:
        results.append(Result(f"{name} batch", batched[0], cpu_ms=batched[1], extra={
            "load": f"{settings.batch_size} tasks per request, {settings.batch_concurrency} requests in flight"}))
    return results, profile


# --- report -------------------------------------------------------------------------------------


def _p50_p99(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p99 = p50_p99(values)
    return f"{p50:.1f} / {p99:.1f} ms"


def report(results: list[Result], settings: DispatchBenchSettings) -> str:
    """The printed table, ratios and targets."""
    lines = [
        f"dispatch benchmark: {settings.tasks} tasks at {settings.concurrency} in flight, "
        f"{settings.light_tasks} light-load tasks one at a time, {settings.slots} slots per consumer, "
        f"{os.cpu_count()} CPUs",
        "",
        f"{'system':<22}{'tasks/s':>10}   {'submit->start p50/p99':<24}{'submit->done p50/p99':<24}",
    ]
    for r in results:
        lines.append(f"{r.system:<22}{r.tasks_per_s:>10.0f}   {_p50_p99(r.start_ms):<24}{_p50_p99(r.done_ms):<24}")
        lines.extend(f"{'':<22}{key}: {value}" for key, value in r.extra.items())
    lines.append("")
    lines.append("CPU per task during the throughput load (ms; the broker's figure includes anyone else using it)")
    for r in results:
        parts = ", ".join(f"{name} {ms:.2f}" for name, ms in r.cpu_ms.items())
        lines.append(f"  {r.system:<22}total {sum(r.cpu_ms.values()):6.2f}: {parts}")
    for r in results:
        if r.pg_lines:
            lines.extend(["", f"Postgres per task during {r.system}'s throughput load (--pg-stats)", *r.pg_lines])
    by_name = {r.system: r for r in results}
    devart = by_name.get("devart")
    lines.append("")
    if settings.rounds > 1:
        lines.append(f"{settings.rounds} rounds: tasks/s and CPU per task above are medians over the rounds, latencies "
                     "pooled, the other lines round 1's; a ratio is the median of the rounds' ratios")
        lines.extend(f"  {r.system:<22}tasks/s by round: {', '.join(f'{rate:.0f}' for rate in r.round_rates)}"
                     for r in results)

    def compared(system: Result, peer: Result) -> str:
        value = ratio(system, peer)
        if len(system.round_rates) == 1:
            return f"{value:.2f}x"
        rounds = ", ".join(f"{a / b:.2f}" for a, b in zip(system.round_rates, peer.round_rates, strict=True))
        return f"{value:.2f}x; by round {rounds}"

    peers = ("celery", "celery durable", "raw aio-pika")
    for name in [r.system for r in results if r.system.startswith("devart")]:
        for peer in peers:
            if peer in by_name:
                lines.append(f"{name} / {peer}: {compared(by_name[name], by_name[peer])} tasks/s")
    if devart is not None and "devart baseline" in by_name:
        lines.append(f"devart / devart baseline: {compared(devart, by_name['devart baseline'])} tasks/s")
    if devart is not None:
        for peer, target in (("celery", 1.5), ("celery durable", 3.0)):
            if peer in by_name:
                met = ratio(devart, by_name[peer]) >= target
                lines.append(f"target devart >= {target:g}x {peer} tasks/s: "
                             f"{'met' if met else 'NOT met'} ({compared(devart, by_name[peer])})")
        p50, p99 = p50_p99(devart.start_ms)
        lines.append(f"target submit->start p50 <= 5 ms: {'met' if p50 <= 5 else 'NOT met'} ({p50:.1f} ms)")
        lines.append(f"target submit->start p99 <= 25 ms: {'met' if p99 <= 25 else 'NOT met'} ({p99:.1f} ms)")
        for name, result in by_name.items():
            if name.startswith("devart ") and name.endswith("cp"):
                met = ratio(result, devart) >= 1.6
                lines.append(f"target {name} >= 1.6x devart (needs the cores for it; this machine has "
                             f"{os.cpu_count()}): {'met' if met else 'NOT met'} ({compared(result, devart)})")
    load = os.getloadavg()
    lines.append(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return "\n".join(lines)


async def run(
    settings: DispatchBenchSettings, workdir: Path, *, prefix: str | None = None
) -> tuple[list[Result], Profile | None]:
    """Run the selected systems ``rounds`` times, interleaved (scratch files in ``workdir``); the
    profile and the Postgres statistics come from round 1 only, as they slow what they watch.

    Every broker name starts with ``prefix`` (default ``bench-<random>.``) and is deleted at the
    end. Returns one result per system (:func:`combine`) and devart's profile (None without
    ``profile_dir``).
    """
    prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}."
    systems = settings.selected()
    rounds: list[list[Result]] = []
    profile = None
    async with _postgres(settings, workdir) as database:
        for number in range(settings.rounds):
            watched = settings if number == 0 else settings.model_copy(update={"profile_dir": None, "pg_stats": False})
            order = systems[number % len(systems):] + systems[:number % len(systems)]
            measured: list[Result] = []
            for system in order:
                results, run_profile = await _bench_system(system, watched, prefix, workdir, database)
                profile = profile or run_profile
                measured.extend(results)
                for result in results:
                    print(f"  round {number + 1}: {result.system}: {result.tasks_per_s:.0f} tasks/s",
                          file=sys.stderr, flush=True)
            rounds.append(measured)
    return combine(rounds), profile


async def _bench_system(
    system: str, settings: DispatchBenchSettings, prefix: str, workdir: Path, database: _Postgres
) -> tuple[list[Result], Profile | None]:
    if system in ("devart", "devart-baseline"):
        measured: list[Result] = []
        profile = None
        code = settings.baseline if system == "devart-baseline" else None
        for i, count in enumerate(settings.control_plane_counts()):
            runs, run_profile = await bench_devart(settings, prefix, workdir, database, control_planes=count,
                                                   batched_load=i == 0, code=code)
            measured.extend(runs)
            profile = profile or run_profile
        return measured, profile
    if system == "celery-durable":
        return [await bench_celery(settings, prefix, workdir, database)], None
    if system == "celery":
        return [await bench_celery(settings, prefix, workdir)], None
    return [await bench_raw(settings, prefix, workdir)], None


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
