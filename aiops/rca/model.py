"""What RCA takes in (changes) and gives back (ranked causes with evidence and recommendations)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Category = Literal[
    "infrastructure/resource",
    "application code",
    "dependency",
    "configuration/deployment change",
    "capacity/traffic",
]
Action = Literal[
    "restart", "scale", "rollback", "delete_pod", "requeue", "pause_pool", "drain_pool", "notify"
]
Status = Literal["ok", "insufficient_data", "no_change"]


@dataclass(frozen=True, slots=True)
class Change:
    """Something that changed around the incident: a deployment, a config edit, a task run."""

    kind: Literal["deployment", "config", "task"]
    service: str
    at_ns: int
    detail: str = ""


@dataclass(frozen=True, slots=True)
class Recommendation:
    """A remediation the policy layer may run: ``action`` on ``target`` because ``why``."""

    action: Action
    target: str
    why: str


@dataclass(frozen=True, slots=True)
class OperationStats:
    """Before/after statistics of one operation; times in milliseconds.

    ``exclusive`` is self time: the span's duration not covered by its children.
    """

    operation: str
    kind: str
    count_before: int
    count_after: int
    p50_before: float
    p50_after: float
    p95_before: float
    p95_after: float
    exclusive_p50_before: float
    exclusive_p50_after: float
    error_ratio_before: float
    error_ratio_after: float


@dataclass(frozen=True, slots=True)
class Evidence:
    """Why a service was blamed: exemplar traces, per-operation statistics, the call path and the
    per-view scores (latency, spectrum, structure, errors, change) that were combined."""

    slowest_trace: str | None
    typical_trace: str | None
    baseline_trace: str | None
    operations: tuple[OperationStats, ...]
    path: tuple[str, ...]
    views: dict[str, float]
    instance: str | None = None
    changes: tuple[Change, ...] = ()


@dataclass(frozen=True, slots=True)
class RankedCause:
    """One candidate root-cause service. ``confidence`` is the calibrated probability it is the cause."""

    service: str
    score: float
    confidence: float
    category: Category
    evidence: Evidence
    recommendations: tuple[Recommendation, ...] = ()


@dataclass(frozen=True, slots=True)
class RcaResult:
    """The outcome of one analysis: causes best first (``ok``), or no causes with a reason: the data
    was too little or malformed (``insufficient_data``), or nothing moved beyond baseline noise
    (``no_change``)."""

    status: Status
    causes: tuple[RankedCause, ...] = ()
    reason: str = ""
    summary: str = ""
    stats: dict[str, float] = field(default_factory=dict)
