"""How an attempt's git checkout runs: which repositories, protocols, configuration and network.

git runs inside the attempt's boundary with a fixed environment (never the spec's ``env``, so no
``GIT_CONFIG_*`` or ``GIT_SSH_COMMAND`` from a task), only the https, ssh and git protocols (plus
``file`` for local repositories under ``git_local_roots``), hooks and fsmonitor disabled, no
credential helper, and the host network only to clone a remote repository when ``git_network``
allows it. The command-line ``-c`` settings win over anything a repository's configuration says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agents.sandbox.settings import SandboxSettings

_REMOTE_REPO = re.compile(r"^(https|ssh|git)://|^[\w.-]+@[\w.-]+:")
HARDENING = (
    "protocol.allow=never",
    "protocol.https.allow=always",
    "protocol.ssh.allow=always",
    "protocol.git.allow=always",
    "core.hooksPath=/dev/null",
    "core.fsmonitor=false",
    "credential.helper=",
)
GLOBAL_CONFIG = "devart-gitconfig"
"""File name, in the workspace's ``tmp``, of the global git configuration of the checkout steps."""


@dataclass(frozen=True)
class GitStep:
    what: str
    argv: list[str]
    cwd: Path
    network: bool


@dataclass(frozen=True)
class CheckoutPlan:
    """The git commands of one checkout, with their environment and the paths they may read."""

    steps: list[GitStep] = field(default_factory=list)
    env: Mapping[str, str] = field(default_factory=dict)
    read_only: list[Path] = field(default_factory=list)
    global_config: str = ""
    refused: str | None = None
    """Why the checkout is refused before anything runs (a local path outside the allowed roots)."""


def plan_checkout(
    repo: str, ref: str | None, *, settings: SandboxSettings, workspace: Path, checkout: Path
) -> CheckoutPlan:
    """The checkout of ``repo`` at ``ref`` into ``checkout`` (blocking: resolves local paths)."""
    config = list(HARDENING)
    local: Path | None = None
    global_config = ""
    if not _REMOTE_REPO.match(repo):
        path = Path(repo).absolute()
        if path.exists():
            local = path.resolve()
            if not any(local.is_relative_to(root.resolve()) for root in settings.git_local_roots):
                return CheckoutPlan(refused=f"local repository {repo!r} is outside DEVART_SANDBOX_GIT_LOCAL_ROOTS")
            config.append("protocol.file.allow=always")
            # The repository belongs to someone else; upload-pack reads only global configuration.
            global_config = f"[safe]\n\tdirectory = {local}\n\tdirectory = {local / '.git'}\n"
        repo = str(local or path)  # a missing path: git says it does not exist, in its own words
    git = ["git", *(arg for item in config for arg in ("-c", item))]
    env = {
        **settings.base_env,
        "HOME": str(workspace),
        "TMPDIR": str(workspace / "tmp"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": str(workspace / "tmp" / GLOBAL_CONFIG) if global_config else "/dev/null",
    }
    steps = [
        GitStep("git clone", [*git, "clone", "--quiet", "--", repo, str(checkout)], workspace,
                local is None and settings.git_network),
    ]  # fmt: skip
    if ref is not None:
        steps.append(GitStep("git checkout", [*git, "checkout", "--quiet", ref, "--"], checkout, False))
    return CheckoutPlan(steps, env, [local] if local else [], global_config)
