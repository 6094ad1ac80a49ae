"""Typed settings of the GitHub integration (``DEVART_GITHUB_``) and its configuration file: which
events start which workflows, what is ignored, and which repositories opt in to auto-merge."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from control_plane.workflows.expressions import ExpressionError, template

PULL_REQUEST_ACTIONS = ["opened", "synchronize", "reopened", "ready_for_review"]


class Trigger(BaseModel):
    """An event (and actions, branches) that starts a workflow run, or re-runs one."""

    model_config = ConfigDict(extra="forbid")

    event: Literal["pull_request", "push", "check_run"] = Field(description="the X-GitHub-Event it reacts to")
    actions: list[str] = Field(default_factory=list, description="the payload's action; empty = any action")
    branches: list[str] = Field(
        default_factory=list,
        description="glob patterns of the branch: the pushed branch, or a pull request's base; empty = any",
    )
    workflow: str | None = Field(default=None, description="the workflow to run (not with rerun)")
    inputs: dict[str, Any] = Field(
        default_factory=dict,
        description="the run's inputs; strings may hold ${{ event.<path> }} expressions over the payload",
    )
    rerun: bool = Field(
        default=False, description="check_run only: run the check run's workflow run again (failed steps only "
        "when it failed or was cancelled, afresh otherwise)",
    )

    @model_validator(mode="after")
    def _check(self) -> Trigger:
        if self.rerun == (self.workflow is not None):
            raise ValueError("a trigger names a workflow or sets rerun: true, exactly one of them")
        if self.rerun and self.event != "check_run":
            raise ValueError("rerun: true is for check_run events only")
        for key, value in self.inputs.items():
            if isinstance(value, str):
                try:
                    template(value)
                except ExpressionError as exc:
                    raise ValueError(f"inputs.{key}: bad expression: {exc}") from None
        return self

    def matches(self, event: str, action: str | None, branch: str | None) -> bool:
        if event != self.event or (self.actions and action not in self.actions):
            return False
        return not self.branches or (branch is not None and any(fnmatch.fnmatchcase(branch, b) for b in self.branches))


DEFAULT_TRIGGERS = [
    Trigger(event="pull_request", actions=PULL_REQUEST_ACTIONS, workflow="pr-pipeline", inputs={
        "repo": "${{ event.pull_request.head.repo.clone_url }}", "ref": "${{ event.pull_request.head.sha }}",
        "number": "${{ event.pull_request.number }}",
    }),
    Trigger(event="check_run", actions=["rerequested"], rerun=True),
]


class IgnoreRules(BaseModel):
    """Pull requests nobody should review: a match is recorded as the delivery's outcome, no run starts."""

    model_config = ConfigDict(extra="forbid")

    drafts: bool = Field(default=True, description="ignore draft pull requests (ready_for_review starts them)")
    bots: bool = Field(default=True, description="ignore pull requests opened by bots (type Bot or a [bot] login)")
    authors: list[str] = Field(default_factory=list, description="logins whose pull requests are ignored")
    labels: list[str] = Field(default_factory=lambda: ["devart:skip"], description="any of these labels ignores")
    title_patterns: list[str] = Field(
        default_factory=lambda: [r"^\s*(WIP\b|\[WIP\])"], description="regular expressions searched in the title",
    )

    @field_validator("title_patterns")
    @classmethod
    def _regexes(cls, value: list[str]) -> list[str]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"bad regular expression {pattern!r}: {exc}") from None
        return value


class RepositoryPolicy(BaseModel):
    """Per repository (glob on ``owner/name``): whether devart merges a green, approved pull request."""

    model_config = ConfigDict(extra="forbid")

    repo: str = Field(description="glob of owner/name, e.g. acme/* ; the first matching entry applies")
    auto_merge: bool = Field(default=False, description="merge when the gate's conditions all hold")
    merge_method: Literal["merge", "squash", "rebase"] = Field(default="merge", description="how to merge")
    required_approvals: int = Field(default=1, ge=0, description="approving GitHub reviews needed")
    devart_approval: bool = Field(
        default=False, description="also require a devart approval object (decided from the API, console or Telegram)"
    )
    approval_roles: list[str] = Field(default_factory=lambda: ["supervisor"],
                                      description="roles that may decide the devart approval")
    blocking_label: str = Field(default="do-not-merge", description="a pull request with this label is never merged")


