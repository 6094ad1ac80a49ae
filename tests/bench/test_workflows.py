"""The workflow benchmark on a tiny DAG, so it cannot rot: both modes run the same steps, every
figure is computed from real timestamps, and the broker names it used are gone afterwards."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from pydantic import ValidationError

from bench.workflows import MODES, WorkflowBenchSettings, report, run
from tests.support.services import queue_exists


async def test_both_modes_run_the_same_dag_and_the_report_compares_them(
    amqp_url: str, database_url: str, tmp_path: Path
) -> None:
    settings = WorkflowBenchSettings(amqp_url=amqp_url, database_url=database_url, fan=4, rounds=2, slots=6,
                                     phase_timeout_s=60)
    prefix = f"t-bench-{uuid.uuid4().hex[:8]}."

    results = await run(settings, tmp_path, prefix=prefix)

    for mode in MODES:
        rounds = results.rounds[mode]
        assert len(rounds) == 2  # the warm-up round is not counted
        for measured in rounds:
            assert set(measured.steps) == {"root", "w0", "w1", "w2", "w3", "join"}
            # a step starts only after what it needs finished, and the join after every part
            assert all(ms >= 0 for ms in measured.step_latencies_ms())
            assert measured.steps["join"].started >= max(measured.steps[f"w{i}"].finished for i in range(4))
            assert set(measured.overheads_ms()) == set(measured.steps)
    printed = report(results)
    assert "6-step fan-out/fan-in" in printed and "engine/client p50" in printed
    assert "run start -> the last step's start, beyond the tasks' own time" in printed
    for name in ("devart.control.events", "devart.dead"):
        assert not await queue_exists(amqp_url, prefix + name), f"{prefix}{name} left on the broker"


def test_limits_are_validated() -> None:
    with pytest.raises(ValidationError, match="fan"):
        WorkflowBenchSettings(fan=0)
