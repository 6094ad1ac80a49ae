"""Workflow tests: the real control plane and API, and real shell agents running real commands."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from agents.sandbox import SandboxSettings
from agents.sdk import AgentRuntime
from agents.shell import build_shell_agent
from tests.support.system import StartAgent, wait_for

FINISHED = {"succeeded", "failed", "cancelled"}


@pytest.fixture
def sandbox_settings(tmp_path: Path) -> SandboxSettings:
    # the tests' git repositories live under tmp_path: local clones of them are allowed
    return SandboxSettings(root=tmp_path / "sandboxes", kill_grace_s=0.5, git_local_roots=[tmp_path])


@pytest.fixture
async def shell_agent(start_agent: StartAgent, sandbox_settings: SandboxSettings) -> AgentRuntime:
    """The shell agent `devart up` runs (skills shell, build, test), with four slots."""
    return await start_agent(build_shell_agent(slots=4, settings=sandbox_settings))


async def apply(api: httpx.AsyncClient, definition: dict[str, Any] | str) -> dict[str, Any]:
    if isinstance(definition, str):
        response = await api.post("/api/v1/workflows", content=definition,
                                  headers={"Content-Type": "application/yaml"})
    else:
        response = await api.post("/api/v1/workflows", json=definition)
    assert response.status_code in (200, 201), response.text
    return response.json()


async def start(api: httpx.AsyncClient, name: str, inputs: dict[str, Any] | None = None,
                **headers: str) -> dict[str, Any]:
    response = await api.post(f"/api/v1/workflows/{name}/runs", json={"inputs": inputs or {}}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def finished(api: httpx.AsyncClient, run_id: str, timeout_s: float = 60.0) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        run = (await api.get(f"/api/v1/runs/{run_id}")).json()
        return run if run["state"] in FINISHED else None

    return await wait_for(done, timeout_s=timeout_s, what=f"run {run_id} to finish")


async def job_state(api: httpx.AsyncClient, run_id: str, job: str, states: set[str],
                    timeout_s: float = 30.0) -> dict[str, Any]:
    async def reached() -> dict[str, Any] | None:
        run = (await api.get(f"/api/v1/runs/{run_id}")).json()
        found = jobs(run)[job]
        return found if found["state"] in states else None

    return await wait_for(reached, timeout_s=timeout_s, what=f"job {job} of run {run_id} to be in {states}")


def jobs(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {j["job"]: j for j in run["steps"]}


def states(run: dict[str, Any]) -> dict[str, str]:
    return {j["job"]: j["state"] for j in run["steps"]}


def load_example(name: str) -> str:
    return (Path(__file__).parents[3] / "examples" / "workflows" / name).read_text()


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main", *args],
        cwd=repo, check=True, capture_output=True, text=True,
    ).stdout


def as_yaml(document: dict[str, Any]) -> str:
    return yaml.safe_dump(document, sort_keys=False)
