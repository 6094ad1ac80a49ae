"""How many spans per second the RED signal computation aggregates on one core.

    python -m bench.signals [--spans 1500000] [--repeat 3]

Synthetic traces of 2-16 spans (a server root fanning out to clients, each answered by a server
span of another service, with overlapping siblings) over one hour, 50 services x 8 operations,
1 % errors. Times :func:`aiops.signals.compute_signals` on prepared columns (exclusive time
included), then the one-off conversion of :class:`Span` objects to columns on a smaller batch.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from aiops.signals import SpanColumns, compute_signals
from aiops.traces.model import Span

_T0 = 1_700_000_000_000_000_000
_HOUR_NS = 3_600_000_000_000
_STEP_NS = 60_000_000_000
_SERVICES, _OPERATIONS = 50, 8


def synthetic_columns(n_spans: int, seed: int) -> SpanColumns:
    """About ``n_spans`` spans of random traces, as columns."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 17, size=max(n_spans // 9, 1))
    sizes = sizes[: np.searchsorted(np.cumsum(sizes), n_spans) + 1]
    n = int(sizes.sum())
    trace_of = np.repeat(np.arange(len(sizes)), sizes)
    first = np.cumsum(sizes) - sizes
    position = np.arange(n) - first[trace_of]
    # span 0 is the root; odd spans are clients of the root, even spans the server answering the previous one
    parent_position = np.where(position % 2 == 1, 0, position - 1)
    parent_position[position == 0] = -1
    span_key = rng.integers(1, np.iinfo(np.int64).max, size=n).astype(np.uint64)
    parent_index = first[trace_of] + parent_position
    parent_key = np.where(parent_position >= 0, span_key[np.maximum(parent_index, 0)], np.uint64(0))
    root_start = _T0 + rng.integers(0, _HOUR_NS, size=len(sizes))
    start = root_start[trace_of] + position * rng.integers(1_000, 200_000, size=n)
    end = start + rng.lognormal(15, 1, size=n).astype(np.int64) + 1_000
    return SpanColumns(
        operations=tuple((f"svc-{s}", f"op-{o}") for s in range(_SERVICES) for o in range(_OPERATIONS)),
        operation=rng.integers(0, _SERVICES * _OPERATIONS, size=n),
        start_ns=start,
        end_ns=end,
        error=rng.random(n) < 0.01,
        entry=(position % 2 == 0),
        trace_key=rng.integers(1, np.iinfo(np.int64).max, size=len(sizes)).astype(np.uint64)[trace_of],
        span_key=span_key,
        parent_key=parent_key,
    )


def _spans(columns: SpanColumns, count: int) -> list[Span]:
    return [
        Span(
            trace_id=f"{int(columns.trace_key[i]):032x}",
            span_id=f"{int(columns.span_key[i]):016x}",
            parent_id=f"{int(columns.parent_key[i]):016x}" if columns.parent_key[i] else None,
            service=columns.operations[columns.operation[i]][0],
            name=columns.operations[columns.operation[i]][1],
            kind="server" if columns.entry[i] else "client",
            start_ns=int(columns.start_ns[i]),
            end_ns=int(columns.end_ns[i]),
            status="error" if columns.error[i] else "unset",
        )
        for i in range(count)
    ]


def _best_of(repeat: int, work: object) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        work()  # type: ignore[operator]
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--spans", type=int, default=1_500_000, help="spans in the aggregated batch")
    parser.add_argument("--objects", type=int, default=300_000, help="Span objects converted to columns")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; the best is reported")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    columns = synthetic_columns(args.spans, args.seed)
    n = len(columns)
    frame = compute_signals(columns, step_ns=_STEP_NS)
    seconds = _best_of(args.repeat, lambda: compute_signals(columns, step_ns=_STEP_NS))
    print(f"signals: {n:,} spans -> {len(frame.keys)} operations x {len(frame.timestamps_ns)} steps")
    print(f"compute_signals (exclusive time included): {seconds:.3f} s = {n / seconds:,.0f} spans/s")

    objects = _spans(columns, min(args.objects, n))
    seconds = _best_of(args.repeat, lambda: SpanColumns.from_spans(objects))
    print(
        f"SpanColumns.from_spans: {len(objects):,} Span objects in {seconds:.3f} s = {len(objects) / seconds:,.0f} spans/s"
    )


if __name__ == "__main__":
    main()
