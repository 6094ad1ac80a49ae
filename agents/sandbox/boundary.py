"""The boundary an attempt's processes run behind: bubblewrap namespaces, a sandbox user, cgroups.

``Boundary.probe`` finds out once what the host offers; ``Boundary.launch`` turns an argv into the
bubblewrap command line that runs it inside: new PID, mount, IPC, UTS and cgroup namespaces (and a
network namespace unless the step may use the network), the system read-only, a private ``/tmp``,
only the attempt's workspace writable, no capability, ``no_new_privs``, and never root: a root
agent's commands run as ``settings.user`` (bubblewrap sets up the namespaces as root, then
``setpriv`` drops to that user), a non-root agent's keep its own uid inside a user namespace.

The environment never passes through a privileged process: bubblewrap and ``setpriv`` start with
an empty one, and ``/bin/sh`` (already the sandbox user) reads the attempt's variables from a file
bubblewrap puts at ``/run/devart/env`` from a memfd, so no value shows in the host's process list.
"""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agents.sandbox.cgroups import CgroupHost, CgroupUnavailable
from agents.sandbox.settings import SandboxSettings

_log = logging.getLogger("devart.sandbox.boundary")

ENV_FILE = "/run/devart/env"
_EXEC_WITH_ENV = f'. {ENV_FILE} && cd -- "$1" && shift && exec "$@"'
"""Run by ``/bin/sh`` as the sandbox user: the environment, the working directory (which root
without capabilities may not enter), then the command."""
_PROBE_TIMEOUT_S = 30


class SandboxUnavailable(Exception):
    """This host cannot give attempts their boundary and the operator did not allow running without it."""


@dataclass
class Launch:
    """An argv ready for exec, with the environment of that exec and the descriptors it inherits."""

    argv: list[str]
    env: dict[str, str]
    pass_fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        """Close the parent's copies of the descriptors once the child has them."""
        for fd in self.pass_fds:
            os.close(fd)
        self.pass_fds = []


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, 0)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _under(path: Path, roots: Sequence[Path]) -> bool:
    return any(path.is_relative_to(root) for root in roots)


def env_file(env: Mapping[str, str]) -> bytes:
    """``export NAME='value'`` lines for ``/bin/sh`` to source; names must be shell identifiers."""
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in env.items()).encode()


