import random
from collections import defaultdict

import numpy as np
import pytest

from aiops.signals import SIGNALS, SpanColumns, compute_signals, exclusive_time_ns
from aiops.traces import Span

T0 = 1_700_000_000_000_000_000
STEP = 60_000_000_000


def _span(
    span_id: int,
    start: int,
    end: int,
    parent: int | None = None,
    *,
    trace: int = 1,
    kind: str = "internal",
    service: str = "api",
    name: str = "op",
    status: str = "unset",
) -> Span:
    return Span(
        trace_id=f"{trace:032x}",
        span_id=f"{span_id:016x}",
        parent_id=None if parent is None else f"{parent:016x}",
        service=service,
        name=name,
        kind=kind,
        start_ns=T0 + start,
        end_ns=T0 + end,
        status=status,
    )


def _exclusive(spans: list[Span]) -> list[int]:
    return exclusive_time_ns(SpanColumns.from_spans(spans)).tolist()


@pytest.mark.parametrize(
    ("children", "expected"),
    [
        ([], 100),
        ([(10, 20), (15, 30)], 80),  # overlapping children count once
        ([(10, 20), (20, 30)], 80),  # touching
        ([(10, 60), (20, 30), (25, 40)], 50),  # one child covering others
        ([(90, 150)], 90),  # clipped to the parent's end
        ([(-50, 10)], 90),  # clipped to the parent's start
        ([(200, 300)], 100),  # entirely outside the parent
        ([(0, 100), (0, 100)], 0),
        ([(30, 30)], 100),  # empty child
    ],
)
def test_exclusive_time_subtracts_the_union_of_children_clipped_to_the_parent(children, expected) -> None:
    spans = [_span(1, 0, 100)] + [_span(10 + i, s, e, parent=1) for i, (s, e) in enumerate(children)]
    assert _exclusive(spans)[0] == expected


def test_exclusive_time_counts_only_direct_children_of_the_same_trace() -> None:
    spans = [
        _span(1, 0, 100),
        _span(2, 10, 50, parent=1),
        _span(3, 20, 30, parent=2),  # grandchild: only shortens its own parent
        _span(4, 60, 70, parent=1, trace=2),  # same parent span id, another trace
        _span(5, 80, 90, parent=99),  # parent never seen
    ]
    assert _exclusive(spans) == [60, 30, 10, 10, 10]


def test_a_parent_id_seen_only_in_other_traces_is_no_parent() -> None:
    others = [_span(1, 0, 100, trace=t) for t in range(2, 60)]
    orphan = _span(1 << 63, 10, 50, parent=1, trace=1)  # its own key lies far from the one it looks for
    assert _exclusive([*others, orphan]) == [100] * len(others) + [40]


