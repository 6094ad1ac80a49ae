"""Attacks with privileges from inside a task: running as root with capabilities, and entering the
agent's network namespace (``nsenter``) to reach the broker from a task that has no network.

Each task runs through the real control plane, broker and ``python -m agents.shell`` process with
production sandbox settings (``network=none``)."""

from __future__ import annotations

from urllib.parse import urlparse

import httpx

from tests.security.sandbox_agent import StartShellAgent, run_task, start_shell_agent

__all__ = ["start_shell_agent"]

CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=2).close(); print('reached', sys.argv[2])\n"
    "except OSError as exc:\n"
    "    print('unreachable', sys.argv[2], exc.errno)\n"
)


async def test_a_task_runs_unprivileged(admin: httpx.AsyncClient, start_shell_agent: StartShellAgent) -> None:
    await start_shell_agent()
    attack = await run_task(admin, {"script": "id -u; id -G; grep -E '^(CapEff|CapPrm|CapBnd|CapAmb|NoNewPrivs):' /proc/self/status"})
    assert attack.task["status"] == "succeeded", attack.task["status_reason"]
    uid, groups, *status = attack.lines
    assert uid != "0" and "0" not in groups.split()
    fields = dict(line.split(":\t") for line in status)
    assert fields == {"CapPrm": "0" * 16, "CapEff": "0" * 16, "CapBnd": "0" * 16, "CapAmb": "0" * 16,
                      "NoNewPrivs": "1"}


async def test_a_task_cannot_enter_the_agents_network_to_reach_the_broker(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent
) -> None:
    agent = await start_shell_agent()
    port = urlparse(agent.amqp_url).port or 5672
    script = (
        f'python3 -c "$CONNECT" {port} direct\n'
        'seen=""\n'
        "for ns in /proc/[0-9]*/ns/net; do\n"  # one try per network namespace the task can see
        '  id=$(readlink "$ns" 2>/dev/null) || continue\n'
        '  case " $seen " in *" $id "*) continue;; esac\n'
        '  seen="$seen $id"\n'
        f'  nsenter --net="$ns" python3 -c "$CONNECT" {port} "$ns" 2>&1 || echo "nsenter refused $ns"\n'
        "done\n"
    )
    attack = await run_task(admin, {"script": script, "env": {"CONNECT": CONNECT}})
    assert attack.task["status"] == "succeeded", attack.task["status_reason"]
    assert any(line.startswith("unreachable direct") for line in attack.lines)
    assert [line for line in attack.lines if line.startswith("reached")] == []
