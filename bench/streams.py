"""Submit latency with and without 1,000 open event streams.

    python -m bench.streams [--streams 1000] [--submits 200] [--rate 10] [--rounds 4] [--profile-dir DIR]

``devart serve`` runs as a subprocess on an embedded pgserver (or ``--database-url``) with its
production defaults; no agent runs, so every task stays ``pending`` and each submit fans one
``task`` event out to every open stream. The driver (aiohttp) submits ``--submits`` tasks one at a
time (at most ``--rate`` per second) and times each ``POST /api/v1/tasks``, with no stream open
and with ``--streams`` ``GET /api/v1/events`` streams open (spread over tokens so no per-token cap
is reached, and held by a process of their own so the driver's loop only times submits: uvloop,
each stream read by protocol callbacks, the lightest client there is, since on one machine its CPU
is taken from the API's), the two alternating in ``--rounds`` rounds so that both meet the same load
from the machine's other processes. It prints p50/p99 of both and the ratio of the p99s (target: at
most 2x), how many events the streams received, the CPU per submit of the API in each phase and of
the streams' process, /readyz with the streams open and the load average of each round.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from functools import partial
from multiprocessing.connection import Connection
from pathlib import Path

import aiohttp
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from agents.sdk.eventloop import run as run_loop
from bench.cpu import CpuMeter
from bench.dispatch import _postgres, _process, _wait_until
from bench.options import settings_parser
from bench.percentiles import p50_p99
from bench.pyspy import profile_processes
from control_plane.serving import free_port


class StreamsBenchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_BENCH_", extra="ignore", cli_parse_args=False)

    amqp_url: str = Field(default="amqp://guest:guest@127.0.0.1:5672/",
                          validation_alias=AliasChoices("AMQP_URL", "DEVART_BENCH_AMQP_URL"),
                          description="RabbitMQ the control plane uses")
    database_url: str | None = Field(default=None, description="Postgres (a scratch database); unset = embedded pgserver")
    streams: int = Field(default=1000, ge=1, description="event streams held open during the second phase")
    streams_per_token: int = Field(default=100, ge=1, description="streams per viewer token (the server's default cap)")
    submits: int = Field(default=200, ge=10, description="tasks submitted one at a time in each phase")
    rate: float = Field(default=10.0, gt=0, description="most submits per second")
    phase_timeout_s: float = Field(default=300.0, gt=0, description="give up on a phase after this long")
    rounds: int = Field(default=4, ge=1, description="the two phases alternate in this many rounds (the streams "
                        "open afresh in each), so both see the same background load")
    profile_dir: Path | None = Field(default=None, description="sample the API with py-spy during the last round "
                                     "with streams, write here and print where its time goes")
    profile_rate: int = Field(default=250, ge=1, le=2000, description="py-spy samples per second")


async def _submits(http: aiohttp.ClientSession, count: int, rate: float) -> list[float]:
    took: list[float] = []
    for i in range(count):
        started = time.perf_counter()
        async with http.post("/api/v1/tasks", json={"type": "bench-stream", "input": {"i": i}}) as response:
            await response.read()
            if response.status != 201:
                raise RuntimeError(f"submit answered {response.status}: {await response.text()}")
        took.append((time.perf_counter() - started) * 1000)
        await asyncio.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - started)))
    return took


class _Streams:
    """``count`` open ``GET /api/v1/events`` streams, held by a process of their own (so the
    driver's event loop, which times the submits, does no stream reading), each counting the events
    it receives."""

    def __init__(self, port: int, tokens: list[str], count: int, per_token: int) -> None:
        self._args = (port, tokens, count, per_token)
        self.events: list[int] = []

    async def __aenter__(self) -> _Streams:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_hold_streams, args=(*self._args, child), daemon=True)
        self._process.start()
        if not await asyncio.to_thread(self._conn.poll, 120):
            raise RuntimeError("the streams did not open within 120 s")
        opened = self._conn.recv()
        if isinstance(opened, str):
            raise RuntimeError(opened)
        return self

    @property
    def pid(self) -> int:
        return self._process.pid  # type: ignore[return-value]

    async def counts(self, expected: int, within_s: float) -> list[int]:
        """Each stream's event count, once every stream has ``expected`` events, or after ``within_s``
        (the counts then show which streams fell short)."""
        deadline = asyncio.get_running_loop().time() + within_s
        while True:
            self._conn.send("report")
            counts: list[int] = await asyncio.to_thread(self._conn.recv)
            if min(counts) >= expected or asyncio.get_running_loop().time() > deadline:
                return counts
            await asyncio.sleep(0.05)

    async def __aexit__(self, *_: object) -> None:
        self._conn.send("stop")
        await asyncio.to_thread(self._process.join, 40)
        if self._process.is_alive():
            self._process.kill()


async def _stream_spans(database_url: str, at_least: int) -> bool:
    """Whether the server has exported the spans of ``at_least`` ended streams: the last of the work
    of closing them, which would otherwise land in the next phase, without streams."""
    from control_plane.db import connect

    conn = await connect(database_url)
    try:
        return await conn.fetchval("SELECT count(*) FROM spans WHERE name = 'GET /api/v1/events'") >= at_least
    finally:
        await conn.close()


def _hold_streams(port: int, tokens: list[str], count: int, per_token: int, conn: Connection) -> None:
    run_loop(_held(port, tokens, count, per_token, conn), "uvloop")


class _CountingStream(asyncio.Protocol):
    """One event stream read by callbacks (no task, no stream reader: the lightest client, so that
    the streams' process takes as little CPU from the API's as it can on the same machine)."""

    def __init__(self, request: bytes, started: Callable[[bytes], None]) -> None:
        self._request, self._started = request, started
        self._head = b""
        self._tail = b""
        self.events = 0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self._started is not None:
            self._head += data
            if b"\r\n" not in self._head:
                return
            self._started(self._head)
            self._started = None  # type: ignore[assignment]
            data, self._head = self._head, b""
        chunk = self._tail + data
        self.events += chunk.count(b"event: ") - self._tail.count(b"event: ")
        self._tail = chunk[-6:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


async def _held(port: int, tokens: list[str], count: int, per_token: int, conn: Connection) -> None:
    """The streams' process: open them all, say so, count events until told to report, then until
    told to stop."""
    loop = asyncio.get_running_loop()
    opened = asyncio.Event()
    answered = 0
    refused: list[str] = []

    def started(head: bytes) -> None:
        nonlocal answered
        answered += 1
        if b" 200 " not in head.split(b"\r\n", 1)[0]:
            refused.append(head[:500].decode(errors="replace"))
        if answered == count:
            opened.set()

    streams = [_CountingStream(f"GET /api/v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
                               f"{tokens[i // per_token]}\r\nAccept: text/event-stream\r\n\r\n".encode(), started)
               for i in range(count)]
    transports = []
    try:
        for stream in streams:
            transport, _ = await loop.create_connection(lambda s=stream: s, "127.0.0.1", port)
            transports.append(transport)
        async with asyncio.timeout(110):
            await opened.wait()
    except (OSError, TimeoutError) as exc:
        conn.send(f"only {answered} of {count} streams answered: {exc!r}")
    else:
        conn.send(refused[0] if refused else count)
    while (command := await asyncio.to_thread(conn.recv)) != "stop":
        if command == "report":
            conn.send([s.events for s in streams])
    # Half-closed, so the server closes each connection once it has ended that stream: the next
    # phase (without streams) starts after the server's work of closing them, not during it.
    for transport in transports:
        transport.write_eof()  # type: ignore[attr-defined]
    await asyncio.wait([s.lost for s in streams], timeout=30)


async def run(settings: StreamsBenchSettings) -> str:
    from control_plane.auth import create_token
    from control_plane.db import connect, migrate_database

    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    with tempfile.TemporaryDirectory(prefix="devart-bench-streams-") as tmp:
        workdir = Path(tmp)
        os.chmod(workdir, 0o755)  # pgserver runs Postgres as its own user when we are root
        async with _postgres(settings, workdir) as database:  # type: ignore[arg-type]
            database_url = database.url
            await migrate_database(database_url)
            conn = await connect(database_url)
            try:
                _, submitter = await create_token(conn, name=f"{prefix}ci", role="ci", created_by="bench")
                viewers = [
                    (await create_token(conn, name=f"{prefix}viewer-{i}", role="viewer", created_by="bench"))[1]
                    for i in range(-(-settings.streams // settings.streams_per_token))
                ]
            finally:
                await conn.close()
            port = free_port()
            env = dict(os.environ, DATABASE_URL=database_url, AMQP_URL=settings.amqp_url, DEVART_BROKER_PREFIX=prefix,
                       DEVART_EMBEDDED_BROKER="false", DEVART_HOME=str(workdir / "home"), DEVART_LOG_LEVEL="WARNING",
                       DEVART_BROKER_QUEUE_EXPIRES_S="60")
            base_url = f"http://127.0.0.1:{port}"
            http = aiohttp.ClientSession(base_url=base_url, headers={"Authorization": f"Bearer {submitter}"},
                                         timeout=aiohttp.ClientTimeout(total=settings.phase_timeout_s))
            try:
                async with _process([sys.executable, "-m", "control_plane.cli", "serve", "--port", str(port)],
                                    env=env, log_path=workdir / "serve.log") as serve:
                    async def ready() -> bool:
                        serve.check_alive()
                        try:
                            async with http.get("/readyz") as response:
                                return response.status == 200
                        except aiohttp.ClientError:
                            return False

                    await _wait_until(ready, timeout_s=60, what="devart serve to be ready", interval_s=0.1)
                    await _submits(http, 20, settings.rate * 4)  # warm-up
                    chunk = settings.submits // settings.rounds
                    quiet: list[float] = []
                    loaded: list[float] = []
                    load: list[float] = []
                    received: list[int] = []
                    profile = None
                    cpu = {"quiet": 0.0, "loaded": 0.0, "streams": 0.0}
                    streams_ended = 0
                    for last in [False] * (settings.rounds - 1) + [True]:
                        load.append(os.getloadavg()[0])
                        meter = CpuMeter({"api": lambda: [serve.pid]})
                        meter.start()
                        quiet += await _submits(http, chunk, settings.rate)
                        meter.stop()
                        cpu["quiet"] += meter.used_s["api"]
                        async with _Streams(port, viewers, settings.streams, settings.streams_per_token) as streams:
                            meter = CpuMeter({"api": lambda: [serve.pid], "streams": lambda: [streams.pid]})
                            meter.start()
                            async with profile_processes({"api": serve.pid}, settings.profile_dir if last else None,
                                                         rate=settings.profile_rate, tasks=chunk) as profiled:
                                loaded += await _submits(http, chunk, settings.rate)
                            meter.stop()
                            cpu["loaded"] += meter.used_s["api"]
                            cpu["streams"] += meter.used_s["streams"]
                            profile = profiled or profile
                            started = time.perf_counter()
                            async with http.get("/readyz") as response:
                                readyz = (response.status, (time.perf_counter() - started) * 1000)
                            received += await streams.counts(chunk, within_s=10.0)
                        streams_ended += settings.streams
                        await _wait_until(partial(_stream_spans, database_url, streams_ended), timeout_s=60,
                                          what="the server to export the spans of the streams it closed")
                    load.append(os.getloadavg()[0])
                    serve.check_alive()
            finally:
                await http.close()
    q50, q99 = p50_p99(quiet)
    l50, l99 = p50_p99(loaded)
    ratio = l99 / q99
    received.sort()
    return "\n".join([
        f"POST /api/v1/tasks, {len(quiet)} submits one at a time (at most {settings.rate:g}/s) without and with "
        f"streams, alternating in {settings.rounds} rounds of {chunk}, no agent:",
        f"  no streams open:        p50 {q50:6.1f} ms   p99 {q99:6.1f} ms",
        f"  {settings.streams:>5} streams open:     p50 {l50:6.1f} ms   p99 {l99:6.1f} ms",
        f"  p99 with / without streams: {ratio:.2f}x (target at most 2x: {'met' if ratio <= 2 else 'NOT met'})",
        f"  events received per stream and round (of {chunk}): min {received[0]}, "
        f"median {received[len(received) // 2]}",
        f"  CPU per submit: API {cpu['quiet'] * 1000 / len(quiet):.1f} ms without streams, "
        f"{cpu['loaded'] * 1000 / len(loaded):.1f} ms with them (their fan-out included); the streams' own "
        f"process {cpu['streams'] * 1000 / len(loaded):.1f} ms",
        f"  /readyz with the streams open: {readyz[0]} in {readyz[1]:.1f} ms",
        f"  1-min load average ({os.cpu_count()} CPUs) at each round's start, then at the end: "
        + " ".join(f"{x:.2f}" for x in load),
        *([profile.report()] if profile is not None else []),
    ])


def main(argv: list[str] | None = None) -> None:
    args = vars(settings_parser(StreamsBenchSettings, prog="python -m bench.streams", doc=__doc__).parse_args(argv))
    print(asyncio.run(run(StreamsBenchSettings(**args))))


if __name__ == "__main__":
    main()
