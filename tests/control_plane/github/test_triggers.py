"""Configured triggers through real deliveries: a push to a branch runs another workflow (a deleted
branch or another branch does not), and a check run re-requested on GitHub re-runs its run."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from control_plane.github import GitHubConfig, Trigger
from control_plane.github.settings import DEFAULT_TRIGGERS
from tests.control_plane.github.conftest import REPO, SECRET
from tests.control_plane.github.test_pull_requests import completed
from tests.control_plane.github.test_webhook import PIPELINE, processed, url
from tests.control_plane.workflows.conftest import apply
from tests.github_fake.server import FakeGitHubServer, pull_request_payload, send_webhook
from tests.support.system import wait_for

DEPLOY = {"name": "deploy", "inputs": {"ref": {"type": "string"}, "pusher": {"type": "string"}},
          "steps": {"ship": {"requires": ["nobody-has-this"], "input": {"script": "true"}}}}


@pytest.fixture
def github_config() -> GitHubConfig:
    push = Trigger(event="push", branches=["main", "release/*"], workflow="deploy",
                   inputs={"ref": "${{ event.after }}", "pusher": "${{ event.pusher.name }}"})
    return GitHubConfig(triggers=[*DEFAULT_TRIGGERS, push])


def push_payload(branch: str, after: str, *, deleted: bool = False) -> dict:
    return {"ref": f"refs/heads/{branch}", "before": "0" * 40, "after": after, "deleted": deleted,
            "pusher": {"name": "ana"}, "repository": {"full_name": REPO}, "installation": {"id": 77}}


async def test_a_push_to_a_configured_branch_runs_its_workflow(
    base_url: str, admin: httpx.AsyncClient, github: FakeGitHubServer, db: asyncpg.Pool,
) -> None:
    await apply(admin, DEPLOY)
    sha = "5" * 40
    for delivery, payload in {"p-main": push_payload("main", sha), "p-feature": push_payload("feature", "6" * 40),
                              "p-gone": push_payload("release/1", "0" * 40, deleted=True)}.items():
        assert (await send_webhook(url(base_url), "push", payload, SECRET, delivery=delivery)).status_code == 202
        await wait_for(lambda d=delivery: processed(db, d), what=f"delivery {delivery}")
    outcomes = {r["delivery_id"]: r["outcome"] for r in await db.fetch("SELECT * FROM github_deliveries")}
    assert outcomes["p-main"].startswith("started run") and outcomes["p-main"].endswith("of deploy")
    assert outcomes["p-feature"] == "no trigger for push"
    assert outcomes["p-gone"] == "ignored: the branch was deleted"
    run = await db.fetchrow("SELECT inputs::text, concurrency_group FROM workflow_runs")
    assert run["inputs"] == f'{{"ref": "{sha}", "pusher": "ana"}}'
    assert run["concurrency_group"] == f"github:{REPO}@{sha}"

    async def check() -> list[dict]:
        return github.fake.checks_for(sha)

    checks = await wait_for(check, what="the push's check run")
    assert checks[0]["name"] == "devart/deploy"


async def test_a_rerequested_check_run_reruns_its_run(
    base_url: str, admin: httpx.AsyncClient, github: FakeGitHubServer, db: asyncpg.Pool,
) -> None:
    await apply(admin, PIPELINE)
    sha = "7" * 40
    github.fake.pull(REPO, 70, sha)
    payload = pull_request_payload(REPO, 70, sha, clone_url="https://example.com/acme/calc.git")
    assert (await send_webhook(url(base_url), "pull_request", payload, SECRET, delivery="r-1")).status_code == 202
    row = await wait_for(lambda: processed(db, "r-1"), what="the run")
    old_run = row["runs"][0]
    assert (await admin.post(f"/api/v1/runs/{old_run}/cancel")).status_code == 200
    cancelled = await wait_for(completed(github, sha), what="the cancelled check run")
    assert cancelled["conclusion"] == "cancelled"
    # GitHub shows the check run while the reporter's transaction that records its id still commits
    recorded = "SELECT 1 FROM github_checks WHERE check_run_id = $1"
    await wait_for(lambda: db.fetchval(recorded, cancelled["id"]), what="the check run's id recorded")

    rerequest = {"action": "rerequested", "repository": {"full_name": REPO}, "installation": {"id": 77},
                 "check_run": {"id": cancelled["id"], "head_sha": sha, "pull_requests": [{"number": 70}],
                               "check_suite": {"head_branch": "feature"}}}
    assert (await send_webhook(url(base_url), "check_run", rerequest, SECRET, delivery="r-2")).status_code == 202
    row = await wait_for(lambda: processed(db, "r-2"), what="the re-run")
    new_run = await db.fetchrow("SELECT * FROM workflow_runs WHERE id = $1", row["runs"][0])
    assert new_run["trigger"] == "rerun" and new_run["rerun_of"] == old_run
    assert new_run["concurrency_group"] == f"github:{REPO}#70"

    async def two_checks() -> list[dict]:
        checks = github.fake.checks_for(sha)
        return checks if len(checks) == 2 else []

    checks = await wait_for(two_checks, what="a new check run for the re-run")
    assert checks[1]["external_id"] == str(new_run["id"])
    # a check run devart did not create is not re-run
    foreign = rerequest | {"check_run": rerequest["check_run"] | {"id": 999999}}
    assert (await send_webhook(url(base_url), "check_run", foreign, SECRET, delivery="r-3")).status_code == 202
    row = await wait_for(lambda: processed(db, "r-3"), what="the foreign re-request")
    assert row["outcome"] == "ignored: check run 999999 is not one of devart's" and row["runs"] == []
