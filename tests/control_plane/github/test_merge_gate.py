"""The auto-merge gate end to end: real runs on a shell agent, the real client against the local
GitHub. It refuses a stale head, a blocking label and missing approvals (saying why on the pull
request, audited), and merges when all is green, naming the checked sha."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from agents.sdk import AgentRuntime
from control_plane.github import GitHubConfig, RepositoryPolicy
from tests.control_plane.github.conftest import REPO, SECRET
from tests.control_plane.github.test_webhook import url
from tests.control_plane.workflows.conftest import apply, sandbox_settings, shell_agent  # noqa: F401
from tests.github_fake.server import FakeGitHubServer, pull_request_payload, send_webhook
from tests.support.system import wait_for

GREEN = {"name": "pr-pipeline", "inputs": {"repo": {"type": "string"}, "ref": {"type": "string"},
                                           "number": {"type": "number"}},
         "steps": {"check": {"requires": ["shell"], "input": {"script": "true"}}}}
GATED = "acme/gated"
APPROVED = {"user": {"login": "bob"}, "state": "APPROVED", "commit_id": None}


@pytest.fixture
def github_config() -> GitHubConfig:
    return GitHubConfig(repositories=[
        RepositoryPolicy(repo=GATED, auto_merge=True, required_approvals=0, devart_approval=True,
                         approval_roles=["supervisor", "admin"]),
        RepositoryPolicy(repo="acme/*", auto_merge=True, merge_method="squash", required_approvals=1),
    ])


async def merge_line(github: FakeGitHubServer, number: int, needle: str, repo: str = REPO) -> str | None:
    comments = github.fake.comments_on(repo, number)
    body = comments[0]["body"] if comments else ""
    return body if f"**Auto-merge**: {needle}" in body else None


async def push(base_url: str, number: int, sha: str, action: str = "opened") -> None:
    response = await send_webhook(url(base_url), "pull_request", pull_request_payload(
        REPO, number, sha, action=action, clone_url="https://example.com/acme/calc.git"), SECRET)
    assert response.status_code == 202


async def decisions(db: asyncpg.Pool, number: int, count: int) -> list[str]:
    rows = await db.fetch("SELECT action FROM audit_log WHERE target = $1 ORDER BY id", f"{REPO}#{number}")
    return [r["action"] for r in rows] if len(rows) >= count else []


@pytest.mark.slow
async def test_a_stale_head_is_refused_then_the_checked_head_is_merged(
    base_url: str, admin: httpx.AsyncClient, shell_agent: AgentRuntime, github: FakeGitHubServer,  # noqa: F811
    db: asyncpg.Pool,
) -> None:
    await apply(admin, GREEN)
    old, new = "a" * 40, "b" * 40
    pull = github.fake.pull(REPO, 50, new, reviews=[APPROVED])  # GitHub already has a newer head
    await push(base_url, 50, old)
    body = await wait_for(lambda: merge_line(github, 50, "refused"), timeout_s=60, what="the refusal")
    assert f"the head {new[:12]} is not the checked commit {old[:12]}" in body
    assert not pull.merged and github.fake.calls_to("PUT", "/merge") == []

    await push(base_url, 50, new, action="synchronize")
    body = await wait_for(lambda: merge_line(github, 50, "merged"), timeout_s=60, what="the merge")
    assert pull.merged and f"merged {new[:12]} as {pull.merge_sha[:12]} (squash)" in body
    merge_call = github.fake.calls_to("PUT", "/pulls/50/merge")[0]
    assert merge_call.body["sha"] == new and merge_call.body["merge_method"] == "squash"
    # the comment reaches GitHub inside the transaction that records the decision: wait for its commit
    actions = await wait_for(lambda: decisions(db, 50, 2), what="the decisions audited")
    assert actions == ["github.merge_refused", "github.merge"]
    assert len(github.fake.comments_on(REPO, 50)) == 1


@pytest.mark.slow
async def test_missing_approvals_and_a_blocking_label_hold_the_merge_until_they_change(
    base_url: str, admin: httpx.AsyncClient, shell_agent: AgentRuntime, github: FakeGitHubServer,  # noqa: F811
    db: asyncpg.Pool,
) -> None:
    await apply(admin, GREEN)
    sha = "c" * 40
    pull = github.fake.pull(REPO, 51, sha, labels=["do-not-merge"])
    await push(base_url, 51, sha)
    body = await wait_for(lambda: merge_line(github, 51, "refused"), timeout_s=60, what="the label refusal")
    assert "the label do-not-merge is set" in body

    pull.labels = []
    payload = pull_request_payload(REPO, 51, sha, action="unlabeled")
    assert (await send_webhook(url(base_url), "pull_request", payload, SECRET)).status_code == 202
    body = await wait_for(lambda: merge_line(github, 51, "refused — 0 of 1"), timeout_s=60,
                          what="the approvals refusal")
    assert "0 of 1 required approving reviews" in body

    pull.reviews = [{"user": {"login": "bob"}, "state": "CHANGES_REQUESTED", "commit_id": sha}, APPROVED,
                    {"user": {"login": "eve"}, "state": "COMMENTED", "commit_id": sha}]
    review = pull_request_payload(REPO, 51, sha, action="submitted")
    review["review"] = {"state": "approved", "user": {"login": "bob"}}
    assert (await send_webhook(url(base_url), "pull_request_review", review, SECRET)).status_code == 202
    await wait_for(lambda: merge_line(github, 51, "merged"), timeout_s=60, what="the merge")
    assert pull.merged
    actions = await wait_for(lambda: decisions(db, 51, 3), what="the decisions audited")
    assert actions == ["github.merge_refused", "github.merge_refused", "github.merge"]


@pytest.mark.slow
async def test_a_devart_approval_is_asked_for_and_its_decision_merges(
    base_url: str, admin: httpx.AsyncClient, shell_agent: AgentRuntime, github: FakeGitHubServer,  # noqa: F811
    db: asyncpg.Pool,
) -> None:
    await apply(admin, GREEN)
    sha = "f" * 40
    pull = github.fake.pull(GATED, 52, sha)
    response = await send_webhook(url(base_url), "pull_request", pull_request_payload(
        GATED, 52, sha, clone_url="https://example.com/acme/gated.git"), SECRET)
    assert response.status_code == 202
    body = await wait_for(lambda: merge_line(github, 52, "refused", GATED), timeout_s=60, what="the wait")
    approval = await wait_for(lambda: db.fetchrow(
        "SELECT id, subject_id, state FROM approvals WHERE subject_kind = 'github_merge'"), what="the approval")
    assert f"waiting for devart approval {approval['id']}" in body
    assert approval["subject_id"] == f"{GATED}#52@{sha}" and approval["state"] == "pending"
    assert not pull.merged

    decided = await admin.post(f"/api/v1/approvals/{approval['id']}/approve", json={"comment": "ship it"})
    assert decided.status_code == 200, decided.text
    await wait_for(lambda: merge_line(github, 52, "merged", GATED), timeout_s=60, what="the merge")
    assert pull.merged and github.fake.calls_to("PUT", "/pulls/52/merge")[0].body["merge_method"] == "merge"
