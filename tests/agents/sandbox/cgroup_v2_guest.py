"""Inside the cgroup v2 guest (``tests/support/vm.py``): the real local sandbox against real v2 limits.

``test_cgroups_v2_vm.py`` boots the guest to run ``python -m tests.agents.sandbox.cgroup_v2_guest
<results.json>``; this writes what it saw there, and the host test asserts on it. The guest's init
leaves this process in the root cgroup, ``memory pids cpu`` enabled for the root's children. First
the detection runs in forked children placed as an agent may find itself: in the root cgroup, and in
a cgroup it shares with another process. Then this process moves into ``/sys/fs/cgroup/agent``, as
a service manager starts an agent in a cgroup of its own, probes the boundary as ``python -m
agents.shell`` does before its sandbox does, and runs attempts through ``LocalSandbox`` with
production settings (bubblewrap, the sandbox user, the attempt's cgroup), reading the attempt
cgroup's files when a chosen line shows in its output, while the cgroup still exists. Last, a
forked child runs an attempt as a non-root agent in a cgroup delegated to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.sandbox import LocalSandbox, Resources, SandboxSettings, SandboxSpec
from agents.sandbox.boundary import Boundary
from agents.sandbox.cgroups import AttemptCgroup, CgroupHost, CgroupUnavailable, Limits, _mounts
from tests.support.attacks import MEMORY_HOG, fork_bomb
from tests.support.processes import marker, running, wait_until_running

ROOT = Path("/sys/fs/cgroup")
SANDBOXES = Path("/tmp/sandboxes")
NON_ROOT = 65534
BOMB_PIDS = 24
"""The fork bomb's ``processes``: below the sandbox user's ``RLIMIT_NPROC`` (the same number) by
bubblewrap's own processes, so the cgroup refuses the forks first."""

_MEMORY_HOG_WAITING = """pids=""
for i in 1 2 3 4 5 6; do python3 -S -c "$HOG" & pids="$pids $!"; done
status=0
for p in $pids; do wait $p || status=$?; done
echo "waited $status"
exit $status
"""
"""Six 60 MiB processes at once, then a line once the kernel has dealt with them all."""

_CPU_BURN = """for i in 1 2; do timeout 3 sh -c 'while :; do :; done' & done
wait
echo burnt
"""
"""Two busy loops for three seconds: two cores' worth of demand."""


_UNTIL_GO = 'until [ -e "$HOME/go" ]; do :; done\n'
"""The end of a script whose main process must outlive the reading of its cgroup (no fork: the
fork bomb's cgroup is full by then)."""


def _say(text: str) -> None:
    print(f"cgroup_v2_guest: {text}", flush=True)


