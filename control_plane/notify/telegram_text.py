"""What a Telegram message says: HTML escaped for ``parse_mode=HTML``, cut to Telegram's 4096 characters.

Every line is a self-contained piece of HTML (a tag opened on a line closes on it), so a message that
is too long is cut between lines, or inside a line's text before its markup is added, never through
a tag or an entity.
"""

from __future__ import annotations

import html
from datetime import datetime
from typing import Any

MAX_TEXT = 4096
_MAX_LINE = 600
_DIGEST_LINES = 30


def escape(text: str) -> str:
    return html.escape(text, quote=False)


def clip(text: str, limit: int = _MAX_LINE) -> str:
    """``text`` (plain) cut to ``limit`` characters with an ellipsis, then escaped."""
    flat = " ".join(text.split())
    return escape(flat if len(flat) <= limit else flat[: limit - 1] + "…")


def fit(lines: list[str]) -> str:
    """Join whole lines while they fit in ``MAX_TEXT`` (Telegram counts UTF-16 code units)."""
    out: list[str] = []
    used = 0
    for line in lines:
        size = _utf16_len(line) + (1 if out else 0)
        if used + size > MAX_TEXT - 2:
            out.append("…")
            break
        out.append(line)
        used += size
    return "\n".join(out)


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def severity_label(severity: float) -> str:
    return "critical" if severity >= 0.8 else "major" if severity >= 0.5 else "minor"


_ICONS = {"critical": "🔴", "major": "🟠", "minor": "🟡"}
_STATUS_ICON = {"open": "", "acknowledged": "👀 ", "resolved": "✅ "}


def incident_text(facts: dict[str, Any], notes: list[str]) -> str:
    label = severity_label(float(facts["severity"]))
    services = ", ".join(facts.get("services") or []) or "unknown service"
    status = facts["status"]
    lines = [
        f"{_STATUS_ICON.get(status, '')}{_ICONS[label]} <b>{escape(label)}</b> ({float(facts['severity']):.2f}) · "
        f"{escape(status)} · {clip(services, 200)}",
        f"<b>{clip(str(facts['title']), 300)}</b>",
    ]
    rca = facts.get("rca")
    if rca and rca.get("service"):
        confidence = float(rca.get("confidence") or 0.0)
        lines.append(f"Root cause: <b>{clip(str(rca['service']), 200)}</b> ({clip(str(rca.get('category') or ''), 60)}), "
                     f"confidence {confidence:.0%}")
        if rca.get("summary"):
            lines.append(clip(str(rca["summary"])))
    for remediation in facts.get("remediations") or []:
        lines.append(f"Remediation {clip(str(remediation.get('action', '')), 60)} "
                     f"{clip(str(remediation.get('target', '')), 120)}: "
                     f"<b>{clip(str(remediation.get('state', '')), 40)}</b>"
                     + (f" — {clip(str(remediation['reason']), 200)}" if remediation.get("reason") else ""))
    lines += _kill_switch(facts)
    if facts.get("acknowledged_by"):
        lines.append(f"Acknowledged by {clip(str(facts['acknowledged_by']), 100)}")
    if facts.get("resolved_by"):
        lines.append(f"Resolved by {clip(str(facts['resolved_by']), 100)}")
    lines += [clip(note, 300) for note in notes]
    return fit(lines)


def digest_text(members: list[dict[str, Any]]) -> str:
    lines = [f"<b>{len(members)} incidents</b> opened in a burst"]
    for facts in members[:_DIGEST_LINES]:
        label = severity_label(float(facts["severity"]))
        lines.append(f"{_ICONS[label]} {escape(facts['status'])} · {clip(', '.join(facts.get('services') or []), 80)} · "
                     f"{clip(str(facts['title']), 160)}")
    if len(members) > _DIGEST_LINES:
        lines.append(f"… and {len(members) - _DIGEST_LINES} more")
    return fit(lines)


def approval_text(facts: dict[str, Any], notes: list[str], chat_allowed: bool) -> str:
    state = facts["state"]
    lines = [
        f"🗳 <b>Approval {escape(state)}</b> · risk {escape(str(facts.get('risk', '')))}",
        f"<b>{clip(str(facts.get('title') or facts.get('subject_kind', '')), 300)}</b>",
    ]
    if facts.get("reason"):
        lines.append(clip(str(facts["reason"])))
    if state == "pending":
        lines.append(f"{facts.get('approvals', 0)} of {facts.get('min_approvals', 1)} approval(s); "
                     f"expires {escape(str(facts.get('expires_at', ''))[:16].replace('T', ' '))} UTC")
        if not chat_allowed:
            lines.append("Risk too high to decide from the chat: use the console or the API.")
    lines += _kill_switch(facts)
    lines += [clip(note, 300) for note in notes]
    return fit(lines)


def _kill_switch(facts: dict[str, Any]) -> list[str]:
    """The line of a subject whose remediation is held by the kill switch (none while it is off)."""
    paused = facts.get("kill_switch")
    if not paused:
        return []
    reason = f" ({clip(str(paused['reason']), 200)})" if paused.get("reason") else ""
    return [f"⏸ <b>Remediation is PAUSED</b> by {clip(str(paused.get('by') or 'unknown'), 100)}{reason}: "
            "nothing will be applied until it is resumed"]


def decision_note(verb: str, who: str, at: datetime) -> str:
    return f"{verb} by {who} at {at:%H:%M} UTC"
