"""A window of spans as aligned numpy columns, from a :class:`SpanTable` (or spans transposed into
one): strings become codes through dicts and C-level ``map`` (no Python loop over the spans, no
object per span), everything after is numpy.

Each span's self (exclusive) time is charged to an *owner* service: its own service, except for a
call span (client/producer, or a span of unspecified kind with a child in another service: sources
that record no span kind still show the call structurally), whose time not covered by the callee's server span (network, queueing, the
callee's accept backlog) is charged to the callee, and a client span with no instrumented callee,
charged to the ``peer.service`` it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count, repeat
from operator import is_not
from typing import Any

import numpy as np

from aiops.rca.names import normalise_service
from aiops.rca.stats import grouped_order
from aiops.traces.model import Span
from aiops.traces.table import SpanTable

KIND_CODES = {"server": 0, "client": 1, "producer": 2, "consumer": 3, "internal": 4, "unspecified": 5}
FACET_SELF, FACET_INBOUND, FACET_PEER = 0, 1, 2
_ERROR_ATTRS = ("http.status_code", "http.response.status_code")
ATTRIBUTES = ("k8s.pod.name", "peer.service", "db.system", "service.version", *_ERROR_ATTRS)
"""The only span attributes the frame reads: a reader may leave out all the others."""


class Vocabulary:
    """Codes shared by the baseline and incident frames so their columns line up."""

    def __init__(self) -> None:
        self.services: dict[str, int] = {}
        self.operations: dict[tuple[int, str, int], int] = {}
        self.instances: dict[str, int] = {}
        self._normalised: dict[str, int] = {}

    def service(self, raw: str) -> int:
        code = self._normalised.get(raw)
        if code is None:
            code = self.services.setdefault(normalise_service(raw) or "unknown", len(self.services))
            self._normalised[raw] = code
        return code

    def service_names(self) -> list[str]:
        return list(self.services)

    def operation_names(self) -> list[str]:
        names = self.service_names()
        kinds = list(KIND_CODES)
        return [f"{names[s]} {kinds[k]} {n}" for (s, n, k) in self.operations]


@dataclass(frozen=True)
class Frame:
    """One window of spans as aligned columns; times in nanoseconds, ``parent`` an index or -1."""

    trace: np.ndarray
    trace_ids: list[str]
    parent: np.ndarray
    service: np.ndarray
    owner: np.ndarray
    facet: np.ndarray
    operation: np.ndarray
    kind: np.ndarray
    call: np.ndarray
    instance: np.ndarray
    start: np.ndarray
    end: np.ndarray
    exclusive: np.ndarray
    error: np.ndarray
    own_error: np.ndarray
    has_status: bool
    versions: dict[int, set[str]]
    datastore: set[int]
    malformed: int

    @property
    def size(self) -> int:
        return int(self.trace.size)

    @property
    def n_traces(self) -> int:
        return len(self.trace_ids)

    @property
    def duration(self) -> np.ndarray:
        return self.end - self.start


def _codes(values: Sequence[Any], table: dict[Any, int]) -> np.ndarray:
    """Codes of ``values`` in ``table``, new values numbered in order of first occurrence."""
    new = dict.fromkeys(values)
    if table:
        new = dict.fromkeys(v for v in new if v not in table)
    table.update(zip(new, count(len(table))))
    return np.fromiter(map(table.__getitem__, values), np.int64, len(values))


def _present(values: list[Any]) -> list[int]:
    """Positions of the values that are not None."""
    if values.count(None) == len(values):
        return []
    return np.flatnonzero(np.fromiter(map(is_not, values, repeat(None)), bool, len(values))).tolist()


def _parents(trace: np.ndarray, span_id: Sequence[str], parent_id: Sequence[str | None]) -> np.ndarray:
    """Index of each span's parent (the last span of that id in the same trace), or -1."""
    n = len(span_id)
    last = dict(zip(span_id, range(n), strict=True))
    theirs = np.fromiter(map(last.get, parent_id, repeat(-1)), np.int64, n)
    if len(last) == n:  # span ids unique across the window (random 64-bit ids): one lookup suffices
        found = theirs >= 0
        found[found] = trace[theirs[found]] == trace[found]
        return np.where(found, theirs, -1)
    # Numeric (trace, id) keys rather than a dict of tuples: no object per span for the collector.
    own = np.fromiter(map(last.__getitem__, span_id), np.int64, n)
    key = trace * n + own
    order = np.argsort(key, kind="stable")
    ordered = key[order]
    wanted = trace * n + theirs
    at = np.maximum(np.searchsorted(ordered, wanted, side="right") - 1, 0)
    return np.where((theirs >= 0) & (ordered[at] == wanted), order[at], -1)


