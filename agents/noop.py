"""A no-op agent: handles task type ``noop`` by doing nothing. Used by benchmarks and tests.

``python -m agents.noop --slots 4 --skills a,b`` runs it until SIGTERM/SIGINT or a drain command.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from agents.sdk import Agent, TaskContext, run_agent, task_handler


class NoopInput(BaseModel):
    model_config = ConfigDict(extra="forbid")


@task_handler("noop", input=NoopInput)
async def noop(ctx: TaskContext, data: NoopInput) -> dict[str, str]:
    """Return an empty result at once."""
    return {}


def build_agent(slots: int = 1, skills: Sequence[str] = ("noop",)) -> Agent:
    return Agent("noop", skills=skills, slots=slots, handlers=[noop])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.noop", description=__doc__.splitlines()[0])
    parser.add_argument("--slots", type=int, default=1, help="tasks run at once (default 1)")
    parser.add_argument("--skills", default="noop", help="comma-separated skills (default 'noop')")
    args = parser.parse_args(argv)
    if args.slots < 1:
        parser.error("--slots must be >= 1")
    skills = [skill.strip() for skill in args.skills.split(",") if skill.strip()]
    run_agent(build_agent(slots=args.slots, skills=skills))


if __name__ == "__main__":
    main()
