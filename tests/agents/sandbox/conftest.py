"""Helpers for driving a LocalSandbox in tests: collected logs and waits on conditions."""

from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from agents.sandbox import LocalSandbox, SandboxResult, SandboxSettings, SandboxSpec


@dataclass
class Run:
    result: SandboxResult
    lines: list[tuple[str, str]] = field(default_factory=list)

    def stream(self, name: str) -> list[str]:
        return [text for stream, text in self.lines if stream == name]


class Harness:
    """A LocalSandbox over a private root, and the lines each run streamed."""

    def __init__(self, root: Path, **overrides: object) -> None:
        self.root = root
        self.settings = SandboxSettings(root=root, **{"kill_grace_s": 1.0, **overrides})
        self.sandbox = LocalSandbox(self.settings)

    def with_settings(self, **overrides: object) -> Harness:
        return Harness(self.root, **{**self.settings.model_dump(exclude={"root"}), **overrides})

    async def run(self, spec: SandboxSpec, cancel: asyncio.Event | None = None) -> Run:
        lines: list[tuple[str, str]] = []

        async def on_log(stream: str, text: str) -> None:
            lines.append((stream, text))

        result = await self.sandbox.run(spec, on_log=on_log, cancel=cancel or asyncio.Event())
        return Run(result, lines)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path / "sandboxes", git_local_roots=[tmp_path])


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        [
            "git",
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.com",
            "-c",
            "init.defaultBranch=main",
            *args,
        ],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture
def git_repo(tmp_path: Path) -> Path:
    """A repository with tag v1 (version.txt = v1) and main one commit later (v2, sub/, an escaping symlink)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "--quiet")
    (repo / "version.txt").write_text("v1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "first")
    _git(repo, "tag", "v1")
    (repo / "version.txt").write_text("v2\n")
    (repo / "sub").mkdir()
    (repo / "sub" / "here.txt").write_text("inside sub\n")
    (repo / "escape").symlink_to("/")
    _git(repo, "add", ".")
    _git(repo, "commit", "--quiet", "-m", "second")
    return repo