class GitHubConfig(BaseModel):
    """The file named by ``DEVART_GITHUB_CONFIG_FILE`` (YAML or JSON)."""

    model_config = ConfigDict(extra="forbid")

    triggers: list[Trigger] = Field(default_factory=lambda: list(DEFAULT_TRIGGERS))
    ignore: IgnoreRules = Field(default_factory=IgnoreRules)
    repositories: list[RepositoryPolicy] = Field(default_factory=list)

    def policy(self, repo: str) -> RepositoryPolicy | None:
        return next((p for p in self.repositories if fnmatch.fnmatchcase(repo, p.repo)), None)


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class GitHubSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DEVART_GITHUB_", extra="ignore")

    webhook_secrets: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="comma-separated webhook secrets; a delivery signed with any of them is accepted (two during "
        "a rotation); none = the webhook endpoint answers 404 and GitHub is off",
    )
    api_url: str = Field(
        default="https://api.github.com",
        description="REST API base URL: https://HOST/api/v3 for GitHub Enterprise Server, a local server in tests",
    )
    app_id: str | None = Field(default=None, description="the GitHub App's id (or client id): the JWT's issuer")
    private_key: SecretStr | None = Field(default=None, description="the App's PEM private key (or use _FILE)")
    private_key_file: Path | None = Field(default=None, description="file holding the App's PEM private key")
    token: SecretStr | None = Field(
        default=None, description="a personal access token, instead of an App (every repository uses it)"
    )
    config_file: Path | None = Field(
        default=None, description="YAML/JSON file of triggers, ignore rules and repository policies (docs/github.md)"
    )
    config: GitHubConfig = Field(default_factory=GitHubConfig, description="read from config_file when set")
    check_name: str = Field(default="devart", min_length=1, description="check run name prefix shown on the PR")
    max_webhook_bytes: int = Field(
        default=26_214_400, ge=1024, description="largest webhook body accepted (GitHub caps payloads at 25 MB)"
    )
    token_refresh_margin_s: float = Field(
        default=300.0, ge=0, description="an installation token is renewed this long before it expires"
    )
    request_timeout_s: float = Field(default=10.0, gt=0, description="timeout of one GitHub API request")
    process_interval_s: float = Field(default=1.0, gt=0, description="period of the delivery processor")
    report_interval_s: float = Field(default=1.0, gt=0, description="period of the reporter (check runs, comments)")
    retry_s: float = Field(default=2.0, gt=0, description="first delay before a failed GitHub call is retried")
    max_review_comments: int = Field(default=30, ge=0, le=100, description="inline comments per review, at most")
    max_annotations: int = Field(default=500, ge=0, description="annotations sent per check run, at most")

    @field_validator("webhook_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: Any) -> Any:
        return _split(value)

    @model_validator(mode="after")
    def _check(self) -> GitHubSettings:
        if self.config_file is not None:
            try:
                document = yaml.safe_load(self.config_file.read_text()) or {}
                self.config = GitHubConfig.model_validate(document)
            except (OSError, yaml.YAMLError, ValidationError) as exc:
                raise ValueError(f"DEVART_GITHUB_CONFIG_FILE {self.config_file}: {exc}") from None
        if self.app_id is not None and self.private_key is None and self.private_key_file is None:
            raise ValueError("DEVART_GITHUB_APP_ID needs DEVART_GITHUB_PRIVATE_KEY or DEVART_GITHUB_PRIVATE_KEY_FILE")
        return self

    @property
    def enabled(self) -> bool:
        return bool(self.webhook_secrets)

    def pem(self) -> str | None:
        if self.private_key is not None:
            return self.private_key.get_secret_value()
        if self.private_key_file is not None:
            return self.private_key_file.read_text()
        return None
