"""The dispatch benchmark on a tiny load, so it cannot rot: every system runs, figures are sane,
and the broker names it used are gone afterwards."""

from __future__ import annotations

import gc
import uuid
import warnings
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.dispatch import DispatchBenchSettings, report, run
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
        light_rate=200, slots=4, phase_timeout_s=60, batch_size=7,
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
