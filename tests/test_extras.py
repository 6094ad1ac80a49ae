"""Every module imports with only the extras that install its part (checked in a subprocess that
refuses to import the packages of every other extra, instead of a fresh venv per extra)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

import pytest

# Which extras a deployment of each part installs (README "Install"; infra/docker/Dockerfile).
PARTS: dict[str, tuple[list[str], list[str]]] = {
    "agents": (["agents"], ["agents"]),
    "agents-k8s": (["agents.sandbox.kubernetes"], ["agents", "k8s"]),
    "agents-review": (["agents.review"], ["agents", "review"]),
    "aiops": (["aiops"], ["aiops"]),
    "control_plane": (["control_plane", "schema", "dashboard"], ["api"]),
}
# Imported only where an operator asked for them, behind a function-level import.
OPTIONAL = {"control_plane.k8s_sweeper": ["k8s"],
            # `devart supabase` commands: the admin client, only where an operator manages Supabase users
            "control_plane.supabase.admin": ["supabase"],
            # the Telegram channel: loaded only when DEVART_TELEGRAM_BOT_TOKEN and chats are set
            **{f"control_plane.notify.{m}": ["telegram"] for m in
               ("telegram_bot", "telegram_channel", "telegram_sender", "telegram_updates")},
            # the GitHub client: loaded only when DEVART_GITHUB_WEBHOOK_SECRETS is set
            **{f"control_plane.github.{m}": ["github"] for m in ("client", "merge", "reporter", "service")}}

_CHECK = r"""
import importlib, pkgutil, sys
blocked, roots, skip = set(BLOCKED), ROOTS, set(SKIP)

class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in blocked:
            raise ModuleNotFoundError(f"{name} belongs to an extra this part does not install", name=name)
        return None

sys.meta_path.insert(0, Refuse())
failures = []
for root in roots:
    module = importlib.import_module(root)
    names = [root] + [m.name for m in pkgutil.walk_packages(getattr(module, "__path__", []), root + ".")]
    for name in names:
        if name in skip:
            continue
        try:
            importlib.import_module(name)
        except ImportError as exc:
            failures.append(f"{name}: {exc}")
print("\n".join(failures))
"""


def _requirements(dist: str, extra: str | None = None) -> set[str]:
    found = set()
    for req in metadata.requires(dist) or []:
        name, _, marker = req.partition(";")
        wanted = f'extra == "{extra}"' in marker if extra else "extra ==" not in marker
        if wanted and "sys_platform == 'win32'" not in marker.replace('"', "'").replace("!=", "=="):
            found.add(re.split(r"[<>=!~\[ ]", name.strip(), maxsplit=1)[0].lower().replace("_", "-"))
    return found


def _closure(names: set[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if name == "devart":
            continue
        try:
            todo.extend(_requirements(name))
        except metadata.PackageNotFoundError:
            pass
    return seen


def _allowed(extras: list[str]) -> set[str]:
    direct = _requirements("devart")
    for extra in extras:
        for req in _requirements("devart", extra):
            direct.add(req)
    # an extra that names devart[other] brings that extra's requirements too
    for extra in extras:
        for req in metadata.requires("devart") or []:
            if f'extra == "{extra}"' in req and req.startswith("devart["):
                for other in req[len("devart["):req.index("]")].split(","):
                    direct |= _requirements("devart", other.strip())
    return _closure(direct)


def _blocked(extras: list[str]) -> list[str]:
    allowed = _allowed(extras)
    blocked = []
    for module, dists in metadata.packages_distributions().items():
        names = {d.lower().replace("_", "-") for d in dists}
        if "devart" in names or module.startswith("_"):
            continue
        if not names & allowed:
            blocked.append(module)
    return sorted(blocked)


@pytest.mark.parametrize("part", sorted(PARTS))
def test_every_module_imports_with_only_its_extras(part: str) -> None:
    roots, extras = PARTS[part]
    skip = [name for name, needs in OPTIONAL.items() if not set(needs) <= set(extras)]
    skip += [r for p, (rs, _) in PARTS.items() if p != part for r in rs if any(r.startswith(x + ".") for x in roots)]
    script = (_CHECK.replace("BLOCKED", json.dumps(_blocked(extras))).replace("ROOTS", json.dumps(roots))
              .replace("SKIP", json.dumps(skip)))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=100)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "", f"modules of {part} need packages outside {extras}:\n{result.stdout}"