class Boundary:
    """What this host offers an attempt: namespaces (bubblewrap) and cgroups, or why not."""

    def __init__(
        self,
        settings: SandboxSettings,
        *,
        bwrap: str | None,
        setpriv: str | None,
        namespaces_problem: str | None,
        cgroups: CgroupHost | None,
        cgroups_problem: str | None,
    ) -> None:
        self._settings = settings
        self._bwrap = bwrap
        self._setpriv = setpriv
        self.namespaces_problem = namespaces_problem
        self.cgroups = cgroups
        self.cgroups_problem = cgroups_problem
        self.as_root = os.geteuid() == 0

    @property
    def user(self) -> int:
        return self._settings.user

    @property
    def namespaces(self) -> bool:
        return self.namespaces_problem is None

    @classmethod
    def probe(cls, settings: SandboxSettings) -> Boundary:
        """Find out what this host offers (blocking: runs bubblewrap once, creates a probe cgroup)."""
        bwrap, setpriv = shutil.which("bwrap"), shutil.which("setpriv")
        try:
            cgroups, cgroups_problem = CgroupHost.detect(), None
        except (CgroupUnavailable, OSError) as exc:
            cgroups, cgroups_problem = None, str(exc)
        boundary = cls(
            settings, bwrap=bwrap, setpriv=setpriv, namespaces_problem=None, cgroups=cgroups,
            cgroups_problem=cgroups_problem,
        )  # fmt: skip
        boundary.namespaces_problem = boundary._probe_namespaces()
        return boundary

    def _probe_namespaces(self) -> str | None:
        if self._bwrap is None:
            return "bubblewrap (bwrap) is not installed"
        if self.as_root and self._setpriv is None:
            return "setpriv (util-linux) is not installed, so a root agent cannot drop to the sandbox user"
        workspace = Path("/")
        launch = self.launch(["true"], cwd=workspace, workspace=None, env={}, network=False)
        try:
            done = subprocess.run(
                launch.argv, env=launch.env, pass_fds=launch.pass_fds, stdin=subprocess.DEVNULL,
                capture_output=True, timeout=_PROBE_TIMEOUT_S, check=False,
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not run: {exc}"
        finally:
            launch.close()
        if done.returncode != 0:
            said = done.stderr.decode(errors="replace").strip().splitlines()
            return f"bubblewrap cannot create namespaces here: {said[-1] if said else f'exit {done.returncode}'}"
        return None

    def problems(self) -> list[str]:
        return [problem for problem in (self.namespaces_problem, self.cgroups_problem) if problem]

    def describe(self) -> str:
        """One line for the agent's log: what attempts get on this host."""
        who = f"uid {self._settings.user}" if self.as_root else f"the agent's uid {os.geteuid()}"
        parts = [
            f"namespaces (bubblewrap), as {who}" if self.namespaces else "NO namespaces: host view, agent's uid",
            f"limits by {self.cgroups!r}" if self.cgroups else "NO cgroup: per-process rlimits only",
        ]
        return "; ".join(parts)

    def require(self) -> None:
        """Raise ``SandboxUnavailable`` naming what is missing, unless the operator allowed running without."""
        problems = self.problems()
        if problems and not self._settings.insecure:
            raise SandboxUnavailable(
                "the local sandbox cannot isolate attempts on this host: "
                + "; ".join(problems)
                + ". Install bubblewrap and run the agent where it may create namespaces and cgroups,"
                " or set DEVART_SANDBOX_INSECURE=1 to run tasks without that isolation"
            )

    def launch(
        self,
        argv: Sequence[str],
        *,
        cwd: Path,
        workspace: Path | None,
        env: Mapping[str, str],
        network: bool,
        read_only: Sequence[Path] = (),
    ) -> Launch:
        """The bubblewrap command running ``argv`` in ``cwd`` with exactly ``env`` inside the boundary."""
        settings = self._settings
        args = ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not network:
            args.append("--unshare-net")
        args += ["--hostname", "sandbox", "--die-with-parent", "--new-session"]
        if self.as_root:
            # bubblewrap keeps only what setpriv needs to become the sandbox user; setpriv drops it all.
            args += ["--cap-drop", "ALL"]
            args += [arg for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP") for arg in ("--cap-add", cap)]
        else:
            args += ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"]
        # Directories bubblewrap makes on the way would be private to root: make them passable.
        made: set[Path] = set()

        def passable(path: Path) -> None:
            for parent in reversed(path.parents):
                if parent not in made and parent != Path("/tmp") and not _under(parent, settings.system_paths):
                    made.add(parent)
                    if parent != Path("/"):
                        args.extend(["--perms", "0711", "--dir", str(parent)])

        for path in settings.system_paths:
            if path.is_symlink():
                args += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                passable(path)  # a system path outside the usual ones, e.g. a virtualenv's bin
                args += ["--ro-bind", str(path), str(path)]
        args += ["--proc", "/proc", "--dev", "/dev", "--size", str(settings.tmp_bytes), "--tmpfs", "/tmp"]
        binds = [("--ro-bind", path) for path in read_only]
        if workspace is not None:
            binds.append(("--bind", workspace))
        for _, path in binds:
            passable(path)
        for option, path in binds:
            args += [option, str(path), str(path)]
        env_fd = _memfd("devart-env", env_file(env))
        args += ["--perms", "0444", "--ro-bind-data", str(env_fd), ENV_FILE]
        command = []
        if self.as_root:
            user = str(settings.user)
            command += [
                self._setpriv or "setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--",
            ]  # fmt: skip
        command += ["/bin/sh", "-c", _EXEC_WITH_ENV, "sandbox", str(cwd), *argv]
        # Options (with the environment's descriptor) in a memfd; bubblewrap wants the command itself
        # on its command line, which shows what the process list showed before: the spec's argv.
        args_fd = _memfd("devart-bwrap-args", b"".join(arg.encode() + b"\0" for arg in args))
        return Launch([self._bwrap or "bwrap", "--args", str(args_fd), "--", *command], {}, [args_fd, env_fd])
