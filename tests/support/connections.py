"""What a failed broker connect leaves behind: connection objects still open, and what collecting
them off the event loop raises (aio_pika's ``Connection.__del__`` then makes a ``close()`` coroutine
that nobody awaits, an unraisable warning that fails whichever later test the collector runs in)."""

from __future__ import annotations

import asyncio
import gc
import sys
import weakref
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import pytest
from aio_pika.abc import AbstractConnection

from control_plane.serving import free_port


def wrong_password(amqp_url: str) -> str:
    parsed = urlparse(amqp_url)
    return parsed._replace(netloc=f"{parsed.username}:not-the-password@{parsed.hostname}:{parsed.port or 5672}").geturl()


def closed_port(amqp_url: str) -> str:
    parsed = urlparse(amqp_url)
    return parsed._replace(netloc=f"{parsed.username}:{parsed.password}@127.0.0.1:{free_port()}").geturl()


def _open_connections() -> dict[int, AbstractConnection]:
    return {id(o): o for o in gc.get_objects() if isinstance(o, AbstractConnection) and not o.is_closed}


async def assert_failed_connect_leaves_nothing(attempt: Callable[[], Awaitable[Any]],
                                               raises: type[BaseException]) -> None:
    """``attempt`` raises ``raises``, and no connection it made is left open or warns when collected."""
    gc.collect()
    before = _open_connections()
    gc.disable()  # what the attempt drops stays findable until it is looked for
    try:
        with pytest.raises(raises):
            await attempt()
        await asyncio.sleep(0)  # one turn of the loop: the callbacks the failure scheduled let go of it
        left = [weakref.ref(c) for key, c in _open_connections().items() if key not in before]
        described = [repr(ref()) for ref in left]
    finally:
        gc.enable()
    unraisable: list[Any] = []
    hook, sys.unraisablehook = sys.unraisablehook, unraisable.append
    try:
        await asyncio.to_thread(gc.collect)  # off the loop, as the collector may run in any thread
    finally:
        sys.unraisablehook = hook
    for ref in left:  # one that is still alive is closed here, so that it fails no later test
        if (connection := ref()) is not None:
            await connection.close()
    assert described == [], f"{len(described)} connection(s) left open by the failed connect"
    assert [str(u.exc_value) for u in unraisable] == []
