"""``python -m agents.shell --slots N``: run the shell agent against the broker until stopped.

With the local sandbox the agent first checks that this host can isolate attempts (namespaces via
bubblewrap, a writable cgroup) and refuses to start, saying why, unless ``DEVART_SANDBOX_INSECURE=1``.
"""

from __future__ import annotations

import argparse
import sys

from agents.sandbox import SandboxSettings
from agents.sandbox.boundary import Boundary, SandboxUnavailable
from agents.sdk import run_agent
from agents.shell.agent import build_shell_agent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.shell", description=__doc__)
    parser.add_argument("--slots", type=int, default=2, help="tasks run at once (default 2)")
    parser.add_argument("--name", default="shell", help="agent name (default shell)")
    parser.add_argument(
        "--skills", default="shell,build,test", help="comma-separated skills (default shell,build,test)"
    )
    parser.add_argument("--print-pool", action="store_true",
                        help="print the id of the pool these skills make (for `devart token create --pool`) and exit")
    args = parser.parse_args()
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    skills = [skill.strip() for skill in args.skills.split(",") if skill.strip()]
    if args.print_pool:
        print(build_shell_agent(skills=skills).pool_id)
        return
    settings = SandboxSettings()
    if settings.kind == "local":
        boundary = Boundary.probe(settings)
        try:
            boundary.require()
        except SandboxUnavailable as exc:
            parser.exit(2, f"{parser.prog}: refusing to start: {exc}\n")
        level = "WARNING: DEVART_SANDBOX_INSECURE is set, " if boundary.problems() else ""
        print(f"{parser.prog}: {level}local sandbox: attempts run with {boundary.describe()}", file=sys.stderr)
    run_agent(build_shell_agent(slots=args.slots, skills=skills, name=args.name, settings=settings))


if __name__ == "__main__":
    main()
