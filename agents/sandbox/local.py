"""The local sandbox: a spec runs as a process tree of its own on this machine, behind a boundary.

Each attempt gets a fresh workspace (``HOME``), an optional git checkout, a fixed environment plus
the spec's, its own namespaces, user and cgroup (see ``boundary`` and ``cgroups``), rlimits, and
capped output streamed line by line. Whatever of it still runs when a step ends is killed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import resource
import shutil
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Literal

from agents.sandbox.base import LogSink, SandboxResult, SandboxSpec, SecretRef
from agents.sandbox.boundary import Boundary, Launch, SandboxUnavailable
from agents.sandbox.cgroups import AttemptCgroup
from agents.sandbox.cgroups import Limits as CgroupLimits
from agents.sandbox.checkout import GLOBAL_CONFIG, plan_checkout
from agents.sandbox.settings import SandboxSettings, parse_cpu, parse_memory
from agents.sdk.telemetry import SandboxRun, sandbox_span

_log = logging.getLogger("devart.sandbox.local")

_READ_CHUNK = 64 * 1024
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""A task id, secret name or key usable as one path component."""
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

_Status = Literal["exited", "timed_out", "cancelled"]


class SandboxError(Exception):
    """The local sandbox cannot run this spec at all (bad spec, missing secret, missing isolation)."""


@dataclass(frozen=True)
class _Limits:
    cpu_seconds: int
    address_space: int
    file_size: int
    open_files: int
    processes: int
    memory: int
    cores: float

    def cgroup(self) -> CgroupLimits:
        return CgroupLimits(memory_bytes=self.memory, pids=self.processes, cpu_cores=self.cores)

    def apply(self) -> None:
        """Runs in the child between fork and exec."""
        resource.setrlimit(resource.RLIMIT_CPU, (self.cpu_seconds, self.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (self.address_space, self.address_space))
        resource.setrlimit(resource.RLIMIT_FSIZE, (self.file_size, self.file_size))
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))
        resource.setrlimit(resource.RLIMIT_NPROC, (self.processes, self.processes))


class _Capture:
    """One output stream: streamed line by line up to the cap, then only counted; its tail is kept."""

    def __init__(
        self, name: str, *, cap: int, tail_bytes: int, on_log: LogSink, broken: asyncio.Event
    ) -> None:
        self._name = name
        self._broken = broken
        self._cap = cap
        self._tail_bytes = tail_bytes
        self._on_log = on_log
        self._streamed = 0
        self._partial = bytearray()
        self._tail = bytearray()
        self.truncated = False
        self.error: Exception | None = None
        """What ``on_log`` raised; streaming stops and ``broken`` is set, so the run is stopped."""

    @property
    def tail(self) -> str:
        return self._tail.decode(errors="replace")

    async def feed(self, chunk: bytes) -> None:
        self._tail += chunk
        del self._tail[: max(0, len(self._tail) - self._tail_bytes)]
        if self.truncated or self.error is not None:
            return
        self._partial += chunk
        while (end := self._partial.find(b"\n")) >= 0:
            line = bytes(self._partial[: end + 1])
            del self._partial[: end + 1]
            await self._emit(line)
            if self.truncated or self.error is not None:
                return
        if len(self._partial) > self._cap - self._streamed:
            self._stop_streaming()

    async def finish(self) -> None:
        """Emit an unterminated last line."""
        if self._partial and not self.truncated and self.error is None:
            await self._emit(bytes(self._partial))
        self._partial.clear()

    async def _emit(self, line: bytes) -> None:
        if self._streamed + len(line) > self._cap:
            self._stop_streaming()
            return
        self._streamed += len(line)
        text = line.removesuffix(b"\n").removesuffix(b"\r").decode(errors="replace")
        try:
            await self._on_log(self._name, text)
        except Exception as exc:  # re-raised by the sandbox once the process tree is gone
            self.error = exc
            self._broken.set()

    def _stop_streaming(self) -> None:
        self.truncated = True
        self._partial.clear()


class _Output:
    """Both streams of one attempt; the checkout and the command share their caps."""

    def __init__(self, settings: SandboxSettings, on_log: LogSink) -> None:
        self.broken = asyncio.Event()
        self.stdout, self.stderr = (
            _Capture(
                name,
                cap=settings.output_cap_bytes,
                tail_bytes=settings.tail_bytes,
                on_log=on_log,
                broken=self.broken,
            )
            for name in ("stdout", "stderr")
        )

    @property
    def truncated(self) -> bool:
        return self.stdout.truncated or self.stderr.truncated

    def raise_sink_error(self) -> None:
        for capture in (self.stdout, self.stderr):
            if capture.error is not None:
                raise capture.error


