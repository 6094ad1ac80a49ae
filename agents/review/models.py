"""What a ``code-review`` task takes and what it reports back."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_REVISION = re.compile(r"^[A-Za-z0-9_./@{}~^:-]+$")


def _revision(value: str) -> str:
    if value.startswith("-"):
        raise ValueError("must not start with '-'")
    if not _REVISION.match(value):
        raise ValueError("must be a git revision (letters, digits and ._/@{}~^:- only)")
    return value


class ReviewInput(BaseModel):
    """The change to review: ``repo`` at ``ref`` against ``base``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str = Field(min_length=1, description="git URL or local path to check out")
    ref: str | None = Field(default=None, min_length=1, description="branch, tag or commit under review")
    base: str = Field(
        default="origin/main", min_length=1, description="what the change is compared with (merge base with ref)"
    )

    _check_refs = field_validator("ref", "base")(lambda value: value if value is None else _revision(value))


Level = Literal["notice", "warning", "failure"]


class Finding(BaseModel):
    """One finding, in the shape the GitHub reporter reads from a step's ``findings`` output."""

    model_config = ConfigDict(frozen=True)

    path: str
    line: int = Field(ge=1)
    message: str
    rule: str
    level: Level
    source: Literal["ruff", "shellcheck", "secrets", "model"]


class ReviewResult(BaseModel):
    model_config = ConfigDict(frozen=True)

    conclusion: Literal["success", "failure"] = Field(
        description="failure when static analysis found something on an added line; model comments never count"
    )
    findings: list[Finding] = Field(description="static findings, then the model's advisory comments")
    files: int = Field(description="files the change adds or modifies")
    model: str | None = Field(default=None, description="the chat model asked, when one was")
    model_error: str | None = Field(default=None, description="why the model's answer was not used")
    diff_truncated: bool = Field(default=False, description="the model saw only the start of the diff")