def test_entry_spans_are_server_consumer_and_roots_counted_in_their_start_step() -> None:
    spans = [
        _span(1, 0, 4_000_000, kind="internal", name="job"),  # a root of any kind
        _span(2, 1_000, 2_000_000, parent=1, kind="client", name="call"),
        _span(3, 1_500, 1_000_000, parent=2, kind="server", service="db", name="query", status="error"),
        _span(4, STEP + 5, STEP + 1_000_005, parent=9, kind="consumer", service="db", name="query"),
        _span(5, STEP + 7, STEP + 10, parent=4, kind="producer", service="db", name="publish"),
    ]
    frame = compute_signals(SpanColumns.from_spans(spans), step_ns=STEP)
    assert frame.keys == (("api", "job"), ("db", "query"))
    assert frame.timestamps_ns.tolist() == [T0 // STEP * STEP, T0 // STEP * STEP + STEP]
    ts, count = frame.series("db", "query", "count")
    assert count.tolist() == [1, 1] and ts is frame.timestamps_ns
    assert frame.series("db", "query", "error_ratio")[1][0] == 1.0
    assert frame.series("api", "job", "rate")[1].tolist() == [1 / 60, 0.0]
    assert np.isnan(frame.series("api", "job", "p99")[1][1])
    assert frame.series("api", "job", "self_time")[1][0] == pytest.approx((4_000_000 - 1_999_000) / 1e9)
    assert frame.series("db", "query", "self_time")[1][1] == pytest.approx((1_000_000 - 3) / 1e9)


def test_a_window_keeps_entry_spans_inside_it_but_children_outside_still_count() -> None:
    spans = [_span(1, 0, 100, kind="server"), _span(2, 50, 100, parent=1, kind="server", name="late")]
    frame = compute_signals(SpanColumns.from_spans(spans), step_ns=STEP, start_ns=T0, end_ns=T0 + 50)
    assert frame.keys == (("api", "op"),)
    assert frame.values["self_time"][0, 0] == pytest.approx(50e-9)


def test_series_and_limits_fail_clearly() -> None:
    columns = SpanColumns.from_spans([_span(1, 0, 10, kind="server")])
    frame = compute_signals(columns, step_ns=STEP)
    with pytest.raises(KeyError, match="no requests of operation 'nope' of service 'api'"):
        frame.series("api", "nope", "rate")
    with pytest.raises(KeyError, match="unknown signal"):
        frame.series("api", "op", "latency")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_cells=10"):
        compute_signals(columns, step_ns=1, start_ns=T0, end_ns=T0 + 11, max_cells=10)
    with pytest.raises(ValueError, match="step_ns"):
        compute_signals(columns, step_ns=0)
    with pytest.raises(ValueError, match="span_id must be 16 hex digits"):
        SpanColumns.from_spans([Span("ab" * 16, "abc", None, "s", "n", "server", 1, 2)])


def test_an_empty_batch_gives_an_empty_frame() -> None:
    frame = compute_signals(SpanColumns.from_spans([]), step_ns=STEP)
    assert frame.keys == () and frame.values["rate"].shape == (0, 0)


def _random_spans(rng: random.Random, traces: int) -> list[Span]:
    spans: list[Span] = []
    for t in range(traces):
        trace = rng.getrandbits(128) | 1
        start = rng.randrange(0, 5 * STEP)
        ids: list[int] = []
        for _ in range(rng.randint(1, 12)):
            span_id = rng.getrandbits(64) | 1
            roll = rng.random()
            parent = (
                None
                if not ids or roll < 0.1
                else (rng.getrandbits(64) | 1 if roll < 0.15 else rng.choice(ids))
            )
            s = start + rng.randrange(-1_000, 2_000_000)
            e = s + rng.choice([0, rng.randrange(1, 3_000_000)])
            spans.append(
                Span(
                    trace_id=f"{trace:032x}",
                    span_id=f"{span_id:016x}",
                    parent_id=None if parent is None else f"{parent:016x}",
                    service=rng.choice(["api", "db", "queue"]),
                    name=rng.choice(["a", "b", "c"]),
                    kind=rng.choice(["internal", "server", "client", "producer", "consumer"]),
                    start_ns=T0 + s,
                    end_ns=T0 + e,
                    status=rng.choice(["unset", "ok", "error", "unset"]),
                )
            )
            ids.append(span_id)
        if t % 7 == 0:  # a colliding span id in another trace must not be taken for a parent
            other = spans[-1]
            spans.append(
                Span(
                    f"{rng.getrandbits(128) | 1:032x}",
                    other.span_id,
                    None,
                    "api",
                    "a",
                    "server",
                    other.start_ns,
                    other.end_ns + 5,
                )
            )
    rng.shuffle(spans)
    return spans


def _reference(spans: list[Span], step: int) -> dict:
    """The obvious, slow definition of every signal."""
    by_id = {(s.trace_id, s.span_id): s for s in spans}
    children = defaultdict(list)
    for s in spans:
        if s.parent_id and (s.trace_id, s.parent_id) in by_id:
            children[(s.trace_id, s.parent_id)].append(s)
    cells = defaultdict(list)
    first = min(s.start_ns for s in spans) // step
    for s in spans:
        if s.kind in ("server", "consumer") or s.parent_id is None:
            merged, covered = [], 0
            for c in sorted(children[(s.trace_id, s.span_id)], key=lambda c: c.start_ns):
                lo, hi = min(max(c.start_ns, s.start_ns), s.end_ns), min(max(c.end_ns, s.start_ns), s.end_ns)
                if merged and lo <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], hi)
                else:
                    merged.append([lo, hi])
            covered = sum(hi - lo for lo, hi in merged)
            cells[(s.service, s.name, s.start_ns // step - first)].append((s, s.duration_ns - covered))
    out = {}
    for key, members in cells.items():
        durations = [s.duration_ns for s, _ in members]
        out[key] = {
            "count": len(members),
            "errors": sum(s.status == "error" for s, _ in members),
            "rate": len(members) / (step / 1e9),
            "error_ratio": sum(s.status == "error" for s, _ in members) / len(members),
            "p50": np.quantile(durations, 0.5) / 1e9,
            "p95": np.quantile(durations, 0.95) / 1e9,
            "p99": np.quantile(durations, 0.99) / 1e9,
            "self_time": sum(x for _, x in members) / len(members) / 1e9,
        }
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_vectorised_signals_match_the_reference_on_random_traces(seed: int) -> None:
    spans = _random_spans(random.Random(seed), traces=400)
    frame = compute_signals(SpanColumns.from_spans(spans), step_ns=STEP)
    expected = _reference(spans, STEP)
    seen = 0
    for row, (service, name) in enumerate(frame.keys):
        for col in range(len(frame.timestamps_ns)):
            cell = expected.get((service, name, col))
            if cell is None:
                assert frame.values["count"][row, col] == 0
                assert np.isnan(frame.values["p50"][row, col]) and np.isnan(
                    frame.values["error_ratio"][row, col]
                )
                continue
            seen += 1
            for signal in SIGNALS:
                assert frame.values[signal][row, col] == pytest.approx(cell[signal], rel=1e-9, abs=1e-12), (
                    signal
                )
    assert seen == len(expected) > 20
