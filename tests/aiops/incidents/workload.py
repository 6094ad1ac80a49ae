"""A compressed-day workload for the AIOps service tests: a three-service chain with daily traffic."""

from __future__ import annotations

import math

import asyncpg

from aiops.simulation import Fault, TraceGenerator, chain
from aiops.traces import Span, store

STEP_NS = 1_000_000_000
DAY_STEPS = 200
T0_NS = 1_767_225_600 * STEP_NS
SERVICES = ("svc0", "svc1", "svc2")


class Workload:
    """``svc0 -> svc1 -> svc2``; step ``i`` holds ``~40 * (1 + 0.4 sin(2 pi i / day))`` traces."""

    def __init__(self, seed: int = 7) -> None:
        self._gen = TraceGenerator(chain(len(SERVICES)), seed=seed)

    def step_start_ns(self, i: int) -> int:
        return T0_NS + i * STEP_NS

    def spans(self, first: int, last: int, fault: Fault | None = None) -> list[Span]:
        """The spans of steps ``first..last - 1``."""
        spans: list[Span] = []
        for i in range(first, last):
            n = round(40 * (1 + 0.4 * math.sin(2 * math.pi * i / DAY_STEPS)))
            spans += self._gen.generate(n, self.step_start_ns(i), STEP_NS, fault)
        return spans

    async def emit(self, conn: asyncpg.Connection, first: int, last: int, fault: Fault | None = None) -> None:
        """Store the spans of steps ``first..last - 1``."""
        await store.insert_spans(conn, spans=self.spans(first, last, fault))
