"""The event loop devart's processes run on: uvloop by default, asyncio's own loop on request.

uvloop cuts the per-message and per-request overhead of the control plane and the agents (the
dispatch benchmark in docs/benchmarks.md shows by how much); ``asyncio`` is there for debugging and
for platforms uvloop does not support.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Literal, TypeVar

EventLoop = Literal["uvloop", "asyncio"]
"""Setting value naming the loop implementation."""

_T = TypeVar("_T")
log = logging.getLogger("devart.eventloop")

GC_YOUNG_THRESHOLD = 20_000
"""Allocations between two young-generation collections in a long-running devart process (700 by default)."""


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


def settle_collector() -> None:
    """Tune the garbage collector for a long-running process whose set-up is done.

    What exists by now lives as long as the process: frozen, it is left out of the collector's full
    passes, which otherwise stall the loop for a few hundred ms. A request or a delivery allocates
    thousands of container objects that reference counting frees anyway; at the default threshold
    (700) the young generation was collected several times per task and its survivors kept feeding
    older collections: 7% of the control plane's CPU and 14% of the agent's at the dispatch
    benchmark's load, about 2% at ``GC_YOUNG_THRESHOLD`` (docs/benchmarks.md).
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
