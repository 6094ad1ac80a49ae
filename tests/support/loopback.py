"""Fakes served on a loopback port: an aiohttp application on the test's event loop, between
``start()`` and ``stop()`` or for the length of an ``async with serve(app)`` block; or an
``http.server`` handler in a thread of its own (:class:`ThreadedServer`)."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from aiohttp import web


class LoopbackServer:
    """Serves ``app`` on 127.0.0.1; port 0 takes a free one at ``start()``. ``url`` is known from
    then on and stays after ``stop()`` (a client still aims at it and finds the port closed)."""

    def __init__(self, app: web.Application, port: int = 0) -> None:
        self.app = app
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


@asynccontextmanager
async def serve(app: web.Application) -> AsyncIterator[str]:
    """Yields the server's origin, ``http://127.0.0.1:<port>``."""
    server = LoopbackServer(app)
    await server.start()
    try:
        yield server.url
    finally:
        await server.stop()


class ThreadedServer(ThreadingHTTPServer):
    """An ``http.server`` fake on 127.0.0.1 and a free port, served by a thread of its own between
    ``start()`` and ``stop()`` (or in a ``with`` block), for clients that block (the Kubernetes client).

    ``stop()`` also hangs up on clients still connected, and waits (5 s at most) for their handler
    threads to end: ``shutdown()`` alone leaves a keep-alive connection's handler thread waiting for
    a next request, so it outlives the server (and the test).
    """

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self._connections: set[socket.socket] = set()
        self._connections_changed = threading.Condition()
        self._thread = threading.Thread(target=self.serve_forever, args=(0.05,), name=type(self).__name__,
                                        daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self.shutdown()
            self._thread.join(timeout=5)
        with self._connections_changed:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
            self._connections_changed.wait_for(lambda: not self._connections, timeout=5)
        self.server_close()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_changed:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._connections_changed:
            self._connections.discard(request)
            self._connections_changed.notify_all()
