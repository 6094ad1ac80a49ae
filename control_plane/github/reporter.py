"""Brings GitHub up to what devart knows, the way the Telegram sender does for chats.

Two kinds of outbox rows, both made due in the transaction of the change (a trigger on
``run_transitions`` bumps ``revision``):

- ``github_checks``: one check run per workflow run, created on its first delivery and updated
  after (``queued -> in_progress -> completed`` with a conclusion and the steps table). On
  completion its findings go as annotations in batches of 50 and, for a pull request, those on
  lines the pull request adds as one review of at most ``max_review_comments`` inline comments,
  never repeating a (path, line, rule, message) already posted.
- ``github_pulls``: the pull request's one summary comment, edited in place, and the auto-merge
  gate when it is due.

One row per transaction, locked while GitHub is called; a process that dies before the commit
leaves the row due, so the call is repeated after the restart. Rate limits and 5xx reschedule the
row; a refusal (4xx) marks a check row ``rejected`` with GitHub's message.
"""

from __future__ import annotations

import logging

import asyncpg

from control_plane.github import merge, render
from control_plane.github.client import GitHubError, GitHubPort
from control_plane.github.deliveries import REPORT_CHANNEL
from control_plane.github.settings import GitHubSettings
from control_plane.loops import ListeningLoop
from control_plane.workflows import store

log = logging.getLogger("devart.github")


