"""The AIOps service: the composition root of the process ``devart aiops`` runs, and its step loop.

``async with AiopsService(settings, database_url=...) as service`` opens a pool (unless one is given),
the configured span source and the incident pipeline; ``start()`` runs the loop in the background,
``run_once(now_ns)`` processes the closed steps up to ``now_ns`` (tests drive time this way).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from types import TracebackType
from typing import Self

import asyncpg

from aiops.detection import AlerterSettings, ConformalSettings
from aiops.incidents.pipeline import IncidentPipeline, StepResult
from aiops.rca.worker import RcaWorker, RcaWorkerSettings
from aiops.settings import AiopsSettings
from aiops.traces.source import SpanSource, make_span_source

log = logging.getLogger("devart.aiops")

_NS_PER_S = 1_000_000_000


class AiopsService:
    """Pool, span source and incident pipeline of one AIOps process; the loop wakes once per step."""

    name = "aiops-incidents"

    def __init__(
        self,
        settings: AiopsSettings,
        *,
        database_url: str | None = None,
        pool: asyncpg.Pool | None = None,
        source: SpanSource | None = None,
        detector_settings: ConformalSettings | None = None,
        alerter_settings: AlerterSettings | None = None,
        rca_settings: RcaWorkerSettings | None = None,
        jitter: float = 0.1,
    ) -> None:
        if database_url is None and pool is None:
            raise ValueError("database_url: give a database URL or an open pool")
        self.settings = settings
        self.jitter = jitter
        self._database_url = database_url
        self._pool = pool
        self._source = source
        self._owns_pool = pool is None
        self._owns_source = source is None
        self._detector_settings = detector_settings
        self._alerter_settings = alerter_settings
        self._rca_settings = rca_settings
        self._pipeline: IncidentPipeline | None = None
        self._task: asyncio.Task[None] | None = None
        self._rca: RcaWorker | None = None

    async def __aenter__(self) -> Self:
        if self._pool is None:
            assert self._database_url is not None
            self._pool = await asyncpg.create_pool(self._database_url, min_size=1, max_size=4)
        if self._source is None:
            self._source = make_span_source(self.settings, self._pool)
        self._pipeline = IncidentPipeline(
            self.settings,
            pool=self._pool,
            source=self._source,
            detector_settings=self._detector_settings,
            alerter_settings=self._alerter_settings,
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
        if self._owns_source and self._source is not None:
            await self._source.aclose()
            self._source = None
        if self._owns_pool and self._pool is not None:
            await self._pool.close()
            self._pool = None
        self._pipeline = None

    @property
    def pipeline(self) -> IncidentPipeline:
        """The incident pipeline; only inside ``async with``."""
        if self._pipeline is None:
            raise RuntimeError("AiopsService is not open: use `async with AiopsService(...) as service`")
        return self._pipeline

    async def run_once(self, now_ns: int | None = None) -> list[StepResult]:
        """Process every closed step up to ``now_ns`` (default: the wall clock) not processed yet."""
        return await self.pipeline.run_until(time.time_ns() if now_ns is None else now_ns)

    def start(self) -> None:
        """Run the loop in the background until :meth:`stop`."""
        self.pipeline  # noqa: B018 - refuse to start outside `async with`
        self._task = asyncio.create_task(self._run(), name=self.name)
        assert self._pool is not None and self._source is not None
        self._rca = RcaWorker(self._pool, self._source, settings=self._rca_settings)  # analyses incidents as they open
        self._rca.start()

    async def stop(self) -> None:
        """Stop the background loop (a step in flight is rolled back and redone next time)."""
        if self._rca is not None:
            await self._rca.stop()
            self._rca = None
        if self._task is None:
            return
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def run_forever(self) -> None:
        """Run the loop in the foreground (``devart aiops``)."""
        self.start()
        assert self._task is not None
        await self._task

    async def _run(self) -> None:
        step_s = float(self.settings.signal_step_s)
        while True:
            started = time.monotonic()
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s iteration failed", self.name)
            elapsed = time.monotonic() - started
            if elapsed > step_s:
                log.warning("%s iteration took %.2fs, over its %.2fs step", self.name, elapsed, step_s)
            await asyncio.sleep(self._pause_s())

    def _pause_s(self) -> float:
        """Until the next step is closed (its end plus the lag), plus jitter so replicas do not collide."""
        step_ns = self.settings.signal_step_s * _NS_PER_S
        lag_ns = int(self.settings.incident_lag_s * _NS_PER_S)
        now = time.time_ns()
        due = (now - lag_ns) // step_ns * step_ns + step_ns + lag_ns
        return (due - now) / _NS_PER_S + random.uniform(0, self.jitter * self.settings.signal_step_s)
