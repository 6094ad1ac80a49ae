"""Attack: open an event stream and never read it. The hub writes every batch to every stream
without waiting, so such a client cannot hold the others up; what it does not read piles up in its
connection's buffer, and past ``DEVART_SSE_MAX_BUFFER_BYTES`` the hub drops the connection (its
slot and its memory are freed) while the streams that read get every event."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from urllib.parse import urlsplit

import httpx
import pytest

from agents.sdk import BrokerSettings
from control_plane.settings import Settings
from tests.security.test_streams_limits import streams
from tests.support.system import client, fast_settings, make_token, wait_for

MAX_BUFFER = 16_384
BATCH = 100


@pytest.fixture
def settings(database_url: str, broker_settings: BrokerSettings) -> Settings:
    return fast_settings(database_url, broker_settings, sse_max_streams_per_token=1,
                         sse_max_buffer_bytes=MAX_BUFFER)


async def _stalled_stream(base_url: str, token: str) -> socket.socket:
    """An event stream read up to ``: connected``, then never again (a small receive window, so the
    kernel's buffers fill fast)."""
    loop = asyncio.get_running_loop()
    address = urlsplit(base_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await loop.sock_connect(sock, (address.hostname, address.port))
    await loop.sock_sendall(sock, f"GET /api/v1/events HTTP/1.1\r\nHost: {address.netloc}\r\n"
                                  f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode())
    head = b""
    async with asyncio.timeout(10):
        while b": connected" not in head:
            head += await loop.sock_recv(sock, 4096)
    assert head.startswith(b"HTTP/1.1 200 "), head
    return sock


async def test_a_client_that_does_not_read_is_dropped_and_holds_no_one_up(
    admin: httpx.AsyncClient, base_url: str, database_url: str
) -> None:
    stalled_token = await make_token(database_url, "viewer", "stalled")
    reader_token = await make_token(database_url, "viewer", "reader")
    stalled = await _stalled_stream(base_url, stalled_token)
    created: list[str] = []
    async with client(base_url, stalled_token) as again, client(base_url, reader_token) as reader, \
            streams(reader, 1) as (reading,):
        try:
            assert (await again.get("/api/v1/events")).status_code == 429  # the stalled stream holds the slot

            async def dropped() -> bool:
                response = await admin.post("/api/v1/tasks/batch", json={"tasks": [{"type": "noop"}] * BATCH})
                created.extend(t["id"] for t in response.json()["tasks"])
                async with again.stream("GET", "/api/v1/events") as stream:
                    return stream.status_code == 200

            await wait_for(dropped, timeout_s=30, interval_s=0, what="the stalled stream to be dropped")
            # the server aborted it: what it had sent ends in a reset, not in more data forever
            async with asyncio.timeout(10):
                with contextlib.suppress(ConnectionResetError):
                    while await asyncio.get_running_loop().sock_recv(stalled, 65536):
                        pass
            # ... and the stream that reads got every event meanwhile
            await wait_for(lambda: _saw_all(reading.lines, created), what="the reading stream to see every task")
        finally:
            stalled.close()


async def _saw_all(lines: list[str], task_ids: list[str]) -> bool:
    seen = "\n".join(line for line in lines if '"to":"pending"' in line.replace(" ", ""))
    return all(task_id in seen for task_id in task_ids)
