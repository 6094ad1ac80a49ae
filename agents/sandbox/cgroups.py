"""Per-attempt cgroups: memory, pids and CPU limits that hold for a whole process tree.

Both cgroup versions are supported. With v2 (one unified hierarchy) an attempt gets one directory
under the agent's own cgroup; with v1 (a hierarchy per controller) it gets one directory in each of
the ``memory``, ``pids`` and ``cpu`` hierarchies, under the agent's own cgroup there. The process a
sandbox spawns joins them between fork and exec, so everything it starts is counted and limited.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CONTROLLERS = ("memory", "pids", "cpu")
_CPU_PERIOD_US = 100_000
_KILL_ROUNDS = 200


class CgroupUnavailable(Exception):
    """No writable cgroup with the memory, pids and cpu controllers; the message says what is missing."""


@dataclass(frozen=True)
class Limits:
    memory_bytes: int
    pids: int
    cpu_cores: float


def _mounts(mountinfo: str) -> list[tuple[str, str, set[str]]]:
    """(mount point, filesystem type, super options) of each line of /proc/self/mountinfo."""
    found = []
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) >= 5 and len(tail) >= 3:
            point = fields[4].replace("\\040", " ")
            found.append((point, tail[0], set(tail[2].split(","))))
    return found


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Controller (``""`` for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            paths[controller] = path
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as file:
        file.write(value)


class CgroupHost:
    """Where this agent's attempts get their cgroups; ``detect`` finds it or says why there is none."""

    def __init__(self, version: Literal[1, 2], parents: dict[str, Path]) -> None:
        self.version = version
        self.parents = parents
        """v2: ``{"": dir}``; v1: controller -> the directory attempt cgroups are made in."""

    def __repr__(self) -> str:
        where = ", ".join(str(path) for path in self.parents.values())
        return f"cgroup v{self.version} under {where}"

    @classmethod
    def detect(cls, proc: Path = Path("/proc/self")) -> CgroupHost:
        mounts = _mounts((proc / "mountinfo").read_text())
        own = _own_paths((proc / "cgroup").read_text())
        problems: list[str] = []
        v1: dict[str, Path] = {}
        for controller in CONTROLLERS:
            point = next((m for m, kind, opts in mounts if kind == "cgroup" and controller in opts), None)
            if point is not None and controller in own:
                v1[controller] = Path(point) / own[controller].lstrip("/")
        unified = next((m for m, kind, _ in mounts if kind == "cgroup2"), None)
        if unified is not None and "" in own:
            try:
                return cls._v2(Path(unified) / own[""].lstrip("/"))
            except CgroupUnavailable as exc:
                problems.append(str(exc))
        if len(v1) == len(CONTROLLERS):
            try:
                return cls._v1(v1)
            except CgroupUnavailable as exc:
                problems.append(str(exc))
        elif v1:
            missing = sorted(set(CONTROLLERS) - set(v1))
            problems.append(f"cgroup v1 has no hierarchy for {', '.join(missing)}")
        if not problems:
            problems.append("no cgroup filesystem is mounted")
        raise CgroupUnavailable("; ".join(problems))

    @classmethod
    def _v2(cls, own: Path) -> CgroupHost:
        leaf = f"devart-agent-{os.getpid()}"
        if own.name == leaf:
            own = own.parent  # an earlier probe of this process moved it there: not a cgroup to nest in
        available = set((own / "cgroup.controllers").read_text().split())
        missing = sorted(set(CONTROLLERS) - available)
        if missing:
            raise CgroupUnavailable(f"cgroup v2 at {own} does not offer {', '.join(missing)}")
        enable = " ".join(f"+{name}" for name in CONTROLLERS)
        try:
            _write(own / "cgroup.subtree_control", enable)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise CgroupUnavailable(f"cgroup v2 at {own} is not writable: {exc.strerror}") from None
            # No process may live in a cgroup that delegates controllers: move the agent into a leaf.
            try:
                (own / leaf).mkdir(exist_ok=True)
                _write(own / leaf / "cgroup.procs", str(os.getpid()))
                _write(own / "cgroup.subtree_control", enable)
            except OSError as again:
                raise CgroupUnavailable(
                    f"cgroup v2 at {own} holds other processes, so it cannot delegate controllers"
                    f" ({again.strerror}); run the agent in a cgroup of its own (e.g. systemd Delegate=yes)"
                ) from None
        cls._probe({"": own})
        return cls(2, {"": own})

    @classmethod
    def _v1(cls, parents: dict[str, Path]) -> CgroupHost:
        cls._probe(parents)
        return cls(1, parents)

    @staticmethod
    def _probe(parents: dict[str, Path]) -> None:
        for parent in parents.values():
            probe = parent / f"devart-probe-{os.getpid()}"
            try:
                probe.mkdir(exist_ok=True)
                probe.rmdir()
            except OSError as exc:
                raise CgroupUnavailable(f"cannot create cgroups under {parent}: {exc.strerror}") from None

    def create(self, name: str, limits: Limits) -> AttemptCgroup:
        """A fresh cgroup ``name`` with ``limits``; an earlier one of that name is emptied first."""
        dirs = [parent / name for parent in self.parents.values()]
        cgroup = AttemptCgroup(self.version, dirs)
        cgroup.remove()
        for path in dirs:
            path.mkdir()
        try:
            cgroup.limit(limits)
        except OSError:
            cgroup.remove()
            raise
        return cgroup


