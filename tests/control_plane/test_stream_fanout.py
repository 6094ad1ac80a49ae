"""How the event hub spends the API's event loop on streams: batches less often as streams open,
and a fan-out that waits while requests run (each stream costs a socket write per batch)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from uuid import uuid4

import asyncpg
import httpx
import pytest
import uvloop

from agents.sdk import BrokerSettings
from control_plane.api.hub import EventHub, Stream
from control_plane.auth import Principal
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from tests.security.test_streams_limits import streams
from tests.support.system import fast_settings, wait_for

YIELD_MAX_S = 1.5


@pytest.fixture
def settings(database_url: str, broker_settings: BrokerSettings) -> Settings:
    return fast_settings(database_url, broker_settings, sse_flush_s=0.05, sse_yield_max_s=YIELD_MAX_S)


async def test_batches_go_out_less_often_as_streams_open(cp: ControlPlane, settings: Settings) -> None:
    """Past sse_max_writes_per_s / sse_flush_s streams the hub gathers notifications longer, and
    goes back to sse_flush_s as they close."""
    hub = EventHub(cp.pool, settings.model_copy(update={"sse_flush_s": 0.2, "sse_max_writes_per_s": 50.0}))
    who = Principal(uuid4(), "viewer", "viewer")
    opened = [hub.open(who) for _ in range(5)]
    assert hub.flush_interval_s == 0.2  # 5 streams x 5 batches/s = 25 writes/s
    opened += [hub.open(who) for _ in range(20)]
    assert hub.flush_interval_s == 0.5  # 25 streams: 2 batches/s
    for stream in opened[10:]:
        stream.close()
    assert hub.flush_interval_s == 0.2


async def _notify(database_url: str, marker: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute("SELECT pg_notify('devart_events', $1)", f'{{"kind": "task", "marker": "{marker}"}}')
    finally:
        await conn.close()


async def test_a_fan_out_waits_for_running_requests_then_goes_out_at_most_yield_max_later(
    admin: httpx.AsyncClient, cp: ControlPlane, database_url: str
) -> None:
    async with streams(admin, 1) as (stream,):
        # a request holding an API connection: the batch waits for it to give the connection back
        request = await cp.pool.acquire()
        await _notify(database_url, "during-a-request")
        try:
            with pytest.raises(AssertionError, match="timed out"):
                await wait_for(lambda: _has(stream.lines, "during-a-request"), timeout_s=0.5, what="a deferred batch")
        finally:
            released_at = asyncio.get_running_loop().time()
            await cp.pool.release(request)
        await wait_for(lambda: _has(stream.lines, "during-a-request"), timeout_s=1.0, what="the batch after the request")
        received_at = asyncio.get_running_loop().time()
        assert received_at - released_at < YIELD_MAX_S

        # requests that never end do not starve the streams: the batch goes out after sse_yield_max_s
        request = await cp.pool.acquire()
        try:
            started = asyncio.get_running_loop().time()
            await _notify(database_url, "under-endless-requests")
            await wait_for(lambda: _has(stream.lines, "under-endless-requests"), timeout_s=YIELD_MAX_S + 2,
                           what="the batch despite a request holding on")
            assert asyncio.get_running_loop().time() - started >= YIELD_MAX_S - 0.1
        finally:
            await cp.pool.release(request)


async def _has(lines: list[str], marker: str) -> bool:
    return any(marker in line for line in lines)



@pytest.mark.parametrize("loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])
async def test_a_stream_whose_client_left_before_its_response_started_is_closed_not_raised(
    cp: ControlPlane, settings: Settings, loop_factory: Callable[[], asyncio.AbstractEventLoop]
) -> None:
    """The response start returns even when the client has gone (the server then writes nothing):
    attaching the stream to that connection closes it instead of raising from its shut socket. On
    both loops the API may run on, each in a thread of its own."""

    async def attach_to_a_lost_connection() -> Stream:
        loop = asyncio.get_running_loop()
        server = await asyncio.start_server(lambda reader, writer: writer.close(), "127.0.0.1", 0)
        lost = loop.create_future()

        class _Client(asyncio.Protocol):
            def connection_lost(self, exc: Exception | None) -> None:
                lost.set_result(None)

        try:
            transport, _ = await loop.create_connection(_Client, *server.sockets[0].getsockname()[:2])
            transport.close()
            await lost
            hub = EventHub(cp.pool, settings)
            stream = hub.open(Principal(uuid4(), "viewer", "viewer"))
            hub.attach(stream, transport)
            return stream
        finally:
            server.close()

    def run_on_its_loop() -> Stream:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(attach_to_a_lost_connection())

    stream = await asyncio.to_thread(run_on_its_loop)
    assert (stream.closed, stream.reason) == (True, "client gone")