async def _pump(stream: asyncio.StreamReader, capture: _Capture) -> None:
    while chunk := await stream.read(_READ_CHUNK):
        await capture.feed(chunk)
    await capture.finish()


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


class _Protocol(asyncio.subprocess.SubprocessStreamProtocol):
    """Knows when the process itself exited, which may be long before its pipes close: a child that
    escaped the process group (``setsid``) can hold them open."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=_READ_CHUNK, loop=loop)
        self.exited = asyncio.Event()

    def process_exited(self) -> None:
        super().process_exited()
        self.exited.set()


async def _wait_exit(exited: asyncio.Event, deadline: float, cancel: asyncio.Event, broken: asyncio.Event) -> _Status:
    waiters = {event: asyncio.ensure_future(event.wait()) for event in (exited, cancel, broken)}
    left = max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        done, _ = await asyncio.wait(waiters.values(), timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters.values():
            waiter.cancel()
    if waiters[exited] in done:
        return "exited"
    return "timed_out" if not done else "cancelled"


@dataclass(frozen=True)
class _Step:
    status: _Status
    returncode: int | None = None
    spawn_error: str | None = None


def _env_name(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", part).upper()


def relative_inside(value: str) -> str:
    """``value`` if it is a relative path that cannot climb out of its base; ``ValueError`` otherwise.

    Symlinks are checked later, against the files themselves.
    """
    path = PurePosixPath(value)
    if not value or path.is_absolute() or ".." in path.parts:
        raise ValueError(f"{value!r} must be a relative path inside the checkout (no leading '/', no '..')")
    return value


def _check_relative(value: str, field: str) -> None:
    try:
        relative_inside(value)
    except ValueError as exc:
        raise SandboxError(f"{field}: {exc}") from None


def _fresh_workspace(workspace: Path, owner: int | None) -> None:
    """An empty ``workspace`` with its ``tmp``, owned by the sandbox user ``owner`` when given."""
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.parent.mkdir(parents=True, exist_ok=True)
    (workspace / "tmp").mkdir(parents=True, mode=0o700)
    workspace.chmod(0o700)
    if owner is not None:
        for path in (workspace, workspace / "tmp"):
            os.chown(path, owner, owner)


def _resolve_workdir(checkout: Path, workdir: str) -> Path | None:
    cwd = (checkout / workdir).resolve()
    if not cwd.is_relative_to(checkout.resolve()):
        raise SandboxError(f"workdir {workdir!r} escapes the checkout through a symlink")
    return cwd if cwd.is_dir() else None


def _collect_artifacts(checkout: Path, patterns: Sequence[str]) -> list[str]:
    base = checkout.resolve()
    found: set[str] = set()
    for pattern in patterns:
        for path in checkout.glob(pattern):
            try:
                real = path.resolve(strict=True)
            except OSError:
                continue
            if real.is_file() and real.is_relative_to(base):
                found.add(path.relative_to(checkout).as_posix())
    return sorted(found)


def _last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


def _signal_name(code: int) -> str | None:
    try:
        return signal.Signals(code).name
    except ValueError:
        return None


class LocalSandbox:
    """Runs specs as local process trees behind the boundary of ``settings`` (see docs/sandbox.md)."""

    def __init__(self, settings: SandboxSettings) -> None:
        self._settings = settings
        self._root = settings.root.absolute()
        self._boundary: Boundary | None = None
        self._probe_lock = asyncio.Lock()

    async def boundary(self) -> Boundary:
        """What this host gives attempts, probed on first use and logged once; raises ``SandboxError``
        when the boundary is incomplete and ``insecure`` is not set."""
        async with self._probe_lock:
            if self._boundary is None:
                boundary = await asyncio.to_thread(Boundary.probe, self._settings)
                try:
                    boundary.require()
                except SandboxUnavailable as exc:
                    raise SandboxError(str(exc)) from None
                if boundary.problems():
                    _log.warning("DEVART_SANDBOX_INSECURE is set: attempts run with %s", boundary.describe())
                else:
                    _log.info("local sandbox: attempts run with %s", boundary.describe())
                self._boundary = boundary
        return self._boundary

    async def run(self, spec: SandboxSpec, *, on_log: LogSink, cancel: asyncio.Event) -> SandboxResult:
        """Check out, run and clean up one attempt under a ``sandbox.run`` span (the process gets
        that span as ``TRACEPARENT``); see the ``Sandbox`` protocol."""
        with sandbox_span("local", task_id=spec.task_id, attempt=spec.attempt, traceparent=spec.traceparent) as run:
            result = await self._run(spec.model_copy(update={"traceparent": run.traceparent}), on_log, cancel, run)
            run.finished(result.outcome, result.exit_code)
            return result

    async def _run(
        self, spec: SandboxSpec, on_log: LogSink, cancel: asyncio.Event, run: SandboxRun
    ) -> SandboxResult:
        argv = self._argv(spec)
        self._validate(spec)
        limits = self._limits(spec)
        secrets = {name: await self._secret(ref) for name, ref in spec.secret_env.items()}
        boundary = await self.boundary()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + spec.timeout_s
        name = f"{spec.task_id}.{spec.attempt}"
        workspace = self._root / name
        output = _Output(self._settings, on_log)

        def result(**fields: object) -> SandboxResult:
            return SandboxResult(
                duration_s=loop.time() - started,
                stdout_tail=output.stdout.tail,
                stderr_tail=output.stderr.tail,
                output_truncated=output.truncated,
                **fields,
            )

        cgroup = None
        if boundary.cgroups is not None:
            cgroup = await asyncio.to_thread(boundary.cgroups.create, f"devart-{name}", limits.cgroup())
        attempt = _Attempt(boundary, cgroup, limits, workspace, output, deadline, cancel)
        await asyncio.to_thread(_fresh_workspace, workspace, attempt.owner)
        try:
            checkout = workspace / "checkout"
            failure = await self._checkout(spec, attempt, checkout)
            if failure is not None:
                return result(**failure)
            cwd = await asyncio.to_thread(_resolve_workdir, checkout, spec.workdir)
            if cwd is None:
                return result(
                    outcome="failed", reason=f"workdir {spec.workdir!r} does not exist in the checkout"
                )
            run.launched()
            env = self._environment(spec, workspace, secrets)
            step = await self._run_step(attempt, argv, cwd=cwd, env=env, network=self._settings.network == "host")
            artifacts = await asyncio.to_thread(_collect_artifacts, checkout, spec.artifacts)
            return result(artifacts=artifacts, **self._outcome(step, spec, attempt))
        finally:
            if cgroup is not None:
                await asyncio.to_thread(cgroup.remove)
            if not self._settings.keep_workspaces:
                await asyncio.to_thread(shutil.rmtree, workspace, True)

    @staticmethod
    def _argv(spec: SandboxSpec) -> list[str]:
        if (spec.command is None) == (spec.script is None):
            raise SandboxError("exactly one of command and script must be set")
        if spec.command is not None:
            if not spec.command:
                raise SandboxError("command must not be empty")
            return list(spec.command)
        return ["/bin/sh", "-eu", "-c", spec.script or ""]

    @staticmethod
    def _validate(spec: SandboxSpec) -> None:
        if not _SAFE_NAME.match(spec.task_id):
            raise SandboxError(f"task_id {spec.task_id!r} may only hold letters, digits, '.', '_', '-'")
        _check_relative(spec.workdir, "workdir")
        for pattern in spec.artifacts:
            _check_relative(pattern, "artifacts")
        if spec.ref is not None and (spec.repo is None or spec.ref.startswith("-") or not spec.ref):
            raise SandboxError(f"ref {spec.ref!r} needs a repo and must not start with '-'")
        for field, names in (("env", spec.env), ("secret_env", spec.secret_env)):
            bad = sorted(name for name in names if not _ENV_NAME.match(name))
            if bad:
                raise SandboxError(f"{field}: {bad!r} are not environment variable names")

    def _limits(self, spec: SandboxSpec) -> _Limits:
        settings = self._settings
        try:
            cores = parse_cpu(spec.resources.cpu)
            memory = parse_memory(spec.resources.memory)
        except ValueError as exc:
            raise SandboxError(f"resources: {exc}") from None
        address_space = settings.address_space_bytes
        # Only an explicit request tightens the address space: the default 512Mi is a Kubernetes
        # resident-memory figure, and virtual memory runs far larger than resident memory.
        if "memory" in spec.resources.model_fields_set:
            address_space = min(address_space, memory)
        return _Limits(
            cpu_seconds=settings.cpu_seconds or math.ceil(spec.timeout_s * max(1.0, cores)) + 1,
            address_space=address_space,
            file_size=settings.file_size_bytes,
            open_files=settings.open_files,
            processes=settings.processes,
            memory=memory,
            cores=cores,
        )

    async def _secret(self, ref: SecretRef) -> str:
        variable = f"DEVART_SECRET_{_env_name(ref.name)}_{_env_name(ref.key)}"
        if variable in os.environ:
            return os.environ[variable]
        where = f"environment variable {variable}"
        secrets_dir = self._settings.secrets_dir
        if secrets_dir is not None and _SAFE_NAME.match(ref.name) and _SAFE_NAME.match(ref.key):
            path = secrets_dir / ref.name / ref.key
            where += f" or file {path}"
            try:
                return await asyncio.to_thread(path.read_text)
            except FileNotFoundError:
                pass
        raise SandboxError(f"secret {ref.name}/{ref.key} not found (looked for {where})")

    def _environment(self, spec: SandboxSpec, workspace: Path, secrets: dict[str, str]) -> dict[str, str]:
        env = dict(self._settings.base_env)
        env["HOME"] = str(workspace)
        env["TMPDIR"] = str(workspace / "tmp")
        if spec.traceparent:
            env["TRACEPARENT"] = spec.traceparent
        env.update(spec.env)
        env.update(secrets)
        return env

    async def _checkout(self, spec: SandboxSpec, attempt: _Attempt, checkout: Path) -> dict[str, object] | None:
        """Clone ``spec.repo`` at ``spec.ref`` inside the boundary (see ``checkout``); the failure fields, if any."""
        if spec.repo is None:
            await asyncio.to_thread(checkout.mkdir)
            if attempt.owner is not None:
                await asyncio.to_thread(os.chown, checkout, attempt.owner, attempt.owner)
            return None
        if shutil.which("git") is None:
            raise SandboxError("git is not installed on this agent, so repo cannot be checked out")
        plan = await asyncio.to_thread(
            plan_checkout, spec.repo, spec.ref, settings=self._settings, workspace=attempt.workspace,
            checkout=checkout,
        )  # fmt: skip
        if plan.refused is not None:
            return {"outcome": "failed", "reason": f"checkout failed: {plan.refused}"}
        if plan.global_config:
            await asyncio.to_thread((attempt.workspace / "tmp" / GLOBAL_CONFIG).write_text, plan.global_config)
        for git in plan.steps:
            step = await self._run_step(
                attempt, git.argv, cwd=git.cwd, env=dict(plan.env), network=git.network, read_only=plan.read_only
            )
            if step.status != "exited" or step.returncode != 0 and attempt.oom():
                return self._outcome(step, spec, attempt)
            if step.returncode != 0:
                detail = step.spawn_error or _last_line(attempt.output.stderr.tail)
                return {
                    "outcome": "failed",
                    "reason": f"checkout failed: {git.what} exited {step.returncode}: {detail}",
                }
        return None

    def _outcome(self, step: _Step, spec: SandboxSpec, attempt: _Attempt) -> dict[str, object]:
        if step.status == "timed_out":
            return {"outcome": "timed_out", "reason": f"deadline of {spec.timeout_s:g}s exceeded"}
        if step.status == "cancelled":
            return {"outcome": "cancelled", "reason": "cancelled"}
        code = step.returncode
        if step.spawn_error is not None:
            return {"outcome": "failed", "exit_code": code, "reason": step.spawn_error}
        if code == 0:
            return {"outcome": "succeeded", "exit_code": 0}
        if attempt.oom():
            return {"outcome": "failed", "reason": f"OOMKilled: memory limit of {attempt.limits.memory} bytes"}
        if code is not None and code < 0:
            return {"outcome": "failed", "reason": f"signal {signal.Signals(-code).name}"}
        # Inside the boundary bubblewrap's init reports death by signal N as exit code 128 + N.
        if code is not None and attempt.boundary.namespaces and code > 128 and (name := _signal_name(code - 128)):
            return {"outcome": "failed", "reason": f"signal {name}"}
        return {"outcome": "failed", "exit_code": code, "reason": f"exit code {code}"}

    async def _run_step(
        self,
        attempt: _Attempt,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        network: bool,
        read_only: Sequence[Path] = (),
    ) -> _Step:
        """Run one process tree to its end, its deadline or ``cancel``; nothing of it survives."""
        if attempt.cancel.is_set():
            return _Step("cancelled")
        loop = asyncio.get_running_loop()
        if attempt.deadline <= loop.time():
            return _Step("timed_out")
        boundary = attempt.boundary
        if boundary.namespaces:
            launch = boundary.launch(
                argv, cwd=cwd, workspace=attempt.workspace, env=env, network=network, read_only=read_only
            )
            exec_cwd: Path = Path("/")
        else:
            launch, exec_cwd = Launch(argv, env), cwd
        try:
            transport, protocol = await loop.subprocess_exec(
                lambda: _Protocol(loop),
                *launch.argv,
                cwd=exec_cwd,
                env=launch.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                pass_fds=launch.pass_fds,
                preexec_fn=attempt.enter,
            )
        except OSError as exc:
            return _Step("exited", 127, f"cannot start {argv[0]!r}: {exc.strerror}")
        finally:
            launch.close()
        proc = asyncio.subprocess.Process(transport, protocol, loop)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.ensure_future(_pump(proc.stdout, attempt.output.stdout)),
            asyncio.ensure_future(_pump(proc.stderr, attempt.output.stderr)),
        ]
        try:
            status = await _wait_exit(protocol.exited, attempt.deadline, attempt.cancel, attempt.output.broken)
            if status != "exited":
                await self._terminate(proc, protocol.exited, attempt)
        finally:
            # Whatever the outcome, no process of the step outlives it.
            await attempt.kill(proc.pid)
            await protocol.exited.wait()
            await self._drain(pumps, contained=attempt.contained)
        attempt.output.raise_sink_error()
        return _Step(status, transport.get_returncode())

    async def _terminate(self, proc: asyncio.subprocess.Process, exited: asyncio.Event, attempt: _Attempt) -> None:
        attempt.terminate(proc.pid)
        try:
            await asyncio.wait_for(exited.wait(), self._settings.kill_grace_s)
        except TimeoutError:
            pass

    async def _drain(self, pumps: list[asyncio.Future[None]], *, contained: bool) -> None:
        """Read the pipes to their end. Once a contained tree is killed nothing can write to them, so
        everything buffered is read however slow the log sink; without containment a process that
        escaped (``setsid``) may hold a pipe forever: stop reading after the grace."""
        timeout = None if contained else max(self._settings.kill_grace_s, 0.1)
        _, pending = await asyncio.wait(pumps, timeout=timeout)
        for pump in pending:
            pump.cancel()
        outcomes = await asyncio.gather(*pumps, return_exceptions=True)
        for outcome in outcomes:
            if isinstance(outcome, Exception):
                raise outcome


@dataclass
class _Attempt:
    """One attempt's boundary, cgroup, limits and output, shared by its checkout and its command."""

    boundary: Boundary
    cgroup: AttemptCgroup | None
    limits: _Limits
    workspace: Path
    output: _Output
    deadline: float
    cancel: asyncio.Event

    @property
    def owner(self) -> int | None:
        """The uid the workspace must belong to: the sandbox user when a root agent drops to it."""
        return self.boundary.user if self.boundary.namespaces and self.boundary.as_root else None

    @property
    def contained(self) -> bool:
        """Whether killing the step reaches every process it started (its cgroup or PID namespace)."""
        return self.cgroup is not None or self.boundary.namespaces

    def enter(self) -> None:
        """Runs in the child between fork and exec: join the cgroup, then set the rlimits."""
        if self.cgroup is not None:
            self.cgroup.join()
        self.limits.apply()

    def oom(self) -> bool:
        return self.cgroup is not None and self.cgroup.oom_killed()

    def terminate(self, pid: int) -> None:
        """SIGTERM the attempt's own processes (not bubblewrap's, whose death would SIGKILL them)."""
        if self.cgroup is not None and self.boundary.namespaces:
            self.cgroup.signal(signal.SIGTERM, sparing=frozenset({pid, *_children(pid)}))
        else:
            _signal_group(pid, signal.SIGTERM)

    async def kill(self, pid: int) -> None:
        _signal_group(pid, signal.SIGKILL)
        if self.cgroup is not None:
            await asyncio.to_thread(self.cgroup.kill)


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        return []
