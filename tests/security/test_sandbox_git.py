"""Attacks through the checkout: a task's ``env`` turning on git's ``ext::`` transport
(``GIT_CONFIG_KEY_0=protocol.ext.allow``) to run a command, and pointing ``core.hooksPath`` at the
hooks a repository ships. Neither may run anything: git gets a fixed environment, only the
https/ssh/git protocols (file for allow-listed local roots), and no hooks.

Each task runs through the real control plane, broker and ``python -m agents.shell`` process with
production sandbox settings (plus the allow-listed local root the hook test clones from)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx

from tests.security.sandbox_agent import StartShellAgent, run_task, start_shell_agent

__all__ = ["start_shell_agent"]


def _config_env(key: str, value: str) -> dict[str, str]:
    return {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": key, "GIT_CONFIG_VALUE_0": value}


async def test_task_env_cannot_enable_the_ext_transport(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent, tmp_path: Path
) -> None:
    await start_shell_agent()
    marker = tmp_path / "ext-ran"
    attack = await run_task(admin, {
        "repo": f"ext::sh -c echo% EXT-RAN>&2;touch% {marker}",
        "script": "echo cloned",
        "env": _config_env("protocol.ext.allow", "always"),
    })  # fmt: skip
    assert attack.task["status"] == "failed"
    assert "checkout failed" in (attack.task["status_reason"] or "")
    assert "EXT-RAN" not in attack.lines
    assert "cloned" not in attack.lines
    assert not marker.exists()


def _repository_with_a_hook(path: Path, marker: Path) -> None:
    path.mkdir(parents=True)
    hook = path / "hooks" / "post-checkout"
    hook.parent.mkdir()
    hook.write_text(f"#!/bin/sh\necho HOOK-RAN >&2\ntouch {marker}\n")
    hook.chmod(0o755)
    (path / "README").write_text("a repository shipping a hook\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "init.defaultBranch=main"]
    for args in (["init", "--quiet"], ["add", "."], ["commit", "--quiet", "-m", "hook"]):
        subprocess.run([*git, *args], cwd=path, check=True, capture_output=True, env={"PATH": os.environ["PATH"]})


async def test_task_env_cannot_run_the_hooks_a_repository_ships(
    admin: httpx.AsyncClient, start_shell_agent: StartShellAgent, tmp_path: Path
) -> None:
    marker = tmp_path / "hook-ran"
    repo = tmp_path / "repos" / "with-hook"
    _repository_with_a_hook(repo, marker)
    await start_shell_agent(git_local_roots=f'["{tmp_path / "repos"}"]')
    attack = await run_task(admin, {
        "repo": str(repo),
        "script": "cat README",
        "env": _config_env("core.hooksPath", "hooks"),
    })  # fmt: skip
    assert attack.task["status"] == "succeeded", attack.task["status_reason"]
    assert "a repository shipping a hook" in attack.lines
    assert "HOOK-RAN" not in attack.lines
    assert not marker.exists()
