"""The local sandbox: a spec runs as a process tree of its own on this machine.

Each attempt gets a fresh workspace (``HOME``), an optional git checkout, a scrubbed environment,
rlimits, its own session and process group (signalled as a whole on deadline, cancel and exit),
a fresh network namespace when available, and capped output streamed line by line.
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
from agents.sandbox.settings import SandboxSettings, parse_cpu, parse_memory
from agents.sdk.telemetry import SandboxRun, sandbox_span

_log = logging.getLogger("devart.sandbox.local")

_READ_CHUNK = 64 * 1024
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""A task id, secret name or key usable as one path component."""

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


async def _wait_exit(
    proc: asyncio.subprocess.Process, deadline: float, cancel: asyncio.Event, broken: asyncio.Event
) -> _Status:
    exited = asyncio.ensure_future(proc.wait())
    stop = [asyncio.ensure_future(event.wait()) for event in (cancel, broken)]
    left = max(0.0, deadline - asyncio.get_running_loop().time())
    try:
        done, _ = await asyncio.wait({exited, *stop}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in (exited, *stop):
            waiter.cancel()
    if exited in done:
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


def _fresh_workspace(workspace: Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)
    (workspace / "tmp").mkdir(parents=True)


def _absolute_if_local(repo: str) -> str:
    return str(Path(repo).absolute()) if Path(repo).exists() else repo


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


class LocalSandbox:
    """Runs specs as local process trees under the limits of ``settings`` (see docs/sandbox.md)."""

    def __init__(self, settings: SandboxSettings) -> None:
        self._settings = settings
        self._root = settings.root.absolute()
        self._netns: bool | None = None
        self._probe_lock = asyncio.Lock()

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
        isolation = await self._isolation_prefix()
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = started + spec.timeout_s
        workspace = self._root / f"{spec.task_id}.{spec.attempt}"
        output = _Output(self._settings, on_log)

        def result(**fields: object) -> SandboxResult:
            return SandboxResult(
                duration_s=loop.time() - started,
                stdout_tail=output.stdout.tail,
                stderr_tail=output.stderr.tail,
                output_truncated=output.truncated,
                **fields,
            )

        await asyncio.to_thread(_fresh_workspace, workspace)
        try:
            checkout = workspace / "checkout"
            env = self._environment(spec, workspace, secrets)
            failure = await self._checkout(spec, checkout, env, limits, output, deadline, cancel)
            if failure is not None:
                return result(**failure)
            cwd = await asyncio.to_thread(_resolve_workdir, checkout, spec.workdir)
            if cwd is None:
                return result(
                    outcome="failed", reason=f"workdir {spec.workdir!r} does not exist in the checkout"
                )
            run.launched()
            step = await self._run_step(
                [*isolation, *argv],
                cwd=cwd,
                env=env,
                limits=limits,
                output=output,
                deadline=deadline,
                cancel=cancel,
            )
            artifacts = await asyncio.to_thread(_collect_artifacts, checkout, spec.artifacts)
            return result(artifacts=artifacts, **self._outcome(step, spec))
        finally:
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

    async def _isolation_prefix(self) -> list[str]:
        if self._settings.network == "host":
            return []
        async with self._probe_lock:
            if self._netns is None:
                self._netns = await self._probe_netns()
                if not self._netns and not self._settings.require_network_isolation:
                    _log.warning(
                        "network 'none' requested but 'unshare --net' does not work here: commands keep host network"
                    )
        if not self._netns:
            if self._settings.require_network_isolation:
                raise SandboxError(
                    "network isolation required but 'unshare --net' does not work on this machine"
                )
            return []
        return ["unshare", "--net", "--"]

    @staticmethod
    async def _probe_netns() -> bool:
        unshare = shutil.which("unshare")
        if unshare is None:
            return False
        try:
            proc = await asyncio.create_subprocess_exec(
                unshare, "--net", "true", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        except OSError:
            return False
        return await proc.wait() == 0

    def _environment(self, spec: SandboxSpec, workspace: Path, secrets: dict[str, str]) -> dict[str, str]:
        env = {name: os.environ[name] for name in self._settings.env_allow if name in os.environ}
        env["HOME"] = str(workspace)
        env["TMPDIR"] = str(workspace / "tmp")
        if spec.traceparent:
            env["TRACEPARENT"] = spec.traceparent
        env.update(spec.env)
        env.update(secrets)
        return env

    async def _checkout(
        self,
        spec: SandboxSpec,
        checkout: Path,
        env: dict[str, str],
        limits: _Limits,
        output: _Output,
        deadline: float,
        cancel: asyncio.Event,
    ) -> dict[str, object] | None:
        """Clone ``spec.repo`` at ``spec.ref`` (with host network: it must fetch); the failure fields, if any."""
        if spec.repo is None:
            await asyncio.to_thread(checkout.mkdir)
            return None
        git = shutil.which("git")
        if git is None:
            raise SandboxError("git is not installed on this agent, so repo cannot be checked out")
        repo = await asyncio.to_thread(_absolute_if_local, spec.repo)
        git_env = {**env, "GIT_TERMINAL_PROMPT": "0"}
        steps = [("git clone", [git, "clone", "--quiet", "--", repo, str(checkout)], checkout.parent)]
        if spec.ref is not None:
            steps.append(("git checkout", [git, "checkout", "--quiet", spec.ref, "--"], checkout))
        for what, argv, cwd in steps:
            step = await self._run_step(
                argv, cwd=cwd, env=git_env, limits=limits, output=output, deadline=deadline, cancel=cancel
            )
            if step.status != "exited":
                return self._outcome(step, spec)
            if step.returncode != 0:
                detail = step.spawn_error or _last_line(output.stderr.tail)
                return {
                    "outcome": "failed",
                    "reason": f"checkout failed: {what} exited {step.returncode}: {detail}",
                }
        return None

    def _outcome(self, step: _Step, spec: SandboxSpec) -> dict[str, object]:
        if step.status == "timed_out":
            return {"outcome": "timed_out", "reason": f"deadline of {spec.timeout_s:g}s exceeded"}
        if step.status == "cancelled":
            return {"outcome": "cancelled", "reason": "cancelled"}
        code = step.returncode
        if step.spawn_error is not None:
            return {"outcome": "failed", "exit_code": code, "reason": step.spawn_error}
        if code is not None and code < 0:
            return {"outcome": "failed", "reason": f"signal {signal.Signals(-code).name}"}
        if code != 0:
            return {"outcome": "failed", "exit_code": code, "reason": f"exit code {code}"}
        return {"outcome": "succeeded", "exit_code": 0}

    async def _run_step(
        self,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        limits: _Limits,
        output: _Output,
        deadline: float,
        cancel: asyncio.Event,
    ) -> _Step:
        """Run one process tree to its end, its deadline or ``cancel``; nothing of it survives."""
        if cancel.is_set():
            return _Step("cancelled")
        loop = asyncio.get_running_loop()
        if deadline <= loop.time():
            return _Step("timed_out")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                preexec_fn=limits.apply,
            )
        except OSError as exc:
            return _Step("exited", 127, f"cannot start {argv[0]!r}: {exc.strerror}")
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.ensure_future(_pump(proc.stdout, output.stdout)),
            asyncio.ensure_future(_pump(proc.stderr, output.stderr)),
        ]
        try:
            status = await _wait_exit(proc, deadline, cancel, output.broken)
            if status != "exited":
                await self._terminate(proc)
        finally:
            # Whatever the outcome, no process of the group outlives the step.
            _signal_group(proc.pid, signal.SIGKILL)
            if proc.returncode is None:
                await proc.wait()
            await self._drain(pumps)
        output.raise_sink_error()
        return _Step(status, proc.returncode)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self._settings.kill_grace_s)
        except TimeoutError:
            pass

    async def _drain(self, pumps: list[asyncio.Future[None]]) -> None:
        # A process that left the group (setsid) may still hold a pipe: stop reading after the grace.
        _, pending = await asyncio.wait(pumps, timeout=max(self._settings.kill_grace_s, 0.1))
        for pump in pending:
            pump.cancel()
        for pump in pumps:
            if not pump.cancelled() and pump.exception() is not None:
                raise pump.exception()  # type: ignore[misc]
