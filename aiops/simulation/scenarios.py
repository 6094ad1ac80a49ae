"""Labelled fault scenarios: baseline spans, incident spans and the ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from aiops.rca.model import Change
from aiops.simulation.faults import FAULT_KINDS, Fault, FaultKind
from aiops.simulation.generator import GeneratorOptions, TraceGenerator
from aiops.simulation.topologies import ServiceGraph, by_name
from aiops.traces.model import Span

_S = 1_000_000_000


@dataclass(frozen=True)
class Scenario:
    """One labelled incident. ``root_cause`` is the faulty service; ``changes`` what a change log shows."""

    graph: ServiceGraph
    fault: Fault
    baseline: list[Span]
    incident: list[Span]
    changes: tuple[Change, ...]

    @property
    def root_cause(self) -> str:
        return self.fault.service

    @property
    def kind(self) -> FaultKind:
        return self.fault.kind


def _pick_target(graph: ServiceGraph, kind: FaultKind, rng: np.random.Generator) -> str:
    entry_service = graph.operations[graph.entry].service
    if kind == "db_slowdown":
        dbs = [s for s, tier in graph.tiers.items() if tier == "db"]
        leaves = [s for s in graph.services if not graph.callees(s)]
        return str(rng.choice(dbs or leaves))
    candidates = graph.services
    if kind in ("network", "wrong_return"):
        candidates = [s for s in candidates if s != entry_service]
    return str(rng.choice(candidates))


def make_scenario(
    topology: str,
    kind: FaultKind,
    seed: int,
    *,
    n_traces: int = 300,
    strip_status: bool = False,
    options: GeneratorOptions | None = None,
) -> Scenario:
    """Build a scenario deterministically from ``(topology, kind, seed)``.

    The baseline window is followed by an incident window of the same length; a surge triples the
    traffic of the incident window. A third of the scenarios list an unrelated (decoy) change.
    """
    if kind not in FAULT_KINDS:
        raise ValueError(f"kind: unknown fault kind {kind!r} (one of {', '.join(FAULT_KINDS)})")
    if n_traces < 1:
        raise ValueError(f"n_traces: must be positive, got {n_traces}")
    graph = by_name(topology, seed)
    rng = np.random.default_rng([seed, FAULT_KINDS.index(kind), len(topology)])
    opts = options or GeneratorOptions(
        strip_status=strip_status,
        drop_rate=float(rng.choice([0.0, 0.0, 0.01, 0.03])),
        pod_names_as_service=bool(rng.random() < 0.3),
    )
    target = _pick_target(graph, kind, rng)
    fault = Fault(
        kind=kind,
        service=target,
        magnitude=float(rng.uniform(0.15, 1.5)),
        instance=int(rng.integers(0, opts.replicas)) if kind == "cpu" else None,
        egress=kind == "network" and bool(rng.random() < 0.5),
    )
    gen = TraceGenerator(graph, seed=seed, options=opts)
    window = max(1, n_traces // 20) * _S
    t0 = 1_700_000_000 * _S + seed * 3600 * _S
    baseline = gen.generate(n_traces, t0, window)
    changes: list[Change] = []
    if kind == "deployment":
        gen.versions[target] = "1.5.0"
        changes.append(Change("deployment", target, t0 + window, "version 1.4.2 -> 1.5.0"))
    if rng.random() < 1 / 3:
        decoy = str(rng.choice([s for s in graph.services if s != target] or [target]))
        changes.append(Change("config", decoy, t0 + window - 60 * _S, "feature flag flipped"))
    incident = gen.generate(n_traces * (3 if kind == "surge" else 1), t0 + window, window, fault)
    return Scenario(graph, fault, baseline, incident, tuple(changes))
