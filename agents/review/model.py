"""Advisory review comments from a chat model, asked through the ``openai`` client.

The answer is untrusted input: it must match a strict JSON schema, a comment counts only on a line
the diff adds, at most ``max_comments`` are kept, and its verdict is recorded but decides nothing.
"""

from __future__ import annotations

import json

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.review.diff import Added
from agents.review.settings import ReviewSettings

CHARS_PER_TOKEN = 4
_SYSTEM = (
    "You review a code change given as a unified diff (-U0). Comment only on lines the diff adds, "
    "naming the file path and the line number in the new file. Report bugs, security problems and "
    "clear mistakes; no praise, no style nits. Answer with JSON matching the schema."
)
SCHEMA = {
    "name": "review",
    "strict": True,
    "schema": {
        "type": "object",
        "additionalProperties": False,
        "required": ["verdict", "comments"],
        "properties": {
            "verdict": {"type": "string", "enum": ["approve", "comment", "request_changes"]},
            "comments": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["path", "line", "message"],
                    "properties": {
                        "path": {"type": "string"},
                        "line": {"type": "integer"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    },
}


class ModelComment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    path: str = Field(min_length=1, max_length=1000)
    line: int
    message: str = Field(min_length=1, max_length=4000)


class ModelAnswer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: str
    comments: list[ModelComment]


class ModelFailed(Exception):
    """The model could not be asked or its answer was unusable; the review goes on without it."""


def fit(diff: str, settings: ReviewSettings) -> tuple[str, bool]:
    """The diff cut to the prompt's budget (what the system prompt leaves), and whether it was cut."""
    room = (settings.token_budget - len(_SYSTEM) // CHARS_PER_TOKEN - 64) * CHARS_PER_TOKEN
    if len(diff) <= room:
        return diff, False
    cut = diff[:room]
    return cut[: cut.rfind("\n") + 1] if "\n" in cut else cut, True


async def ask(diff: str, added: Added, settings: ReviewSettings) -> list[ModelComment]:
    """The model's comments that land on added lines, at most ``max_comments``."""
    from openai import AsyncOpenAI, OpenAIError  # only here: static review needs no openai package

    assert settings.openai_api_key is not None
    client = AsyncOpenAI(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=settings.model_timeout_s,
        max_retries=1,
    )
    try:
        async with client:
            completion = await client.chat.completions.create(
                model=settings.model,
                messages=[{"role": "system", "content": _SYSTEM}, {"role": "user", "content": diff}],
                response_format={"type": "json_schema", "json_schema": SCHEMA},  # type: ignore[typeddict-item]
                max_tokens=settings.max_tokens,
                temperature=0,
            )
    except OpenAIError as exc:
        raise ModelFailed(f"the model could not be asked: {type(exc).__name__}: {exc}"[:500]) from None
    choice = completion.choices[0] if completion.choices else None
    if choice is None or choice.message.content is None:
        raise ModelFailed("the model gave no answer")
    if choice.finish_reason == "length":
        raise ModelFailed(f"the model's answer went over max_tokens ({settings.max_tokens})")
    try:
        answer = ModelAnswer.model_validate(json.loads(choice.message.content))
    except (ValueError, ValidationError) as exc:
        raise ModelFailed(f"the model's answer does not match the schema: {str(exc)[:300]}") from None
    kept = [c for c in answer.comments if c.line in added.get(c.path.removeprefix("./"), {})]
    return kept[: settings.max_comments]
