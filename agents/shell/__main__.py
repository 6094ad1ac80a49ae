"""``python -m agents.shell --slots N``: run the shell agent against the broker until stopped."""

from __future__ import annotations

import argparse

from agents.sdk import run_agent
from agents.shell.agent import build_shell_agent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.shell", description=__doc__)
    parser.add_argument("--slots", type=int, default=2, help="tasks run at once (default 2)")
    parser.add_argument("--name", default="shell", help="agent name (default shell)")
    parser.add_argument(
        "--skills", default="shell,build,test", help="comma-separated skills (default shell,build,test)"
    )
    args = parser.parse_args()
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    skills = [skill.strip() for skill in args.skills.split(",") if skill.strip()]
    run_agent(build_shell_agent(slots=args.slots, skills=skills, name=args.name))


if __name__ == "__main__":
    main()
