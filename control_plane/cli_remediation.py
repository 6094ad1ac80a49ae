"""``devart remediation status | pause | resume``: the remediation kill switch, through the API."""

from __future__ import annotations

import argparse
from typing import Any

from control_plane.cli_common import api, command, emit, group


def register(sub: argparse._SubParsersAction) -> None:
    remediation = group(sub, "remediation", help="the remediation kill switch: see it, pull it, lift it")
    command(remediation, "status", run=_status,
            help="whether remediation is paused (nothing is applied), by whom, why, and the policy in use")
    pause = command(remediation, "pause", run=_pause,
                    help="kill switch: apply no remediation at all until resumed, whatever the policy or approvals "
                         "say (admin; survives restarts)")
    pause.add_argument("--reason", default="", help="why, for the record and everyone who sees the switch")
    resume = command(remediation, "resume", run=_resume, help="lift the kill switch (admin)")
    resume.add_argument("--reason", default="", help="why, for the record")


def describe(control: dict[str, Any]) -> str:
    """One line for people: ``paused by ada at ... (incident review)`` or ``active``."""
    if not control["paused"]:
        return "active (remediations are applied as the policy says)"
    why = f" ({control['reason']})" if control.get("reason") else ""
    return f"PAUSED by {control['changed_by']} at {control['changed_at']}{why}: nothing is applied"


def _text(control: dict[str, Any]) -> str:
    return f"remediation   {describe(control)}\npolicy        {control['policy']}"


def _status(args: argparse.Namespace) -> int:
    with api(args) as client:
        emit(args, client.get("/api/v1/remediation/status"), _text)
    return 0


def _pause(args: argparse.Namespace) -> int:
    with api(args) as client:
        emit(args, client.post("/api/v1/remediation/pause", json={"reason": args.reason}), _text)
    return 0


def _resume(args: argparse.Namespace) -> int:
    with api(args) as client:
        emit(args, client.post("/api/v1/remediation/resume", json={"reason": args.reason}), _text)
    return 0