def _operations(
    service: np.ndarray, name: Sequence[str], kind: np.ndarray, table: dict[tuple[int, str, int], int]
) -> np.ndarray:
    """Operation codes of (service, name, kind), new ones numbered in order of first occurrence."""
    names: dict[str, int] = {}
    name_code = _codes(name, names)
    key = (service * len(names) + name_code) * len(KIND_CODES) + kind
    unique, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    listed = list(names)
    code = np.empty(unique.size, np.int64)
    for u in np.argsort(first).tolist():
        i = int(first[u])
        code[u] = table.setdefault((int(service[i]), listed[name_code[i]], int(kind[i])), len(table))
    return code[inverse]


def _attribute(columns: SpanTable, key: str) -> list[Any]:
    return list(map(dict.get, columns.attributes, repeat(key)))


def _valid_rows(columns: SpanTable) -> tuple[SpanTable, int]:
    """The rows with both ids and an end not before the start, and how many rows were left out."""
    ok = columns.end_ns >= columns.start_ns
    if not (all(columns.trace_id) and all(columns.span_id)):
        n = len(columns)
        ok &= np.fromiter(map(bool, columns.trace_id), bool, n) & np.fromiter(map(bool, columns.span_id), bool, n)
    if ok.all():
        return columns, 0
    return columns.select(ok), int(ok.size - ok.sum())


