"""Attacks on the host's resources from inside a task: a fork bomb and a memory hog spread over
many processes. Per-process rlimits do not stop either (RLIMIT_NPROC is not enforced for root,
RLIMIT_AS counts one process); the attempt's cgroup limits the whole tree.

Each task runs through the real control plane, broker and ``python -m agents.shell`` process with
production sandbox settings, a pids limit lowered to 64 for the fork bomb."""

from __future__ import annotations

import httpx

from tests.security.sandbox_agent import StartShellAgent, run_memory_hog, run_task, start_shell_agent
from tests.support.attacks import fork_bomb
from tests.support.processes import marker, wait_until_none_running

__all__ = ["start_shell_agent"]


async def test_a_fork_bomb_is_stopped_by_the_pids_limit(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent
) -> None:
    await start_shell_agent(processes="64")
    mark = marker()
    bomb = await run_task(admin, {"script": fork_bomb(mark)})
    assert bomb.task["status"] == "failed"
    assert "all-started" not in bomb.lines
    assert any("fork" in line.lower() for line in bomb.lines)
    assert await wait_until_none_running(mark)


async def test_a_memory_hog_over_many_processes_is_stopped_by_the_memory_limit(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent
) -> None:
    await start_shell_agent()
    hog = await run_memory_hog(admin)
    assert hog.task["status"] == "failed"
    assert "all-held" not in hog.lines
    assert hog.lines.count("held") < 6  # 6 x 60 MiB do not fit in 128 MiB together
    assert "OOMKilled" in (hog.task["status_reason"] or "")
