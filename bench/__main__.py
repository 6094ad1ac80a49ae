"""Run every benchmark in ``bench/``, each in its own process, in a quick mode by default.

    python -m bench [--full] [name ...]

Quick mode shrinks each load so the whole suite finishes in a few minutes on a laptop; ``--full``
runs each benchmark with its own defaults. Names pick a subset (dispatch, detection, signals, rca, real, sandbox,
workflows, console, identity, proofs).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

QUICK_FLAGS: dict[str, list[str]] = {
    "dispatch": ["--tasks", "500", "--light-tasks", "100", "--warmup-tasks", "20"],
    "detection": ["--copies", "1", "--points", "50000"],
    "signals": ["--spans", "200000", "--objects", "50000", "--repeat", "1"],
    "rca": ["--spans", "20000"],
    "real": ["--quick"],
    "sandbox": ["--runs", "50"],
    "workflows": ["--rounds", "2"],
    "console": ["--tasks", "10000", "--requests", "100"],
    "identity": ["--requests", "100", "--rounds", "4"],
    "proofs": ["--rounds", "10"],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="each benchmark's default (larger) load")
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"benchmarks to run (default all: {', '.join(QUICK_FLAGS)})")
    args = parser.parse_args(argv)
    unknown = [name for name in args.names if name not in QUICK_FLAGS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(QUICK_FLAGS)}")
    failed = []
    for name in args.names or list(QUICK_FLAGS):
        command = [sys.executable, "-m", f"bench.{name}", *([] if args.full else QUICK_FLAGS[name])]
        print(f"\n# {name}: {' '.join(command[1:])}\n", flush=True)
        started = time.perf_counter()
        if subprocess.run(command, check=False).returncode != 0:
            failed.append(name)
        print(f"\n({name}: {time.perf_counter() - started:.1f} s)", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
