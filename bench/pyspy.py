"""Where a running process spends its CPU: py-spy samples, folded into per-task costs.

:func:`profile_processes` attaches ``py-spy record`` (non-blocking, idle frames excluded, so a
sample is CPU time or a wait for the GIL) to processes for the duration of a ``with`` block.
:class:`Profile` turns the folded stacks into tables: inclusive time of our functions and of the
statements inside them, and self time by package, each in milliseconds per task.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

_REPO = str(Path(__file__).resolve().parent.parent) + "/"
_OURS = ("control_plane/", "agents/", "aiops/")
_FRAMEWORK_ENTRY = ("fastapi/", "starlette/", "uvicorn/")

# A stack whose innermost frames are one of these waits for work: py-spy's idle detection does not
# see through --nonblocking, so they are set aside here.
_IDLE = {("stdlib/selectors.py", "EpollSelector.select"), ("stdlib/threading.py", "Condition.wait")}

# Frames at the root of every stack of a process, which say nothing about where the time goes: by
# function name, and every frame of the event-loop runner both processes share (agents/sdk/eventloop.py,
# which would otherwise make all the control plane's unclassified time "agent: runtime (other)").
_ENTRY_POINTS = frozenset({"<module>", "main", "run_agent", "_serve", "_run_serve"})
_ENTRY_FILES = ("agents/sdk/eventloop.py",)

# Where a sample's cost belongs. A rule is (label, path prefix, function or None for any).
# Components: the first rule (most specific first) matching any frame of the stack, so a statement
# of create_task costs create_task whatever asyncpg does beneath it.
_COMPONENTS: tuple[tuple[str, str, str | None], ...] = (
    ("API: token check", "control_plane/auth.py", None),
    ("API: audit insert", "control_plane/audit.py", None),
    ("submit: outbox enqueue", "control_plane/outbox.py", "enqueue"),
    ("submit: choose_pool + queue_attempt + transitions", "control_plane/dispatch.py", None),
    ("submit: tasks.create_task / get_task SQL", "control_plane/tasks.py", None),
    ("submit: input schema validation", "control_plane/schemas.py", None),
    ("outbox relay", "control_plane/outbox.py", None),
    ("events consumer", "control_plane/events.py", None),
    ("API: sync dependencies hopping to a thread", "anyio/", None),
    ("API: route code (validation, response model)", "control_plane/api/", "create_task"),
    ("telemetry: span export", "control_plane/telemetry.py", "SpanStoreExporter.export"),
    ("telemetry: span export", "aiops/", None),
    ("agent: publish event + wait for confirm", "agents/sdk/runtime.py", "AgentRuntime._publish"),
    ("agent: ack", "agents/sdk/runtime.py", "_settle"),
    ("agent: run handler", "agents/sdk/runtime.py", "execute_attempt"),
    ("agent: take delivery", "agents/sdk/runtime.py", "AgentRuntime._take"),
)
# Layers: for the rest, the innermost frame matching a rule, because these wrap everything below them.
_LAYERS: tuple[tuple[str, str, str | None], ...] = (
    ("API: FastAPI built-in telemetry", "fastapi/telemetry/", None),
    ("telemetry: OpenTelemetry SDK", "opentelemetry/", None),
    ("API: request middleware (telemetry, body limit)", "control_plane/", "__call__"),
    ("API: FastAPI (routing, dependencies, body, serialization)", "fastapi/", None),
    ("API: HTTP server (uvicorn, starlette)", "starlette/", None),
    ("API: HTTP server (uvicorn, starlette)", "uvicorn/", None),
    ("API: HTTP server (uvicorn, starlette)", "httptools/", None),
    ("asyncpg protocol", "asyncpg/", None),
    ("AMQP client (aiormq, pamqp, aio-pika)", "aiormq/", None),
    ("AMQP client (aiormq, pamqp, aio-pika)", "pamqp/", None),
    ("AMQP client (aiormq, pamqp, aio-pika)", "aio_pika/", None),
    ("logging", "stdlib/logging/", None),
    ("telemetry: OpenTelemetry SDK", "agents/sdk/telemetry.py", None),  # the sampler and propagation, in both processes
    ("agent: runtime (other)", "agents/sdk/", None),
    # uvloop is C, and so are the protocol callbacks it calls (asyncpg's, httptools'): their work
    # shows as the runner's frame alone
    ("event loop (uvloop and the C protocol code it calls)", "stdlib/asyncio/runners.py", "Runner.run"),
)


def _matches(frame: tuple[str, str, str], prefix: str, function: str | None) -> bool:
    name, path, _ = frame
    return name not in _ENTRY_POINTS and not path.startswith(_ENTRY_FILES) and path.startswith(prefix) and (
        function is None or name == function or name.endswith("." + function)
    )


def _short(path: str) -> str:
    """A path relative to the repository, site-packages or the standard library."""
    for marker in ("site-packages/", "/lib/python3.11/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            return rest if marker == "site-packages/" else "stdlib/" + rest
    return path.removeprefix(_REPO)


def _parse_frame(frame: str) -> tuple[str, str, str]:
    """``func (path:line)`` -> (function, short path, line)."""
    function, _, where = frame.rpartition(" (")
    path, _, line = where.rstrip(")").rpartition(":")
    return function, _short(path), line


def _idle(frames: list[tuple[str, str, str]]) -> bool:
    return any((path, function) in _IDLE for function, path, _ in frames[-2:])


def _category(frames: list[tuple[str, str, str]]) -> str:
    for label, prefix, function in _COMPONENTS:
        if any(_matches(frame, prefix, function) for frame in frames):
            return label
    for frame in reversed(frames):
        for label, prefix, function in _LAYERS:
            if _matches(frame, prefix, function):
                return label
    return "event loop, stdlib and other"


@dataclass
class ProcessSamples:
    """Folded stacks of one process."""

    name: str
    stacks: list[tuple[list[tuple[str, str, str]], int]] = field(default_factory=list)

    @classmethod
    def load(cls, name: str, folded: Path) -> ProcessSamples:
        samples = cls(name)
        for raw in folded.read_text(errors="replace").splitlines():
            stack, _, count = raw.rpartition(" ")
            if stack and count.isdigit():
                samples.stacks.append(([_parse_frame(f) for f in stack.split(";")], int(count)))
        return samples

    @property
    def total(self) -> int:
        """Samples spent working (idle waits excluded)."""
        return sum(count for frames, count in self.stacks if not _idle(frames))

    @property
    def idle(self) -> int:
        return sum(count for frames, count in self.stacks if _idle(frames))

    def by_category(self) -> Counter[str]:
        """Working samples by the component they belong to (see ``_COMPONENTS`` and ``_LAYERS``)."""
        found: Counter[str] = Counter()
        for frames, count in self.stacks:
            if not _idle(frames):
                found[_category(frames)] += count
        return found

    def inclusive(self, *, by_line: bool) -> Counter[str]:
        """Samples in which a function (or a statement) of our code is on the stack, once per sample."""
        seen: Counter[str] = Counter()
        for frames, count in self.stacks:
            if _idle(frames):
                continue
            keys = set()
            for function, path, line in frames:
                if path.startswith(_OURS) or (not by_line and path.startswith(_FRAMEWORK_ENTRY)
                                              and function in ("run_asgi", "__call__", "app")):
                    keys.add(f"{path}:{line} {function}" if by_line else f"{path} {function}")
            for key in keys:
                seen[key] += count
        return seen

    def self_by_package(self) -> Counter[str]:
        """Samples by the package of the innermost frame (where the CPU actually burns)."""
        packages: Counter[str] = Counter()
        for frames, count in self.stacks:
            if _idle(frames):
                continue
            path = frames[-1][1] if frames else "?"
            top = path.split("/")[0] if not path.startswith("stdlib/") else "/".join(path.split("/")[:2])
            packages[top.removesuffix(".py")] += count
        return packages


@dataclass
class Profile:
    """Samples of several processes over one load of ``tasks`` tasks at ``rate`` samples per second.

    A working sample is a thread on the CPU, runnable but waiting for one, or waiting for the GIL,
    so on a busy machine samples overstate CPU time. ``cpu_ms`` (process name -> measured CPU
    milliseconds per task, from ``/proc``) rescales each process's shares to what it really used.
    """

    rate: int
    tasks: int
    processes: list[ProcessSamples] = field(default_factory=list)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    def _sampled_ms(self, samples: int) -> float:
        return samples / self.rate * 1000.0 / self.tasks

    def report(self, top: int = 20) -> str:
        lines = [f"py-spy profile at {self.rate} Hz over {self.tasks} tasks: CPU ms per task and share of the "
                 "process's working samples"]
        for process in self.processes:
            total = process.total or 1
            per_task = self.cpu_ms.get(process.name, self._sampled_ms(process.total))
            lines.append("")
            lines.append(f"== {process.name}: {per_task:.3f} ms CPU per task "
                         f"({process.total} working samples = {self._sampled_ms(process.total):.3f} ms per task "
                         f"sampled; {process.idle} idle samples set aside)")
            tables = (("by component", process.by_category()),
                      ("inclusive, by function", process.inclusive(by_line=False)),
                      ("inclusive, by statement", process.inclusive(by_line=True)),
                      ("self time, by package", process.self_by_package()))
            for title, counter in tables:
                lines.append(f"-- {title}")
                for key, count in counter.most_common(top):
                    lines.append(f"  {per_task * count / total:7.3f} ms {100.0 * count / total:5.1f}%  {key}")
        return "\n".join(lines)


def _py_spy() -> str:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(found).exists():
        raise RuntimeError("profiling needs py-spy: pip install py-spy")
    return found


@asynccontextmanager
async def profile_processes(
    pids: dict[str, int], out_dir: Path | None, *, rate: int, tasks: int
) -> AsyncIterator[Profile | None]:
    """Sample ``pids`` (name -> pid) during the block; yields None when ``out_dir`` is None.

    The returned profile is filled in when the block exits (py-spy writes its data on SIGINT).
    """
    if out_dir is None:
        yield None
        return
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    exe = _py_spy()
    profile = Profile(rate=rate, tasks=tasks)
    spies = []
    for name, pid in pids.items():
        folded = out_dir / f"{name.replace(' ', '_')}.folded"
        argv = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw", "--nonblocking",
                "--full-filenames", "-o", str(folded)]
        spy = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL,
                                                   stderr=asyncio.subprocess.DEVNULL)
        spies.append((name, folded, spy))
    try:
        yield profile
    finally:
        for _, _, spy in spies:
            spy.send_signal(signal.SIGINT)
        for name, folded, spy in spies:
            await asyncio.wait_for(spy.wait(), 30)
            if folded.exists():
                profile.processes.append(await asyncio.to_thread(ProcessSamples.load, name, folded))
