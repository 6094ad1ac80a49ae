"""The githubkit client behind devart's port, against a local server speaking GitHub's REST wire format."""

from __future__ import annotations

import time

import jwt
import pytest
from pydantic import SecretStr

from control_plane.github.client import GitHubError, GitHubKitClient, app_jwt
from tests.control_plane.github.conftest import KEYS, REPO, github_settings
from tests.github_fake.server import FakeGitHubServer, rsa_key

SHA = "a" * 40


async def test_app_jwt_claims() -> None:
    now = time.time()
    claims = jwt.decode(app_jwt("424242", KEYS[0], now=now), KEYS[1], algorithms=["RS256"])
    assert claims["iss"] == "424242"
    assert claims["iat"] == int(now) - 60
    assert claims["exp"] - claims["iat"] <= 600 and claims["exp"] > now


async def test_installation_token_is_cached_then_renewed_before_expiry(github: FakeGitHubServer) -> None:
    fake = github.fake
    client = GitHubKitClient(github_settings(github, token_refresh_margin_s=300))
    fake.pull(REPO, 1, SHA)
    for _ in range(3):
        assert (await client.pull_request(77, REPO, 1)).head_sha == SHA
    assert len(fake.calls_to("POST", "/access_tokens")) == 1
    assert fake.calls_to("GET", "/pulls/1")[0].auth.startswith("token ghs_")

    # a token GitHub says expires within the margin is renewed before it is used
    fake.token_lifetime_s = 200
    client = GitHubKitClient(github_settings(github, token_refresh_margin_s=300))
    await client.pull_request(77, REPO, 1)
    await client.pull_request(77, REPO, 1)
    assert len(fake.calls_to("POST", "/access_tokens")) == 3
    assert client.tokens is not None and client.tokens.issued == 2


async def test_a_wrong_app_key_or_installation_is_refused_with_githubs_message(github: FakeGitHubServer) -> None:
    other_key = SecretStr(rsa_key()[0])
    client = GitHubKitClient(github_settings(github, private_key=other_key))
    with pytest.raises(GitHubError) as refused:
        await client.pull_request(77, REPO, 1)
    assert refused.value.status == 401 and "JSON web token could not be decoded" in refused.value.message
    with pytest.raises(GitHubError) as unknown:
        await GitHubKitClient(github_settings(github)).pull_request(12345, REPO, 1)
    assert unknown.value.status == 404 and unknown.value.permanent


async def test_personal_token(github: FakeGitHubServer) -> None:
    client = GitHubKitClient(github_settings(github, app_id=None, private_key=None,
                                             token=SecretStr(github.fake.personal_token)))
    github.fake.pull(REPO, 3, SHA, labels=["do-not-merge"])
    pull = await client.pull_request(None, REPO, 3)
    assert pull.labels == ("do-not-merge",) and pull.state == "open"
    assert not github.fake.calls_to("POST", "/access_tokens")
    bad = GitHubKitClient(github_settings(github, app_id=None, private_key=None, token=SecretStr("ghp_nope")))
    with pytest.raises(GitHubError) as refused:
        await bad.pull_request(None, REPO, 3)
    assert refused.value.status == 401 and refused.value.message == "Bad credentials"


async def test_check_runs_comments_reviews_and_merge(github: FakeGitHubServer) -> None:
    fake = github.fake
    client = GitHubKitClient(github_settings(github))
    fake.pull(REPO, 5, SHA, files={"src/calc.py": "@@ -1,2 +1,3 @@\n def add(a, b):\n+    x = 1\n     return a + b"})
    check = await client.create_check_run(77, REPO, name="devart/pr-pipeline", head_sha=SHA, external_id="run-1",
                                          status="queued", conclusion=None, output={"title": "t", "summary": "s"})
    await client.update_check_run(77, REPO, check, status="completed", conclusion="success",
                                  output={"title": "t", "summary": "s", "annotations": [
                                      {"path": "src/calc.py", "start_line": 2, "end_line": 2,
                                       "annotation_level": "warning", "message": "m"}]})
    assert fake.check_runs[check]["conclusion"] == "success" and len(fake.annotations[check]) == 1
    comment = await client.create_comment(77, REPO, 5, "first")
    await client.update_comment(77, REPO, comment, "second")
    assert fake.comments[comment]["body"] == "second"
    files = await client.pull_files(77, REPO, 5)
    assert [f.path for f in files] == ["src/calc.py"]
    await client.create_review(77, REPO, 5, commit_id=SHA, body="b",
                               comments=[{"path": "src/calc.py", "line": 2, "side": "RIGHT", "body": "x"}])
    with pytest.raises(GitHubError) as outside:
        await client.create_review(77, REPO, 5, commit_id=SHA, body="b",
                                   comments=[{"path": "src/calc.py", "line": 1, "side": "RIGHT", "body": "x"}])
    assert outside.value.status == 422 and "could not be resolved" in outside.value.message
    with pytest.raises(GitHubError) as stale:
        await client.merge(77, REPO, 5, sha="b" * 40, method="squash", title="t")
    assert stale.value.status == 409 and "Head branch was modified" in stale.value.message
    assert len(await client.merge(77, REPO, 5, sha=SHA, method="squash", title="t")) == 40
    assert fake.pulls[(REPO, 5)].merged


@pytest.mark.parametrize("status", [403, 429])
async def test_rate_limits_carry_the_wait(github: FakeGitHubServer, status: int) -> None:
    client = GitHubKitClient(github_settings(github))
    github.fake.pull(REPO, 1, SHA)
    github.fake.rate_limit(status, retry_after_s=7)
    with pytest.raises(GitHubError) as limited:
        await client.pull_request(77, REPO, 1)
    assert limited.value.status == status and not limited.value.permanent
    assert limited.value.retry_after_s is not None and 5 <= limited.value.retry_after_s <= 8
    assert (await client.pull_request(77, REPO, 1)).head_sha == SHA
