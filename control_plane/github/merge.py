"""The auto-merge gate: a pull request of a repository that opts in is merged when its latest check
run succeeded, the required approvals are in (GitHub reviews, and a devart approval object when the
policy asks for one), the head is the commit that was checked, and the blocking label is absent.

Every decision is audited (``github.merge`` or ``github.merge_refused`` with the reason) and the
reason is shown in the pull request's summary comment. The merge names the checked sha, so GitHub
itself refuses it (409) if the head moved in between.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg

from control_plane import approvals
from control_plane.audit import audit
from control_plane.github.client import GitHubError, GitHubPort
from control_plane.github.settings import RepositoryPolicy

APPROVAL_SUBJECT = "github_merge"
"""The approvals' subject kind of merge approvals; the id is ``<repo>#<number>@<sha>``."""
_ACTOR = "github-merge-gate"
_APPROVAL_TTL = timedelta(days=7)


@dataclass(frozen=True)
class Decision:
    state: str
    """``merged``, ``refused``, or ``none`` (nothing to decide yet)."""
    reason: str
    sha: str | None = None


async def decide(conn: asyncpg.Connection, port: GitHubPort, pull: asyncpg.Record,
                 policy: RepositoryPolicy) -> Decision:
    """Decide (and merge) one pull request (caller's transaction, ``pull`` locked)."""
    repo, number, installation = pull["repo"], pull["number"], pull["installation_id"]
    check = await conn.fetchrow(
        """SELECT c.head_sha, c.run_id, r.state FROM github_checks c JOIN workflow_runs r ON r.id = c.run_id
           WHERE c.repo = $1 AND c.number = $2 ORDER BY c.created_at DESC LIMIT 1""",
        repo, number,
    )
    if check is None or check["state"] in ("queued", "running", "cancelling"):
        return Decision("none", "")
    sha = check["head_sha"]
    if check["state"] != "succeeded":
        return await _refuse(conn, pull, f"the check run of {sha[:12]} {check['state']}", sha)
    pr = await port.pull_request(installation, repo, number)
    if pr.merged:
        return Decision("merged", "already merged", sha)
    if pr.state != "open":
        return await _refuse(conn, pull, f"the pull request is {pr.state}", sha)
    if pr.head_sha != sha:
        return await _refuse(conn, pull, f"the head {pr.head_sha[:12]} is not the checked commit {sha[:12]}", sha)
    if policy.blocking_label in pr.labels:
        return await _refuse(conn, pull, f"the label {policy.blocking_label} is set", sha)
    latest: dict[str, str] = {}
    for review in await port.reviews(installation, repo, number):
        if review.state in ("APPROVED", "CHANGES_REQUESTED", "DISMISSED"):
            latest[review.user] = review.state
    approving = sorted(user for user, state in latest.items() if state == "APPROVED")
    if len(approving) < policy.required_approvals:
        return await _refuse(conn, pull, f"{len(approving)} of {policy.required_approvals} required approving "
                                         "reviews", sha)
    if policy.devart_approval:
        waiting = await _devart_approval(conn, pull, policy, sha, check["run_id"])
        if waiting is not None:
            return await _refuse(conn, pull, waiting, sha)
    try:
        merged = await port.merge(installation, repo, number, sha=sha, method=policy.merge_method,
                                  title=f"Merge #{number} (checked by devart)")
    except GitHubError as exc:
        if exc.permanent:
            return await _refuse(conn, pull, f"GitHub refused the merge: {exc.message}", sha)
        raise
    await audit(conn, actor=_ACTOR, action="github.merge", target=f"{repo}#{number}",
                detail={"sha": sha, "merge_sha": merged, "method": policy.merge_method, "approvals": approving})
    return Decision("merged", f"merged {sha[:12]} as {merged[:12]} ({policy.merge_method})", sha)


async def _refuse(conn: asyncpg.Connection, pull: asyncpg.Record, reason: str, sha: str) -> Decision:
    await audit(conn, actor=_ACTOR, action="github.merge_refused", target=f"{pull['repo']}#{pull['number']}",
                detail={"sha": sha, "reason": reason})
    return Decision("refused", reason, sha)


async def _devart_approval(conn: asyncpg.Connection, pull: asyncpg.Record, policy: RepositoryPolicy,
                           sha: str, run_id: object) -> str | None:
    """None when the devart approval of this commit is given; otherwise why not (created if missing)."""
    subject_id = f"{pull['repo']}#{pull['number']}@{sha}"
    row = await conn.fetchrow(
        "SELECT id, state FROM approvals WHERE subject_kind = $1 AND subject_id = $2 ORDER BY created_at DESC LIMIT 1",
        APPROVAL_SUBJECT, subject_id,
    )
    if row is not None and row["state"] == "approved":
        return None
    if row is None or row["state"] in ("expired", "cancelled"):
        approval = await approvals.create_approval(
            conn, subject_kind=APPROVAL_SUBJECT, subject_id=subject_id,
            summary=f"merge {pull['repo']}#{pull['number']} at {sha[:12]}", link=f"/api/v1/runs/{run_id}",
            risk="medium", requested_by=_ACTOR, expires_at=datetime.now(UTC) + _APPROVAL_TTL,
            roles=policy.approval_roles, principals=[], min_approvals=1, prevent_self=False,
        )
        return f"waiting for devart approval {approval.id}"
    if row["state"] == "refused":
        return f"devart approval {row['id']} was refused"
    return f"waiting for devart approval {row['id']}"


async def approval_decided(conn: asyncpg.Connection, approval: approvals.Approval) -> None:
    """The approvals' outcome handler for merge approvals: the gate looks again (deciding transaction)."""
    target, _, _ = approval.subject.id.rpartition("@")
    repo, _, number = target.rpartition("#")
    await conn.execute(
        """UPDATE github_pulls SET merge_due = true, available_at = least(available_at, now())
           WHERE repo = $1 AND number = $2""",
        repo, int(number),
    )
    await conn.execute("SELECT pg_notify('devart_github', '')")