def _in_child(cgroup: Path, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """What ``work`` returns in a forked child that first joins ``cgroup``, and its cgroup after."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(read)
        try:
            AttemptCgroup(2, [cgroup]).join()
            try:
                found = work()
            except Exception:  # reported to the host test, which fails on it
                found = {"error": traceback.format_exc()}
                _say(found["error"])
            found["pid"] = os.getpid()
            found["own"] = Path("/proc/self/cgroup").read_text().strip()
            os.write(write, json.dumps(found).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        found = json.loads(pipe.read())
    os.waitpid(child, 0)
    return found


def _detect() -> dict[str, Any]:
    try:
        host = CgroupHost.detect()
    except CgroupUnavailable as exc:
        return {"refused": str(exc)}
    return {"version": host.version, "parents": [str(p) for p in host.parents.values()]}


def _detect_in(cgroup: Path) -> dict[str, Any]:
    return _in_child(cgroup, _detect)


def _non_root_agent(settings: SandboxSettings) -> dict[str, Any]:
    """An agent running as uid 65534 in a cgroup delegated to it (owned by it, as systemd's
    ``Delegate=yes`` hands it over), with one attempt that reads its limit."""
    delegated = ROOT / "nonroot"
    delegated.mkdir()
    for path in (delegated, *(delegated / name for name in ("cgroup.procs", "cgroup.subtree_control", "cgroup.threads"))):
        os.chown(path, NON_ROOT, NON_ROOT)
    os.chown(settings.root, NON_ROOT, NON_ROOT)

    def run() -> dict[str, Any]:
        # The interpreter lives under /root, which that user may not enter: this process has already
        # imported (and the earlier attempts used) all the code it runs.
        os.setgroups([])
        os.setgid(NON_ROOT)
        os.setuid(NON_ROOT)
        return asyncio.run(_non_root_attempt(settings))

    return _in_child(delegated, run)


async def _non_root_attempt(settings: SandboxSettings) -> dict[str, Any]:
    sandbox = LocalSandbox(settings)
    boundary = await sandbox.boundary()
    assert boundary.cgroups is not None
    return {
        "problems": boundary.problems(),
        "describe": boundary.describe(),
        "parents": [str(path) for path in boundary.cgroups.parents.values()],
        "attempt": await _attempt(
            sandbox, "non-root", script=f"echo started\n{_UNTIL_GO}", resources=Resources(memory="256Mi"),
            timeout_s=300, at="started", read=("memory.max", "cgroup.procs"),
        ),  # fmt: skip
    }


def _shared_cgroup() -> dict[str, Any]:
    """Detection in a cgroup that also holds a ``sleep``, as when an agent shares its service's cgroup."""
    shared = ROOT / "shared"
    shared.mkdir()
    neighbour = subprocess.Popen(["sleep", "300"], preexec_fn=AttemptCgroup(2, [shared]).join)
    try:
        return _detect_in(shared)
    finally:
        neighbour.kill()
        neighbour.wait()
        for leaf in shared.iterdir():
            if leaf.is_dir():
                leaf.rmdir()
        shared.rmdir()


async def _attempt(
    sandbox: LocalSandbox,
    name: str,
    *,
    at: str,
    read: tuple[str, ...],
    mark: str | None = None,
    expect: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    """Run one attempt; when a line containing ``at`` shows, read ``read`` from its cgroup, after
    waiting for ``expect`` processes with ``mark`` (whose pids are kept too), then create ``go`` in
    its workspace (``$HOME``) for a script that waits for it."""
    parent = (await sandbox.boundary()).cgroups.parents[""]  # type: ignore[union-attr]
    cgroup = parent / f"devart-{name}.1"
    lines: list[list[str]] = []
    seen: dict[str, Any] = {}
    started = time.monotonic()

    async def on_log(stream: str, text: str) -> None:
        lines.append([stream, text])
        if not seen and at in text.lower():
            if mark is not None:
                seen["marked"] = await wait_until_running(mark, expect)
            seen["elapsed_s"] = time.monotonic() - started
            seen.update({file: (cgroup / file).read_text() for file in read})
            (SANDBOXES / f"{name}.1" / "go").touch()

    result = await sandbox.run(SandboxSpec(task_id=name, **spec), on_log=on_log, cancel=asyncio.Event())
    _say(f"{name}: {result.outcome} ({result.reason}) in {time.monotonic() - started:.1f} s")
    return {
        "result": result.model_dump(),
        "lines": lines,
        "seen": seen,
        "survivors": running(mark) if mark is not None else [],
        "cgroup_left": cgroup.exists(),
    }


def _kill_limited_cgroup(host: CgroupHost) -> dict[str, Any]:
    """``AttemptCgroup.kill`` on a tree that escaped its session, in a cgroup with real limits."""
    mark = marker()
    cgroup = host.create("devart-vm-kill", Limits(memory_bytes=256 * 2**20, pids=64, cpu_cores=1))
    limits = {file: cgroup._file(file).read_text() for file in ("memory.max", "memory.swap.max", "pids.max", "cpu.max")}
    main = subprocess.Popen(["sh", "-c", f"setsid sleep {mark} & sleep {mark} & wait"], preexec_fn=cgroup.join)
    deadline = time.monotonic() + 60
    while len(before := cgroup.pids()) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    cgroup.kill()
    returncode = main.wait(30)
    after = {"pids": sorted(cgroup.pids()), "events": (cgroup.dirs[0] / "cgroup.events").read_text()}
    cgroup.remove()
    return {
        "limits": limits,
        "before": sorted(before),
        "main": main.pid,
        "returncode": returncode,
        "after": after,
        "survivors": running(mark),
        "cgroup_left": cgroup.dirs[0].exists(),
    }


async def _in_agent_cgroup(settings: SandboxSettings) -> dict[str, Any]:
    found: dict[str, Any] = {}
    startup = await asyncio.to_thread(Boundary.probe, settings)  # what `python -m agents.shell` does first
    sandbox = LocalSandbox(settings)
    boundary = await sandbox.boundary()
    bomb_sandbox = LocalSandbox(settings.model_copy(update={"processes": BOMB_PIDS}))
    bomb_boundary = await bomb_sandbox.boundary()
    assert startup.cgroups and boundary.cgroups and bomb_boundary.cgroups
    found["agent"] = {
        "problems": [*startup.problems(), *boundary.problems(), *bomb_boundary.problems()],
        "describe": boundary.describe(),
        "parents": [str(b.cgroups.parents[""]) for b in (startup, boundary, bomb_boundary)],  # type: ignore[union-attr]
        "own": Path("/proc/self/cgroup").read_text().strip(),
        "pid": os.getpid(),
        "subtree_control": (ROOT / "agent" / "cgroup.subtree_control").read_text().split(),
    }
    found["memory_hog"] = await _attempt(
        sandbox, "memory-hog", script=_MEMORY_HOG_WAITING, env={"HOG": MEMORY_HOG},
        resources=Resources(cpu="2", memory="128Mi"), timeout_s=300,
        at="waited", read=("memory.max", "memory.swap.max", "memory.events"),
    )  # fmt: skip
    mark = marker()
    found["fork_bomb"] = await _attempt(
        bomb_sandbox, "fork-bomb", timeout_s=300, at="bomb ended", read=("pids.max", "pids.events"), mark=mark,
        script=f"status=0\n( {fork_bomb(mark)} ) || status=$?\necho bomb ended $status\n{_UNTIL_GO}exit $status\n",
    )  # fmt: skip
    found["cpu"] = await _attempt(
        sandbox, "cpu", script=_CPU_BURN, resources=Resources(cpu="500m"), timeout_s=300,
        at="burnt", read=("cpu.max", "cpu.stat"),
    )  # fmt: skip
    mark = marker()
    found["leftovers"] = await _attempt(
        sandbox, "leftovers", script=f"setsid sleep {mark} &\n( sleep {mark} & )\necho started\n{_UNTIL_GO}", timeout_s=300,
        at="started", read=("cgroup.procs",), mark=mark, expect=2,
    )  # fmt: skip
    mark = marker()
    found["deadline"] = await _attempt(
        sandbox, "deadline", timeout_s=12, at="started", read=("cgroup.procs",), mark=mark, expect=2,
        script=f"trap '' TERM\nsetsid sh -c \"trap '' TERM; sleep {mark}\" &\necho started\nsleep {mark}\n",
    )  # fmt: skip
    found["kill"] = await asyncio.to_thread(_kill_limited_cgroup, boundary.cgroups)
    return found


def main() -> None:
    began = time.monotonic()
    results: dict[str, Any] = {
        "mounts": sorted({kind for _, kind, _ in _mounts(Path("/proc/self/mountinfo").read_text())}),
        "root_subtree_control": (ROOT / "cgroup.subtree_control").read_text().split(),
        "root": _detect_in(ROOT),
        "shared": _shared_cgroup(),
    }
    settings = SandboxSettings(root=SANDBOXES, kill_grace_s=1.0)
    agent = ROOT / "agent"
    agent.mkdir()
    (agent / "cgroup.procs").write_text(str(os.getpid()))
    results.update(asyncio.run(_in_agent_cgroup(settings)))
    results["non_root"] = _non_root_agent(settings)
    results["guest_s"] = time.monotonic() - began
    output = Path(sys.argv[1])
    partial = output.parent / f"{output.name}.partial"
    partial.write_text(json.dumps(results, indent=1))
    partial.rename(output)
    _say(f"done in {results['guest_s']:.1f} s")


if __name__ == "__main__":
    main()