def build_frame(spans: Sequence[Span] | SpanTable, vocab: Vocabulary) -> Frame:
    """Columns for ``spans``; invalid spans (end before start, missing ids, times that are not
    integers, not a Span) are counted in ``malformed`` and left out."""
    columns = spans if isinstance(spans, SpanTable) else SpanTable.from_spans(spans)
    columns, dropped = _valid_rows(columns)
    malformed = columns.rejected + dropped
    n = len(columns)
    trace_codes: dict[str, int] = {}
    trace = _codes(columns.trace_id, trace_codes)
    parent = _parents(trace, columns.span_id, columns.parent_id)
    raw_services = dict.fromkeys(columns.service)
    for raw in raw_services:
        raw_services[raw] = vocab.service(raw)
    service = np.fromiter(map(raw_services.__getitem__, columns.service), np.int64, n)
    kind = np.fromiter(map(KIND_CODES.get, columns.kind, repeat(5)), np.int64, n)
    operation = _operations(service, columns.name, kind, vocab.operations)
    start, end = columns.start_ns, columns.end_ns
    statuses = set(columns.status)
    has_status = bool(statuses - {"unset"})
    error = np.fromiter(map("error".__eq__, columns.status), bool, n) if "error" in statuses else np.zeros(n, bool)
    for key in _ERROR_ATTRS:
        codes = _attribute(columns, key)
        for i in _present(codes):
            if isinstance(codes[i], int) and codes[i] >= 500:
                error[i] = True
    pods = _attribute(columns, "k8s.pod.name")
    if not all(pods):
        pods = [pod or raw for pod, raw in zip(pods, columns.service, strict=True)]
    instance = _codes(pods, vocab.instances)
    versions: dict[int, set[str]] = {}
    given = _attribute(columns, "service.version")
    service_list = service.tolist()
    for i in _present(given):
        versions.setdefault(service_list[i], set()).add(str(given[i]))

    linked = parent >= 0
    child_idx = np.flatnonzero(linked)
    par = parent[child_idx]
    is_call = (kind == KIND_CODES["client"]) | (kind == KIND_CODES["producer"])
    unknown = kind == KIND_CODES["unspecified"]
    is_call[par[unknown[par] & (service[child_idx] != service[par])]] = True
    owner = service.copy()
    facet = np.full(n, FACET_SELF, np.int64)
    remote = is_call[par] & (service[child_idx] != service[par])
    owner[par[remote]] = service[child_idx[remote]]
    facet[par[remote]] = FACET_INBOUND
    datastore: set[int] = set()
    leaf_calls = np.flatnonzero(is_call & (facet == FACET_SELF))
    for i in leaf_calls.tolist():
        attrs = columns.attributes[i]
        peer = attrs.get("peer.service") or attrs.get("db.system")
        if peer:
            owner[i] = vocab.service(str(peer))
            facet[i] = FACET_PEER
        if "db.system" in attrs:
            datastore.add(int(owner[i]))
    for i in np.flatnonzero(is_call & (facet == FACET_INBOUND)).tolist():
        if "db.system" in columns.attributes[i]:
            datastore.add(int(owner[i]))

    exclusive = _exclusive(start, end, service, parent, child_idx)
    err_child = np.zeros(n, bool)
    err_idx = child_idx[error[child_idx]]
    err_child[parent[err_idx]] = True
    return Frame(
        trace=trace,
        trace_ids=list(trace_codes),
        parent=parent,
        service=service,
        owner=owner,
        facet=facet,
        operation=operation,
        kind=kind,
        call=is_call,
        instance=instance,
        start=start,
        end=end,
        exclusive=exclusive,
        error=error,
        own_error=error & ~err_child,
        has_status=has_status,
        versions=versions,
        datastore=datastore,
        malformed=malformed,
    )


def _exclusive(
    start: np.ndarray, end: np.ndarray, service: np.ndarray, parent: np.ndarray, child_idx: np.ndarray
) -> np.ndarray:
    """Duration minus the time covered by children.

    Children in the parent's own service share its clock: the union of their intervals, clipped
    to the parent's, is subtracted (parallel children overlap). A child in another service (the
    server span under a client span) runs on another clock that may be skewed: only its duration
    is subtracted, which makes a call's wait time independent of clock skew.
    """
    duration = (end - start).astype(np.float64)
    if child_idx.size == 0:
        return duration
    par_all = parent[child_idx]
    remote = service[child_idx] != service[par_all]
    remote_cover = np.bincount(par_all[remote], weights=duration[child_idx[remote]], minlength=start.size)
    local = child_idx[~remote]
    par = par_all[~remote]
    union = np.zeros(start.size)
    if local.size:
        # Times relative to the parent's start: clipped children live in [0, parent duration].
        lo = np.clip(start[local] - start[par], 0, duration[par])
        hi = np.clip(end[local] - start[par], lo, duration[par])
        order = grouped_order(par, lo.astype(np.int64))  # whole nanoseconds: exact
        par, lo, hi = par[order], lo[order], hi[order]
        first = np.concatenate(([True], par[1:] != par[:-1]))
        # A cumulative max that restarts per parent: lift each parent's group above all earlier groups.
        width = float(duration.max()) + 1.0
        offset = np.cumsum(first) * width
        running = np.maximum.accumulate(hi + offset)
        prev_end = np.where(first, -1.0, np.concatenate(([0.0], running[:-1])) - offset)
        covered = np.clip(hi - np.maximum(lo, prev_end), 0, None)
        union = np.bincount(par, weights=covered, minlength=start.size)
    return np.clip(duration - union - remote_cover, 0, None)
