"""What a ``shell`` task takes and what it reports back."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from agents.sandbox import SandboxOverrides, SandboxResult, SecretRef, relative_inside

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _check_env_names(names: dict[str, object]) -> None:
    bad = sorted(name for name in names if not _ENV_NAME.match(name))
    if bad:
        raise ValueError(
            f"{bad!r} are not environment variable names (letters, digits, '_', not starting with a digit)"
        )


class ShellInput(BaseModel):
    """A command or script to run in a sandbox, optionally inside a checkout of a git repository."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    repo: str | None = Field(
        default=None, min_length=1, description="git URL or local path to check out first"
    )
    ref: str | None = Field(default=None, min_length=1, description="branch, tag or commit of repo")
    command: list[str] | None = Field(default=None, min_length=1, description="argv to execute (no shell)")
    script: str | None = Field(default=None, min_length=1, description="script run by /bin/sh -eu -c")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables")
    secret_env: dict[str, SecretRef] = Field(
        default_factory=dict, description="environment variables whose values come from the secret store"
    )
    workdir: str = Field(default=".", description="directory inside the checkout to run in")
    artifacts: list[str] = Field(
        default_factory=list, description="glob patterns of files to report, relative to the checkout"
    )
    timeout_s: float | None = Field(
        default=None,
        gt=0,
        description="wall-clock budget; at most the task's timeout (default: all time left)",
    )
    sandbox: SandboxOverrides | None = Field(
        default=None, description="per-task sandbox changes, checked against the agent's allow-list"
    )

    @field_validator("ref")
    @classmethod
    def _check_ref(cls, value: str | None) -> str | None:
        if value is not None and value.startswith("-"):
            raise ValueError("must not start with '-'")
        return value

    @field_validator("workdir")
    @classmethod
    def _check_workdir(cls, value: str) -> str:
        return relative_inside(value)

    @field_validator("artifacts")
    @classmethod
    def _check_artifacts(cls, value: list[str]) -> list[str]:
        return [relative_inside(pattern) for pattern in value]

    @field_validator("env", "secret_env")
    @classmethod
    def _check_names(cls, value: dict[str, object]) -> dict[str, object]:
        _check_env_names(value)
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> ShellInput:
        if (self.command is None) == (self.script is None):
            raise ValueError("exactly one of command and script must be set")
        if self.ref is not None and self.repo is None:
            raise ValueError("ref is set but repo is not: a ref needs a repository")
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"env and secret_env both set {both!r}")
        return self


class ShellResult(BaseModel):
    """How a command ended; the result of a successful task and the ``result`` of a failed one."""

    model_config = ConfigDict(frozen=True)

    exit_code: int | None = Field(
        description="exit status; None when killed by a signal, timed out or never started"
    )
    duration_s: float = Field(description="wall-clock seconds, checkout included")
    stdout_tail: str = Field(description="end of standard output")
    stderr_tail: str = Field(description="end of standard error")
    output_truncated: bool = Field(
        description="some output went over the cap and was not streamed to the log"
    )
    artifacts: list[str] = Field(description="files matching the artifact patterns, relative to the checkout")
    reason: str | None = Field(
        default=None, description="why it did not succeed (exit code, signal, deadline, checkout)"
    )

    @classmethod
    def from_sandbox(cls, result: SandboxResult) -> ShellResult:
        return cls(
            exit_code=result.exit_code,
            duration_s=result.duration_s,
            stdout_tail=result.stdout_tail,
            stderr_tail=result.stderr_tail,
            output_truncated=result.output_truncated,
            artifacts=result.artifacts,
            reason=result.reason,
        )
