"""Severity from size and breadth; the call graph's paths and expiry; tracked-series state round trip."""

from __future__ import annotations

import json

import numpy as np

from aiops.detection import Alerter, ConformalSettings, make_detector
from aiops.incidents import Anomaly, Excerpt
from aiops.incidents.episode import RecoveryRules
from aiops.incidents.grouping import CallGraph
from aiops.incidents.pipeline import live_detector_settings
from aiops.incidents.series import TrackedSeries
from aiops.incidents.severity import severity
from aiops.traces import Span


def _anomaly(service: str, *, score: float = 0.9, change: float | None = 2.0, signal: str = "p95") -> Anomaly:
    return Anomaly(
        fingerprint=json.dumps([service, "op", signal, "up"]), service=service, operation="op", signal=signal,
        direction="up", first_ns=0, last_ns=1, peak_score=score, baseline=1.0 if change is not None else 0.0,
        peak_value=1.0 + (change or 0.0) if change is not None else 0.3, relative_change=change, active=True,
        calm_steps=0, occurrences=1, excerpt=Excerpt(),
    )


def test_severity_grows_with_size_and_breadth_and_stays_in_range() -> None:
    small, large = severity([_anomaly("a", change=0.2)]), severity([_anomaly("a", change=5.0)])
    assert 0 < small < large < 1
    assert severity([_anomaly("a", score=0.5)]) < severity([_anomaly("a", score=1.0)])
    one_service = severity([_anomaly("a"), _anomaly("a", signal="rate")])
    two_services = severity([_anomaly("a"), _anomaly("b", signal="rate")])
    assert severity([_anomaly("a")]) < one_service < two_services <= 1
    assert severity([_anomaly("a", change=None)]) == severity([_anomaly("a", change=50.0)])  # from zero: complete
    assert severity([]) == 0.0


def _span(trace: int, span: int, parent: int | None, service: str, start: int) -> Span:
    return Span(trace_id=f"{trace:032x}", span_id=f"{span:016x}", parent_id=None if parent is None else f"{parent:016x}",
                service=service, name="op", kind="server", start_ns=start, end_ns=start + 1, status="ok", attributes={})


def test_call_graph_links_transitive_callers_not_siblings_and_forgets_old_edges() -> None:
    graph = CallGraph(ttl_ns=100)
    graph.observe([_span(1, 1, None, "api", 0), _span(1, 2, 1, "orders", 0), _span(1, 3, 2, "db", 0),
                   _span(1, 4, 1, "cache", 50), _span(1, 5, 4, "cache", 50)])
    assert graph.edges == {("api", "orders"), ("orders", "db"), ("api", "cache")}
    assert graph.on_same_path("db", "api") and graph.on_same_path("api", "db") and graph.on_same_path("db", "db")
    assert not graph.on_same_path("db", "cache")
    graph.expire(now_ns=120)
    assert graph.edges == {("api", "cache")}


def test_tracked_series_state_round_trips_through_json_in_the_middle_of_an_episode() -> None:
    rng = np.random.default_rng(3)
    settings = live_detector_settings(ConformalSettings(warmup_points=10))
    rules = RecoveryRules(confirm_steps=2, recovery_steps=3, band_sigmas=3.0, return_share=0.2, memory_steps=50)
    original = TrackedSeries(("s", "op", "p95"), Alerter(make_detector(settings)), recent_points=4, rules=rules)
    fired = [original.observe(t * 1_000_000_000, v).fired
             for t, v in enumerate(rng.normal(10, 1, 130).tolist() + [float("nan"), 30.0, 31.0])]
    assert fired[-2:] == [None, "up"] and original.episode is not None  # confirmed on the second step
    restored = TrackedSeries.from_state(
        original.key, json.loads(json.dumps(original.state_dict())), recent_points=4, rules=rules
    )
    assert restored.recent == original.recent and len(restored.recent) == 4
    seen = []
    for t, v in enumerate([30.0, 10.0, 10.5, 9.8, 10.1], start=133):
        a, b = original.observe(t * 1_000_000_000, v), restored.observe(t * 1_000_000_000, v)
        assert (a.score, a.fired, a.recovered, a.calm_steps, a.in_episode) == (
            b.score, b.fired, b.recovered, b.calm_steps, b.in_episode
        )
        seen.append(a.recovered)
    assert seen == [False, False, False, True, False]  # three steps back near 10 end the episode
    assert json.dumps(original.state_dict(), allow_nan=False)
