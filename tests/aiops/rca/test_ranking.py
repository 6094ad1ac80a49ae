"""Root-cause ranking end to end on simulated faults, broken data and bad input."""

from __future__ import annotations

from dataclasses import replace

import pytest

from aiops.rca import Change, RcaSettings, analyze, rank_services
from aiops.rca.evaluation import accuracy_at, run_scenarios
from aiops.simulation import (
    FAULT_KINDS,
    TOPOLOGIES,
    Fault,
    GeneratorOptions,
    TraceGenerator,
    chain,
    make_scenario,
    web_shop,
)
from aiops.traces.model import Span

_S = 1_000_000_000


def _rank_of_truth(topology: str, kind: str, seed: int, **kwargs: object) -> int | None:
    scenario = make_scenario(topology, kind, seed, n_traces=150, **kwargs)  # type: ignore[arg-type]
    names = [c.service for c in rank_services(scenario.incident, scenario.baseline, changes=scenario.changes)]
    return names.index(scenario.root_cause) + 1 if scenario.root_cause in names else None


@pytest.mark.parametrize("kind", FAULT_KINDS)
def test_each_fault_kind_ranks_the_faulty_service_first_without_status_codes(kind: str) -> None:
    ranks = [
        _rank_of_truth(t, kind, seed, strip_status=True)
        for t in ("web_shop", "random")
        for seed in (21, 22, 23)
    ]
    assert sum(r == 1 for r in ranks) >= 4, ranks
    assert sum(r is not None and r <= 3 for r in ranks) >= 5, ranks


def test_ac1_floor_over_a_batch_of_seeds() -> None:
    outcomes = run_scenarios(TOPOLOGIES, FAULT_KINDS, range(40, 43))
    assert len(outcomes) == 72
    assert accuracy_at(outcomes, 1) >= 0.8
    assert accuracy_at(outcomes, 3) >= 0.9


def _windows(
    fault: Fault, options: GeneratorOptions, graph=None, n: int = 150
) -> tuple[list[Span], list[Span]]:  # noqa: ANN001
    gen = TraceGenerator(graph or web_shop(), seed=9, options=options)
    return gen.generate(n, 0, 10 * _S, None), gen.generate(n, 10 * _S, 10 * _S, fault)


def test_a_caller_slow_because_of_its_callee_is_not_blamed() -> None:
    baseline, incident = _windows(
        Fault("db_slowdown", "svc4", magnitude=2.0), GeneratorOptions(strip_status=True), chain()
    )
    result = analyze(incident, baseline)
    assert result.status == "ok"
    assert result.causes[0].service == "svc4"
    scores = {c.service: c.score for c in result.causes}
    assert all(scores.get(f"svc{i}", 0.0) < 0.25 * scores["svc4"] for i in range(4))
    assert result.causes[0].evidence.path == ("svc0", "svc1", "svc2", "svc3", "svc4")


def test_network_delay_is_charged_to_the_callee_as_infrastructure() -> None:
    baseline, incident = _windows(Fault("network", "payment"), GeneratorOptions(strip_status=True))
    top = rank_services(incident, baseline)[0]
    assert top.service == "payment"
    assert top.category == "infrastructure/resource"
    assert "(wait beyond callee)" in top.evidence.operations[0].operation
    assert (
        top.evidence.operations[0].exclusive_p50_after > top.evidence.operations[0].exclusive_p50_before + 2
    )


def test_broken_traces_and_clock_skew_still_find_the_cause() -> None:
    options = GeneratorOptions(drop_rate=0.2, skew_ms=25.0, pod_names_as_service=True, strip_status=True)
    baseline, incident = _windows(Fault("cpu", "cart", magnitude=1.5), options)
    top = rank_services(incident, baseline)[0]
    assert top.service == "cart", "pod names are folded into their service"
    baseline, incident = _windows(Fault("db_slowdown", "postgres"), options)
    assert rank_services(incident, baseline)[0].service == "postgres"


