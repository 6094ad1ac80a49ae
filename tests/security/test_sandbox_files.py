"""Attacks on files from inside a task: a neighbour task's workspace, DEVART_HOME (where the
embedded Postgres keeps its socket), /etc/shadow, and writing outside the task's own directory.

Each task runs through the real control plane, broker and ``python -m agents.shell`` process with
production sandbox settings."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import httpx

from tests.security.sandbox_agent import StartShellAgent, run_task, start_shell_agent, submit, wait_for_line
from tests.support.processes import marker, wait_until_none_running

__all__ = ["start_shell_agent"]


async def test_a_task_cannot_read_a_neighbours_workspace(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent
) -> None:
    agent = await start_shell_agent()
    secret = f"neighbour-file-{secrets.token_hex(8)}"
    mark = marker()
    neighbour = await submit(admin, {"script": f"echo {secret} > notes.txt; echo ready; sleep {mark}"})
    await wait_for_line(admin, neighbour, "ready")
    assert any(agent.sandboxes.glob("*/checkout/notes.txt")), "the neighbour's file is on the host"

    attack = await run_task(admin, {"script": 'ls "$(dirname "$HOME")" || true\n'
                                              'cat "$(dirname "$HOME")"/*/checkout/notes.txt || true\n'
                                              f"cat {agent.sandboxes}/*/checkout/notes.txt || true"})
    await admin.post(f"/api/v1/tasks/{neighbour}/cancel")
    assert attack.task["status"] == "succeeded", attack.task["status_reason"]
    assert secret not in attack.output
    assert await wait_until_none_running(mark)


async def test_a_task_cannot_reach_devart_home_nor_the_database_socket(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent
) -> None:
    agent = await start_shell_agent()
    # Where the embedded Postgres keeps its socket and data under DEVART_HOME.
    (agent.home / "postgres").mkdir()
    (agent.home / "postgres" / "postgresql.conf").write_text("password_encryption = scram-sha-256\n")
    socket_path = agent.home / "postgres" / ".s.PGSQL.5432"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(socket_path))
        listener.listen()
        listener.setblocking(False)
        probe = (
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n"
            "    s.connect(sys.argv[1]); print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', exc.errno)\n"
        )
        attack = await run_task(admin, {"script": f"cat {agent.home}/postgres/postgresql.conf || true\n"
                                                  f"ls -a {agent.home} || true\n"
                                                  f"python3 -c \"$PROBE\" {socket_path}",
                                        "env": {"PROBE": probe}})
        try:
            accepted, _ = listener.accept()
            accepted.close()
            reached = True
        except BlockingIOError:
            reached = False
    assert attack.task["status"] == "succeeded", attack.task["status_reason"]
    assert not reached
    assert "connected" not in attack.lines
    assert "scram-sha-256" not in attack.output
    assert "postgres" not in attack.lines


async def test_a_task_cannot_read_etc_shadow(admin: httpx.AsyncClient, start_shell_agent: StartShellAgent) -> None:
    await start_shell_agent()
    shadow_root = next(line for line in Path("/etc/shadow").read_text().splitlines() if line.startswith("root:"))
    attack = await run_task(admin, {"script": "cat /etc/shadow || true"})
    assert attack.task["status"] == "succeeded", attack.task["status_reason"]
    assert shadow_root not in attack.lines
    assert any("Permission denied" in line for line in attack.lines)


async def test_a_task_cannot_write_outside_its_directory(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent, tmp_path: Path
) -> None:
    agent = await start_shell_agent()
    name = f"devart-escape-{secrets.token_hex(6)}"
    targets = [tmp_path / name, agent.home / name, Path("/usr/local/bin") / name, Path("/etc") / name]
    script = "".join(f"echo owned > {target} && echo wrote {target} || true\n" for target in targets)
    try:
        attack = await run_task(admin, {"script": script + "echo inside > mine.txt && echo wrote mine"})
        assert attack.task["status"] == "succeeded", attack.task["status_reason"]
        assert "wrote mine" in attack.lines
        assert [target for target in targets if target.exists()] == []
    finally:
        for target in targets:
            target.unlink(missing_ok=True)
