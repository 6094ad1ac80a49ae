"""The sandbox of an agent that is not root: bubblewrap's user namespace (``--unshare-user``) instead
of setpriv, and cgroups the operator delegated to the agent's user. Every other sandbox test runs a
root agent; here ``python -m agents.shell`` runs as an unprivileged uid, in cgroups (v1, this
host's) made for it and owned by it, as systemd's ``Delegate=yes`` would give it, and the attacks
of the root agent's tests are done again: capabilities, other processes, files outside the
workspace, the agent's home, and a memory hog over many processes.

The agent starts without ``DEVART_SANDBOX_INSECURE``, so it found namespaces and a writable cgroup
as that user (it refuses to start otherwise)."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from agents.sandbox.cgroups import CgroupHost
from agents.sdk import BrokerSettings
from tests.security.sandbox_agent import AgentProcess, run_memory_hog, run_task, shell_agent_process

UID = 65534  # nobody: no home, no groups, nothing of the test's
_REPO = Path(__file__).resolve().parents[2]


@dataclass
class AsUnprivileged:
    """Starts the agent as ``UID`` in ``cgroups`` (one per v1 controller, owned by ``UID``), with
    the system's Python 3.11 (the test's interpreter lives under /root, which that user cannot
    enter) and the test's packages on its path."""

    cgroups: list[Path]
    env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        site = Path(sys.prefix) / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        self.env = {"PYTHONPATH": f"{site}:{_REPO}", "HOME": "/nonexistent", "PYTHONDONTWRITEBYTECODE": "1"}

    def argv(self, argv: list[str]) -> list[str]:
        python = shutil.which("python3.11", path="/usr/bin")
        assert python, "the system's python3.11 is needed to run the agent as another user"
        return ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups", python, *argv[1:]]

    def before_exec(self) -> None:
        for cgroup in self.cgroups:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))


@pytest.fixture
def delegated_cgroups() -> Iterator[list[Path]]:
    """A cgroup per controller under the test's own, handed to ``UID`` (the directory and the files
    a delegate writes), as an operator delegates one to the agent's user."""
    host = CgroupHost.detect()
    assert host.version == 1, "this host mounts cgroup v1; a v2 host delegates one directory instead"
    made = [parent / f"devart-nonroot-{secrets.token_hex(4)}" for parent in host.parents.values()]
    for path in made:
        path.mkdir()
        for target in (path, path / "cgroup.procs", path / "tasks"):
            os.chown(target, UID, UID)
    yield made
    for path in made:
        for child in sorted(path.iterdir(), reverse=True):
            if child.is_dir():
                for pid in (child / "cgroup.procs").read_text().split():
                    (path.parent / "cgroup.procs").write_text(pid)
                child.rmdir()
        for pid in (path / "cgroup.procs").read_text().split():
            (path.parent / "cgroup.procs").write_text(pid)
        path.rmdir()


@pytest.fixture
async def unprivileged_agent(
    broker_settings: BrokerSettings, admin: httpx.AsyncClient, delegated_cgroups: list[Path]
) -> AsyncIterator[AgentProcess]:
    top = Path(tempfile.mkdtemp(prefix="devart-nonroot-"))  # under /tmp: the agent's user can reach it
    home = top / "home"
    home.mkdir()
    (home / "planted").write_text("the agent's own file")
    for path in (top, home, home / "planted"):
        os.chown(path, UID, UID)
        os.chmod(path, stat.S_IRWXU)
    try:
        async with shell_agent_process(broker_settings, admin, home,
                                       launcher=AsUnprivileged(delegated_cgroups)) as agent:
            yield agent
    finally:
        shutil.rmtree(top, ignore_errors=True)


async def test_a_non_root_agents_task_runs_in_a_user_namespace_without_privileges(
    admin: httpx.AsyncClient, unprivileged_agent: AgentProcess
) -> None:
    assert unprivileged_agent.process.poll() is None
    script = (
        "id -u; grep -E '^(CapEff|CapPrm|CapBnd|NoNewPrivs):' /proc/self/status\n"
        "ls /proc | grep -cE '^[0-9]+$'\n"  # processes it can see
        f"cat /proc/{unprivileged_agent.process.pid}/environ >/dev/null 2>&1 && echo agent-environ-read\n"
        f"cat {unprivileged_agent.home}/planted >/dev/null 2>&1 && echo home-read\n"
        f"echo home: $(ls -A {unprivileged_agent.home} 2>/dev/null)\n"
        "touch /etc/devart-nonroot 2>/dev/null && echo wrote-etc\n"
        "touch ./mine && echo wrote-workspace\n"
    )
    attack = await run_task(admin, {"script": script})
    assert attack.task["status"] == "succeeded", (attack.task["status_reason"], attack.lines)
    uid, cap_prm, cap_eff, cap_bnd, no_new_privs, visible, *rest = attack.lines
    assert uid == str(UID)
    assert [cap_prm, cap_eff, cap_bnd] == [f"{name}:\t{'0' * 16}" for name in ("CapPrm", "CapEff", "CapBnd")]
    assert no_new_privs == "NoNewPrivs:\t1"
    assert int(visible) <= 4, "the task sees processes other than its own"
    # only the path bubblewrap made to the workspace, none of the real home's files
    assert rest == ["home: sandboxes", "wrote-workspace"], rest


async def test_a_non_root_agents_cgroup_limits_a_memory_hog_over_many_processes(
    admin: httpx.AsyncClient, unprivileged_agent: AgentProcess
) -> None:
    hog = await run_memory_hog(admin)
    assert hog.task["status"] == "failed"
    assert "all-held" not in hog.lines
    assert hog.lines.count("held") < 6
    assert "OOMKilled" in (hog.task["status_reason"] or "")


async def test_an_agent_without_a_writable_cgroup_refuses_to_start_and_says_why() -> None:
    """The same user without delegated cgroups: this host's v2 hierarchy offers none of memory,
    pids and cpu (they are bound to the v1 hierarchies), and the v1 ones belong to root. Neither is
    writable, so ``python -m agents.shell`` refuses to start, exit 2, naming both; only an explicit
    ``DEVART_SANDBOX_INSECURE=1`` makes it start without a cgroup, saying so."""
    launcher = AsUnprivileged([])
    env = {"PATH": os.environ["PATH"], **launcher.env}
    argv = launcher.argv([sys.executable, "-m", "agents.shell", "--slots", "1"])
    refused = await asyncio.create_subprocess_exec(*argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                   stderr=asyncio.subprocess.PIPE, cwd="/")
    _, err = await asyncio.wait_for(refused.communicate(), 60)
    said = err.decode()
    assert refused.returncode == 2, said
    assert "refusing to start: the local sandbox cannot isolate attempts on this host:" in said
    assert "cgroup v2 at /sys/fs/cgroup/unified does not offer cpu, memory, pids" in said, said
    assert "cannot create cgroups under /sys/fs/cgroup/" in said and "Permission denied" in said, said
    assert "DEVART_SANDBOX_INSECURE=1" in said

    # with the explicit opt-out it starts (and, with no broker prefix set, stops right after saying so)
    insecure = await asyncio.create_subprocess_exec(
        *argv, env=env | {"DEVART_SANDBOX_INSECURE": "1"}, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd="/")
    _, err = await asyncio.wait_for(insecure.communicate(), 60)
    said = err.decode()
    assert "WARNING: DEVART_SANDBOX_INSECURE is set, local sandbox: attempts run with namespaces (bubblewrap), " \
           f"as the agent's uid {UID}; NO cgroup: per-process rlimits only" in said, said
