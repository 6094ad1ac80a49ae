"""Generates OpenTelemetry-like spans by walking a service graph, with faults applied in a window."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from aiops.simulation.faults import Fault
from aiops.simulation.topologies import Call, Operation, ServiceGraph
from aiops.traces.model import Span

_MS = 1_000_000
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_ALNUM = "bcdfghjklmnpqrstvwxz2456789"


@dataclass(frozen=True, slots=True)
class GeneratorOptions:
    """Realism knobs. ``skew_ms`` is the std-dev of a fixed per-service clock offset; ``drop_rate``
    the share of spans lost in transit; ``pod_names_as_service`` reports pod names as service.name."""

    replicas: int = 3
    skew_ms: float = 1.5
    drop_rate: float = 0.0
    pod_names_as_service: bool = False
    strip_status: bool = False
    network_ms: float = 0.25


class _Draws:
    """Pre-drawn random numbers consumed one at a time (far faster than one numpy call each)."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng
        self._normal: list[float] = []
        self._uniform: list[float] = []

    def normal(self) -> float:
        if not self._normal:
            self._normal = self._rng.standard_normal(65536).tolist()
        return self._normal.pop()

    def uniform(self) -> float:
        if not self._uniform:
            self._uniform = self._rng.random(65536).tolist()
        return self._uniform.pop()


class TraceGenerator:
    """Walks ``graph`` once per trace. Deterministic for a given ``seed`` and call sequence."""

    def __init__(self, graph: ServiceGraph, *, seed: int, options: GeneratorOptions | None = None) -> None:
        self.graph = graph
        self.options = options or GeneratorOptions()
        self._rng = np.random.default_rng(seed)
        self._salt = int(self._rng.integers(0, 1 << 62))
        self._counter = 0
        opts = self.options
        self.pods: dict[str, list[str]] = {}
        self._skew: dict[str, int] = {}
        for service in graph.services:
            if graph.tiers.get(service) == "db":
                self.pods[service] = [f"{service}-{i}" for i in range(opts.replicas)]
            else:
                rs = "".join(self._rng.choice(list(_ALNUM), size=10))
                self.pods[service] = [
                    f"{service}-{rs}-{''.join(self._rng.choice(list(_ALNUM), size=5))}"
                    for _ in range(opts.replicas)
                ]
            self._skew[service] = int(self._rng.normal(0.0, opts.skew_ms) * _MS)
        self.versions = {s: "1.4.2" for s in graph.services}

    def _id(self, bits: int) -> str:
        self._counter += 1
        value = ((self._counter * _GOLDEN) ^ self._salt) & _MASK64
        if bits == 64:
            return f"{value:016x}"
        high = ((value * _GOLDEN) + self._salt) & _MASK64
        return f"{high:016x}{value:016x}"

    def generate(
        self,
        n_traces: int,
        start_ns: int,
        duration_ns: int,
        fault: Fault | None = None,
        *,
        entries: tuple[str, ...] | None = None,
    ) -> list[Span]:
        """``n_traces`` traces arriving uniformly at random in ``[start_ns, start_ns + duration_ns)``."""
        run = _Run(self, fault, start_ns, duration_ns)
        arrivals = np.sort(self._rng.uniform(0, duration_ns, size=n_traces)).astype(np.int64) + start_ns
        keys = entries or self.graph.entries
        picks = self._rng.integers(0, len(keys), size=n_traces)
        for t0, pick in zip(arrivals.tolist(), picks.tolist(), strict=True):
            run.trace(keys[pick], t0)
        spans = run.spans
        if self.options.drop_rate > 0 and spans:
            keep = self._rng.random(len(spans)) >= self.options.drop_rate
            spans = [s for s, k in zip(spans, keep.tolist(), strict=True) if k]
        return spans


