"""End to end: a signed pull_request webhook runs examples/workflows/pr-pipeline.yaml on real shell
agents against a git repository the test creates, and the result reaches the local GitHub as a check
run (queued -> in_progress -> completed) and one summary comment, edited on the next push."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest

from agents.sdk import AgentRuntime
from tests.control_plane.github.conftest import REPO, SECRET
from tests.control_plane.github.test_webhook import PIPELINE, url
from tests.control_plane.workflows.conftest import apply, git, load_example, sandbox_settings, shell_agent  # noqa: F401
from tests.control_plane.workflows.test_example_pipeline import CALC, make_repo
from tests.github_fake.server import FakeGitHubServer, pull_request_payload, send_webhook
from tests.support.system import wait_for


def completed(github: FakeGitHubServer, sha: str):  # noqa: ANN201 - a wait_for condition
    async def check() -> dict | None:
        return next((c for c in github.fake.checks_for(sha) if c["status"] == "completed"), None)
    return check


@pytest.mark.slow
async def test_a_pull_request_gets_a_check_run_and_one_summary_comment(
    base_url: str, admin: httpx.AsyncClient, shell_agent: AgentRuntime, github: FakeGitHubServer,  # noqa: F811
    tmp_path: Path, db: asyncpg.Pool,
) -> None:
    repo = make_repo(tmp_path)
    git(repo, "checkout", "--quiet", "-b", "feature")
    (repo / "src" / "calc.py").write_text(CALC + "\n\ndef sub(a, b):\n    return a - b\n")
    git(repo, "commit", "--quiet", "-am", "add sub")
    first = git(repo, "rev-parse", "HEAD").strip()
    github.fake.pull(REPO, 12, first)
    await apply(admin, load_example("pr-pipeline.yaml"))

    response = await send_webhook(url(base_url), "pull_request",
                                  pull_request_payload(REPO, 12, first, clone_url=str(repo)), SECRET)
    assert response.status_code == 202
    check = await wait_for(completed(github, first), timeout_s=120, what="the check run completed")
    assert check["conclusion"] == "success", check
    assert check["name"] == "devart/pr-pipeline"
    assert check["_history"][0] in ("queued", "in_progress") and "in_progress" in check["_history"]
    assert "| build | ✅ succeeded |" in check["output"]["text"]
    run_id = check["external_id"]
    run = (await admin.get(f"/api/v1/runs/{run_id}")).json()
    assert run["state"] == "succeeded" and run["inputs"]["number"] == 12 and run["inputs"]["ref"] == first

    async def summary() -> list[dict]:
        comments = github.fake.comments_on(REPO, 12)
        return comments if comments and "succeeded" in comments[0]["body"] else []

    comments = await wait_for(summary, what="the summary comment")
    assert len(comments) == 1 and run_id in comments[0]["body"]

    # a second push: a new run and check run; the same comment is edited, not a second one posted
    (repo / "src" / "calc.py").write_text(CALC + "\n\ndef sub(a, b):\n    return a - b\n\n\ndef neg(a):\n    return -a\n")
    git(repo, "commit", "--quiet", "-am", "add neg")
    second = git(repo, "rev-parse", "HEAD").strip()
    github.fake.pulls[(REPO, 12)].head_sha = second
    response = await send_webhook(url(base_url), "pull_request", pull_request_payload(
        REPO, 12, second, action="synchronize", clone_url=str(repo)), SECRET)
    assert response.status_code == 202
    check2 = await wait_for(completed(github, second), timeout_s=120, what="the second check run")
    assert check2["conclusion"] == "success" and check2["id"] != check["id"]

    async def edited() -> list[dict]:
        comments = github.fake.comments_on(REPO, 12)
        return comments if comments and check2["external_id"] in comments[0]["body"] and \
            "**succeeded**" in comments[0]["body"] else []

    comments = await wait_for(edited, what="the summary comment edited for the second push")
    assert len(comments) == 1 and comments[0]["_edits"] >= 1
    assert f"`{first[:7]}` succeeded" in comments[0]["body"]  # the earlier run, listed
    assert len(github.fake.calls_to("POST", "/issues/12/comments")) == 1


async def test_new_pushes_cancel_the_pending_run_not_the_running_one(
    base_url: str, admin: httpx.AsyncClient, github: FakeGitHubServer, db: asyncpg.Pool,
) -> None:
    """No agent can take PIPELINE's step, so the first run stays running: at most one running and one
    pending per pull request, and each new push replaces the pending one."""
    await apply(admin, PIPELINE)
    shas = [str(i) * 40 for i in range(1, 4)]
    for i, sha in enumerate(shas):
        github.fake.pull(REPO, 30, sha)
        response = await send_webhook(url(base_url), "pull_request", pull_request_payload(
            REPO, 30, sha, action="opened" if i == 0 else "synchronize", clone_url="https://example.com/c.git"), SECRET)
        assert response.status_code == 202

        async def runs(n: int = i + 1) -> list[asyncpg.Record]:
            rows = await db.fetch("""SELECT r.state, r.state_reason, c.head_sha FROM workflow_runs r
                                     JOIN github_checks c ON c.run_id = r.id ORDER BY r.created_at""")
            return rows if len(rows) == n else []

        await wait_for(runs, what=f"run {i + 1}")
    rows = await runs(3)
    assert [r["state"] for r in rows] == ["running", "cancelled", "queued"]
    assert rows[1]["state_reason"].startswith("superseded by run")
    cancelled = await wait_for(completed(github, shas[1]), what="the superseded run's check run completed")
    assert cancelled["conclusion"] == "cancelled"

    async def states() -> bool:
        return [c["status"] for c in github.fake.checks_for(shas[0])] == ["in_progress"] and \
            [c["status"] for c in github.fake.checks_for(shas[2])] == ["queued"]

    await wait_for(states, what="a running and a queued check run")