class GitHubReporter(ListeningLoop):
    name = "github-reporter"

    def __init__(self, pool: asyncpg.Pool, port: GitHubPort, settings: GitHubSettings) -> None:
        super().__init__(pool, REPORT_CHANNEL, settings.report_interval_s)
        self._port = port
        self._settings = settings

    async def run_once(self) -> None:
        await self.try_listen()
        while await self.report_check() or await self.report_pull():
            pass

    # ----- check runs

    async def report_check(self) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT * FROM github_checks WHERE revision > delivered_revision AND state <> 'rejected'
                   AND available_at <= now() ORDER BY available_at LIMIT 1 FOR UPDATE SKIP LOCKED"""
            )
            if row is None:
                return False
            try:
                status = await self._send_check(conn, row)
            except GitHubError as exc:
                await self._failed(conn, "github_checks", "run_id", row["run_id"], row["attempts"], exc)
                return True
            await conn.execute(
                """UPDATE github_checks SET delivered_revision = $2, status = $3, state = 'sent', attempts = 0,
                       last_error = NULL WHERE run_id = $1""",
                row["run_id"], row["revision"], status,
            )
            return True

    async def _send_check(self, conn: asyncpg.Connection, row: asyncpg.Record) -> str:
        run = await store.get_run(conn, row["run_id"])
        jobs = await store.run_jobs(conn, row["run_id"])
        status, conclusion = render.check_status(run["state"])
        found = render.findings(jobs)[: self._settings.max_annotations] if status == "completed" else []
        output = render.check_output(run, jobs, len(found))
        repo, installation = row["repo"], row["installation_id"]
        check_run_id = row["check_run_id"]
        if check_run_id is None:
            check_run_id = await self._port.create_check_run(
                installation, repo, name=row["name"], head_sha=row["head_sha"], external_id=str(row["run_id"]),
                status=status, conclusion=conclusion, output=output)
            await conn.execute("UPDATE github_checks SET check_run_id = $2 WHERE run_id = $1", row["run_id"],
                               check_run_id)
        else:
            await self._port.update_check_run(installation, repo, check_run_id, status=status, conclusion=conclusion,
                                              output=output)
        sent = row["annotations_sent"]
        while sent < len(found):
            batch = found[sent:sent + render.ANNOTATION_BATCH]
            await self._port.update_check_run(installation, repo, check_run_id, status=status, conclusion=conclusion,
                                              output=output | {"annotations": [f.annotation() for f in batch]})
            sent += len(batch)
            await conn.execute("UPDATE github_checks SET annotations_sent = $2 WHERE run_id = $1", row["run_id"], sent)
        if status == "completed" and row["number"] is not None and not row["reviewed"]:
            async with conn.transaction():  # the fingerprints commit only with the review posted
                await self._review(conn, row, found)
        return status

    async def _review(self, conn: asyncpg.Connection, row: asyncpg.Record, found: list[render.Finding]) -> None:
        """Inline comments on the lines the pull request adds, each finding once per pull request."""
        repo, number = row["repo"], row["number"]
        comments: list[dict[str, object]] = []
        if found:
            files = await self._port.pull_files(row["installation_id"], repo, number)
            added = {f.path: render.added_lines(f.patch) for f in files}
            posted = {r["fingerprint"] for r in await conn.fetch(
                "SELECT fingerprint FROM github_review_comments WHERE repo = $1 AND number = $2", repo, number)}
            for finding in found:
                if len(comments) >= self._settings.max_review_comments:
                    break
                if finding.line not in added.get(finding.path, ()) or finding.fingerprint in posted:
                    continue
                comments.append({"path": finding.path, "line": finding.line, "side": "RIGHT",
                                 "body": f"**{finding.rule or 'devart'}**: {finding.message}"[:65_000]})
                await conn.execute(
                    """INSERT INTO github_review_comments (repo, number, fingerprint, run_id, path, line)
                       VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING""",
                    repo, number, finding.fingerprint, row["run_id"], finding.path, finding.line,
                )
                posted.add(finding.fingerprint)
        if comments:
            await self._port.create_review(
                row["installation_id"], repo, number, commit_id=row["head_sha"], comments=comments,
                body=f"devart found {len(comments)} new finding(s) on lines this pull request adds.")
        await conn.execute("UPDATE github_checks SET reviewed = true WHERE run_id = $1", row["run_id"])

    # ----- pull requests: the summary comment and the merge gate

    async def report_pull(self) -> bool:
        async with self._pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow(
                """SELECT * FROM github_pulls WHERE (revision > delivered_revision OR merge_due)
                   AND available_at <= now() ORDER BY available_at LIMIT 1 FOR UPDATE SKIP LOCKED"""
            )
            if row is None:
                return False
            try:
                if row["merge_due"]:
                    row = await self._gate(conn, row)
                await self._send_comment(conn, row)
            except GitHubError as exc:
                await self._failed(conn, "github_pulls", None, (row["repo"], row["number"]), row["attempts"], exc)
            return True

    async def _gate(self, conn: asyncpg.Connection, row: asyncpg.Record) -> asyncpg.Record:
        policy = self._settings.config.policy(row["repo"])
        decision = merge.Decision("none", "")
        if policy is not None and policy.auto_merge and row["merge_state"] != "merged":
            decision = await merge.decide(conn, self._port, row, policy)
        state = decision.state if decision.state != "none" else row["merge_state"]
        reason = decision.reason if decision.state != "none" else row["merge_reason"]
        return await conn.fetchrow(
            """UPDATE github_pulls SET merge_due = false, merge_state = $3, merge_reason = $4,
                   merged_sha = coalesce($5, merged_sha),
                   revision = revision + CASE WHEN merge_state = $3 AND merge_reason = $4 THEN 0 ELSE 1 END
               WHERE repo = $1 AND number = $2 RETURNING *""",
            row["repo"], row["number"], state, reason, decision.sha if decision.state == "merged" else None,
        )

    async def _send_comment(self, conn: asyncpg.Connection, row: asyncpg.Record) -> None:
        if row["revision"] <= row["delivered_revision"]:
            return
        repo, number = row["repo"], row["number"]
        runs = await conn.fetch(
            """SELECT r.id, r.workflow, r.state, c.head_sha FROM github_checks c JOIN workflow_runs r ON r.id = c.run_id
               WHERE c.repo = $1 AND c.number = $2 ORDER BY c.created_at DESC LIMIT 6""",
            repo, number,
        )
        jobs = await store.run_jobs(conn, runs[0]["id"]) if runs else []
        body = render.summary_comment(repo, number, row["head_sha"], runs, jobs, row["merge_state"], row["merge_reason"])
        comment_id = row["comment_id"]
        if comment_id is not None:
            try:
                await self._port.update_comment(row["installation_id"], repo, comment_id, body)
            except GitHubError as exc:
                if exc.status != 404:
                    raise
                comment_id = None  # someone deleted it: post it anew
        if comment_id is None:
            comment_id = await self._port.create_comment(row["installation_id"], repo, number, body)
        await conn.execute(
            """UPDATE github_pulls SET comment_id = $3, delivered_revision = $4, attempts = 0, last_error = NULL
               WHERE repo = $1 AND number = $2""",
            repo, number, comment_id, row["revision"],
        )

    # ----- failures

    async def _failed(self, conn: asyncpg.Connection, table: str, key: str | None, value: object, attempts: int,
                      exc: GitHubError) -> None:
        if exc.retry_after_s is not None:
            delay = exc.retry_after_s
        else:
            delay = min(self._settings.retry_s * 2 ** min(attempts, 8), 600.0)
        reject = exc.permanent and table == "github_checks"
        where = "run_id = $1" if key else "(repo, number) = ($1, $2)"
        args = [value] if key else list(value)  # type: ignore[call-overload]
        n = len(args)
        await conn.execute(
            f"""UPDATE {table} SET attempts = attempts + 1, last_error = ${n + 1},
                   available_at = now() + make_interval(secs => ${n + 2})
                   {", state = 'rejected'" if reject else ""} WHERE {where}""",
            *args, str(exc)[:500], delay,
        )
        log.warning("github refused or missed %s %s (%s); %s", table, value, exc,
                    "rejected" if reject else f"retrying in {delay:.1f}s")
