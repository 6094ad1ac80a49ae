"""An ASGI app served in-process on a loopback port, for as long as a block lasts: how ``devart demo``,
the benchmarks and the tests run the API next to the code that talks to it."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

LOOPBACK = "127.0.0.1"


def free_port() -> int:
    """A loopback TCP port nothing listens on now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


@asynccontextmanager
async def serve_in_process(app: Any, *, port: int | None = None,
                           graceful_shutdown_s: float | None = None) -> AsyncIterator[str]:
    """``app`` served by uvicorn on the loopback address (``port``, or a free one); yields its base URL
    once it listens, and stops it (open requests get ``graceful_shutdown_s``) when the block ends. A
    server that cannot start raises its error here."""
    import uvicorn

    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", lifespan="on",
                                           timeout_graceful_shutdown=graceful_shutdown_s))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # uvicorn sets a flag, no event, once it listens
        if serving.done():
            serving.result()
            raise RuntimeError(f"the server on port {port} stopped before it started")
        await asyncio.sleep(0.01)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        await serving
