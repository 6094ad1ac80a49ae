"""The workflow snippet of docs/review-agent.md is a valid workflow definition."""

from __future__ import annotations

from pathlib import Path

from control_plane.workflows.definition import load_document, parse_definition

DOC = Path(__file__).parents[3] / "docs" / "review-agent.md"


def test_the_documented_review_steps_parse() -> None:
    snippet = DOC.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    text = (
        "name: reviewed\ninputs:\n  repo: {type: string}\nsteps:\n"
        "  build:\n    input: {script: git rev-parse HEAD}\n    outputs: {commit: \"$.stdout_tail\"}\n" + snippet
    )
    definition = parse_definition(load_document(text))
    review = next(step for step in definition.steps.values() if step.name == "review")
    assert (review.type, review.requires) == ("code-review", ("code-review",))
