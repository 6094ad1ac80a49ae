"""The `devart` command as a user runs it: a subprocess against a real API, database and broker."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import httpx

from agents.sandbox import SandboxSettings
from agents.shell import build_shell_agent
from control_plane.api.app import create_app
from tests.support.system import StartAgent, client


async def _devart(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "control_plane.cli", *args, env=dict(os.environ, **env),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=90)
    return process.returncode or 0, out.decode(), err.decode()


async def test_token_create_prints_the_token_last(database_url: str, base_url: str) -> None:
    code, out, err = await _devart("token", "create", "--name", "first-admin", "--role", "admin",
                                   env={"DATABASE_URL": database_url})
    assert code == 0, err
    token = out.strip().splitlines()[-1]
    async with client(base_url, token) as api:
        assert (await api.get("/api/v1/tokens")).status_code == 200
    code, _, err = await _devart("token", "create", "--name", "first-admin", "--role", "admin",
                                 env={"DATABASE_URL": database_url})
    assert code != 0 and "already exists" in err


async def test_migrate_is_idempotent(database_url: str) -> None:
    code, out, _ = await _devart("migrate", env={"DATABASE_URL": database_url})
    assert code == 0 and "up to date" in out


async def test_submit_follows_the_task_and_exits_with_its_outcome(
    base_url: str, database_url: str, admin: httpx.AsyncClient, start_agent: StartAgent, tmp_path: Path
) -> None:
    await start_agent(build_shell_agent(slots=2, settings=SandboxSettings(root=tmp_path)))
    token = (await admin.post("/api/v1/tokens", json={"name": "ci", "role": "ci"})).json()["token"]
    env = {"DEVART_URL": base_url, "DEVART_TOKEN": token}

    code, out, err = await _devart("submit", "--requires", "shell", "--", "sh", "-c", "echo hello; echo oops >&2",
                                   env=env)
    assert code == 0, err
    assert "hello" in out and "oops" in err
    assert json.loads(out.strip().splitlines()[-1])["status"] == "succeeded"

    code, out, _ = await _devart("submit", "--requires", "shell", "--", "sh", "-c", "exit 3", env=env)
    assert code == 1
    assert json.loads(out.strip().splitlines()[-1])["result"]["exit_code"] == 3

    code, _, err = await _devart("submit", "--type", "bad type", env=env)
    assert code == 64 and "body.type" in err


def test_operation_ids_are_stable() -> None:
    """Generated clients name their methods after these: renaming one is a breaking change."""
    schema = create_app().openapi()
    ids = sorted(op["operationId"] for path in schema["paths"].values() for op in path.values())
    assert ids == [
        "acknowledge_incident", "cancel_task", "confirm_incident_cause", "create_maintenance_window",
        "create_silence", "create_task", "create_tasks", "create_token", "delete_maintenance_window", "delete_silence",
        "drain_agent", "get_agent", "get_incident", "get_incident_rca", "get_task", "get_trace", "healthz",
        "ingest_traces", "list_agents", "list_changes", "list_incidents", "list_maintenance_windows", "list_pools",
        "list_silences", "list_tasks", "list_tokens", "pause_agent", "readyz", "record_change", "resolve_incident",
        "resume_agent", "retry_task", "revoke_token", "stream_events", "task_logs",
    ]
