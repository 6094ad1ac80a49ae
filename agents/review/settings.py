"""What a review runs with: the analysers, the chat model and the budget of one review."""

from __future__ import annotations

import sysconfig
from pathlib import Path

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def _venv_ruff() -> Path:
    return Path(sysconfig.get_path("scripts")) / "ruff"


class ReviewSettings(BaseSettings):
    """``DEVART_REVIEW_*`` variables; the model is asked only when ``OPENAI_API_KEY`` is set."""

    model_config = SettingsConfigDict(env_prefix="DEVART_REVIEW_", extra="ignore", populate_by_name=True)

    ruff: Path = Field(
        default_factory=_venv_ruff,
        description="ruff executable run on the changed Python files (default: the one next to this Python)",
    )
    shellcheck: str = Field(
        default="shellcheck", description="shellcheck run on the changed shell files when found on the sandbox's PATH"
    )
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("DEVART_REVIEW_OPENAI_API_KEY", "OPENAI_API_KEY"),
        description="chat model API key; unset: no model comments",
    )
    openai_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("DEVART_REVIEW_OPENAI_BASE_URL", "OPENAI_BASE_URL"),
        description="base URL of an OpenAI-compatible chat server; unset: OpenAI's",
    )
    model: str = Field(default="gpt-4o-mini", description="chat model asked for review comments")
    token_budget: int = Field(
        default=8000,
        ge=256,
        description="prompt tokens of one review (about 4 characters a token); a longer diff is truncated to fit",
    )
    max_tokens: int = Field(default=1024, ge=16, description="most tokens the model may answer with")
    max_comments: int = Field(default=30, ge=0, description="most model comments kept per review")
    model_timeout_s: float = Field(default=60.0, gt=0, description="seconds the model may take to answer")
