"""The code-review agent: runs ``code-review`` tasks."""

from __future__ import annotations

from collections.abc import Sequence

from agents.review.handler import review_handler
from agents.review.settings import ReviewSettings
from agents.sandbox import SandboxSettings
from agents.sdk import Agent


def build_review_agent(
    slots: int = 1,
    skills: Sequence[str] = ("code-review",),
    name: str = "review",
    settings: ReviewSettings | None = None,
    sandbox: SandboxSettings | None = None,
) -> Agent:
    """An agent running ``code-review`` tasks; settings default to the environment."""
    return Agent(name, skills, slots, handlers=[review_handler(settings, sandbox)])
