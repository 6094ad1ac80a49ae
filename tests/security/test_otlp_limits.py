"""Attack: take the API down through its OTLP receiver. Four concurrent 3 MB gzip exports once took
``devart serve`` from 366 MB to 1.1 GB resident. Now a gzip body stops inflating at the
decompressed limit (413 naming it), at most ``otlp_max_concurrent_decodes`` requests decode at once
(503 with Retry-After beyond), and decoding runs off the event loop, so /readyz and a task submit
still answer while large exports are being decoded.

The control plane runs as its own ``devart serve`` process, so its peak memory (``VmHWM``) and its
event loop are the server's alone."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

from agents.sdk import BrokerSettings
from control_plane.serving import free_port
from tests.support.system import api_ready, make_token, wait_for

SLOTS = 2
DECOMPRESSED_LIMIT = 16 * 1024 * 1024
MiB = 1024 * 1024


@contextlib.contextmanager
def _serve(database_url: str, broker: BrokerSettings, tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    env = dict(os.environ, **broker.environment(), DATABASE_URL=database_url, DEVART_PORT=str(port),
               DEVART_EMBEDDED_BROKER="false", DEVART_LOG_LEVEL="WARNING", DEVART_HOME=str(tmp_path / "home"),
               DEVART_AIOPS_OTLP_MAX_CONCURRENT_DECODES=str(SLOTS),
               DEVART_AIOPS_OTLP_MAX_DECOMPRESSED_BYTES=str(DECOMPRESSED_LIMIT))
    process = subprocess.Popen([sys.executable, "-m", "control_plane.cli", "serve"], env=env)
    try:
        yield f"http://127.0.0.1:{port}", process.pid
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc status")


def _message(response: httpx.Response) -> str:
    """The ``google.rpc.Status`` message of a refused protobuf export."""
    return status_pb2.Status.FromString(response.content).message


def _gzip_bomb(inflated: int) -> bytes:
    """``inflated`` bytes of JSON whitespace, gzip-compressed a chunk at a time (about 1,000 to 1)."""
    deflater = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = b" " * MiB
    return b"".join(deflater.compress(chunk) for _ in range(inflated // MiB)) + deflater.flush()


def _heavy_export(spans: int) -> bytes:
    """An export that is expensive to decode: ``spans`` valid spans, then one with a bad trace id,
    so the receiver does all the work and stores nothing (all or nothing)."""
    resource = trace_pb2.ResourceSpans()
    resource.resource.attributes.append(
        common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value="checkout")))
    scope = resource.scope_spans.add()
    for _ in range(spans):
        scope.spans.append(trace_pb2.Span(trace_id=uuid.uuid4().bytes, span_id=uuid.uuid4().bytes[:8], name="GET /cart",
                                          kind=2, start_time_unix_nano=1_700_000_000_000_000_000,
                                          end_time_unix_nano=1_700_000_000_005_000_000))
    scope.spans.append(trace_pb2.Span(trace_id=b"x", span_id=b"12345678", name="bad"))
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[resource]).SerializeToString()


@pytest.mark.slow
async def test_a_gzip_bomb_is_refused_at_the_decompressed_limit_without_inflating(
    database_url: str, broker_settings: BrokerSettings, tmp_path: Path
) -> None:
    bomb = _gzip_bomb(1024 * MiB)  # 1 GiB once inflated
    assert len(bomb) < 2 * MiB
    token = await make_token(database_url, "agent")
    with _serve(database_url, broker_settings, tmp_path) as (base_url, pid):
        await wait_for(lambda: api_ready(base_url), timeout_s=90, what="devart serve")
        before = _peak_rss_mib(pid)
        async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token}"},
                                     timeout=60.0) as api:
            responses = await asyncio.gather(*(
                api.post("/v1/traces", content=bomb,
                         headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
                for _ in range(SLOTS)))
        for response in responses:
            assert response.status_code == 413, response.text
            assert f"more than the limit of {DECOMPRESSED_LIMIT} bytes" in response.json()["message"]
        grown = _peak_rss_mib(pid) - before
        # each decode holds at most the body and the decompressed limit; unbounded, 2 GiB
        assert grown < SLOTS * (DECOMPRESSED_LIMIT + 2 * MiB) / MiB + 64, f"peak RSS grew by {grown:.0f} MiB"


@pytest.mark.slow
async def test_concurrent_large_exports_get_503_beyond_the_slots_while_readyz_and_submits_answer(
    database_url: str, broker_settings: BrokerSettings, tmp_path: Path
) -> None:
    body = _heavy_export(60_000)
    ingest_token, ci_token = await make_token(database_url, "agent"), await make_token(database_url, "ci")
    with _serve(database_url, broker_settings, tmp_path) as (base_url, pid):
        await wait_for(lambda: api_ready(base_url), timeout_s=90, what="devart serve")
        limits = httpx.Limits(max_connections=64)
        async with (httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {ingest_token}"},
                                      timeout=120.0, limits=limits) as exporter,
                    httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {ci_token}"},
                                      timeout=120.0) as ci):
            async def export() -> httpx.Response:
                return await exporter.post("/v1/traces", content=body, headers={"Content-Type": "application/x-protobuf"})

            started = time.perf_counter()
            alone = await export()
            decode_s = time.perf_counter() - started  # one decode's time on this machine, now
            assert alone.status_code == 400 and "span 60000" in _message(alone), alone.text
            before = _peak_rss_mib(pid)

            stop = asyncio.Event()
            outcomes: list[httpx.Response] = []

            async def flood() -> None:  # an exporter sends again when answered, after Retry-After if it says so
                while not stop.is_set():
                    outcomes.append(response := await export())
                    await asyncio.sleep(float(response.headers.get("Retry-After", 0)))

            async def probe(method: str, path: str, **kwargs: object) -> tuple[int, float]:
                started = time.perf_counter()
                response = await ci.request(method, path, **kwargs)
                return response.status_code, time.perf_counter() - started

            flooders = [asyncio.create_task(flood()) for _ in range(3 * SLOTS)]
            try:
                await wait_for(lambda: asyncio.sleep(0, result=any(r.status_code == 400 for r in outcomes)),
                               timeout_s=120, what="a decode under the flood")
                probes = []
                for _ in range(5):
                    probes.append(await probe("GET", "/readyz"))
                    probes.append(await probe("POST", "/api/v1/tasks", json={"type": "otlp-flood-probe"}))
            finally:
                stop.set()
                await asyncio.gather(*flooders)

        statuses = {r.status_code for r in outcomes}
        assert statuses <= {400, 503}, statuses
        busy = [r for r in outcomes if r.status_code == 503]
        assert busy, "every export was decoded: the slots did not bound them"
        assert busy[0].headers["Retry-After"] == "1" and f"all {SLOTS} OTLP decode slots" in _message(busy[0])
        assert [status for status, _ in probes] == [200, 201] * 5, probes
        print(f"one decode alone {decode_s:.2f} s; probes under the flood: {[round(t, 3) for _, t in probes]}")
        slowest = max(took for _, took in probes)
        # decoding on the event loop would hold each probe behind whole decodes (several per probe)
        assert slowest < max(1.0, decode_s), f"a probe took {slowest:.2f} s; one decode takes {decode_s:.2f} s"
        grown = _peak_rss_mib(pid) - before
        assert grown < 400, f"peak RSS grew by {grown:.0f} MiB under the flood"
