"""GitHub settings from the environment and the configuration file; bad configuration is refused
naming what is wrong."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from control_plane.github import GitHubSettings
from control_plane.github.triggers import plan
from tests.github_fake.server import pull_request_payload


def test_environment_and_config_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = tmp_path / "github.yaml"
    config.write_text("""
triggers:
  - {event: pull_request, actions: [opened], workflow: review, inputs: {sha: "${{ event.pull_request.head.sha }}"}}
ignore: {drafts: false, labels: [], title_patterns: ['\\[skip devart\\]']}
repositories:
  - {repo: "acme/*", auto_merge: true, merge_method: rebase}
""")
    monkeypatch.setenv("DEVART_GITHUB_WEBHOOK_SECRETS", "new-secret, old-secret")
    monkeypatch.setenv("DEVART_GITHUB_CONFIG_FILE", str(config))
    monkeypatch.setenv("DEVART_GITHUB_TOKEN", "ghp_x")
    settings = GitHubSettings()
    assert [s.get_secret_value() for s in settings.webhook_secrets] == ["new-secret", "old-secret"]
    assert settings.enabled and settings.config.policy("acme/calc").merge_method == "rebase"  # type: ignore[union-attr]
    assert settings.config.policy("other/repo") is None
    draft = pull_request_payload("acme/calc", 1, "9" * 40, draft=True)
    assert plan(settings.config, "pull_request", draft, 77).starts == [("review", {"sha": "9" * 40})]
    skipped = pull_request_payload("acme/calc", 2, "9" * 40, title="docs [skip devart]")
    assert plan(settings.config, "pull_request", skipped, 77).outcome == "ignored: title matches '\\\\[skip devart\\\\]'"


@pytest.mark.parametrize(("document", "message"), [
    ("triggers: [{event: pull_request, workflow: a, rerun: true}]", "names a workflow or sets rerun: true"),
    ("triggers: [{event: push, rerun: true}]", "rerun: true is for check_run events only"),
    ("triggers: [{event: push, workflow: a, inputs: {x: '${{ event.'}}]", "inputs.x: bad expression"),
    ("ignore: {title_patterns: ['(']}", "bad regular expression"),
    ("repositories: [{repo: a/b, merge_method: octopus}]", "merge_method"),
    ("nonsense: 1", "nonsense"),
])
def test_a_bad_config_file_is_refused_naming_the_variable(tmp_path: Path, document: str, message: str) -> None:
    config = tmp_path / "github.yaml"
    config.write_text(document)
    with pytest.raises(ValidationError) as refused:
        GitHubSettings(config_file=config)
    assert "DEVART_GITHUB_CONFIG_FILE" in str(refused.value) and message in str(refused.value)


def test_an_app_without_a_key_is_refused() -> None:
    with pytest.raises(ValidationError, match="DEVART_GITHUB_PRIVATE_KEY"):
        GitHubSettings(app_id="1")