def test_traces_of_more_than_ten_thousand_spans() -> None:
    baseline, incident = _windows(
        Fault("cpu", "catalog", magnitude=1.5), GeneratorOptions(strip_status=True), n=1200
    )

    def merge(spans: list[Span]) -> list[Span]:
        # Fold every 600 requests into one trace: a batch job fanning out into >10k spans.
        ids = sorted({s.trace_id for s in spans})
        giant = {t: ids[i // 600] for i, t in enumerate(ids)}
        return [replace(s, trace_id=giant[s.trace_id]) for s in spans]

    baseline, incident = merge(baseline), merge(incident)
    sizes: dict[str, int] = {}
    for s in incident:
        sizes[s.trace_id] = sizes.get(s.trace_id, 0) + 1
    assert min(sizes.values()) > 10_000
    result = analyze(incident, baseline, settings=RcaSettings(min_traces=1))
    assert result.causes[0].service == "catalog"


def test_deployment_is_categorised_and_rolled_back_and_a_decoy_change_does_not_win() -> None:
    scenario = make_scenario("web_shop", "deployment", 3, n_traces=150, strip_status=True)
    top = rank_services(scenario.incident, scenario.baseline, changes=scenario.changes)[0]
    assert top.service == scenario.root_cause
    assert top.category == "configuration/deployment change"
    assert (
        top.recommendations[0].action == "rollback" and top.recommendations[0].target == scenario.root_cause
    )

    cpu = make_scenario("web_shop", "db_slowdown", 3, n_traces=150, strip_status=True)
    decoy = Change("deployment", "ads-5f6d7c8b9d-k2m4x", cpu.incident[0].start_ns, "unrelated rollout")
    top = rank_services(cpu.incident, cpu.baseline, changes=[decoy])[0]
    assert top.service == cpu.root_cause


def test_result_carries_evidence_confidence_and_recommendations() -> None:
    scenario = make_scenario("web_shop", "cpu", 5, n_traces=200, strip_status=True)
    result = analyze(scenario.incident, scenario.baseline, topology=scenario.graph.edges())
    assert result.status == "ok" and scenario.root_cause in result.summary
    causes = result.causes
    assert [c.score for c in causes] == sorted((c.score for c in causes), reverse=True)
    assert all(0.0 <= c.confidence <= 1.0 for c in causes)
    assert all(causes[0].confidence > c.confidence for c in causes[1:])
    top = causes[0]
    incident_ids = {s.trace_id for s in scenario.incident}
    assert top.evidence.slowest_trace in incident_ids and top.evidence.typical_trace in incident_ids
    assert top.evidence.baseline_trace in {s.trace_id for s in scenario.baseline}
    assert top.evidence.path[0] == "frontend" and top.evidence.path[-1] == top.service
    assert top.evidence.operations and top.evidence.operations[0].count_after > 0
    assert set(top.evidence.views) == {"latency", "spectrum", "structure", "errors", "truncation", "change"}
    assert {r.action for r in top.recommendations} <= {
        "restart",
        "scale",
        "rollback",
        "delete_pod",
        "requeue",
        "pause_pool",
        "drain_pool",
        "notify",
    }
    assert top.recommendations[-1].action == "notify"


def test_one_bad_pod_is_named_for_deletion() -> None:
    baseline, incident = _windows(
        Fault("cpu", "checkout", magnitude=2.0, instance=1), GeneratorOptions(strip_status=True)
    )
    top = rank_services(incident, baseline)[0]
    assert top.service == "checkout"
    assert top.evidence.instance is not None and top.evidence.instance.startswith("checkout-")
    assert (
        top.recommendations[0].action == "delete_pod"
        and top.recommendations[0].target == top.evidence.instance
    )


def _span(i: int, start: int, end: int) -> Span:
    return Span(f"{i:032x}", f"{i:016x}", None, "svc", "op", "server", start, end)


def test_insufficient_data_is_a_result_not_an_exception() -> None:
    scenario = make_scenario("chain", "cpu", 1, n_traces=50)
    empty = analyze([], scenario.baseline)
    assert empty.status == "insufficient_data" and "incident window has 0 valid spans" in empty.reason
    only_baseline = analyze([], [])
    assert only_baseline.status == "insufficient_data" and not only_baseline.causes
    garbage = [_span(i, 1000, 10) for i in range(100)] + ["not a span", None]  # type: ignore[list-item]
    bad = analyze(garbage, scenario.baseline)  # type: ignore[arg-type]
    assert bad.status == "insufficient_data" and "102 malformed" in bad.reason
    few = analyze(scenario.incident[:5], scenario.baseline)
    assert few.status == "insufficient_data"
    large = make_scenario("chain", "cpu", 1, n_traces=150)
    huge = analyze(large.incident, large.baseline, settings=RcaSettings(max_spans=1000))
    assert huge.status == "insufficient_data" and "max_spans=1000" in huge.reason
    assert rank_services([], []) == []


def test_identical_windows_report_no_change() -> None:
    gen = TraceGenerator(web_shop(), seed=12, options=GeneratorOptions(strip_status=True))
    baseline = gen.generate(200, 0, 10 * _S)
    result = analyze(baseline, baseline)
    assert result.status == "no_change" and not result.causes


def test_settings_name_the_bad_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_RCA_ABNORMAL_QUANTILE", "1.5")
    with pytest.raises(ValueError, match="abnormal_quantile"):
        RcaSettings()
