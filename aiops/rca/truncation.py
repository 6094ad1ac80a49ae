"""Blame from changed call sequences: which service's answer made its callers stop early.

Wrong return values and exceptions often leave no trace in latency or status codes (the faulty
service answers as fast as ever, and the source may record no errors), but the callers react: they
stop making the calls that normally follow, or take another path. Each invocation's *signature* is
the sequence of operations its direct children run, in start order. A signature that is
significantly more frequent in the incident than in the baseline (for the same parent operation;
a two-proportion z-test) is an excess; each of its invocations weighs the share of them above the
baseline rate. An excess signature that
is a proper prefix of a baseline signature was cut short: it blames the service that answered its
last child call (the caller stopped right after that answer), or the parent's own service when it
made no call at all. A local last child (same service, not a call) passes the blame down: that
child's own signature is judged in turn, so the deepest cut wins. Any other excess signature (calls
in an order never seen, or calls the baseline never makes) blames the parent's own service.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aiops.rca.frame import Frame
from aiops.rca.stats import grouped_order

_Z = 3.0
"""Excess frequency (in binomial standard deviations) a signature needs to count: 3 sigma, as the
other views."""
_MIN_PARENTS = 5
"""Fewest baseline invocations of a parent operation for its signatures to be compared at all."""
_HASH_BASE = np.uint64(1_000_003)
"""Base of the positional hash of a call sequence (sum of (operation + 1) * base**position, mod 2**64)."""


@dataclass(frozen=True)
class _Sequences:
    """Per span: the hash of its children's operation sequence (0 without children) and its last
    child (-1 without); plus every (parent operation, proper-prefix hash) pair."""

    signature: np.ndarray
    last_child: np.ndarray
    prefix_op: np.ndarray
    prefix_hash: np.ndarray


def _sequences(frame: Frame) -> _Sequences:
    n = frame.size
    signature = np.zeros(n, np.uint64)
    last_child = np.full(n, -1, np.int64)
    child = np.flatnonzero(frame.parent >= 0)
    if child.size == 0:
        return _Sequences(signature, last_child, np.zeros(0, np.int64), np.zeros(0, np.uint64))
    order = child[grouped_order(frame.parent[child], frame.start[child])]
    par = frame.parent[order]
    first = np.concatenate(([True], par[1:] != par[:-1]))
    group_start = np.flatnonzero(first)
    position = np.arange(order.size) - np.repeat(group_start, np.diff(np.append(group_start, order.size)))
    with np.errstate(over="ignore"):
        powers = np.cumprod(np.full(int(position.max()) + 1, _HASH_BASE, np.uint64)) // _HASH_BASE
        powers[0] = np.uint64(1)
        terms = (frame.operation[order].astype(np.uint64) + np.uint64(1)) * powers[position]
        running = np.cumsum(terms, dtype=np.uint64)
        before_group = np.repeat(running[group_start] - terms[group_start], np.diff(np.append(group_start, order.size)))
        inclusive = running - before_group
    prefix = inclusive - terms  # the hash of the children before this one: a proper prefix
    last = np.append(group_start[1:], order.size) - 1
    signature[par[last]] = inclusive[last]
    last_child[par[last]] = order[last]
    return _Sequences(signature, last_child, frame.operation[par], prefix)


_MIX = np.uint64(0x9E3779B97F4A7C15)
"""Odd 64-bit multiplier folding (operation, signature) into one key for vectorised lookups."""


def _keys(op: np.ndarray, signature: np.ndarray) -> np.ndarray:
    """One 64-bit key per (operation, signature) pair."""
    with np.errstate(over="ignore"):
        return signature * _MIX + op.astype(np.uint64)


def truncation_blame(inc: Frame, base: Frame, n_svc: int) -> np.ndarray:
    """Per service in [0, 1]: its share of the excess invocations whose change of call sequence it
    explains (0 everywhere when no signature changed significantly)."""
    seq_b, seq_i = _sequences(base), _sequences(inc)
    keys_b = _keys(base.operation, seq_b.signature)
    keys_i = _keys(inc.operation, seq_i.signature)
    uniq_b, count_b = np.unique(keys_b, return_counts=True)
    uniq_i, first_i, count_i = np.unique(keys_i, return_index=True, return_counts=True)
    n_ops = int(max(inc.operation.max(initial=0), base.operation.max(initial=0))) + 1
    ops_b = np.bincount(base.operation, minlength=n_ops)
    ops_i = np.bincount(inc.operation, minlength=n_ops)
    c_b = np.zeros(uniq_i.size, np.int64)
    if uniq_b.size:
        at = np.minimum(np.searchsorted(uniq_b, uniq_i), uniq_b.size - 1)
        c_b = np.where(uniq_b[at] == uniq_i, count_b[at], 0)
    op = inc.operation[first_i]
    n_b, n_i = ops_b[op].astype(np.float64), ops_i[op].astype(np.float64)
    rate_i, rate_b = count_i / n_i, c_b / np.maximum(n_b, 1.0)
    # Two-proportion z-test with the pooled rate: a variant that is merely rare in both windows
    # (dropped spans make many) does not count, however unseen it was in the baseline.
    pooled = (count_i + c_b) / (n_i + n_b)
    spread = np.sqrt(pooled * (1.0 - pooled) * (1.0 / n_i + 1.0 / np.maximum(n_b, 1.0)))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(spread > 0, (rate_i - rate_b) / spread, 0.0)
    significant = (n_b >= _MIN_PARENTS) & (z > _Z)
    blame = np.zeros(n_svc)
    if not significant.any():
        return blame
    share_of_key = dict(zip(uniq_i[significant].tolist(), ((rate_i - rate_b) / rate_i)[significant].tolist(), strict=True))
    prefixes = set(_keys(seq_b.prefix_op, seq_b.prefix_hash).tolist())
    for i in np.flatnonzero(np.isin(keys_i, uniq_i[significant])).tolist():
        key = int(keys_i[i])
        share = share_of_key[key]
        last = int(seq_i.last_child[i])
        if last < 0 or key not in prefixes:
            blame[inc.service[i]] += share
        elif inc.call[last] or inc.service[last] != inc.service[i]:
            blame[inc.owner[last]] += share
    total = blame.sum()
    return blame / total if total > 0 else blame
