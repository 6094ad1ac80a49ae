"""Folding py-spy's raw output into per-task costs."""

from __future__ import annotations

from pathlib import Path

from bench.pyspy import ProcessSamples, Profile

_REPO = str(Path(__file__).resolve().parents[2])
_SITE = "/venv/lib/python3.11/site-packages"
_LOOP = "/py/lib/python3.11/asyncio/base_events.py"

FOLDED = f"""\
main ({_REPO}/control_plane/cli.py:204);_run_once ({_LOOP}:1922);create_task ({_REPO}/control_plane/api/tasks.py:81);create_task ({_REPO}/control_plane/tasks.py:67);execute ({_SITE}/asyncpg/connection.py:350) 30
main ({_REPO}/control_plane/cli.py:204);_run_once ({_LOOP}:1922);create_task ({_REPO}/control_plane/api/tasks.py:81);create_task ({_REPO}/control_plane/tasks.py:80);queue_attempt ({_REPO}/control_plane/dispatch.py:133) 10
main ({_REPO}/control_plane/cli.py:204);_run_once ({_LOOP}:1922);solve_dependencies ({_SITE}/fastapi/dependencies/utils.py:600) 20
main ({_REPO}/control_plane/cli.py:204);BaseEventLoop._run_once ({_LOOP}:1884);EpollSelector.select (/py/lib/python3.11/selectors.py:468) 500
"""


def _samples(tmp_path: Path) -> ProcessSamples:
    folded = tmp_path / "cp.folded"
    folded.write_text(FOLDED)
    return ProcessSamples.load("control plane", folded)


def test_idle_waits_are_set_aside(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    assert samples.total == 60
    assert samples.idle == 500


def test_a_sample_belongs_to_the_most_specific_component_on_its_stack(tmp_path: Path) -> None:
    categories = _samples(tmp_path).by_category()
    assert categories == {
        "submit: tasks.create_task / get_task SQL": 30,
        "submit: choose_pool + queue_attempt + transitions": 10,
        "API: FastAPI (routing, dependencies, body, serialization)": 20,
    }


def test_entry_point_frames_do_not_claim_the_loop_work_beneath_them(tmp_path: Path) -> None:
    folded = tmp_path / "agent.folded"
    runtime = f"{_REPO}/agents/sdk/runtime.py"
    folded.write_text(
        f"run_agent ({runtime}:894);_run_once ({_LOOP}:1922) 7\n"
        f"run_agent ({runtime}:894);AgentRuntime._publish ({runtime}:853) 3\n"
    )
    assert ProcessSamples.load("agent", folded).by_category() == {
        "event loop, stdlib and other": 7, "agent: publish event + wait for confirm": 3,
    }


def test_wrapping_layers_give_way_to_the_innermost_one(tmp_path: Path) -> None:
    folded = tmp_path / "cp.folded"
    folded.write_text(
        f"app ({_SITE}/fastapi/telemetry/_asgi.py:322);solve ({_SITE}/fastapi/dependencies/utils.py:600);"
        f"release ({_SITE}/asyncpg/pool.py:200) 4\n"
        f"app ({_SITE}/fastapi/telemetry/_asgi.py:322);start_span ({_SITE}/opentelemetry/sdk/trace/__init__.py:1) 2\n"
        f"app ({_SITE}/fastapi/telemetry/_asgi.py:394);call_soon ({_LOOP}:765) 1\n"
    )
    assert ProcessSamples.load("cp", folded).by_category() == {
        "asyncpg protocol": 4, "telemetry: OpenTelemetry SDK": 2, "API: FastAPI built-in telemetry": 1,
    }


def test_inclusive_time_counts_a_function_once_per_sample(tmp_path: Path) -> None:
    samples = _samples(tmp_path)
    by_function = samples.inclusive(by_line=False)
    assert by_function["control_plane/tasks.py create_task"] == 40
    assert by_function["control_plane/cli.py main"] == 60
    by_line = samples.inclusive(by_line=True)
    assert by_line["control_plane/tasks.py:67 create_task"] == 30
    assert by_line["control_plane/tasks.py:80 create_task"] == 10


def test_self_time_by_package(tmp_path: Path) -> None:
    assert _samples(tmp_path).self_by_package() == {"asyncpg": 30, "control_plane": 10, "fastapi": 20}


def test_report_rescales_shares_to_the_measured_cpu(tmp_path: Path) -> None:
    profile = Profile(rate=100, tasks=10, processes=[_samples(tmp_path)], cpu_ms={"control plane": 6.0})
    printed = profile.report()
    # 30 of 60 working samples are the create_task SQL: half of 6 ms
    assert "  3.000 ms  50.0%  submit: tasks.create_task / get_task SQL" in printed
    assert "6.000 ms CPU per task" in printed


def test_the_shared_event_loop_runner_is_no_agent_code(tmp_path: Path) -> None:
    # Both processes run under agents/sdk/eventloop.py: it is a root frame, not "agent: runtime"
    folded = tmp_path / "cp.folded"
    root = (f"_run_serve ({_REPO}/control_plane/cli_server.py:82);run ({_REPO}/agents/sdk/eventloop.py:37);"
            "Runner.run (/py/lib/python3.11/asyncio/runners.py:118)")
    folded.write_text(
        f"{root} 5\n"
        f"{root};validate ({_REPO}/control_plane/schemas.py:90) 3\n"
        f"{root};start_span ({_SITE}/opentelemetry/sdk/trace/__init__.py:1);"
        f"DropHeartbeats.should_sample ({_REPO}/agents/sdk/telemetry.py:140) 2\n"
    )
    assert ProcessSamples.load("control plane", folded).by_category() == {
        "event loop (uvloop and the C protocol code it calls)": 5,
        "submit: input schema validation": 3,
        "telemetry: OpenTelemetry SDK": 2,
    }
