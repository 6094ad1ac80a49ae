"""Scoring detectors as alerting systems on labelled series.

An anomaly window counts as detected when an alert fires inside it or within ``tolerance_points``
steps after its end; the delay is the first such alert minus the window start, in steps. Every other
alert inside the same window is a repeat, and an alert outside every window is a false alert. Alerts
are the ``fired`` events of an ``Alerter``, so consecutive anomalous points already make one alert.
Precision is first alerts over all alerts (repeats and false alerts both cost), recall is detected
windows over windows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from aiops.detection.alerting import Alerter, AlerterSettings
from aiops.detection.base import StreamingDetector
from aiops.evaluation.series import LabelledSeries


@dataclass(frozen=True, slots=True)
class SeriesOutcome:
    """How one detector did on one series."""

    name: str
    category: str
    points: int
    windows: int
    detected: int
    delays: tuple[float, ...]
    repeats: int
    false_alerts: int


@dataclass(frozen=True, slots=True)
class Summary:
    """Aggregated outcomes of one detector over a group of series."""

    detector: str
    group: str
    points: int
    windows: int
    detected: int
    alerts: int
    repeats: int
    false_alerts: int
    precision: float
    recall: float
    f1: float
    mean_delay: float
    median_delay: float
    false_per_1k: float


def outcome(series: LabelledSeries, alert_times: Iterable[float], tolerance_points: int = 3) -> SeriesOutcome:
    """Match alert times against the series' windows."""
    tolerance = tolerance_points * series.step
    first: dict[int, float] = {}
    repeats = false_alerts = 0
    for t in alert_times:
        hit = next(
            (i for i, w in enumerate(series.windows) if w.start <= t <= w.end + tolerance),
            None,
        )
        if hit is None:
            false_alerts += 1
        elif hit in first:
            repeats += 1
        else:
            first[hit] = t
    delays = tuple((first[i] - series.windows[i].start) / series.step for i in sorted(first))
    return SeriesOutcome(
        series.name,
        series.category,
        len(series.values),
        len(series.windows),
        len(first),
        delays,
        repeats,
        false_alerts,
    )


def evaluate(
    make: Callable[[], StreamingDetector],
    dataset: Iterable[LabelledSeries],
    alerter_settings: AlerterSettings | None = None,
    tolerance_points: int = 3,
) -> list[SeriesOutcome]:
    """Run a fresh detector from ``make`` and an alerter over every series, and score the alerts."""
    settings = alerter_settings if alerter_settings is not None else AlerterSettings()
    outcomes = []
    for series in dataset:
        events = Alerter(make(), settings).alert_series(series.timestamps, series.values)
        fired = [e.timestamp for e in events if e.kind == "fired"]
        outcomes.append(outcome(series, fired, tolerance_points))
    return outcomes


def summarise(detector: str, outcomes: list[SeriesOutcome]) -> list[Summary]:
    """One summary per series category, then one over everything (group ``all``)."""
    groups: dict[str, list[SeriesOutcome]] = {}
    for o in outcomes:
        groups.setdefault(o.category, []).append(o)
    groups["all"] = outcomes
    return [_summary(detector, group, members) for group, members in groups.items()]


def _summary(detector: str, group: str, members: list[SeriesOutcome]) -> Summary:
    points = sum(o.points for o in members)
    windows = sum(o.windows for o in members)
    detected = sum(o.detected for o in members)
    repeats = sum(o.repeats for o in members)
    false_alerts = sum(o.false_alerts for o in members)
    alerts = detected + repeats + false_alerts
    precision = detected / alerts if alerts else 1.0
    recall = detected / windows if windows else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    delays = [d for o in members for d in o.delays]
    return Summary(
        detector=detector,
        group=group,
        points=points,
        windows=windows,
        detected=detected,
        alerts=alerts,
        repeats=repeats,
        false_alerts=false_alerts,
        precision=precision,
        recall=recall,
        f1=f1,
        mean_delay=float(np.mean(delays)) if delays else float("nan"),
        median_delay=float(np.median(delays)) if delays else float("nan"),
        false_per_1k=1000.0 * false_alerts / points if points else 0.0,
    )


def format_table(summaries: Iterable[Summary]) -> str:
    """A Markdown table of summaries, one row each."""
    lines = [
        "| detector | series | windows | detected | repeats | false | precision | recall | F1 "
        "| mean delay | median delay | false/1k pts |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        lines.append(
            f"| {s.detector} | {s.group} | {s.windows} | {s.detected} | {s.repeats} | {s.false_alerts} "
            f"| {s.precision:.2f} | {s.recall:.2f} | {s.f1:.2f} | {s.mean_delay:.1f} | {s.median_delay:.1f} "
            f"| {s.false_per_1k:.2f} |"
        )
    return "\n".join(lines)
