"""The event loop devart's processes run on: uvloop by default, asyncio's own loop on request.

uvloop cuts the per-message and per-request overhead of the control plane and the agents (the
dispatch benchmark in docs/benchmarks.md shows by how much); ``asyncio`` is there for debugging and
for platforms uvloop does not support.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

EventLoop = Literal["uvloop", "asyncio"]
"""Setting value naming the loop implementation."""

_T = TypeVar("_T")
log = logging.getLogger("devart.eventloop")


def _loop_factory(choice: EventLoop) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory when chosen and importable; ``None`` means asyncio's default loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        log.warning("uvloop is not installed; running on asyncio's event loop")
        return None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, _T], choice: EventLoop) -> _T:
    """``asyncio.run(main)`` on the chosen loop."""
    with asyncio.Runner(loop_factory=_loop_factory(choice)) as runner:
        return runner.run(main)
