"""The dispatch benchmark on a tiny load, so it cannot rot: every system runs, figures are sane,
and the broker names it used are gone afterwards."""

from __future__ import annotations

import gc
import uuid
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.dispatch import DispatchBenchSettings, Result, combine, ratio, report, run
from tests.support.services import queue_exists


# Six systems, each with its own worker or control-plane processes to start, take 90-120 s on a loaded
# machine, and the item's timeout also covers the session's teardown when this test runs last: the
# suite's 120 s made it fail in teardown (the embedded Postgres being removed) under load.
@pytest.mark.timeout(300)
async def test_every_system_completes_a_tiny_load_and_cleans_up(
    amqp_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = DispatchBenchSettings(
        amqp_url=amqp_url, database_url=database_url, tasks=50, concurrency=8, light_tasks=10, warmup_tasks=5,
        light_rate=200, slots=4, phase_timeout_s=60, batch_size=7, rounds=1,
    )
    prefix = f"t-bench-{uuid.uuid4().hex[:8]}."

    results, profile = await run(settings, tmp_path, prefix=prefix)

    assert profile is None
    by_name = {r.system: r for r in results}
    assert set(by_name) == {"raw aio-pika", "celery", "celery durable", "devart", "devart batch", "devart 2cp"}
    for result in results:
        assert result.tasks_per_s > 0
        assert result.cpu_ms and all(ms >= 0 for ms in result.cpu_ms.values())
        if result.system != "devart batch":  # a throughput load only
            assert len(result.done_ms) == 10
            assert all(ms > 0 for ms in result.done_ms)
    for system in ("celery", "celery durable", "devart", "devart 2cp"):
        started, done = by_name[system].start_ms, by_name[system].done_ms
        assert len(started) == 10
        assert sorted(started)[5] <= sorted(done)[5]
    assert "control plane" in by_name["devart"].cpu_ms
    printed = report(results, settings)
    assert "devart / celery" in printed and "devart batch / celery" in printed
    assert "devart / celery durable" in printed and "target devart 2cp >= 1.6x devart" in printed
    assert "target submit->start p50 <= 5 ms" in printed
    for name in ("raw.requests", "raw.replies", "celery", "celery-durable", "devart.control.events", "devart.dead"):
        assert not await queue_exists(amqp_url, prefix + name), f"{prefix}{name} left on the broker"
    # Every client connection was closed: a leaked socket's ResourceWarning surfaces here, in this
    # test, instead of crashing pytest at exit when the collector finally finds it.
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        gc.collect()


def test_unknown_system_is_refused_naming_the_field() -> None:
    with pytest.raises(ValidationError, match="systems") as caught:
        DispatchBenchSettings(systems="raw,kafka")
    assert "kafka" in str(caught.value)


def test_limits_are_validated() -> None:
    with pytest.raises(ValidationError, match="tasks"):
        DispatchBenchSettings(tasks=0)


async def test_every_round_runs_the_system_again(amqp_url: str, database_url: str, tmp_path: Path) -> None:
    settings = DispatchBenchSettings(amqp_url=amqp_url, database_url=database_url, systems="raw", tasks=20,
                                     concurrency=4, light_tasks=5, warmup_tasks=2, light_rate=200, rounds=2)

    (raw,), _ = await run(settings, tmp_path, prefix=f"t-bench-{uuid.uuid4().hex[:8]}.")

    assert len(raw.round_rates) == 2 and all(rate > 0 for rate in raw.round_rates)
    assert len(raw.done_ms) == 10  # both rounds' light loads


@pytest.mark.timeout(300)
async def test_a_baseline_checkout_runs_as_its_own_system(amqp_url: str, database_url: str, tmp_path: Path) -> None:
    checkout = Path(__file__).resolve().parents[2]  # this checkout stands in for an earlier one
    settings = DispatchBenchSettings(
        amqp_url=amqp_url, database_url=database_url, systems="devart,devart-baseline", baseline=checkout,
        tasks=20, concurrency=4, light_tasks=5, warmup_tasks=2, light_rate=200, slots=2, phase_timeout_s=60,
        batch_size=0, control_planes="1", rounds=1)

    results, _ = await run(settings, tmp_path, prefix=f"t-bench-{uuid.uuid4().hex[:8]}.")

    assert [r.system for r in results] == ["devart", "devart baseline"]
    assert all(len(r.done_ms) == 5 and r.cpu_ms["control plane"] > 0 for r in results)
    assert "devart / devart baseline: " in report(results, settings)


def test_the_baseline_system_needs_a_checkout(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="devart-baseline needs baseline"):
        DispatchBenchSettings(systems="devart,devart-baseline")
    with pytest.raises(ValidationError, match="not a devart checkout"):
        DispatchBenchSettings(systems="devart-baseline", baseline=tmp_path)


def test_rounds_combine_into_medians_and_ratios_within_rounds() -> None:
    rounds = [
        [Result("celery", 400.0, start_ms=[4.0], cpu_ms={"worker": 2.0}),
         Result("devart", 200.0, start_ms=[6.0], cpu_ms={"control plane": 3.0}, extra={"load": "round 1"})],
        [Result("devart", 600.0, start_ms=[5.0], cpu_ms={"control plane": 1.0}, extra={"load": "round 2"}),
         Result("celery", 1000.0, start_ms=[3.0], cpu_ms={"worker": 1.0})],
        [Result("celery", 500.0, start_ms=[2.0], cpu_ms={"worker": 3.0}),
         Result("devart", 400.0, start_ms=[7.0], cpu_ms={"control plane": 2.0}, extra={"load": "round 3"})],
    ]

    celery, devart = combine(rounds)

    assert (celery.system, devart.system) == ("celery", "devart")  # round 1's order
    assert devart.tasks_per_s == 400.0 and devart.round_rates == [200.0, 600.0, 400.0]
    assert devart.cpu_ms == {"control plane": 2.0}
    assert sorted(devart.start_ms) == [5.0, 6.0, 7.0]
    assert devart.extra == {"load": "round 1"}
    # within rounds 0.5, 0.6 and 0.8: the median 0.6, not the ratio of the medians (400 / 500 = 0.8)
    assert ratio(devart, celery) == pytest.approx(0.6)
    printed = report([celery, devart], DispatchBenchSettings(rounds=3))
    assert "devart / celery: 0.60x; by round 0.50, 0.60, 0.80 tasks/s" in printed
    assert "target devart >= 1.5x celery tasks/s: NOT met" in printed
    assert "devart                tasks/s by round: 200, 600, 400" in printed
