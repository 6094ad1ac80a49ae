"""Review tests: a git repository with a seeded bug and secret, a sandbox that may clone it, a fake OpenAI."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agents.sandbox import SandboxSettings
from tests.openai_fake.server import FakeOpenAI, serve

AWS_KEY = "AKIA" + "Q3EXAMPLE7REVIEWZ"[:16]  # built here so no literal key sits in this repository
BUG_LINE = 3  # bug.py: `return undefined_name + 1` on the branch


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """main: a clean module and an old F821 nobody touches; feature: adds a bug, a secret, a shell script."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "old.py").write_text("def old():\n    return not_defined_before\n")
    (repo / "bug.py").write_text("def f():\n    return 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "base")
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "bug.py").write_text("def f():\n    return 1\n    return undefined_name + 1\n")
    (repo / "settings.py").write_text(f'REGION = "eu-west-1"\naws_access_key_id = "{AWS_KEY}"\n')
    (repo / "run.sh").write_text("#!/bin/sh\nrm -rf $1/build\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "feature")
    return repo


@pytest.fixture
def sandbox(tmp_path: Path) -> SandboxSettings:
    return SandboxSettings(root=tmp_path / "sandboxes", git_local_roots=[tmp_path], kill_grace_s=0.5)


@dataclass(frozen=True)
class OpenAI:
    fake: FakeOpenAI
    base_url: str


@pytest.fixture
async def openai() -> AsyncIterator[OpenAI]:
    fake = FakeOpenAI()
    async with serve(fake) as base_url:
        yield OpenAI(fake, base_url)
