"""The loopback servers the fakes run on leave nothing behind when they stop."""

from __future__ import annotations

import asyncio
import http.client
import threading
from http.server import BaseHTTPRequestHandler

import httpx

from tests.support.loopback import ThreadedServer
from tests.support.system import wait_for
from tests.telegram_fake.server import FakeTelegram, FakeTelegramServer


class _KeepAlive(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the connection stays open for a next request, as the Kubernetes API's

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _handler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "process_request_thread" in t.name]


def test_stopping_a_threaded_server_hangs_up_on_keep_alive_clients() -> None:
    before = _handler_threads()
    with ThreadedServer(_KeepAlive) as server:
        client = http.client.HTTPConnection(server.server_address[0], server.server_address[1], timeout=5)  # type: ignore[arg-type]
        client.request("GET", "/")
        assert client.getresponse().read() == b"ok"
        assert len(_handler_threads()) == len(before) + 1  # waiting for the client's next request
    # the client never hung up; the server did, and its handler thread is gone
    assert _handler_threads() == before
    client.close()


async def test_stopping_the_telegram_fake_ends_a_pending_long_poll() -> None:
    server = FakeTelegramServer(FakeTelegram())
    await server.start()
    async with httpx.AsyncClient(base_url=server.url) as api:
        poll = asyncio.create_task(api.post(f"/bot{server.fake.token}/getUpdates", json={"timeout": 60}))

        async def polling() -> bool:
            return bool(server.fake.calls_of("getUpdates"))

        await wait_for(polling, what="the long poll to reach the fake")
        async with asyncio.timeout(30):  # far below the poll's 60 s: the stop, not the timeout, ends it
            await server.stop()
            answer = await poll
    assert answer.json() == {"ok": True, "result": []}
