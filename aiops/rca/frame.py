"""Spans as columns: one Python pass per window, then numpy for everything else.

Each span's self (exclusive) time is charged to an *owner* service: its own service, except for a
call span (client/producer, or a span of unspecified kind with a child in another service: sources
that record no span kind still show the call structurally), whose time not covered by the callee's server span (network, queueing, the
callee's accept backlog) is charged to the callee, and a client span with no instrumented callee,
charged to the ``peer.service`` it names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from aiops.rca.names import normalise_service
from aiops.traces.model import Span

KIND_CODES = {"server": 0, "client": 1, "producer": 2, "consumer": 3, "internal": 4, "unspecified": 5}
FACET_SELF, FACET_INBOUND, FACET_PEER = 0, 1, 2
_ERROR_ATTRS = ("http.status_code", "http.response.status_code")


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


def _valid(span: object) -> bool:
    return (
        isinstance(span, Span)
        and isinstance(span.start_ns, int)
        and isinstance(span.end_ns, int)
        and span.end_ns >= span.start_ns
        and bool(span.trace_id)
        and bool(span.span_id)
    )


def _is_error(span: Span) -> bool:
    if span.status == "error":
        return True
    for key in _ERROR_ATTRS:
        code = span.attributes.get(key)
        if isinstance(code, int) and code >= 500:
            return True
    return False


def build_frame(spans: Sequence[Span], vocab: Vocabulary) -> Frame:
    """Columns for ``spans``; invalid spans (end before start, missing ids, not a Span) are counted
    in ``malformed`` and left out."""
    good = [s for s in spans if _valid(s)]
    malformed = len(spans) - len(good)
    n = len(good)
    trace_codes: dict[str, int] = {}
    trace = np.fromiter((trace_codes.setdefault(s.trace_id, len(trace_codes)) for s in good), np.int64, n)
    index = {(s.trace_id, s.span_id): i for i, s in enumerate(good)}
    parent = np.fromiter(
        (index.get((s.trace_id, s.parent_id), -1) if s.parent_id else -1 for s in good), np.int64, n
    )
    service = np.fromiter((vocab.service(s.service) for s in good), np.int64, n)
    kind = np.fromiter((KIND_CODES.get(s.kind, 5) for s in good), np.int64, n)
    ops = vocab.operations
    operation = np.fromiter(
        (
            ops.setdefault((sv, s.name, k), len(ops))
            for s, sv, k in zip(good, service.tolist(), kind.tolist(), strict=True)
        ),
        np.int64,
        n,
    )
    start = np.fromiter((s.start_ns for s in good), np.int64, n)
    end = np.fromiter((s.end_ns for s in good), np.int64, n)
    has_status = any(s.status != "unset" for s in good)
    error = np.fromiter((_is_error(s) for s in good), bool, n)
    instances = vocab.instances
    instance = np.fromiter(
        (instances.setdefault(s.attributes.get("k8s.pod.name") or s.service, len(instances)) for s in good),
        np.int64,
        n,
    )
    versions: dict[int, set[str]] = {}
    for sv, s in zip(service.tolist(), good, strict=True):
        version = s.attributes.get("service.version")
        if version is not None:
            versions.setdefault(sv, set()).add(str(version))

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
        attrs = good[i].attributes
        peer = attrs.get("peer.service") or attrs.get("db.system")
        if peer:
            owner[i] = vocab.service(str(peer))
            facet[i] = FACET_PEER
        if "db.system" in attrs:
            datastore.add(int(owner[i]))
    for i in np.flatnonzero(is_call & (facet == FACET_INBOUND)).tolist():
        if "db.system" in good[i].attributes:
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
        order = np.lexsort((lo, par))
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
