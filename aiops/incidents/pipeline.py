"""The AIOps step: spans of one closed step -> RED signals -> detectors -> incidents, committed in one
transaction. The signals and the detector loop are CPU work: they run in a worker thread, before the
transaction that takes the advisory lock, so neither the event loop nor the lock waits on them.

Every tracked series is observed at every step (an operation without requests has rate 0 and no
latency), so an anomaly can always recover. Detector state is written in the step's transaction
with the incidents and the progress mark, so a restart resumes exactly where the last committed
step ended; an interrupted step is simply processed again.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import OrderedDict
from dataclasses import dataclass

import asyncpg

from aiops.detection import Alerter, AlerterSettings, ConformalSettings, make_detector
from aiops.incidents import series as series_store
from aiops.incidents.episode import RecoveryRules
from aiops.incidents.grouping import CallGraph
from aiops.incidents.lifecycle import LifecyclePolicy, Observation, StepReport, apply_step
from aiops.incidents.series import SeriesKey, TrackedSeries
from aiops.settings import AiopsSettings
from aiops.signals import SignalFrame, SpanColumns, compute_signals
from aiops.traces.model import Span
from aiops.traces.source import SpanSource

log = logging.getLogger("devart.aiops.incidents")

_NS_PER_S = 1_000_000_000
_LOCK_KEY = 0x61696F70  # 'aiop': one processor of steps at a time across processes


def live_detector_settings(given: ConformalSettings | None) -> ConformalSettings:
    """The detector settings of the live path: as given (or from the environment), the ones the
    batch benchmark measures, with the detector's own hold after an alert switched off. The hold
    only masks the scores that follow an alert (the detector learns the same with and without it);
    here the debounce must see consecutive scores, and the series' episode is the suppression (one
    anomaly until the value is back near its baseline, :mod:`aiops.incidents.episode`). The alert
    boundary stays per point (``alert_interval_s`` 0): the debounce is what keeps this path's false
    alerts from opening incidents, and at its steps of 1-60 s a boundary per five minutes would ask
    p-values 5-300 times smaller of every fault."""
    settings = given if given is not None else ConformalSettings()
    return settings.model_copy(update={"suppress_points": 0, "alert_interval_s": 0.0})


def live_alerter_settings(given: AlerterSettings | None) -> AlerterSettings:
    """The alerting rules of the live path: as given (or from the environment), firing on the first
    anomalous point; the debounce is the episode's (see :func:`live_rules`)."""
    rules = given if given is not None else AlerterSettings()
    return rules.model_copy(update={"min_points": 1})


@dataclass(frozen=True, slots=True)
class LiveRules:
    """Everything a tracked series of the live path runs: detector, alerting rules, recovery."""

    detector: ConformalSettings
    alerter: AlerterSettings
    recovery: RecoveryRules
    recent_points: int

    def new_series(self, key: SeriesKey) -> TrackedSeries:
        """A fresh series with a default detector."""
        return TrackedSeries(
            key, Alerter(make_detector(self.detector), self.alerter), recent_points=self.recent_points,
            rules=self.recovery,
        )


def live_rules(
    settings: AiopsSettings,
    detector_settings: ConformalSettings | None = None,
    alerter_settings: AlerterSettings | None = None,
) -> LiveRules:
    """The live path's rules from the AIOps settings and the detector's and alerting settings
    (each from the environment when not given)."""
    detector = live_detector_settings(detector_settings)
    given = alerter_settings if alerter_settings is not None else AlerterSettings()
    recovery = RecoveryRules(
        # the debounce: one unusual step among thousands of series is expected noise
        confirm_steps=max(given.min_points, settings.incident_min_anomalous_steps),
        recovery_steps=settings.incident_recovery_steps,
        band_sigmas=settings.incident_recovery_sigmas,
        return_share=settings.incident_recovery_share,
        memory_steps=detector.window_points,
    )
    alerter = live_alerter_settings(given)
    return LiveRules(detector, alerter, recovery, settings.incident_excerpt_points)


@dataclass(frozen=True, slots=True)
class StepResult:
    """One processed step: its start and what happened to incidents."""

    step_start_ns: int
    report: StepReport


