"""Per-attempt start-up cost of the local sandbox: ``true`` run through ``LocalSandbox.run``.

    python -m bench.sandbox [--runs 200] [--warmup 10]

Each attempt is the whole of what a task pays before and after its command: a fresh workspace,
the attempt's cgroup, bubblewrap's namespaces and mounts, the drop to the sandbox user, the
command, the kill of the tree and the cleanup. The first line is the floor: ``true`` spawned
directly by asyncio. Only the public ``LocalSandbox`` API is used, so the same file measures an
older sandbox too (run it with that tree first on ``sys.path``).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from agents.sandbox import LocalSandbox, SandboxSettings, SandboxSpec


def _percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (f"p50 {statistics.median(ordered) * 1000:7.2f} ms  p99 {p99 * 1000:7.2f} ms  "
            f"max {ordered[-1] * 1000:7.2f} ms  (n={len(ordered)})")


async def _spawn(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec("true")
        await proc.wait()
        samples.append(time.perf_counter() - started)
    return samples


async def _attempts(sandbox: LocalSandbox, runs: int, warmup: int) -> list[float]:
    async def on_log(stream: str, line: str) -> None:
        pass

    samples = []
    for number in range(warmup + runs):
        spec = SandboxSpec(task_id="bench", attempt=number + 1, command=["true"], timeout_s=60)
        started = time.perf_counter()
        result = await sandbox.run(spec, on_log=on_log, cancel=asyncio.Event())
        elapsed = time.perf_counter() - started
        if result.outcome != "succeeded":
            raise SystemExit(f"attempt {number + 1} ended {result.outcome}: {result.reason} {result.stderr_tail}")
        if number >= warmup:
            samples.append(elapsed)
    return samples


async def _main(runs: int, warmup: int) -> None:
    import agents.sandbox.local as local

    print(f"local sandbox from {Path(local.__file__).parent.parent.parent}")
    print(f"plain spawn of true    {_percentiles(await _spawn(runs))}")
    with tempfile.TemporaryDirectory() as root:
        sandbox = LocalSandbox(SandboxSettings(root=Path(root) / "sandboxes"))
        print(f"LocalSandbox.run true  {_percentiles(await _attempts(sandbox, runs, warmup))}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200, help="measured attempts (default 200)")
    parser.add_argument("--warmup", type=int, default=10, help="attempts run first and not measured")
    args = parser.parse_args(argv)
    asyncio.run(_main(args.runs, args.warmup))
    return 0


if __name__ == "__main__":
    sys.exit(main())