class AttemptCgroup:
    """The cgroup (v1: one per controller) of one attempt."""

    def __init__(self, version: Literal[1, 2], dirs: list[Path]) -> None:
        self.version = version
        self.dirs = dirs
        self._procs_files = [str(path / "cgroup.procs") for path in dirs]

    def _file(self, name: str) -> Path:
        """``name`` in whichever of the directories has it (v1 spreads controllers over hierarchies)."""
        for path in self.dirs:
            if (path / name).exists():
                return path / name
        raise FileNotFoundError(name)

    def limit(self, limits: Limits) -> None:
        quota = max(1000, int(limits.cpu_cores * _CPU_PERIOD_US))
        if self.version == 2:
            _write(self._file("memory.max"), str(limits.memory_bytes))
            if (self.dirs[0] / "memory.swap.max").exists():
                _write(self.dirs[0] / "memory.swap.max", "0")
            _write(self._file("pids.max"), str(limits.pids))
            _write(self._file("cpu.max"), f"{quota} {_CPU_PERIOD_US}")
            return
        _write(self._file("memory.limit_in_bytes"), str(limits.memory_bytes))
        try:
            _write(self._file("memory.memsw.limit_in_bytes"), str(limits.memory_bytes))
        except FileNotFoundError:
            pass  # no swap accounting: nothing to swap to either
        _write(self._file("pids.max"), str(limits.pids))
        _write(self._file("cpu.cfs_period_us"), str(_CPU_PERIOD_US))
        _write(self._file("cpu.cfs_quota_us"), str(quota))

    def join(self) -> None:
        """Move the calling process into the cgroup; runs in the child between fork and exec."""
        for procs in self._procs_files:
            fd = os.open(procs, os.O_WRONLY)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.dirs:
            try:
                found.update(int(pid) for pid in (path / "cgroup.procs").read_text().split())
            except FileNotFoundError:
                pass
        return found

    def signal(self, sig: signal.Signals, *, sparing: frozenset[int] = frozenset()) -> None:
        for pid in self.pids() - sparing:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass

    def kill(self) -> None:
        """SIGKILL every process in the cgroup until none is left (blocking; run it in a thread)."""
        if self.version == 2 and (self.dirs[0] / "cgroup.kill").exists():
            _write(self.dirs[0] / "cgroup.kill", "1")
        for _ in range(_KILL_ROUNDS):
            if not self.pids():
                return
            self.signal(signal.SIGKILL)
            time.sleep(0.005)

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this cgroup for its memory limit."""
        name = "memory.events" if self.version == 2 else "memory.oom_control"
        try:
            text = self._file(name).read_text()
        except FileNotFoundError:
            return False
        counters = dict(line.split() for line in text.splitlines() if len(line.split()) == 2)
        return int(counters.get("oom_kill", "0")) > 0

    def remove(self) -> None:
        """Kill what is left and delete the directories (blocking; run it in a thread)."""
        if not any(path.exists() for path in self.dirs):
            return
        self.kill()
        for path in self.dirs:
            for _ in range(_KILL_ROUNDS):
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as exc:
                    if exc.errno != errno.EBUSY:
                        raise
                    time.sleep(0.005)
