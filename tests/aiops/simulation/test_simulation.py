"""The trace simulator: determinism, realism knobs and what each injected fault does to spans."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest

from aiops.simulation import (
    FAULT_KINDS,
    Fault,
    GeneratorOptions,
    TraceGenerator,
    by_name,
    chain,
    make_scenario,
    random_graph,
    web_shop,
)
from aiops.traces.model import Span

_S = 1_000_000_000


def _median_ms(spans: list[Span]) -> float:
    return float(np.median([s.duration_ns for s in spans])) / 1e6


def test_scenarios_are_deterministic_per_seed() -> None:
    a = make_scenario("random", "cpu", 3, n_traces=30)
    b = make_scenario("random", "cpu", 3, n_traces=30)
    c = make_scenario("random", "cpu", 4, n_traces=30)
    assert a.incident == b.incident and a.baseline == b.baseline and a.fault == b.fault
    assert a.incident != c.incident


def test_topologies_have_the_promised_shapes() -> None:
    shop = web_shop()
    assert 8 <= len(shop.services) <= 14
    assert {"cart", "catalog", "checkout"} <= shop.callees("frontend") | shop.callees("checkout") | {
        "checkout"
    }
    assert chain(4).edges() == [("svc0", "svc1"), ("svc1", "svc2"), ("svc2", "svc3")]
    assert random_graph(7).edges() == random_graph(7).edges()
    assert by_name("random", 7).edges() != by_name("random", 8).edges()
    with pytest.raises(ValueError, match="topology: unknown name 'mesh'"):
        by_name("mesh")


def test_spans_carry_pod_names_versions_and_parallel_children() -> None:
    gen = TraceGenerator(web_shop(), seed=1, options=GeneratorOptions(pod_names_as_service=True))
    spans = gen.generate(50, 0, 5 * _S)
    pods = {s.attributes["k8s.pod.name"] for s in spans}
    assert any(re.fullmatch(r"cart-[a-z0-9]{10}-[a-z0-9]{5}", p) for p in pods)
    assert any(re.fullmatch(r"postgres-\d", p) for p in pods), "the database is a StatefulSet"
    assert {s.service for s in spans} & pods, "pod names reported as service.name"
    assert all(s.attributes["service.version"] == "1.4.2" for s in spans if s.kind == "server")
    by_parent: dict[str, list[Span]] = {}
    for s in spans:
        by_parent.setdefault(s.parent_id or "", []).append(s)
    overlapping = any(
        a.start_ns < b.end_ns and b.start_ns < a.end_ns
        for kids in by_parent.values()
        for i, a in enumerate(kids)
        for b in kids[i + 1 :]
    )
    assert overlapping, "children of one stage run in parallel"
    assert any(s.kind == "producer" for s in spans) and any(s.kind == "consumer" for s in spans)


def test_dropped_spans_leave_orphans_and_skew_moves_children() -> None:
    opts = GeneratorOptions(drop_rate=0.1, skew_ms=5.0)
    spans = TraceGenerator(chain(), seed=2, options=opts).generate(200, 0, 10 * _S)
    ids = {s.span_id for s in spans}
    orphans = [s for s in spans if s.parent_id and s.parent_id not in ids]
    assert 0.05 < len(orphans) / len(spans) < 0.2
    by_id = {s.span_id: s for s in spans}
    early = [s for s in spans if s.parent_id in by_id and s.start_ns < by_id[s.parent_id].start_ns]
    assert early, "clock skew puts some children before their parents"


def test_network_fault_grows_client_spans_but_not_the_callee_server_spans() -> None:
    graph = chain()
    gen = TraceGenerator(graph, seed=3, options=GeneratorOptions(skew_ms=0.0))
    before = gen.generate(200, 0, 10 * _S)
    after = gen.generate(200, 10 * _S, 10 * _S, Fault("network", "svc4"))

    def pick(spans: list[Span], service: str, kind: str) -> list[Span]:
        return [
            s
            for s in spans
            if s.service == service and s.kind == kind and (kind == "server" or "svc4" in s.name)
        ]

    assert _median_ms(pick(after, "svc3", "client")) > _median_ms(pick(before, "svc3", "client")) + 3
    assert _median_ms(pick(after, "svc4", "server")) == pytest.approx(
        _median_ms(pick(before, "svc4", "server")), rel=0.2
    )


def test_exception_fault_sets_errors_unless_stripped() -> None:
    with_status = make_scenario("chain", "exception", 1, n_traces=100)
    stripped = make_scenario("chain", "exception", 1, n_traces=100, strip_status=True)
    assert any(s.status == "error" and s.service == with_status.root_cause for s in with_status.incident)
    assert not any(s.status == "error" for s in with_status.baseline)
    assert all(s.status == "unset" and "http.status_code" not in s.attributes for s in stripped.incident)


def test_wrong_return_skips_downstream_calls_without_errors() -> None:
    gen = TraceGenerator(chain(), seed=4)
    before = gen.generate(200, 0, 10 * _S)
    after = gen.generate(200, 10 * _S, 10 * _S, Fault("wrong_return", "svc2"))
    assert not any(s.status == "error" for s in after)
    calls = lambda spans: sum(s.service == "svc4" for s in spans)  # noqa: E731
    assert calls(after) < 0.7 * calls(before)


def test_deployment_changes_version_and_is_listed() -> None:
    scenario = make_scenario("web_shop", "deployment", 2, n_traces=60)
    target = scenario.root_cause
    assert {
        s.attributes.get("service.version")
        for s in scenario.incident
        if s.service == target and s.kind != "client"
    } == {"1.5.0"}
    assert any(c.kind == "deployment" and c.service == target for c in scenario.changes)


def test_memory_leak_grows_over_the_window_and_surge_triples_traffic() -> None:
    gen = TraceGenerator(chain(), seed=5, options=GeneratorOptions(skew_ms=0.0))
    spans = gen.generate(300, 0, 30 * _S, Fault("memory_leak", "svc4"))
    own = sorted((s for s in spans if s.service == "svc4"), key=lambda s: s.start_ns)
    assert _median_ms(own[-100:]) > 2 * _median_ms(own[:100])
    surge = make_scenario("chain", "surge", 1, n_traces=50)
    traces = lambda spans: len({s.trace_id for s in spans})  # noqa: E731
    assert traces(surge.incident) == 3 * traces(surge.baseline) == 150


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_every_fault_kind_builds_on_every_topology(kind: str) -> None:
    for topology in ("chain", "web_shop", "random"):
        scenario = make_scenario(topology, kind, 11, n_traces=20)  # type: ignore[arg-type]
        assert scenario.incident and scenario.baseline
        assert scenario.root_cause in scenario.graph.services
        assert replace(scenario.fault, magnitude=1.0).kind == kind


def test_bad_scenario_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="kind: unknown fault kind 'oom'"):
        make_scenario("chain", "oom", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_traces"):
        make_scenario("chain", "cpu", 1, n_traces=0)


def test_generation_is_vectorised_enough_for_large_windows() -> None:
    spans = TraceGenerator(web_shop(), seed=6).generate(5000, 0, 60 * _S)
    assert len(spans) > 80_000
    assert len({s.span_id for s in spans}) == len(spans), "span ids are unique"
