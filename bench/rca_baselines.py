"""Two naive root-cause rankers the real-data RCA benchmark compares against.

- random: every service of the incident window equally likely at each rank; its AC@k is the exact
  expectation ``min(k, n) / n`` over all orderings (no seed, no sampling noise).
- largest self-time increase: services by how much their spans' self time per trace grew over the
  baseline (self time = duration minus the children's durations, clipped at 0).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from aiops.traces.model import Span


def random_accuracy(services: int, k: int) -> float:
    """AC@k of a uniformly random ordering of ``services`` candidates with the true one among them."""
    return min(k, services) / services if services else 0.0


def _self_time_per_trace(spans: Sequence[Span]) -> dict[str, float]:
    children: dict[tuple[str, str], int] = defaultdict(int)
    for s in spans:
        if s.parent_id:
            children[(s.trace_id, s.parent_id)] += s.end_ns - s.start_ns
    total: dict[str, float] = defaultdict(float)
    traces = {s.trace_id for s in spans}
    for s in spans:
        total[s.service] += max(s.end_ns - s.start_ns - children.get((s.trace_id, s.span_id), 0), 0)
    return {service: t / max(len(traces), 1) for service, t in total.items()}


def self_time_ranking(incident: Sequence[Span], baseline: Sequence[Span]) -> list[str]:
    """Services of the incident window by increase of self time per trace, largest first."""
    after, before = _self_time_per_trace(incident), _self_time_per_trace(baseline)
    return sorted(after, key=lambda s: (-(after[s] - before.get(s, 0.0)), s))
