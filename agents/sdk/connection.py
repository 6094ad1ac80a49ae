"""A robust broker connection that leaves nothing open when its first connect fails.

``aio_pika.connect_robust`` drops the connection object of a refused first connect without closing
it; its ``__del__`` then makes a ``close()`` coroutine that nobody awaits when the garbage collector
runs off the event loop, an unraisable warning in whatever runs at that moment.
"""

from __future__ import annotations

from typing import Any

from aio_pika import RobustConnection
from aio_pika.abc import AbstractRobustConnection
from aio_pika.connection import make_url


async def connect_robust(url: str, **kwargs: Any) -> AbstractRobustConnection:
    """A connection that reconnects by itself once it is up (``kwargs`` as for ``aio_pika.connect_robust``);
    a failed first connect raises, with the connection object closed."""
    connection = RobustConnection(make_url(url), **kwargs)
    try:
        await connection.connect()
    except BaseException:
        await connection.close()
        raise
    return connection