class _Run:
    """State of one ``generate`` call: the fault, the window and the spans produced."""

    def __init__(self, gen: TraceGenerator, fault: Fault | None, start_ns: int, duration_ns: int) -> None:
        self.gen = gen
        self.graph = gen.graph
        self.opts = gen.options
        self.fault = fault
        self.start_ns = start_ns
        self.duration_ns = max(duration_ns, 1)
        self.draws = _Draws(gen._rng)
        self.spans: list[Span] = []
        self.progress = 0.0
        self._attrs: dict[tuple[str, int], dict[str, str]] = {}
        self._client_attrs: dict[tuple[str, str, int], dict[str, str]] = {}

    # --- helpers -----------------------------------------------------------------------------------
    def _service_name(self, service: str, pod: int) -> str:
        return self.gen.pods[service][pod] if self.opts.pod_names_as_service else service

    def _server_attrs(self, service: str, pod: int) -> dict[str, str]:
        key = (service, pod)
        if key not in self._attrs:
            self._attrs[key] = {
                "k8s.pod.name": self.gen.pods[service][pod],
                "service.version": self.gen.versions[service],
            }
        return self._attrs[key]

    def _peer_attrs(self, service: str, pod: int, peer: str) -> dict[str, str]:
        key = (service, peer, pod)
        if key not in self._client_attrs:
            attrs = {"k8s.pod.name": self.gen.pods[service][pod], "peer.service": peer}
            if self.graph.tiers.get(peer) == "db":
                attrs["db.system"] = "postgresql"
            self._client_attrs[key] = attrs
        return self._client_attrs[key]

    def _emit(
        self,
        trace_id: str,
        span_id: str,
        parent: str | None,
        service: str,
        pod: int,
        name: str,
        kind: str,
        start: int,
        end: int,
        error: bool,
        attrs: dict[str, str],
    ) -> None:
        skew = self.gen._skew[service]
        status = "unset"
        if error and not self.opts.strip_status:
            status = "error"
            attrs = {**attrs, "http.status_code": 500}
        self.spans.append(
            Span(
                trace_id,
                span_id,
                parent,
                self._service_name(service, pod),
                name,
                kind,  # type: ignore[arg-type]
                start + skew,
                end + skew,
                status,
                attrs,
            )
        )  # type: ignore[arg-type]

    def _lognormal_ns(self, median_ms: float, sigma: float) -> int:
        return int(median_ms * _MS * math.exp(sigma * self.draws.normal()))

    def _faulty(self, service: str, pod: int) -> bool:
        f = self.fault
        return f is not None and f.service == service and (f.instance is None or f.instance == pod)

    # --- fault effects -----------------------------------------------------------------------------
    def _self_factor(self, service: str, pod: int) -> float:
        if not self._faulty(service, pod):
            return 1.0
        f = self.fault
        assert f is not None
        m, z = f.magnitude, self.draws.normal()
        if f.kind == "cpu":
            return 1.0 + m * 2.0 * math.exp(0.9 * z)
        if f.kind == "db_slowdown":
            return 1.0 + m * 3.0 * math.exp(0.3 * z)
        if f.kind == "deployment":
            return 1.0 + m * 1.5 * math.exp(0.3 * z)
        if f.kind == "memory_leak":
            pause = 4.0 if self.draws.uniform() < 0.15 * self.progress else 0.0
            return 1.0 + m * (5.0 * self.progress**2 + pause) * math.exp(0.3 * z)
        if f.kind == "surge":
            return 1.0 + m * 1.5 * math.exp(0.8 * z)
        return 1.0

    def _outcome(self, service: str, pod: int) -> str:
        """``ok``, ``error`` (an exception) or ``wrong`` (a wrong value returned without error)."""
        if not self._faulty(service, pod):
            return "ok"
        f = self.fault
        assert f is not None
        u = self.draws.uniform()
        if f.kind == "exception" and u < min(0.9, 0.5 * f.magnitude):
            return "error"
        if f.kind == "deployment" and u < 0.08 * f.magnitude:
            return "error"
        if f.kind == "wrong_return" and u < min(0.9, 0.6 * f.magnitude):
            return "wrong"
        return "ok"

    def _network_delay(self, caller: str, callee: str) -> int:
        f = self.fault
        if (
            f is None
            or f.kind != "network"
            or not (f.service == callee or (f.egress and f.service == caller))
        ):
            return 0
        return int(f.magnitude * 6.0 * _MS * math.exp(0.4 * self.draws.normal()))

    # --- the walk ----------------------------------------------------------------------------------
    def trace(self, entry: str, t0: int) -> None:
        self.progress = (t0 - self.start_ns) / self.duration_ns
        self._server(self.graph.operations[entry], t0, None, self.gen._id(128))

    def _server(
        self, op: Operation, start: int, parent: str | None, trace_id: str, kind: str = "server"
    ) -> tuple[int, str]:
        service = op.service
        pod = int(self.draws.uniform() * self.opts.replicas)
        span_id = self.gen._id(64)
        outcome = self._outcome(service, pod)
        own = self._lognormal_ns(op.median_ms, op.sigma) * self._self_factor(service, pod)
        if outcome != "ok":
            own *= 0.4
        t = start + int(own * 0.4)
        child_failure = "ok"
        for stage in op.stages:
            if outcome != "ok" or child_failure != "ok":
                break
            end = t
            for call in stage:
                call_end, call_outcome = self._call(op, call, pod, t, span_id, trace_id)
                end = max(end, call_end)
                if call_outcome != "ok":
                    child_failure = call_outcome
            t = end
        if outcome == "ok" and child_failure == "error":
            outcome = "error"
        end = t + int(own * 0.6)
        self._emit(
            trace_id,
            span_id,
            parent,
            service,
            pod,
            op.name,
            kind,
            start,
            end,
            outcome == "error",
            self._server_attrs(service, pod),
        )
        return end, outcome

    def _call(
        self, caller: Operation, call: Call, pod: int, t: int, parent: str, trace_id: str
    ) -> tuple[int, str]:
        target = self.graph.operations[call.target]
        net = self.opts.network_ms
        attempt_start = t
        outcome = "ok"
        for _ in range(call.retries + 1):
            span_id = self.gen._id(64)
            delay = self._network_delay(caller.service, target.service)
            out_ns = self._lognormal_ns(net, 0.3) + delay // 2
            if call.asynchronous:
                self._server(
                    target,
                    attempt_start + out_ns + self._lognormal_ns(2.0, 0.5),
                    span_id,
                    trace_id,
                    "consumer",
                )
                end = attempt_start + out_ns
                self._emit(
                    trace_id,
                    span_id,
                    parent,
                    caller.service,
                    pod,
                    f"publish {target.name}",
                    "producer",
                    attempt_start,
                    end,
                    False,
                    self._peer_attrs(caller.service, pod, target.service),
                )
                return end, "ok"
            server_end, outcome = self._server(target, attempt_start + out_ns, span_id, trace_id)
            end = server_end + self._lognormal_ns(net, 0.3) + delay - delay // 2
            self._emit(
                trace_id,
                span_id,
                parent,
                caller.service,
                pod,
                f"{target.service}/{target.name}",
                "client",
                attempt_start,
                end,
                outcome == "error",
                self._peer_attrs(caller.service, pod, target.service),
            )
            attempt_start = end
            if outcome == "ok":
                break
        return attempt_start, outcome
