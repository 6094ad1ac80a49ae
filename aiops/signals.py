"""RED signals per (service, operation) per time step, computed with numpy from a batch of spans.

An *operation* is ``(service, span name)`` of an **entry span**: a span of kind ``server`` or
``consumer``, or a root span (no parent) of any kind. Client, producer and internal child spans are
not requests of their own; they only shape their parents' exclusive time. Each entry span counts in
the step holding its start time. Per cell:

- ``rate``: entry spans per second (count / step seconds); 0 for an empty cell.
- ``error_ratio``: share of those spans with status ``error``; NaN for an empty cell.
- ``p50``, ``p95``, ``p99``: duration quantiles in seconds (linear interpolation, as numpy's
  default); NaN for an empty cell.
- ``self_time``: mean exclusive time in seconds: a span's duration minus the union of its
  children's intervals, each clipped to the parent (children may overlap each other); NaN for an
  empty cell. Children are found in the same batch by (trace id, parent span id); every span of the
  batch, entry or not and inside the window or not, counts as a child.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import is_
from typing import Literal, get_args

import numpy as np

from aiops.traces.model import Span
from aiops.traces.table import SpanTable

Signal = Literal["rate", "error_ratio", "p50", "p95", "p99", "self_time", "count", "errors"]
SIGNALS: tuple[Signal, ...] = get_args(Signal)
DEFAULT_MAX_CELLS = 5_000_000

_NS_PER_S = 1_000_000_000
_ENTRY_KINDS = frozenset({"server", "consumer"})
_QUANTILES: tuple[tuple[Signal, float], ...] = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
_MIX = np.uint64(0x9E3779B97F4A7C15)  # odd constant (golden ratio), spreads trace keys before XOR
_NO_PARENT = "0" * 16
_SAFE_SPAN = 1 << 61  # shifted interval ends stay below 2**62 + one duration: no int64 overflow


@dataclass(frozen=True, slots=True)
class SpanColumns:
    """One batch of spans as column arrays (length n each), built once and aggregated many times.

    ``operation`` indexes ``operations`` (``(service, name)`` pairs). Ids are folded to 64-bit keys
    (``trace_key``; ``span_key``; ``parent_key`` 0 for no parent) used only to join children to parents.
    """

    operations: tuple[tuple[str, str], ...]
    operation: np.ndarray
    start_ns: np.ndarray
    end_ns: np.ndarray
    error: np.ndarray
    entry: np.ndarray
    trace_key: np.ndarray
    span_key: np.ndarray
    parent_key: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.start_ns)
        for name in ("operation", "end_ns", "error", "entry", "trace_key", "span_key", "parent_key"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"column {name} has {len(getattr(self, name))} rows, start_ns has {n}")

    def __len__(self) -> int:
        return len(self.start_ns)

    @classmethod
    def from_spans(cls, spans: Sequence[Span]) -> SpanColumns:
        """Columns of ``spans``, through the span table (transposed at C speed, never span by span)."""
        return cls.from_table(SpanTable.from_spans(spans))

    @classmethod
    def from_table(cls, table: SpanTable) -> SpanColumns:
        """Columns of a span table (what a bulk reader hands over), operations numbered in order of
        first appearance."""
        n = len(table)
        # pairs made on the fly (a list of one tuple per span would be traced by the garbage collector)
        codes = {pair: code for code, pair in enumerate(dict.fromkeys(zip(table.service, table.name, strict=True)))}
        root = np.fromiter(map(is_, table.parent_id, repeat(None)), np.bool_, n)
        entry_kind = np.fromiter(map(_ENTRY_KINDS.__contains__, table.kind), np.bool_, n)
        trace = _hex_words(table.trace_id, 2, "trace_id")
        return cls(
            operations=tuple(codes),
            operation=np.fromiter(map(codes.__getitem__, zip(table.service, table.name, strict=True)), np.int64, n),
            start_ns=table.start_ns,
            end_ns=table.end_ns,
            error=np.fromiter(map("error".__eq__, table.status), np.bool_, n),
            entry=root | entry_kind,
            trace_key=trace[:, 0] ^ (trace[:, 1] * _MIX),
            span_key=_hex_words(table.span_id, 1, "span_id")[:, 0],
            parent_key=_hex_words([p or _NO_PARENT for p in table.parent_id], 1, "parent_id")[:, 0],
        )


@dataclass(frozen=True, slots=True)
class SignalFrame:
    """Dense signals: ``values[signal]`` is an (operations x steps) array; row i is ``keys[i]``,
    column j the step starting at ``timestamps_ns[j]``."""

    step_ns: int
    timestamps_ns: np.ndarray
    keys: tuple[tuple[str, str], ...]
    values: dict[Signal, np.ndarray]
    _rows: dict[tuple[str, str], int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_rows", {key: i for i, key in enumerate(self.keys)})

    def series(self, service: str, operation: str, signal: Signal) -> tuple[np.ndarray, np.ndarray]:
        """``(timestamps_ns, values)`` of one signal of one operation."""
        if signal not in self.values:
            raise KeyError(f"unknown signal {signal!r}; known: {', '.join(SIGNALS)}")
        row = self._rows.get((service, operation))
        if row is None:
            raise KeyError(f"no requests of operation {operation!r} of service {service!r} in this frame")
        return self.timestamps_ns, self.values[signal][row]


def exclusive_time_ns(columns: SpanColumns) -> np.ndarray:
    """Each span's duration minus the union of its children's intervals clipped to it (int64 ns)."""
    duration = columns.end_ns - columns.start_ns
    if len(duration) == 0:
        return duration
    child, parent = _children(columns)
    if len(child) == 0:
        return duration
    parent_start = columns.start_ns[parent]
    rel_start = np.clip(columns.start_ns[child], parent_start, columns.end_ns[parent]) - parent_start
    rel_end = np.clip(columns.end_ns[child], parent_start, columns.end_ns[parent]) - parent_start
    order = _order_by(parent, rel_start)
    parent, rel_start, rel_end = parent[order], rel_start[order], rel_end[order]
    first = np.flatnonzero(np.r_[True, parent[1:] != parent[:-1]])
    covered = np.add.reduceat(_new_coverage(rel_start, rel_end, first, duration[parent[first]]), first)
    exclusive = duration.copy()
    exclusive[parent[first]] -= covered
    return exclusive


def compute_signals(
    columns: SpanColumns,
    *,
    step_ns: int,
    start_ns: int | None = None,
    end_ns: int | None = None,
    max_cells: int = DEFAULT_MAX_CELLS,
) -> SignalFrame:
    """RED signals of the entry spans that started in ``[start_ns, end_ns)``, in steps of
    ``step_ns`` from ``start_ns``. Without a window, steps are aligned to multiples of ``step_ns``
    since the epoch and cover the batch. Refuses more than ``max_cells`` (operations x steps)."""
    if step_ns <= 0:
        raise ValueError(f"step_ns must be positive, got {step_ns}")
    starts = columns.start_ns
    if start_ns is None:
        start_ns = int(starts.min()) // step_ns * step_ns if len(starts) else 0
    if end_ns is None:
        end_ns = (int(starts.max()) // step_ns + 1) * step_ns if len(starts) else start_ns
    if end_ns < start_ns:
        raise ValueError(f"end_ns ({end_ns}) is before start_ns ({start_ns})")
    n_steps = -(-(end_ns - start_ns) // step_ns)
    timestamps = start_ns + step_ns * np.arange(n_steps, dtype=np.int64)

    exclusive = exclusive_time_ns(columns)
    chosen = np.flatnonzero(columns.entry & (starts >= start_ns) & (starts < end_ns))
    operation = columns.operation[chosen]
    present = np.flatnonzero(np.bincount(operation, minlength=len(columns.operations)))
    row_of = np.zeros(len(columns.operations), dtype=np.int64)
    row_of[present] = np.arange(len(present))
    op_row = row_of[operation]
    n_ops = len(present)
    if n_ops * n_steps > max_cells:
        raise ValueError(
            f"{n_ops} operations x {n_steps} steps = {n_ops * n_steps} cells, over max_cells={max_cells}: "
            "use a shorter window, a longer step or filter the spans"
        )
    cells = n_ops * n_steps
    cell = op_row * n_steps + (starts[chosen] - start_ns) // step_ns
    count = np.bincount(cell, minlength=cells)
    errors = np.bincount(cell, weights=columns.error[chosen], minlength=cells).astype(np.int64)
    self_sum = np.bincount(cell, weights=exclusive[chosen].astype(np.float64), minlength=cells)
    duration = columns.end_ns[chosen] - columns.start_ns[chosen]

    with np.errstate(invalid="ignore", divide="ignore"):
        values: dict[Signal, np.ndarray] = {
            "count": count,
            "errors": errors,
            "rate": count / (step_ns / _NS_PER_S),
            "error_ratio": errors / count,
            "self_time": self_sum / count / _NS_PER_S,
        }
    values.update(_cell_quantiles(cell, duration, count))
    shape = (n_ops, n_steps)
    return SignalFrame(
        step_ns=step_ns,
        timestamps_ns=timestamps,
        keys=tuple(columns.operations[i] for i in present),
        values={name: array.reshape(shape) for name, array in values.items()},
    )


def _hex_words(ids: Sequence[str], words: int, field: str) -> np.ndarray:
    """Ids of ``words`` x 16 hex digits -> (n, words) big-endian uint64, in one C-level decode."""
    problem = f"every {field} must be {16 * words} hex digits"
    try:
        raw = bytes.fromhex("".join(ids))
    except ValueError:
        raise ValueError(problem) from None
    if len(raw) != 8 * words * len(ids):
        raise ValueError(problem)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64).reshape(len(ids), words)


def _children(columns: SpanColumns) -> tuple[np.ndarray, np.ndarray]:
    """Index pairs (child, parent) of the spans whose parent is in the batch."""
    key = columns.span_key ^ (columns.trace_key * _MIX)
    order = np.argsort(key)
    sorted_key = key[order]
    child = np.flatnonzero(columns.parent_key != 0)
    wanted = columns.parent_key[child] ^ (columns.trace_key[child] * _MIX)
    # looking up sorted needles walks the haystack in order: several times faster than random probes
    needles = np.argsort(wanted)
    pos = np.empty(len(child), dtype=np.int64)
    pos[needles] = np.searchsorted(sorted_key, wanted[needles])
    np.minimum(pos, len(key) - 1, out=pos)
    parent = order[pos]
    # equal keys and equal span ids imply equal trace keys (multiplying by an odd number is a bijection)
    found = (sorted_key[pos] == wanted) & (columns.span_key[parent] == columns.parent_key[child])
    return child[found], parent[found]


def _order_by(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """Permutation sorting by (major, minor), both non-negative int64: one sort of the two packed
    into a single int64 when they fit (several times faster than a two-key lexsort)."""
    if len(major) == 0:
        return np.empty(0, dtype=np.int64)
    major_bits = max(int(major.max()).bit_length(), 1)
    if int(minor.min()) >= 0 and int(minor.max()).bit_length() <= 63 - major_bits:
        return np.argsort((major.astype(np.int64) << (63 - major_bits)) | minor)
    return np.lexsort((minor, major))


def _new_coverage(
    rel_start: np.ndarray, rel_end: np.ndarray, first: np.ndarray, width: np.ndarray
) -> np.ndarray:
    """For intervals sorted by (group, start), the length each adds to its group's union.

    Intervals of a group lie in [0, width]; shifting group g by the sum of the widths before it
    keeps groups apart, so one running maximum over the whole array is a per-group running maximum
    of interval ends. Groups are processed in chunks whose shifted values stay far from overflow.
    """
    n = len(rel_start)
    bounds = np.r_[first, n]
    chunk_of_group = (np.cumsum(width + 1, dtype=np.float64) // _SAFE_SPAN).astype(np.int64)
    chunk_first = np.flatnonzero(np.r_[True, chunk_of_group[1:] != chunk_of_group[:-1]])
    coverage = np.empty(n, dtype=np.int64)
    for lo_group, hi_group in zip(chunk_first, np.r_[chunk_first[1:], len(first)], strict=True):
        lo, hi = bounds[lo_group], bounds[hi_group]
        group_len = np.diff(bounds[lo_group : hi_group + 1])
        offsets = np.cumsum(width[lo_group:hi_group] + 1) - (width[lo_group:hi_group] + 1)
        shift = np.repeat(offsets, group_len)
        seen_end = np.maximum.accumulate(rel_end[lo:hi] + shift) - shift
        previous = np.empty(hi - lo, dtype=np.int64)
        previous[1:] = seen_end[:-1]
        is_first = np.zeros(hi - lo, dtype=bool)
        is_first[first[lo_group:hi_group] - lo] = True
        previous[is_first] = rel_start[lo:hi][is_first]
        coverage[lo:hi] = np.maximum(0, rel_end[lo:hi] - np.maximum(rel_start[lo:hi], previous))
    return coverage


def _cell_quantiles(cell: np.ndarray, duration: np.ndarray, count: np.ndarray) -> dict[Signal, np.ndarray]:
    """Duration quantiles (seconds) per cell, linear interpolation, NaN for empty cells."""
    n_cells = len(count)
    ordered = duration[_order_by(cell, duration)]
    first = np.cumsum(count) - count
    has = count > 0
    out: dict[Signal, np.ndarray] = {}
    for name, q in _QUANTILES:
        result = np.full(n_cells, np.nan)
        h = (count[has] - 1) * q
        lo = np.floor(h).astype(np.int64)
        hi = np.minimum(lo + 1, count[has] - 1)
        low = ordered[first[has] + lo].astype(np.float64)
        high = ordered[first[has] + hi].astype(np.float64)
        result[has] = (low + (h - lo) * (high - low)) / _NS_PER_S
        out[name] = result
    return out
