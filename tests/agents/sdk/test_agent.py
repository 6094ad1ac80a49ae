"""Agent definitions are validated when built."""

from __future__ import annotations

import os
import re

import pytest

from agents.sdk import Agent, pool_id
from tests.agents.sdk import sample_agent


def test_types_pool_and_id() -> None:
    agent = Agent("builder", skills=["python", "docker", "python"], slots=2, handlers=sample_agent.HANDLERS)
    assert agent.types == ("echo", "fail", "sleep", "wait-cancel")
    assert agent.skills == ("docker", "python")
    assert agent.pool_id == pool_id(["python", "docker"], ["sleep", "echo", "fail", "wait-cancel"])
    assert re.fullmatch(rf"builder-[^.]+-{os.getpid()}-[0-9a-f]{{4}}", agent.agent_id)
    other = Agent("builder", skills=["python", "docker"], slots=2, handlers=sample_agent.HANDLERS)
    assert other.agent_id != agent.agent_id and other.pool_id == agent.pool_id
    assert agent.handler_for("echo") is sample_agent.echo and agent.handler_for("paint") is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": ""}, ValueError, "name"),
        ({"name": "a b"}, ValueError, "name"),
        ({"skills": "python"}, TypeError, "skills"),
        ({"skills": ["ok", "not ok"]}, ValueError, "skills"),
        ({"slots": 0}, ValueError, "slots"),
        ({"slots": True}, ValueError, "slots"),
        ({"handlers": []}, ValueError, "handlers"),
        (
            {"handlers": [sample_agent.echo, sample_agent.echo]},
            ValueError,
            "two handlers for task type 'echo'",
        ),
        ({"handlers": [print]}, TypeError, "handlers"),
    ],
)
def test_bad_definitions_are_refused(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    args = {"name": "a", "skills": ["s"], "slots": 1, "handlers": [sample_agent.echo], **kwargs}
    with pytest.raises(error, match=match):
        Agent(**args)
