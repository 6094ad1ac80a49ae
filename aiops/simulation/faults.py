"""Fault kinds the simulator injects, and the fault a scenario carries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

FaultKind = Literal[
    "cpu", "network", "exception", "wrong_return", "db_slowdown", "deployment", "memory_leak", "surge"
]

FAULT_KINDS: tuple[FaultKind, ...] = (
    "cpu",
    "network",
    "exception",
    "wrong_return",
    "db_slowdown",
    "deployment",
    "memory_leak",
    "surge",
)


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected fault. ``service`` is the ground-truth root cause.

    ``instance`` limits the fault to one pod (index into the service's replicas) when not None;
    ``magnitude`` scales its strength (1.0 is the nominal fault). A network fault delays calls into
    the service; with ``egress`` also the service's own outgoing calls (a pod-level fault as chaos
    tools inject it).
    """

    kind: FaultKind
    service: str
    magnitude: float = 1.0
    instance: int | None = None
    egress: bool = False
