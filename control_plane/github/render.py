"""What devart shows on GitHub, computed from a run: the check run's status, conclusion and output
(a table of steps), the findings its steps reported (annotations, inline comments), the lines a
pull request adds, and the one summary comment."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

SUMMARY_MARKER = "<!-- devart:summary -->"
ANNOTATION_BATCH = 50
"""GitHub takes at most 50 annotations per check-run request."""
_CONCLUSION = {"succeeded": "success", "failed": "failure", "cancelled": "cancelled"}
_ICON = {"succeeded": "✅", "failed": "❌", "cancelled": "⏹", "skipped": "⏭", "running": "⏳", "waiting": "…"}
# "path:line: message" or "path:line:col: message", as ruff (concise), flake8, shellcheck -f gcc, grep -n print
_LINE = re.compile(r"^(?P<path>[^\s:][^:]*):(?P<line>\d+):(?:(?P<col>\d+):)?\s*(?P<message>\S.*)$")
_RULE = re.compile(r"^(?P<rule>[A-Z]{1,5}\d{1,5}|SC\d{4})\b\s*(?P<rest>.*)$")
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(?P<start>\d+)(?:,\d+)? @@")


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    message: str
    rule: str = ""
    level: str = "warning"

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256(self.message.encode()).hexdigest()[:16]
        return f"{self.path}:{self.line}:{self.rule}:{digest}"

    def annotation(self) -> dict[str, Any]:
        level = self.level if self.level in ("notice", "warning", "failure") else "warning"
        return {"path": self.path, "start_line": self.line, "end_line": self.line, "annotation_level": level,
                "message": self.message[:64_000], "title": self.rule or "devart"}


def _finding(value: Any) -> Finding | None:
    if isinstance(value, dict):
        try:
            line = int(value.get("line", 0))
        except (TypeError, ValueError):
            return None
        path, message = str(value.get("path") or ""), str(value.get("message") or "")
        if not path or line < 1 or not message:
            return None
        return Finding(path.removeprefix("./"), line, message, str(value.get("rule") or ""),
                       str(value.get("level") or value.get("severity") or "warning"))
    if isinstance(value, str):
        match = _LINE.match(value.strip())
        if match is None:
            return None
        message = match["message"]
        rule = _RULE.match(message)
        if rule is not None:
            return Finding(match["path"].removeprefix("./"), int(match["line"]), rule["rest"] or message, rule["rule"])
        return Finding(match["path"].removeprefix("./"), int(match["line"]), message)
    return None


def findings(jobs: Sequence[asyncpg.Record | dict[str, Any]]) -> list[Finding]:
    """The findings in the steps' ``findings`` outputs: a list of ``{path, line, message, rule, level}``
    or text with one ``path:line[:col]: message`` per line; anything else is not a finding."""
    found: list[Finding] = []
    for job in jobs:
        value = (job["outputs"] or {}).get("findings")
        items = value.splitlines() if isinstance(value, str) else value if isinstance(value, list) else []
        for item in items:
            finding = _finding(item)
            if finding is not None and finding not in found:
                found.append(finding)
    return found


def added_lines(patch: str | None) -> set[int]:
    """Line numbers (in the new file) that a unified diff adds."""
    lines: set[int] = set()
    current = 0
    for text in (patch or "").splitlines():
        hunk = _HUNK.match(text)
        if hunk is not None:
            current = int(hunk["start"])
        elif text.startswith("+"):
            lines.add(current)
            current += 1
        elif text.startswith("-") or text.startswith("\\"):
            continue
        else:
            current += 1
    return lines


def check_status(run_state: str) -> tuple[str, str | None]:
    if run_state == "queued":
        return "queued", None
    if run_state in ("running", "cancelling"):
        return "in_progress", None
    return "completed", _CONCLUSION[run_state]


def steps_table(jobs: Sequence[asyncpg.Record]) -> str:
    rows = ["| step | result | detail |", "|---|---|---|"]
    for job in jobs:
        detail = (job["skip_reason"] or job["reason"] or "").replace("|", "\\|").replace("\n", " ")[:200]
        rows.append(f"| {job['job']} | {_ICON.get(job['state'], '')} {job['state']} | {detail} |")
    return "\n".join(rows)


def check_output(run: asyncpg.Record, jobs: Sequence[asyncpg.Record], found: int) -> dict[str, Any]:
    title = f"{run['workflow']}: {run['state']}"
    summary = f"Run `{run['id']}` of **{run['workflow']}** v{run['version']}: **{run['state']}**"
    if run["state_reason"]:
        summary += f" ({run['state_reason']})"
    if found:
        summary += f"\n\n{found} finding(s), shown as annotations."
    return {"title": title[:255], "summary": summary[:65_000], "text": steps_table(jobs)[:65_000]}


def summary_comment(repo: str, number: int, head_sha: str, runs: Sequence[asyncpg.Record],
                    jobs: Sequence[asyncpg.Record], merge_state: str, merge_reason: str) -> str:
    lines = [SUMMARY_MARKER, f"### devart: {repo}#{number}", ""]
    if runs:
        latest = runs[0]
        lines.append(f"Latest run `{latest['id']}` of **{latest['workflow']}** on `{latest['head_sha'][:12]}`: "
                     f"**{latest['state']}**")
        lines += ["", steps_table(jobs), ""]
        if len(runs) > 1:
            lines.append("Earlier runs: " + ", ".join(
                f"`{r['head_sha'][:7]}` {r['state']}" for r in runs[1:6]))
    else:
        lines.append(f"No run yet for `{head_sha[:12]}`.")
    if merge_state != "none":
        lines += ["", f"**Auto-merge**: {merge_state}" + (f" — {merge_reason}" if merge_reason else "")]
    return "\n".join(lines)
