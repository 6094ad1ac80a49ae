"""The local sandbox's cgroup v2 limits for real, in a guest booted with cgroup v2 alone.

This host binds memory, pids and cpu to cgroup v1 (see ``test_cgroups_v2.py``), so the guest of
``tests/support/vm.py`` runs ``cgroup_v2_guest.py`` once for the module: the real ``LocalSandbox``
(bubblewrap, the sandbox user, production settings) in the guest's real unified hierarchy, with
the kernel enforcing ``memory.max``, ``pids.max`` and ``cpu.max``, for a root agent and a non-root one. The guest reports what it saw;
these tests assert on it. Without qemu or the unpacked kernel they fail (``make services`` fetches both).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.agents.sandbox.cgroup_v2_guest import BOMB_PIDS, NON_ROOT
from tests.support.vm import GUEST_SHARE, run_in_guest

CHECKOUT = Path(__file__).resolve().parents[3]
_GUEST_TIMEOUT_S = 540

pytestmark = pytest.mark.timeout(_GUEST_TIMEOUT_S + 60)


def _counters(text: str) -> dict[str, int]:
    return {key: int(value) for key, value in (line.split() for line in text.splitlines())}


@pytest.fixture(scope="module")
def guest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    run = run_in_guest(
        [sys.executable, "-m", "tests.agents.sandbox.cgroup_v2_guest", str(GUEST_SHARE / "results.json")],
        cwd=CHECKOUT,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"},
        workdir=tmp_path_factory.mktemp("cgroup-v2-vm"),
        timeout_s=_GUEST_TIMEOUT_S,
    )
    print(f"cgroup v2 guest: booted in {run.boot_s} s, command ended at {run.guest_s} s (guest uptime),"
          f" {run.wall_s:.1f} s on this host")  # fmt: skip
    assert run.exit_code == 0, f"the guest did not finish its run:\n{run.console[-6000:]}"
    return json.loads((run.share / "results.json").read_text())


def test_the_guest_has_cgroup_v2_only_with_the_three_controllers(guest: dict[str, Any]) -> None:
    assert "cgroup2" in guest["mounts"] and "cgroup" not in guest["mounts"]
    assert guest["root_subtree_control"] == ["cpu", "memory", "pids"]


def test_an_agent_in_the_root_cgroup_makes_attempt_cgroups_there(guest: dict[str, Any]) -> None:
    root = guest["root"]
    assert (root["version"], root["parents"], root["own"]) == (2, ["/sys/fs/cgroup"], "0::/")


def test_an_agent_holding_its_cgroup_moves_into_a_leaf_once_and_delegates_the_controllers(
    guest: dict[str, Any],
) -> None:
    agent = guest["agent"]
    assert agent["problems"] == []
    # every probe of the process (the shell agent's at startup, then each sandbox's) finds the same
    # parent: the cgroup it was started in, which it left for a leaf the first time (EBUSY)
    assert agent["parents"] == ["/sys/fs/cgroup/agent"] * 3
    assert agent["own"] == f"0::/agent/devart-agent-{agent['pid']}"
    assert agent["subtree_control"] == ["cpu", "memory", "pids"]
    assert "limits by cgroup v2 under /sys/fs/cgroup/agent" in agent["describe"]
    assert agent["describe"].startswith("namespaces (bubblewrap), as uid 65532")


def test_an_agent_sharing_its_cgroup_is_refused_with_the_reason(guest: dict[str, Any]) -> None:
    refused = guest["shared"]["refused"]
    assert refused.startswith("cgroup v2 at /sys/fs/cgroup/shared holds other processes, so it cannot delegate")
    assert "Device or resource busy" in refused


def test_a_non_root_agent_in_a_cgroup_delegated_to_it_limits_its_attempts(guest: dict[str, Any]) -> None:
    agent = guest["non_root"]
    assert "error" not in agent, agent.get("error")
    assert agent["problems"] == [] and agent["parents"] == ["/sys/fs/cgroup/nonroot"]
    assert agent["own"] == f"0::/nonroot/devart-agent-{agent['pid']}"  # it moved itself into its leaf
    assert agent["describe"].startswith(f"namespaces (bubblewrap), as the agent's uid {NON_ROOT}")
    attempt = agent["attempt"]
    assert attempt["result"]["outcome"] == "succeeded"
    assert attempt["seen"]["memory.max"] == f"{256 * 2**20}\n" and attempt["seen"]["cgroup.procs"].split()
    assert not attempt["cgroup_left"]


def test_a_memory_hog_over_many_processes_is_oom_killed_at_memory_max(guest: dict[str, Any]) -> None:
    hog = guest["memory_hog"]
    assert hog["result"]["outcome"] == "failed"
    assert hog["result"]["reason"] == f"OOMKilled: memory limit of {128 * 2**20} bytes"
    assert sum(line == ["stdout", "held"] for line in hog["lines"]) < 6
    seen = hog["seen"]
    assert seen["memory.max"] == f"{128 * 2**20}\n" and seen["memory.swap.max"] == "0\n"
    events = _counters(seen["memory.events"])
    assert events["oom_kill"] >= 1 and events["max"] >= 1
    assert not hog["cgroup_left"]


def test_a_fork_bomb_is_stopped_at_pids_max(guest: dict[str, Any]) -> None:
    bomb = guest["fork_bomb"]
    assert bomb["result"]["outcome"] == "failed"
    assert ["stdout", "all-started"] not in bomb["lines"]
    assert any("fork" in text.lower() for stream, text in bomb["lines"] if stream == "stderr")
    seen = bomb["seen"]
    assert seen["pids.max"] == f"{BOMB_PIDS}\n"
    assert _counters(seen["pids.events"])["max"] >= 1  # forks refused by this cgroup's pids.max
    assert 0 < len(seen["marked"]) < BOMB_PIDS
    assert bomb["survivors"] == [] and not bomb["cgroup_left"]


def test_cpu_max_throttles_a_tree_to_its_cores(guest: dict[str, Any]) -> None:
    cpu = guest["cpu"]
    assert cpu["result"]["outcome"] == "succeeded"
    seen = cpu["seen"]
    assert seen["cpu.max"] == "50000 100000\n"
    stat = _counters(seen["cpu.stat"])
    assert stat["nr_throttled"] > 0 and stat["throttled_usec"] > 0
    # two busy loops would take up to two cores; half a core is what the tree got over its life
    # (at most one period over, for the slice that was running when the quota ran out)
    assert 0 < stat["usage_usec"] <= 0.5 * seen["elapsed_s"] * 1e6 + 100_000


def _ended_with_its_tree(attempt: dict[str, Any], outcome: str) -> None:
    """The attempt ended ``outcome``; both marked processes were in its cgroup, and are gone with it."""
    assert attempt["result"]["outcome"] == outcome
    marked = attempt["seen"]["marked"]
    assert len(marked) == 2 and set(marked) <= {int(pid) for pid in attempt["seen"]["cgroup.procs"].split()}
    assert attempt["survivors"] == [] and not attempt["cgroup_left"]


def test_what_an_attempt_leaves_running_dies_with_it(guest: dict[str, Any]) -> None:
    _ended_with_its_tree(guest["leftovers"], "succeeded")


def test_a_tree_ignoring_sigterm_is_killed_at_the_deadline(guest: dict[str, Any]) -> None:
    _ended_with_its_tree(guest["deadline"], "timed_out")


def test_cgroup_kill_empties_a_limited_cgroup_of_a_tree_that_left_its_session(guest: dict[str, Any]) -> None:
    kill = guest["kill"]
    assert kill["limits"] == {
        "memory.max": f"{256 * 2**20}\n", "memory.swap.max": "0\n", "pids.max": "64\n", "cpu.max": "100000 100000\n",
    }  # fmt: skip
    assert len(kill["before"]) == 3 and kill["main"] in kill["before"]
    assert kill["returncode"] == -9
    assert kill["after"]["pids"] == [] and "populated 0" in kill["after"]["events"]
    assert kill["survivors"] == [] and not kill["cgroup_left"]
