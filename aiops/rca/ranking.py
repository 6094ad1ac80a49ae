"""Root-cause ranking from spans: several robust views of "what changed", combined per service.

Views (each in [0, 1] per service):

- **latency**: the share of the added self time per trace that the service's operations explain,
  counting an operation only when its shift is significant (median shift beyond 3 robust sigmas, or
  more invocations above the baseline's 99th percentile than chance allows). Self time makes a
  caller that is slow only because of its callee blameless; time a client waits beyond its callee's
  server span (network delay, accept backlog) is charged to the callee.
- **spectrum**: Ochiai similarity between "trace is anomalous" and "the service has an abnormal
  invocation in the trace" (abnormal = self time above the baseline's 99th percentile for that
  operation, or an error that none of the span's children explains).
- **structure**: significant changes of calls per invocation on call edges. Fewer outgoing calls
  blame the caller (it returned early or skipped work); more calls on an edge (retries) blame the
  callee.
- **errors**: increase of errors a service originates (when status codes are present at all).
- **change**: a deployment/config change of the service just before or during the incident, given
  by the caller or seen as a new ``service.version``; it only adds to a service that is anomalous.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from aiops.rca.calibration import FEATURES, Calibrator, default_calibrator, ranking_features
from aiops.rca.frame import FACET_INBOUND, FACET_PEER, KIND_CODES, Frame, Vocabulary, build_frame
from aiops.rca.model import Change, Evidence, OperationStats, RankedCause, RcaResult
from aiops.rca.names import normalise_service
from aiops.rca.recommend import categorise, recommend
from aiops.rca.settings import RcaSettings
from aiops.rca.stats import group_quantiles, group_sum, grouped_order
from aiops.rca.truncation import truncation_blame
from aiops.traces.model import Span
from aiops.traces.table import SpanTable

VIEWS = ("latency", "spectrum", "structure", "errors", "truncation", "change")
"""The views combined per service, in the order evidence lists them."""
_WEIGHTS = {"latency": 0.45, "spectrum": 0.25, "structure": 0.15, "errors": 0.15, "truncation": 0.25}
"""Latency explains added time (the most direct symptom); the two trace-level views (spectrum,
truncation) weigh alike; structure and errors are corroborating views. Truncation's 0.25 was picked
on the nezha-ob dev day from 0.15 / 0.25 / 0.3 / 0.45 (0.25 and 0.3 tie; 0.45 drowns latency)."""
_CHANGE_BOOST = 1.0
"""A recent change doubles the score of a service that is anomalous anyway: a prior, not evidence."""
_Z = 3.0
"""Significance (in standard deviations) every shift, excess or spectrum needs: three sigma."""
_REACTION_DISCOUNT = 0.2
"""Weight left to "fewer calls" blame on a caller whose callee changed: it is probably reacting."""
_FACET_ORPHAN = 3
"""Unit facet of a call whose instrumented callee span is missing (its time is nobody's self time)."""
_DELAYED = 0.1
"""Shift strength above which a call edge counts as delayed for the network-blame hypotheses."""
_COLLATERAL = 0.2
"""An edge whose wait grew by less than this share of the worst edge's growth is collateral delay."""
_STRUCT_Z = 4.0
"""Significance of a calls-per-invocation change: stricter than _Z, edges are many and counts small."""
_MS = 1e6
"""Nanoseconds per millisecond (evidence is reported in ms)."""


@dataclass(frozen=True)
class _Scores:
    """Per-service view scores and the per-unit statistics the evidence is drawn from."""

    views: dict[str, np.ndarray]
    total: np.ndarray
    unit_owner: np.ndarray
    unit_op: np.ndarray
    unit_facet: np.ndarray
    unit_weight: np.ndarray
    base_q: np.ndarray
    inc_q: np.ndarray
    base_dur_q: np.ndarray
    inc_dur_q: np.ndarray
    count_b: np.ndarray
    count_i: np.ndarray
    err_b: np.ndarray
    err_i: np.ndarray
    abnormal_span: np.ndarray
    trace_extent_b: np.ndarray
    trace_extent_i: np.ndarray
    span_owner: np.ndarray
    inbound_share: np.ndarray
    changes: dict[int, list[Change]]


def rank_services(
    incident_spans: Sequence[Span] | SpanTable,
    baseline_spans: Sequence[Span] | SpanTable,
    *,
    topology: Iterable[tuple[str, str]] | None = None,
    changes: Sequence[Change] | None = None,
    settings: RcaSettings | None = None,
    calibrator: Calibrator | None = None,
) -> list[RankedCause]:
    """Candidate root-cause services, best first (empty when the data is insufficient)."""
    return list(
        analyze(
            incident_spans,
            baseline_spans,
            topology=topology,
            changes=changes,
            settings=settings,
            calibrator=calibrator,
        ).causes
    )


def analyze(
    incident_spans: Sequence[Span] | SpanTable,
    baseline_spans: Sequence[Span] | SpanTable,
    *,
    topology: Iterable[tuple[str, str]] | None = None,
    changes: Sequence[Change] | None = None,
    settings: RcaSettings | None = None,
    calibrator: Calibrator | None = None,
) -> RcaResult:
    """Rank root causes of the incident window against the baseline window, each given as spans
    or, faster, as a :class:`SpanTable` (what a bulk reader such as the span store returns).

    ``topology`` adds known (caller, callee) service edges to those seen in the traces; ``changes``
    are recent deployments/config edits. Never raises on bad data: too little or malformed input
    gives ``status="insufficient_data"`` with the reason.
    """
    settings = settings or RcaSettings()
    began = time.perf_counter()
    for label, spans in (("incident", incident_spans), ("baseline", baseline_spans)):
        if len(spans) > settings.max_spans:
            return RcaResult(
                "insufficient_data",
                reason=f"{label} window has {len(spans)} spans, over max_spans={settings.max_spans}",
            )
    vocab = Vocabulary()
    inc = build_frame(incident_spans, vocab)
    base = build_frame(baseline_spans, vocab)
    for label, frame in (("incident", inc), ("baseline", base)):
        if frame.size < settings.min_spans or frame.n_traces < settings.min_traces:
            return RcaResult(
                "insufficient_data",
                reason=(
                    f"{label} window has {frame.size} valid spans in {frame.n_traces} traces "
                    f"({frame.malformed} malformed); need at least {settings.min_spans} spans "
                    f"and {settings.min_traces} traces"
                ),
            )
    graph = _call_graph(inc, base, vocab, topology)
    scores = _score(inc, base, vocab, graph, changes or (), settings)
    services = vocab.service_names()
    order = sorted(range(len(services)), key=lambda s: (-scores.total[s], services[s]))
    order = [s for s in order if scores.total[s] > 0][: settings.top_k]
    if not order:
        return RcaResult("no_change", reason="no service changed beyond its baseline noise")
    features = ranking_features(scores.total[order], {v: scores.views[v] for v in VIEWS}, order)
    top_confidence = (calibrator or default_calibrator()).confidence(features)
    entry = _entry_service(inc)
    causes = []
    rest = float(sum(scores.total[s] for s in order[1:])) or 1.0
    rate_ratio = (inc.n_traces / _window_s(inc)) / (base.n_traces / _window_s(base))
    for rank, s in enumerate(order):
        confidence = top_confidence if rank == 0 else (1 - top_confidence) * float(scores.total[s]) / rest
        evidence = _evidence(s, inc, base, vocab, scores, _path(graph, entry, s, services))
        category = categorise(
            views={v: float(scores.views[v][s]) for v in VIEWS},
            inbound_share=float(scores.inbound_share[s]),
            traffic_ratio=rate_ratio,
            datastore=s in inc.datastore or s in base.datastore,
        )
        causes.append(
            RankedCause(
                service=services[s],
                score=round(float(scores.total[s]), 6),
                confidence=round(float(confidence), 4),
                category=category,
                evidence=evidence,
                recommendations=recommend(services[s], category, evidence),
            )
        )
    top = causes[0]
    return RcaResult(
        "ok",
        causes=tuple(causes),
        summary=_summary(top),
        stats={
            "incident_spans": float(inc.size),
            "baseline_spans": float(base.size),
            "malformed_spans": float(inc.malformed + base.malformed),
            "seconds": time.perf_counter() - began,
            **{f"feature_{name}": float(v) for name, v in zip(FEATURES[1:], features[1:], strict=True)},
        },
    )


def _window_s(frame: Frame) -> float:
    return max(float(frame.end.max() - frame.start.min()) / 1e9, 1e-3)


def _units(inc: Frame, base: Frame, n_ops: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit codes (owner, operation, facet) shared by both frames, plus each unit's key.

    A call span whose callee span is missing although that operation's callee is instrumented
    elsewhere lost its child in transit: its time is not self time, so it gets the orphan facet.
    """
    instrumented = np.zeros(n_ops, bool)
    instrumented[inc.operation[inc.facet == FACET_INBOUND]] = True
    instrumented[base.operation[base.facet == FACET_INBOUND]] = True
    facet_i = np.where((inc.facet != FACET_INBOUND) & instrumented[inc.operation], _FACET_ORPHAN, inc.facet)
    facet_b = np.where((base.facet != FACET_INBOUND) & instrumented[base.operation], _FACET_ORPHAN, base.facet)
    key_i = (inc.owner * n_ops + inc.operation) * 4 + facet_i
    key_b = (base.owner * n_ops + base.operation) * 4 + facet_b
    keys, inverse = np.unique(np.concatenate((key_i, key_b)), return_inverse=True)
    return keys, inverse[: inc.size], inverse[inc.size :]


def _trace_extent(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
    """Per trace: end-to-end extent (ns) and the operation of its earliest span."""
    order = grouped_order(frame.trace, frame.start)
    tr = frame.trace[order]
    starts = np.flatnonzero(np.concatenate(([True], tr[1:] != tr[:-1])))
    first = np.minimum.reduceat(frame.start[order], starts)
    last = np.maximum.reduceat(frame.end[order], starts)
    extent = np.zeros(frame.n_traces)
    root_op = np.zeros(frame.n_traces, np.int64)
    extent[tr[starts]] = last - first
    root_op[tr[starts]] = frame.operation[order][starts]
    return extent, root_op


def _score(
    inc: Frame,
    base: Frame,
    vocab: Vocabulary,
    graph: dict[int, set[int]],
    changes: Sequence[Change],
    settings: RcaSettings,
) -> _Scores:
    n_svc, n_ops = len(vocab.services), len(vocab.operations)
    keys, unit_i, unit_b = _units(inc, base, n_ops)
    n_units = keys.size
    unit_facet = keys % 4
    unit_op = (keys // 4) % n_ops
    unit_owner = keys // 4 // n_ops
    q_hi = settings.abnormal_quantile

    # --- latency: significant self-time shifts, weighted by the time they add per trace ----------
    # Median, high and low quantiles of baseline self time in one sort (the low one is the structure view's).
    base_q = group_quantiles(unit_b, base.exclusive, n_units, (0.5, q_hi, 1 - q_hi))
    inc_q = group_quantiles(unit_i, inc.exclusive, n_units, (0.5, q_hi))
    base_dur_q = group_quantiles(unit_b, base.duration.astype(np.float64), n_units, (0.5, 0.95))
    inc_dur_q = group_quantiles(unit_i, inc.duration.astype(np.float64), n_units, (0.5, 0.95))
    med_b = base_q[0]
    mad_b = group_quantiles(unit_b, np.abs(base.exclusive - med_b[unit_b]), n_units, (0.5,))[0]
    count_b = group_sum(unit_b, None, n_units)
    count_i = group_sum(unit_i, None, n_units)
    # Only units with a baseline get thresholds; orphaned calls carry no self time of anyone.
    known = (count_b >= 5) & (unit_facet != _FACET_ORPHAN)
    # With n baseline samples, a new sample exceeds their maximum with probability 1/(n+1).
    chance = np.maximum(1 - q_hi, 1 / (count_b + 1))
    threshold = np.where(known, np.maximum(base_q[1], med_b + 1e3), np.inf)
    threshold = np.nan_to_num(threshold, nan=np.inf)
    abnormal_i = inc.exclusive > threshold[unit_i]
    abnormal_b = base.exclusive > threshold[unit_b]
    rate_b = np.maximum(
        group_sum(unit_b, abnormal_b.astype(np.float64), n_units) / np.maximum(count_b, 1), chance
    )
    abn_i = group_sum(unit_i, abnormal_i.astype(np.float64), n_units)
    expected = count_i * rate_b
    abn_z = (abn_i - expected) / np.sqrt(expected * (1 - rate_b) + 1)
    abn_strength = np.where(
        abn_z > _Z, np.clip((abn_i / np.maximum(count_i, 1) - rate_b) / np.maximum(1 - rate_b, 1e-9), 0, 1), 0
    )
    robust_sigma = 1.4826 * np.nan_to_num(mad_b) + 0.02 * np.nan_to_num(med_b) + 1e3
    shift = inc_q[0] - med_b
    med_strength = np.where(
        known & (shift > _Z * robust_sigma), np.clip(shift / np.maximum(inc_q[0], 1), 0, 1), 0
    )
    strength = np.nan_to_num(np.maximum(abn_strength, med_strength))
    per_trace_i = group_sum(unit_i, inc.exclusive, n_units) / inc.n_traces
    per_trace_b = group_sum(unit_b, base.exclusive, n_units) / base.n_traces
    added = np.where(unit_facet == _FACET_ORPHAN, 0.0, np.clip(per_trace_i - per_trace_b, 0, None))
    unit_weight = strength * added
    unit_owner = _network_blame(
        unit_owner, _op_service(inc, base, n_ops)[unit_op], unit_facet, strength,
        np.nan_to_num(inc_q[0] - med_b), n_svc,
    )
    total_added = added.sum() or 1.0
    latency = np.bincount(unit_owner, weights=unit_weight, minlength=n_svc) / total_added
    inbound = np.bincount(unit_owner, weights=unit_weight * (unit_facet == FACET_INBOUND), minlength=n_svc)
    inbound_share = inbound / np.maximum(np.bincount(unit_owner, weights=unit_weight, minlength=n_svc), 1e-12)

    # --- errors a service originates -------------------------------------------------------------
    err_b = group_sum(unit_b, base.own_error.astype(np.float64), n_units)
    err_i = group_sum(unit_i, inc.own_error.astype(np.float64), n_units)
    errors = np.zeros(n_svc)
    if inc.has_status or base.has_status:
        e_rate_b = err_b / np.maximum(count_b, 1)
        e_expected = count_i * e_rate_b
        e_z = (err_i - e_expected) / np.sqrt(e_expected + 1)
        e_strength = np.where(e_z > _Z, np.clip(err_i / np.maximum(count_i, 1) - e_rate_b, 0, 1), 0)
        np.maximum.at(errors, unit_owner, np.sqrt(e_strength))

    # --- spectrum: abnormal involvement vs anomalous traces --------------------------------------
    extent_b, root_b = _trace_extent(base)
    extent_i, root_i = _trace_extent(inc)
    n_root = n_ops
    root_thr = group_quantiles(root_b, extent_b, n_root, (q_hi,))[0]
    root_thr = np.nan_to_num(root_thr, nan=float(np.quantile(extent_b, q_hi)))
    spans_b = np.bincount(base.trace, minlength=base.n_traces)
    spans_i = np.bincount(inc.trace, minlength=inc.n_traces)
    cnt_q = group_quantiles(root_b, spans_b.astype(np.float64), n_root, (0.01, q_hi))
    lo_cnt = np.nan_to_num(cnt_q[0], nan=0)[root_i]
    hi_cnt = np.nan_to_num(cnt_q[1], nan=np.inf)[root_i]
    anomalous = (extent_i > root_thr[root_i]) | (spans_i < lo_cnt) | (spans_i > hi_cnt)
    abnormal_span = abnormal_i.copy()
    if inc.has_status:
        abnormal_span |= inc.own_error
        anomalous |= np.bincount(inc.trace, weights=inc.own_error, minlength=inc.n_traces) > 0
    span_owner = unit_owner[unit_i]
    pairs = np.unique(inc.trace[abnormal_span] * n_svc + span_owner[abnormal_span])
    pair_trace, pair_svc = pairs // n_svc, pairs % n_svc
    ef = np.bincount(pair_svc, weights=anomalous[pair_trace], minlength=n_svc)
    ep = np.bincount(pair_svc, weights=~anomalous[pair_trace], minlength=n_svc)
    n_anomalous = float(anomalous.sum())
    n_normal = float(anomalous.size) - n_anomalous
    spectrum = ef / np.sqrt(np.maximum(n_anomalous * (ef + ep), 1e-12))
    # Keep only services abnormal in anomalous traces significantly more often than in normal ones.
    pooled = (ef + ep) / max(anomalous.size, 1)
    spread = np.sqrt(pooled * (1 - pooled) * (1 / max(n_anomalous, 1) + 1 / max(n_normal, 1))) + 1e-12
    spectrum_z = (ef / max(n_anomalous, 1) - ep / max(n_normal, 1)) / spread
    spectrum = np.where((spectrum_z > _Z) & (ef >= 3), spectrum, 0.0)

    # --- structure: calls per invocation on call edges, and invocations ending abnormally fast ----
    low = np.nan_to_num(base_q[2], nan=-np.inf)
    low = np.where(known, low, -np.inf)
    fast_b = group_sum(unit_b, (base.exclusive < low[unit_b]).astype(np.float64), n_units)
    fast_i = group_sum(unit_i, (inc.exclusive < low[unit_i]).astype(np.float64), n_units)
    fast_rate_b = np.maximum(fast_b / np.maximum(count_b, 1), chance)
    fast_expected = count_i * fast_rate_b
    fast_z = (fast_i - fast_expected) / np.sqrt(fast_expected * (1 - fast_rate_b) + 1)
    fast_strength = np.where(
        fast_z > _Z,
        np.clip((fast_i / np.maximum(count_i, 1) - fast_rate_b) / np.maximum(1 - fast_rate_b, 1e-9), 0, 1),
        0,
    )
    fast = np.zeros(n_svc)
    np.maximum.at(fast, unit_owner, fast_strength * (unit_facet != FACET_INBOUND))
    fewer, more = _structure(inc, base, n_svc, n_ops)
    # A caller that skips calls because a callee misbehaved is reacting, not the cause.
    callee_changed = np.maximum.reduce([more, fast, latency > 0.05, errors])
    reacting = np.zeros(n_svc, bool)
    for caller, callees in graph.items():
        reacting[caller] = any(callee_changed[c] > 0 for c in callees)
    truncation = truncation_blame(inc, base, n_svc)
    # Cut-short call sequences say whose answer made callers stop: a more specific explanation of
    # "fewer calls" than blaming the caller, so when they are found the caller-side blame is dropped.
    fewer = fewer if not truncation.any() else np.zeros(n_svc)
    structure = np.maximum.reduce([more, fast, np.where(reacting, _REACTION_DISCOUNT, 1.0) * fewer])

    # --- changes ---------------------------------------------------------------------------------
    change_by_service = _changes(inc, base, vocab, changes, settings)
    change = np.zeros(n_svc)
    for s in change_by_service:
        change[s] = 1.0

    views = {
        "latency": latency,
        "spectrum": spectrum,
        "structure": structure,
        "errors": errors,
        "truncation": truncation,
        "change": change,
    }
    total = sum(_WEIGHTS[v] * views[v] for v in _WEIGHTS)
    # A change is a prior, not evidence: it doubles the score of a service that is anomalous anyway.
    total = total * (1.0 + _CHANGE_BOOST * change)
    return _Scores(
        views=views,
        total=total,
        unit_owner=unit_owner,
        unit_op=unit_op,
        unit_facet=unit_facet,
        unit_weight=unit_weight,
        base_q=base_q,
        inc_q=inc_q,
        base_dur_q=base_dur_q,
        inc_dur_q=inc_dur_q,
        count_b=count_b,
        count_i=count_i,
        err_b=err_b,
        err_i=err_i,
        abnormal_span=abnormal_span,
        trace_extent_b=extent_b,
        trace_extent_i=extent_i,
        span_owner=span_owner,
        inbound_share=inbound_share,
        changes=change_by_service,
    )


def _op_service(inc: Frame, base: Frame, n_ops: int) -> np.ndarray:
    """The service that emits each operation."""
    service = np.zeros(n_ops, np.int64)
    service[base.operation] = base.service
    service[inc.operation] = inc.service
    return service


def _network_blame(
    owner: np.ndarray,
    caller: np.ndarray,
    facet: np.ndarray,
    strength: np.ndarray,
    added_per_call: np.ndarray,
    n_svc: int,
) -> np.ndarray:
    """Who a delayed call edge is charged to: the service whose fault best explains the set of
    delayed edges. A service's inbound fault predicts its incoming edges delayed; a pod-level
    network fault predicts all its edges delayed. Each hypothesis is scored by the Jaccard index
    of predicted and observed delayed edges, and each delayed edge goes to its better endpoint.

    A network fault adds its delay to every call it touches, so an edge whose median wait grew by
    less than ``_COLLATERAL`` of the most delayed edge's growth is collateral (load, queueing behind
    the slow calls), not part of the pattern: otherwise a caller whose every edge slowed a little
    would out-explain the one callee whose edge slowed a hundredfold."""
    inbound = np.flatnonzero(facet == FACET_INBOUND)
    if inbound.size == 0:
        return owner
    edge = caller[inbound] * n_svc + owner[inbound]
    edges, inverse = np.unique(edge, return_inverse=True)
    significant = strength[inbound] > _DELAYED
    growth = np.where(significant, added_per_call[inbound], 0.0)
    delayed = np.zeros(edges.size, bool)
    np.logical_or.at(delayed, inverse, significant & (growth >= _COLLATERAL * growth.max(initial=0.0)))
    if not delayed.any():
        return owner
    src, dst = edges // n_svc, edges % n_svc
    n_delayed = int(delayed.sum())

    def jaccard(predicted: np.ndarray) -> float:
        both = int((predicted & delayed).sum())
        return both / (int(predicted.sum()) + n_delayed - both) if both else 0.0

    fit = np.zeros(n_svc)
    for s in np.unique(np.concatenate((src[delayed], dst[delayed]))).tolist():
        fit[s] = max(jaccard(dst == s), jaccard((dst == s) | (src == s)))
    blamed = owner.copy()
    edge_owner = np.where(fit[src] > fit[dst], src, dst)
    blamed[inbound] = edge_owner[inverse]
    return blamed


def _structure(inc: Frame, base: Frame, n_svc: int, n_ops: int) -> tuple[np.ndarray, np.ndarray]:
    """Blame from changed calls per invocation: fewer calls blame the caller, more (retries) the callee."""
    op_owner = np.zeros(n_ops, np.int64)
    op_owner[base.operation] = base.owner
    op_owner[inc.operation] = inc.owner
    op_service = _op_service(inc, base, n_ops)

    def edges(frame: Frame) -> tuple[np.ndarray, np.ndarray]:
        child = np.flatnonzero(frame.parent >= 0)
        parent = frame.parent[child]
        # client -> server edges are one-to-one by construction; only a dropped span changes them.
        keep = ~frame.call[parent]
        key = frame.operation[parent[keep]] * n_ops + frame.operation[child[keep]]
        return key, np.bincount(frame.operation, minlength=n_ops).astype(np.float64)

    key_i, inv_i = edges(inc)
    key_b, inv_b = edges(base)
    keys, inverse = np.unique(np.concatenate((key_i, key_b)), return_inverse=True)
    c_i = np.bincount(inverse[: key_i.size], minlength=keys.size).astype(np.float64)
    c_b = np.bincount(inverse[key_i.size :], minlength=keys.size).astype(np.float64)
    parent_op, child_op = keys // n_ops, keys % n_ops
    n_i, n_b = inv_i[parent_op], inv_b[parent_op]
    usable = (n_i >= 5) & (n_b >= 5)
    r_b = c_b / np.maximum(n_b, 1)
    r_i = c_i / np.maximum(n_i, 1)
    expected = n_i * r_b
    z = (c_i - expected) / np.sqrt(expected + 1)
    fewer = usable & (z < -_STRUCT_Z)
    more = usable & (z > _STRUCT_Z)
    fewer_blame, more_blame = np.zeros(n_svc), np.zeros(n_svc)
    np.maximum.at(fewer_blame, op_service[parent_op[fewer]], ((r_b - r_i) / np.maximum(r_b, 1e-12))[fewer])
    np.maximum.at(more_blame, op_owner[child_op[more]], ((r_i - r_b) / np.maximum(r_i, 1e-12))[more])
    return fewer_blame, more_blame


def _changes(
    inc: Frame, base: Frame, vocab: Vocabulary, changes: Sequence[Change], settings: RcaSettings
) -> dict[int, list[Change]]:
    """Changes per service code: the given ones near the incident, plus new ``service.version`` values."""
    start, stop = int(inc.start.min()), int(inc.end.max())
    lookback = int(settings.change_window_s * 1e9)
    found: dict[int, list[Change]] = {}
    for change in changes:
        name = normalise_service(change.service)
        if name in vocab.services and start - lookback <= change.at_ns <= stop:
            found.setdefault(vocab.services[name], []).append(change)
    for s, versions in inc.versions.items():
        new = versions - base.versions.get(s, versions)
        if new and s not in found:
            old = ",".join(sorted(base.versions.get(s, set())))
            found[s] = [
                Change(
                    "deployment",
                    vocab.service_names()[s],
                    start,
                    f"service.version {old} -> {','.join(sorted(new))}",
                )
            ]
    return found


def _call_graph(
    inc: Frame, base: Frame, vocab: Vocabulary, topology: Iterable[tuple[str, str]] | None
) -> dict[int, set[int]]:
    graph: dict[int, set[int]] = {}
    for frame in (inc, base):
        child = np.flatnonzero(frame.parent >= 0)
        pairs = np.unique(frame.service[frame.parent[child]] * len(vocab.services) + frame.owner[child])
        for p in pairs.tolist():
            a, b = divmod(p, len(vocab.services))
            if a != b:
                graph.setdefault(a, set()).add(b)
    for caller, callee in topology or ():
        a, b = vocab.services.get(normalise_service(caller)), vocab.services.get(normalise_service(callee))
        if a is not None and b is not None and a != b:
            graph.setdefault(a, set()).add(b)
    return graph


def _entry_service(frame: Frame) -> int:
    roots = frame.service[frame.parent < 0]
    return int(np.bincount(roots).argmax()) if roots.size else int(frame.service[0])


def _path(graph: dict[int, set[int]], entry: int, target: int, names: list[str]) -> tuple[str, ...]:
    """Shortest call path from the entry service to ``target`` (just the target if unreachable)."""
    previous: dict[int, int | None] = {entry: None}
    queue = deque([entry])
    while queue:
        node = queue.popleft()
        if node == target:
            path = []
            cur: int | None = node
            while cur is not None:
                path.append(names[cur])
                cur = previous[cur]
            return tuple(reversed(path))
        for nxt in sorted(graph.get(node, ())):
            if nxt not in previous:
                previous[nxt] = node
                queue.append(nxt)
    return (names[target],)


def _evidence(
    s: int, inc: Frame, base: Frame, vocab: Vocabulary, scores: _Scores, path: tuple[str, ...]
) -> Evidence:
    op_names = vocab.operation_names()
    op_keys = list(vocab.operations)
    kinds = list(KIND_CODES)
    mine = np.flatnonzero(scores.unit_owner == s)
    mine = mine[np.argsort(-(scores.unit_weight[mine] + 1e-9 * scores.count_i[mine]))][:5]
    ops = []
    for u in mine.tolist():
        facet = int(scores.unit_facet[u])
        label = op_names[int(scores.unit_op[u])]
        if facet == FACET_INBOUND:
            label += " (wait beyond callee)"
        elif facet == FACET_PEER:
            label += " (uninstrumented peer)"
        cb, ci = scores.count_b[u], scores.count_i[u]
        ops.append(
            OperationStats(
                operation=label,
                kind=kinds[op_keys[int(scores.unit_op[u])][2]],
                count_before=int(cb),
                count_after=int(ci),
                p50_before=_ms(scores.base_dur_q[0][u]),
                p50_after=_ms(scores.inc_dur_q[0][u]),
                p95_before=_ms(scores.base_dur_q[1][u]),
                p95_after=_ms(scores.inc_dur_q[1][u]),
                exclusive_p50_before=_ms(scores.base_q[0][u]),
                exclusive_p50_after=_ms(scores.inc_q[0][u]),
                error_ratio_before=round(float(scores.err_b[u] / cb), 4) if cb else 0.0,
                error_ratio_after=round(float(scores.err_i[u] / ci), 4) if ci else 0.0,
            )
        )
    involved = np.zeros(inc.n_traces, bool)
    flagged = scores.abnormal_span & (scores.span_owner == s)
    involved[inc.trace[flagged]] = True
    if not involved.any():
        involved[inc.trace[scores.span_owner == s]] = True
    candidates = np.flatnonzero(involved)
    slowest = typical = None
    if candidates.size:
        ext = scores.trace_extent_i[candidates]
        slowest = inc.trace_ids[int(candidates[np.argmax(ext)])]
        typical = inc.trace_ids[int(candidates[np.argsort(ext)[ext.size // 2]])]
    with_s = np.zeros(base.n_traces, bool)
    with_s[base.trace[base.owner == s]] = True
    pool = np.flatnonzero(with_s) if with_s.any() else np.arange(base.n_traces)
    ext_b = scores.trace_extent_b[pool]
    baseline_trace = base.trace_ids[int(pool[np.argsort(ext_b)[ext_b.size // 2]])]
    return Evidence(
        slowest_trace=slowest,
        typical_trace=typical,
        baseline_trace=baseline_trace,
        operations=tuple(ops),
        path=path,
        views={v: round(float(scores.views[v][s]), 4) for v in VIEWS},
        instance=_hot_instance(s, inc, vocab, flagged & (inc.service == s)),
        changes=tuple(scores.changes.get(s, ())),
    )


def _hot_instance(s: int, inc: Frame, vocab: Vocabulary, flagged: np.ndarray) -> str | None:
    """The pod whose spans are abnormal far more often than the service's other pods, if any."""
    own = inc.service == s
    if not flagged.any() or not own.any():
        return None
    n_inst = len(vocab.instances)
    total = np.bincount(inc.instance[own], minlength=n_inst)
    bad = np.bincount(inc.instance[flagged], minlength=n_inst)
    present = np.flatnonzero(total >= 5)
    if present.size < 2:
        return None
    rate = bad[present] / total[present]
    best = int(np.argmax(rate))
    others = np.delete(rate, best)
    if rate[best] > 0.05 and rate[best] > 3 * max(float(others.max()), 0.01):
        return list(vocab.instances)[int(present[best])]
    return None


def _ms(value: float) -> float:
    return round(float(value) / _MS, 3) if np.isfinite(value) else 0.0


def _summary(top: RankedCause) -> str:
    ev = top.evidence
    text = f"Most likely cause: {top.service} ({top.category}, confidence {top.confidence:.0%})"
    if ev.operations:
        op = ev.operations[0]
        text += (
            f"; {op.operation}: self time p50 {op.exclusive_p50_before:.2f} -> {op.exclusive_p50_after:.2f} ms, "
            f"p95 {op.p95_before:.2f} -> {op.p95_after:.2f} ms, calls {op.count_before} -> {op.count_after}"
        )
    if ev.changes:
        text += f"; change: {ev.changes[0].kind} {ev.changes[0].detail}"
    if len(ev.path) > 1:
        text += f"; path {' -> '.join(ev.path)}"
    return text
