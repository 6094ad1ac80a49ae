"""Findings a step reports become annotations (batches of 50) and inline review comments on the lines
the pull request adds only (at most 30 per review, never the same finding twice across pushes);
a rate-limited GitHub gets the same calls after the wait it names."""

from __future__ import annotations

import httpx
import pytest

from agents.sdk import AgentRuntime
from tests.control_plane.github.conftest import REPO, SECRET
from tests.control_plane.github.test_pull_requests import completed
from tests.control_plane.github.test_webhook import url
from tests.control_plane.workflows.conftest import apply, sandbox_settings, shell_agent  # noqa: F401
from tests.github_fake.server import FakeGitHubServer, pull_request_payload, send_webhook
from tests.support.system import wait_for

# 60 findings on a new file, one on an added line of calc.py, one on a line the pull request keeps
SCRIPT = """for i in $(seq 1 60); do echo "src/gen.py:$i: W$i generated finding $i"; done
echo "src/calc.py:3:5: F841 local variable 'x' is assigned to but never used"
echo "./src/calc.py:1: E302 expected 2 blank lines (outside the diff)"
"""
LINT = {"name": "pr-pipeline", "inputs": {"repo": {"type": "string"}, "ref": {"type": "string"},
                                          "number": {"type": "number"}},
        "steps": {"lint": {"requires": ["shell"], "input": {"script": SCRIPT}, "outputs": {"findings": "$.stdout_tail"}}}}
GEN = "@@ -0,0 +1,60 @@\n" + "".join(f"+line {i}\n" for i in range(1, 61))
CALC = "@@ -1,2 +1,3 @@\n def add(a, b):\n     return a + b\n+    x = 1\n"


@pytest.mark.slow
async def test_annotations_and_inline_comments_deduplicated_across_pushes(
    base_url: str, admin: httpx.AsyncClient, shell_agent: AgentRuntime, github: FakeGitHubServer,  # noqa: F811
) -> None:
    fake = github.fake
    await apply(admin, LINT)
    first, second = "d" * 40, "e" * 40
    pull = fake.pull(REPO, 60, first, files={"src/gen.py": GEN, "src/calc.py": CALC})
    fake.rate_limit(429, retry_after_s=1)  # the first call (the check run's creation) is rate limited
    response = await send_webhook(url(base_url), "pull_request", pull_request_payload(
        REPO, 60, first, clone_url="https://example.com/acme/calc.git"), SECRET)
    assert response.status_code == 202
    check = await wait_for(completed(github, first), timeout_s=60, what="the check run")
    assert check["conclusion"] == "success" and "62 finding(s)" in check["output"]["summary"]
    assert len(fake.check_runs) == 1  # the rate-limited creation was made once, after the wait

    async def annotated() -> list[dict]:
        found = fake.annotations[check["id"]]
        return found if len(found) == 62 else []

    annotations = await wait_for(annotated, what="62 annotations")
    batches = [c for c in fake.calls_to("PATCH", f"/check-runs/{check['id']}") if c.body["output"].get("annotations")]
    assert [len(c.body["output"]["annotations"]) for c in batches] == [50, 12]
    outside = next(a for a in annotations if a["start_line"] == 1 and a["path"] == "src/calc.py")
    assert outside["title"] == "E302" and outside["annotation_level"] == "warning"

    async def reviewed(count: int) -> list[dict]:
        return pull.review_comments if len(pull.review_comments) >= count else []

    comments = await wait_for(lambda: reviewed(30), what="the first review")
    assert len(comments) == 30 and len(fake.calls_to("POST", "/pulls/60/reviews")) == 1

    pull.head_sha = second
    response = await send_webhook(url(base_url), "pull_request", pull_request_payload(
        REPO, 60, second, action="synchronize", clone_url="https://example.com/acme/calc.git"), SECRET)
    assert response.status_code == 202
    await wait_for(completed(github, second), timeout_s=60, what="the second check run")
    comments = await wait_for(lambda: reviewed(60), what="the second review")
    assert len(comments) == 60 and len(fake.calls_to("POST", "/pulls/60/reviews")) == 2
    keys = [(c["path"], c["line"]) for c in comments]
    assert len(set(keys)) == 60  # nothing posted twice
    assert ("src/calc.py", 1) not in keys  # never on a line the pull request does not add
    assert fake.calls_to("POST", "/pulls/60/reviews")[1].body["commit_id"] == second
