"""From a delivery to what it asks for: the runs to start (the configured triggers, their inputs
rendered from the payload), a check run to re-run, or why nothing happens (ignore rules)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from control_plane.github.settings import GitHubConfig, IgnoreRules
from control_plane.workflows.expressions import ExpressionError, render_value


@dataclass(frozen=True)
class Target:
    """What a run reports on: the repository, the commit, and the pull request when there is one."""

    repo: str
    head_sha: str
    number: int | None
    installation_id: int | None


@dataclass
class Plan:
    target: Target | None = None
    starts: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """(workflow, inputs) of each run to start."""
    rerun_check_run: int | None = None
    outcome: str = ""
    """Why nothing starts, when nothing does."""


def _get(value: Any, *path: str) -> Any:
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def ignored(rules: IgnoreRules, pull: dict[str, Any]) -> str | None:
    """The reason an ignore rule matches a pull request, or None."""
    user = pull.get("user") or {}
    login = str(user.get("login") or "")
    if rules.drafts and pull.get("draft"):
        return "ignored: draft pull request"
    if rules.bots and (user.get("type") == "Bot" or login.endswith("[bot]")):
        return f"ignored: opened by the bot {login}"
    if login in rules.authors:
        return f"ignored: author {login} is in the ignore list"
    labels = {str(label.get("name")) for label in pull.get("labels") or [] if isinstance(label, dict)}
    hit = sorted(labels & set(rules.labels))
    if hit:
        return f"ignored: label {hit[0]}"
    title = str(pull.get("title") or "")
    for pattern in rules.title_patterns:
        if re.search(pattern, title):
            return f"ignored: title matches {pattern!r}"
    return None


def _target(event: str, payload: dict[str, Any], installation_id: int | None) -> tuple[Target | None, str | None]:
    """The target and the branch a trigger's ``branches`` are matched against."""
    repo = _get(payload, "repository", "full_name")
    if not isinstance(repo, str):
        return None, None
    if event == "pull_request":
        pull = payload.get("pull_request") or {}
        return Target(repo, str(_get(pull, "head", "sha")), int(pull["number"]), installation_id), \
            _get(pull, "base", "ref")
    if event == "push":
        ref = str(payload.get("ref") or "")
        branch = ref.removeprefix("refs/heads/") if ref.startswith("refs/heads/") else None
        return Target(repo, str(payload.get("after") or ""), None, installation_id), branch
    if event == "check_run":
        check = payload.get("check_run") or {}
        pulls = check.get("pull_requests") or []
        number = int(pulls[0]["number"]) if pulls and isinstance(pulls[0], dict) else None
        return Target(repo, str(check.get("head_sha") or ""), number, installation_id), \
            _get(check, "check_suite", "head_branch")
    return None, None


def plan(config: GitHubConfig, event: str, payload: dict[str, Any], installation_id: int | None) -> Plan:
    action = payload.get("action") if isinstance(payload.get("action"), str) else None
    target, branch = _target(event, payload, installation_id)
    what = event + (f".{action}" if action else "")
    if target is None:
        return Plan(outcome=f"no trigger for {what}")
    matching = [t for t in config.triggers if t.matches(event, action, branch)]
    if not matching:
        return Plan(target, outcome=f"no trigger for {what}")
    if event == "pull_request":
        reason = ignored(config.ignore, payload.get("pull_request") or {})
        if reason is not None:
            return Plan(target, outcome=reason)
    if event == "push" and (payload.get("deleted") or set(target.head_sha) == {"0"}):
        return Plan(target, outcome="ignored: the branch was deleted")
    result = Plan(target)
    for trigger in matching:
        if trigger.rerun:
            result.rerun_check_run = int(_get(payload, "check_run", "id") or 0) or None
            continue
        assert trigger.workflow is not None
        try:
            inputs = render_value(trigger.inputs, {"event": payload})
        except ExpressionError as exc:
            return Plan(target, outcome=f"error: the inputs of the {what} trigger: {exc}")
        result.starts.append((trigger.workflow, inputs))
    return result
