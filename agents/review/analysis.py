"""The part of a review that runs inside the sandbox: checkout, diff, ruff and shellcheck.

One sandbox run prints its sections to stdout, each after a marker line (on a line of its own: a
tool's output may not end with a newline) holding a nonce the checked-out code cannot know: the
checkout's path, the diff (``git diff -U0 base...HEAD``), ruff's JSON on the changed
Python files and shellcheck's ``json1`` on the changed shell files. The agent parses them outside.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

_SCRIPT = """\
d() { git -c core.quotePath=false diff --no-color --no-ext-diff --no-renames "$REVIEW_BASE...HEAD" "$@"; }
echo "$REVIEW_MARK root"
pwd
printf '\\n%s diff\\n' "$REVIEW_MARK"
d -U0 --diff-filter=AM --
printf '\\n%s ruff\\n' "$REVIEW_MARK"
d --name-only -z --diff-filter=AM -- '*.py' '*.pyi' \\
  | xargs -0 -r "$REVIEW_RUFF" check --output-format json --exit-zero --no-cache --quiet --
printf '\\n%s shellcheck\\n' "$REVIEW_MARK"
if command -v "$REVIEW_SHELLCHECK" >/dev/null; then
  d --name-only -z --diff-filter=AM -- '*.sh' '*.bash' \\
    | xargs -0 -r -n 20 "$REVIEW_SHELLCHECK" --format json1 -- || [ $? -eq 123 ]
fi
printf '\\n%s end\\n' "$REVIEW_MARK"
"""


def script_env(*, base: str, ruff: str, shellcheck: str) -> tuple[str, dict[str, str]]:
    """The script and its environment; the marker is fresh for every review."""
    mark = f"::devart-review-{secrets.token_hex(16)}::"
    return _SCRIPT, {"REVIEW_MARK": mark, "REVIEW_BASE": base, "REVIEW_RUFF": ruff, "REVIEW_SHELLCHECK": shellcheck}


@dataclass
class Sections:
    root: str = ""
    diff: str = ""
    ruff: list[dict[str, Any]] = field(default_factory=list)
    shellcheck: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False


def _json_values(text: str) -> list[Any]:
    decoder, values, at = json.JSONDecoder(), [], 0
    while True:
        while at < len(text) and text[at].isspace():
            at += 1
        if at == len(text):
            return values
        value, at = decoder.raw_decode(text, at)
        values.append(value)


def parse(lines: list[str], mark: str) -> Sections:
    """Split the run's stdout at the marker lines; raises ``ValueError`` on output that is not JSON."""
    parts: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in lines:
        if line.startswith(mark + " "):
            current = parts.setdefault(line[len(mark) + 1 :], [])
        elif current is not None:
            current.append(line)
    ruff = [item for value in _json_values("\n".join(parts.get("ruff", []))) for item in value]
    checks = [item for value in _json_values("\n".join(parts.get("shellcheck", []))) for item in value["comments"]]
    root = "".join(parts.get("root", []))
    return Sections(root, "\n".join(parts.get("diff", [])), ruff, checks, complete="end" in parts)
