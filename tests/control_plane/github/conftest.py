"""GitHub tests: the real control plane and API, githubkit talking to a local GitHub (tests/github_fake)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import SecretStr

from control_plane.github import GitHubConfig, GitHubSettings
from control_plane.service import ControlPlane
from control_plane.settings import Settings
from tests.github_fake.server import FakeGitHub, FakeGitHubServer, rsa_key

SECRET = "webhook-secret-now"
OLD_SECRET = "webhook-secret-before"
REPO = "acme/calc"
KEYS = rsa_key()


@pytest.fixture
async def github() -> AsyncIterator[FakeGitHubServer]:
    server = FakeGitHubServer(FakeGitHub(public_key=KEYS[1]))
    await server.start()
    yield server
    await server.stop()


def github_settings(server: FakeGitHubServer, config: GitHubConfig | None = None, **values: Any) -> GitHubSettings:
    """App authentication with the fake's key, both rotation secrets, fast loops."""
    fields: dict[str, Any] = dict(
        webhook_secrets=[SecretStr(SECRET), SecretStr(OLD_SECRET)], api_url=server.url, app_id=server.fake.app_id,
        private_key=SecretStr(KEYS[0]), process_interval_s=0.2, report_interval_s=0.2, retry_s=0.2,
        config=config or GitHubConfig(),
    )
    fields.update(values)
    return GitHubSettings(**fields)


@pytest.fixture
def github_config() -> GitHubConfig:
    return GitHubConfig()


@pytest.fixture
async def cp(settings: Settings, github: FakeGitHubServer, github_config: GitHubConfig) -> AsyncIterator[ControlPlane]:
    async with ControlPlane(settings, github=github_settings(github, github_config)) as plane:
        yield plane
