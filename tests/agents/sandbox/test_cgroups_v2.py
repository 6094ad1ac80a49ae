"""The cgroup v2 half of ``agents.sandbox.cgroups`` on this host's real unified hierarchy.

This host binds memory, pids and cpu to its v1 hierarchies, and a controller lives in one hierarchy
at a time, so its cgroup2 mount (``/sys/fs/cgroup/unified``) offers none of them; freeing one would
mean unmounting a v1 hierarchy every other process here is counted in. So v2 *limits* cannot be
exercised here (``test_cgroups_v2_vm.py`` does, in a guest booted with cgroup v2 alone). What v2
does without controllers is real and tested here: the detection refuses the
hierarchy for what it lacks, and an attempt cgroup made in it holds a whole process tree (joined
between fork and exec, a ``setsid`` child included) and empties it with ``cgroup.kill``.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.sandbox.cgroups import AttemptCgroup, CgroupHost, CgroupUnavailable, _mounts

UNIFIED = next(point for point, kind, _ in _mounts(Path("/proc/self/mountinfo").read_text()) if kind == "cgroup2")


def test_a_v2_hierarchy_without_memory_pids_and_cpu_is_refused_for_them() -> None:
    assert set((Path(UNIFIED) / "cgroup.controllers").read_text().split()).isdisjoint({"memory", "pids", "cpu"})
    with pytest.raises(CgroupUnavailable, match=rf"^cgroup v2 at {UNIFIED} does not offer cpu, memory, pids$"):
        CgroupHost._v2(Path(UNIFIED))
    assert CgroupHost.detect().version == 1  # so the agent uses this host's v1 hierarchies


@pytest.fixture
def v2_cgroup() -> Iterator[AttemptCgroup]:
    path = Path(UNIFIED) / f"devart-test-{secrets.token_hex(4)}"
    path.mkdir()
    cgroup = AttemptCgroup(2, [path])
    yield cgroup
    cgroup.remove()
    assert not path.exists()


def test_a_v2_attempt_cgroup_holds_the_whole_tree_and_cgroup_kill_empties_it(v2_cgroup: AttemptCgroup) -> None:
    assert (v2_cgroup.dirs[0] / "cgroup.kill").exists()
    main = subprocess.Popen(["sh", "-c", "setsid sleep 300 & sleep 300 & wait"], preexec_fn=v2_cgroup.join)
    deadline = time.monotonic() + 10
    while len(pids := v2_cgroup.pids()) < 3:  # sh, and both sleeps, the setsid one out of its session
        assert time.monotonic() < deadline, f"the tree did not join: {pids}"
        time.sleep(0.01)
    assert main.pid in pids
    v2_cgroup.kill()
    assert main.wait(10) == -9
    assert v2_cgroup.pids() == set()
    for pid in pids - {main.pid}:  # the orphans (reparented to init) are gone too
        assert not Path(f"/proc/{pid}").exists() or "State:\tZ" in Path(f"/proc/{pid}/status").read_text()
    assert os.path.isdir(v2_cgroup.dirs[0])
