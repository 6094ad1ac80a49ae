"""``python -m agents.review --slots N``: run the code-review agent against the broker until stopped.

With the local sandbox it refuses to start, saying why, when this host cannot isolate attempts
(unless ``DEVART_SANDBOX_INSECURE=1``), as the shell agent does.
"""

from __future__ import annotations

import argparse

from agents.review.agent import build_review_agent
from agents.sandbox import SandboxSettings
from agents.sandbox.boundary import Boundary, SandboxUnavailable
from agents.sdk import run_agent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m agents.review", description=__doc__)
    parser.add_argument("--slots", type=int, default=1, help="reviews run at once (default 1)")
    parser.add_argument("--name", default="review", help="agent name (default review)")
    args = parser.parse_args()
    if args.slots < 1:
        parser.error("--slots must be at least 1")
    sandbox = SandboxSettings()
    if sandbox.kind == "local":
        try:
            Boundary.probe(sandbox).require()
        except SandboxUnavailable as exc:
            parser.exit(2, f"{parser.prog}: refusing to start: {exc}\n")
    run_agent(build_review_agent(slots=args.slots, name=args.name, sandbox=sandbox))


if __name__ == "__main__":
    main()
