"""Attacks on other processes from inside a task: reading the agent's and a running neighbour
task's environment through /proc, and leaving a background child behind.

Each task runs through the real control plane, broker and ``python -m agents.shell`` process with
production sandbox settings."""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx

from tests.security.sandbox_agent import (
    StartShellAgent,
    run_task,
    start_shell_agent,
    submit,
    wait_for_line,
)
from tests.support.processes import marker, running, wait_until_none_running

__all__ = ["start_shell_agent"]

# The interesting variables of every environment the task can find under /proc, and every sleeping
# process it can see.
DUMP_ENVIRONS = (
    "for f in /proc/[0-9]*/environ; do tr '\\0' '\\n' < \"$f\" 2>/dev/null || true; done"
    " | grep -E '^(AMQP_URL|DEVART_[A-Z_]+|PLAIN|DB_PASSWORD)=' | sort -u || true\n"
    "ps -e -o args= | grep '^sleep' || true\n"
)


async def test_a_task_cannot_read_the_agents_or_a_neighbours_environment(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent, tmp_path: Path
) -> None:
    secrets_dir = tmp_path / "secrets"
    (secrets_dir / "db").mkdir(parents=True)
    neighbour_secret = f"neighbour-secret-{secrets.token_hex(8)}"
    (secrets_dir / "db" / "password").write_text(neighbour_secret)
    agent = await start_shell_agent(secrets_dir=str(secrets_dir))
    neighbour_plain = f"neighbour-plain-{secrets.token_hex(8)}"
    mark = marker()
    neighbour = await submit(admin, {
        "script": f"echo ready; sleep {mark}",
        "env": {"PLAIN": neighbour_plain},
        "secret_env": {"DB_PASSWORD": {"name": "db", "key": "password"}},
    })  # fmt: skip
    await wait_for_line(admin, neighbour, "ready")
    assert running(mark), "the neighbour task should be running while the attacker looks"

    attack = await run_task(admin, {"script": DUMP_ENVIRONS})
    await admin.post(f"/api/v1/tasks/{neighbour}/cancel")

    assert attack.task["status"] == "succeeded", attack.task["status_reason"]
    for secret in (agent.otlp_token, agent.agent_secret, agent.amqp_url, neighbour_secret, neighbour_plain):
        assert secret not in attack.output
    assert "AMQP_URL" not in attack.output
    assert mark not in attack.output  # not even the neighbour's command line
    assert await wait_until_none_running(mark)


async def test_a_background_child_neither_crashes_the_attempt_nor_outlives_it(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent
) -> None:
    await start_shell_agent()
    mark = marker()
    done = await run_task(admin, {"script": f"setsid sleep {mark} & echo started"})
    assert done.task["status"] == "succeeded", done.task["status_reason"]
    assert len(done.task["attempts"]) == 1
    assert done.lines == ["started"]  # ran once: no retry of the command
    assert await wait_until_none_running(mark)