class IncidentPipeline:
    """Turns closed steps of spans into incidents; holds the tracked series between steps."""

    def __init__(
        self,
        settings: AiopsSettings,
        *,
        pool: asyncpg.Pool,
        source: SpanSource,
        detector_settings: ConformalSettings | None = None,
        alerter_settings: AlerterSettings | None = None,
    ) -> None:
        self.settings = settings
        self._pool = pool
        self._source = source
        self._rules = live_rules(settings, detector_settings, alerter_settings)
        self.step_ns = settings.signal_step_s * _NS_PER_S
        self._policy = LifecyclePolicy(
            step_ns=self.step_ns,
            correlation_window_ns=int(settings.incident_correlation_window_s * _NS_PER_S),
            excerpt_max_points=2 * settings.incident_excerpt_points,
        )
        self.graph = CallGraph(int(settings.incident_call_graph_ttl_s * _NS_PER_S))
        self._series: OrderedDict[SeriesKey, TrackedSeries] | None = None
        self._progress: int | None = None

    @property
    def tracked(self) -> int:
        """How many series are tracked in memory."""
        return len(self._series or ())

    async def run_until(self, now_ns: int) -> list[StepResult]:
        """Process every closed step not yet processed (at most ``incident_max_catchup_steps``)."""
        last_closed = (now_ns - int(self.settings.incident_lag_s * _NS_PER_S)) // self.step_ns * self.step_ns - self.step_ns
        results: list[StepResult] = []
        while True:
            result = await self._step(last_closed)
            if result is None:
                return results
            results.append(result)

    async def _step(self, last_closed: int) -> StepResult | None:
        """Process the next step: read progress, compute signals and run the detectors in a worker
        thread with no transaction open, then commit the outcome under the advisory lock. When
        another worker committed that step meanwhile, the in-memory detectors are stale: reload and
        start over."""
        async with self._pool.acquire() as conn:
            progress = await series_store.get_progress(conn)
            if progress is not None and progress >= last_closed:
                return None
            step = last_closed if progress is None else max(
                progress + self.step_ns, last_closed - (self.settings.incident_max_catchup_steps - 1) * self.step_ns
            )
            try:
                if self._series is None or self._progress != progress:
                    await self._load(conn, progress, step)
            except BaseException:
                self._series = None
                raise
        try:
            spans = await self._source.spans_between(step, step + self.step_ns)
            evicted: list[SeriesKey] = []
            observations = await asyncio.to_thread(self._observe_step, spans, step, evicted)
            async with self._pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
                if await series_store.get_progress(conn) != progress:
                    self._series = None
                    return await self._step(last_closed)
                report = await self._commit(conn, step, observations, evicted)
        except BaseException:
            self._series = None  # memory may be ahead of the rolled-back database: reload next time
            raise
        self._progress = step
        return StepResult(step, report)

    async def _load(self, conn: asyncpg.Connection, progress: int | None, step: int) -> None:
        stored = await series_store.load_series(
            conn, recent_points=self._rules.recent_points, rules=self._rules.recovery
        )
        for tracked in stored:
            self._upgrade(tracked)
        self._series = OrderedDict((s.key, s) for s in stored)
        if progress is None and not stored and self.settings.incident_warmup_steps > 0:
            await self._warm_up(step)

    def _upgrade(self, tracked: TrackedSeries) -> None:
        """A stored series runs today's rules: a detector of another kind than the default (state
        saved before the default changed) is replaced by a fresh default, which warms up again; the
        alerting rules, which are settings and not state, are always the current ones (so a changed
        debounce applies to series stored before it)."""
        fresh = make_detector(self._rules.detector)
        if tracked.alerter.detector.kind != fresh.kind:
            tracked.alerter = Alerter(fresh, self._rules.alerter)
        tracked.alerter.settings = self._rules.alerter

    async def _warm_up(self, step: int) -> None:
        start = step - self.settings.incident_warmup_steps * self.step_ns
        spans = await self._source.spans_between(start, step)
        await asyncio.to_thread(self._learn_history, spans, start, step)
        log.info("warmed up %d series from %d spans of history", len(self._series or ()), len(spans))

    def _learn_history(self, spans: list[Span], start: int, step: int) -> None:
        """Feed the history to the detectors (blocking: runs in a worker thread)."""
        self.graph.observe(spans)
        frame = self._frame(spans, start, step)
        for j, t in enumerate(frame.timestamps_ns.tolist()):
            self._observe_all(frame, j, t, evicted=[])
        # history only teaches the detectors: an alert still active there fires again on live data
        assert self._series is not None
        for tracked in self._series.values():
            tracked.forget_alerts(self._rules.alerter)

    def _observe_step(self, spans: list[Span], step: int, evicted: list[SeriesKey]) -> list[Observation]:
        """Signals of one step and every detector's verdict on them (blocking: a worker thread)."""
        self.graph.observe(spans)
        self.graph.expire(step)
        frame = self._frame(spans, step, step + self.step_ns)
        return self._observe_all(frame, 0, step, evicted=evicted)

    async def _commit(
        self, conn: asyncpg.Connection, step: int, observations: list[Observation], evicted: list[SeriesKey]
    ) -> StepReport:
        report = await apply_step(
            conn, step_start_ns=step, observations=observations, graph=self.graph, policy=self._policy
        )
        assert self._series is not None
        for key in report.orphaned:
            self._series[key].end_episode()
        await series_store.save_series(conn, [self._series[o.series] for o in observations])
        if evicted:
            await series_store.delete_series(conn, evicted)
        await series_store.set_progress(conn, step)
        if report.suppressed:
            log.info("suppressed %d anomalies by silences or maintenance windows", len(report.suppressed))
        return report

    def _frame(self, spans: list[Span], start: int, end: int) -> SignalFrame:
        return compute_signals(
            SpanColumns.from_spans(spans),
            step_ns=self.step_ns,
            start_ns=start,
            end_ns=end,
            max_cells=self.settings.signal_max_cells,
        )

    def _observe_all(self, frame: SignalFrame, column: int, t: int, *, evicted: list[SeriesKey]) -> list[Observation]:
        """Observe every tracked series and every new one in ``frame`` at column ``column`` (time ``t``)."""
        assert self._series is not None
        present = {
            (service, operation, signal): float(frame.values[signal][row, column])
            for row, (service, operation) in enumerate(frame.keys)
            for signal in self.settings.incident_signals
            if frame.values["count"][row, column] > 0
        }
        for key in present:
            if key in self._series:
                self._series.move_to_end(key)
        untracked = 0
        for key in present:
            if key in self._series:
                continue
            if len(self._series) >= self.settings.incident_max_series:
                oldest = next(iter(self._series))
                if oldest in present:  # every tracked series is live: evicting would only thrash
                    untracked += 1
                    continue
                del self._series[oldest]
                evicted.append(oldest)
            self._series[key] = self._rules.new_series(key)
        if untracked:
            log.warning(
                "%d live series not tracked: all %d tracked series are live (raise DEVART_AIOPS_INCIDENT_MAX_SERIES)",
                untracked, self.settings.incident_max_series,
            )
        return [
            tracked.observe(t, present.get(key, 0.0 if key[2] == "rate" else math.nan))
            for key, tracked in self._series.items()
        ]

