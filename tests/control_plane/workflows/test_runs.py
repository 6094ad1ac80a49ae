"""Runs end to end: REST -> engine -> tasks -> shell agent -> events -> engine, on real services."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx

from agents.sdk import AgentRuntime
from tests.control_plane.workflows.conftest import apply, finished, job_state, jobs, start, states


def sh(script: str, **step: object) -> dict[str, object]:
    return {"type": "shell", "requires": ["shell"], "input": {"script": script}, **step}


async def test_failure_skips_dependants_with_reasons_and_finally_sees_every_status(
    admin: httpx.AsyncClient, shell_agent: AgentRuntime, db: asyncpg.Pool
) -> None:
    await apply(admin, {
        "name": "failing",
        "steps": {
            "build": sh("echo built-$((6 * 7))", outputs={"line": "$.stdout_tail"}),
            "review": sh("echo bad review >&2; exit 3", needs=["build"]),
            "test": sh("echo testing ${{ steps.build.outputs.line }}", needs=["build"]),
            "deploy": sh("echo deploy", needs=["test", "review"]),
            "report": sh("echo report", needs={"test": "succeeded", "review": "succeeded|skipped"}),
            "summary": sh("echo summary", needs={"review": "failed|succeeded"}),
        },
        "finally": {
            "notify": sh("echo 'review=${{ steps.review.status }} deploy=${{ steps.deploy.status }}"
                         " outcome=${{ run.outcome }}'", outputs={"said": "$.stdout_tail"}),
        },
    })
    run = await finished(admin, (await start(admin, "failing"))["id"])
    assert run["state"] == "failed", run
    assert states(run) == {"build": "succeeded", "review": "failed", "test": "succeeded", "deploy": "skipped",
                           "report": "skipped", "summary": "succeeded", "notify": "succeeded"}
    by_job = jobs(run)
    assert by_job["deploy"]["skip_reason"] == "needs_unmet: review=failed"
    assert by_job["report"]["skip_reason"] == "needs_unmet: review=failed"
    assert by_job["build"]["outputs"] == {"line": "built-42\n"}
    assert "exit" in by_job["review"]["reason"]
    assert by_job["notify"]["outputs"]["said"] == "review=failed deploy=skipped outcome=failed\n"
    for name in ("build", "review", "test", "summary", "notify"):
        assert by_job[name]["task_id"] and by_job[name]["task_status"] in ("succeeded", "failed")
        assert by_job[name]["attempts"] == 1
    assert by_job["deploy"]["task_id"] is None
    test_task = (await admin.get(f"/api/v1/tasks/{by_job['test']['task_id']}")).json()
    assert test_task["result"]["stdout_tail"] == "testing built-42\n"
    # the run's history is append-only rows; the run ended exactly once
    ends = await db.fetch("SELECT to_state FROM run_transitions WHERE run_id = $1 AND job IS NULL", run["id"])
    assert [r["to_state"] for r in ends] == ["queued", "running", "failed"]


async def test_if_false_skips_and_the_run_succeeds(admin: httpx.AsyncClient, shell_agent: AgentRuntime) -> None:
    await apply(admin, {
        "name": "conditional",
        "inputs": {"ref": {"type": "string", "default": "main"}, "n": {"type": "number", "default": 2}},
        "steps": {
            "build": sh("echo build"),
            "review": sh("echo review", needs=["build"], **{"if": "${{ inputs.ref != 'main' }}"}),
            "big": sh("echo big", **{"if": "inputs.n > 1 && !(inputs.ref == 'x')"}),
            "after": sh("echo after", needs={"review": "succeeded|skipped"}),
        },
    })
    run = await finished(admin, (await start(admin, "conditional"))["id"])
    assert run["state"] == "succeeded", run
    assert states(run) == {"build": "succeeded", "review": "skipped", "big": "succeeded", "after": "succeeded"}
    assert jobs(run)["review"]["skip_reason"] == "if_false"
    other = await finished(admin, (await start(admin, "conditional", {"ref": "feature", "n": 1}))["id"])
    assert states(other) == {"build": "succeeded", "review": "succeeded", "big": "skipped", "after": "succeeded"}


async def test_matrix_fail_fast_and_max_parallel(admin: httpx.AsyncClient, shell_agent: AgentRuntime,
                                                 db: asyncpg.Pool) -> None:
    await apply(admin, {
        "name": "matrix",
        "steps": {
            "test": sh("echo py=${{ matrix.py }}; sleep 0.3", matrix={"py": ["3.10", "3.11", "3.12", "3.13"]},
                       max_parallel=2, outputs={"out": "$.stdout_tail"}),
            "after": sh("echo '${{ steps.test.outputs[\"py=3.12\"].out }}'", needs=["test"]),
        },
    })
    run = await finished(admin, (await start(admin, "matrix"))["id"])
    assert run["state"] == "succeeded", run
    assert set(states(run)) == {"test[py=3.10]", "test[py=3.11]", "test[py=3.12]", "test[py=3.13]", "after"}
    task = (await admin.get(f"/api/v1/tasks/{jobs(run)['after']['task_id']}")).json()
    assert task["result"]["stdout_tail"] == "py=3.12\n\n"
    # never more than two matrix jobs' tasks running at once
    spans = [(j["task_started_at"], j["task_finished_at"]) for j in run["steps"] if j["step"] == "test"]
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most <= 2, spans

    await apply(admin, {
        "name": "fail-fast",
        "steps": {
            "test": sh("if [ ${{ matrix.n }} = 1 ]; then exit 1; fi; sleep 30",
                       matrix={"n": [1, 2, 3, 4]}, max_parallel=2, fail_fast=True),
        },
    })
    run = await finished(admin, (await start(admin, "fail-fast"))["id"])
    assert run["state"] == "failed"
    by_job = jobs(run)
    assert by_job["test[n=1]"]["state"] == "failed"
    for other in ("test[n=2]", "test[n=3]", "test[n=4]"):
        assert by_job[other]["state"] == "cancelled", by_job[other]
        assert by_job[other]["reason"] == "fail_fast: test[n=1] failed"
    # the running sibling's task was cancelled too; the two never started had no task
    assert by_job["test[n=2]"]["task_status"] == "cancelled"
    assert by_job["test[n=3]"]["task_id"] is None and by_job["test[n=4]"]["task_id"] is None

    await apply(admin, {
        "name": "no-fail-fast",
        "steps": {"test": sh("exit $(( ${{ matrix.n }} == 1 ))", matrix={"n": [1, 2, 3]}, fail_fast=False)},
    })
    run = await finished(admin, (await start(admin, "no-fail-fast"))["id"])
    assert states(run) == {"test[n=1]": "failed", "test[n=2]": "succeeded", "test[n=3]": "succeeded"}


async def test_cancel_stops_running_steps_and_runs_finally(admin: httpx.AsyncClient, shell_agent: AgentRuntime) -> None:
    await apply(admin, {
        "name": "long",
        "steps": {"slow": sh("sleep 60"), "next": sh("echo next", needs=["slow"])},
        "finally": {"cleanup": sh("echo 'cleanup after ${{ steps.slow.status }}, ${{ run.outcome }}'",
                                  outputs={"said": "$.stdout_tail"})},
    })
    run = await start(admin, "long")
    await job_state(admin, run["id"], "slow", {"running"})
    slow = jobs((await admin.get(f"/api/v1/runs/{run['id']}")).json())["slow"]

    async def task_running() -> bool:
        return (await admin.get(f"/api/v1/tasks/{slow['task_id']}")).json()["status"] == "running"

    from tests.support.system import wait_for
    await wait_for(task_running, what="the slow task to run")
    cancelled = await admin.post(f"/api/v1/runs/{run['id']}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["state"] in ("cancelling", "cancelled")
    done = await finished(admin, run["id"])
    assert done["state"] == "cancelled"
    assert states(done) == {"slow": "cancelled", "next": "cancelled", "cleanup": "succeeded"}
    assert jobs(done)["cleanup"]["outputs"]["said"] == "cleanup after cancelled, cancelled\n"
    task = (await admin.get(f"/api/v1/tasks/{slow['task_id']}")).json()
    assert task["status"] == "cancelled"
    again = await admin.post(f"/api/v1/runs/{run['id']}/cancel")
    assert again.status_code == 409


async def test_rerun_from_the_failed_step_reuses_upstream_outputs(
    admin: httpx.AsyncClient, shell_agent: AgentRuntime, tmp_path
) -> None:
    from tests.control_plane.workflows.conftest import git

    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "--quiet")
    (repo / "check.sh").write_text("exit 1\n")
    git(repo, "add", ".")
    git(repo, "commit", "--quiet", "-m", "broken")
    await apply(admin, {
        "name": "fixable",
        "inputs": {"repo": {"type": "string"}},
        "steps": {
            "build": sh("od -An -N4 -tu4 /dev/urandom | tr -d ' '", outputs={"token": "$.stdout_tail"}),
            "test": {"type": "shell", "requires": ["shell"], "needs": ["build"],
                     "input": {"repo": "${{ inputs.repo }}", "script": "sh check.sh && echo ok ${{ steps.build.outputs.token }}"}},
            "side": sh("echo side"),
        },
        "finally": {"notify": sh("echo ${{ steps.test.status }}")},
    })
    first = await finished(admin, (await start(admin, "fixable", {"repo": str(repo)}))["id"])
    assert states(first) == {"build": "succeeded", "test": "failed", "side": "succeeded", "notify": "succeeded"}
    assert jobs(first)["test"]["reason"] == "task failed: command failed: exit code 1", jobs(first)["test"]
    (repo / "check.sh").write_text("exit 0\n")
    git(repo, "commit", "--quiet", "-am", "fixed")

    response = await admin.post(f"/api/v1/runs/{first['id']}/rerun")
    assert response.status_code == 201, response.text
    second = await finished(admin, response.json()["id"])
    assert second["state"] == "succeeded", jobs(second)["test"]
    assert second["rerun_of"] == first["id"] and second["trigger"] == "rerun"
    old, new = jobs(first), jobs(second)
    for kept in ("build", "side"):
        assert new[kept]["reused_from"] == first["id"]
        assert new[kept]["task_id"] == old[kept]["task_id"]
        assert new[kept]["outputs"] == old[kept]["outputs"]
    assert new["test"]["reused_from"] is None and new["test"]["task_id"] != old["test"]["task_id"]
    assert new["notify"]["task_id"] != old["notify"]["task_id"]
    task = (await admin.get(f"/api/v1/tasks/{new['test']['task_id']}")).json()
    assert task["result"]["stdout_tail"] == f"ok {old['build']['outputs']['token']}"
    assert (await admin.post(f"/api/v1/runs/{second['id']}/rerun")).status_code == 409


async def test_each_on_conflict_mode(admin: httpx.AsyncClient, shell_agent: AgentRuntime) -> None:
    for mode in ("queue", "cancel_pending", "cancel_running"):
        await apply(admin, {
            "name": f"c-{mode}",
            "inputs": {"pr": {"type": "number"}, "wait": {"type": "number", "default": 0}},
            "concurrency": {"group": "pr-${{ inputs.pr }}", "on_conflict": mode},
            "steps": {"work": sh("sleep ${{ inputs.wait }}")},
            "finally": {"done": sh("echo done")},
        })
    # queue: the second waits for the first, then runs; another group is not held up
    first = await start(admin, "c-queue", {"pr": 1, "wait": 2})
    second = await start(admin, "c-queue", {"pr": 1})
    elsewhere = await start(admin, "c-queue", {"pr": 2})
    assert (first["state"], second["state"], elsewhere["state"]) == ("running", "queued", "running")
    assert first["id"] in second["state_reason"]
    assert (await finished(admin, elsewhere["id"]))["state"] == "succeeded"
    a, b = await finished(admin, first["id"]), await finished(admin, second["id"])
    assert a["state"] == b["state"] == "succeeded"
    assert b["started_at"] >= a["finished_at"]

    # cancel_pending: a third run replaces the pending second; the running first is left alone
    first = await start(admin, "c-cancel_pending", {"pr": 1, "wait": 2})
    second = await start(admin, "c-cancel_pending", {"pr": 1})
    third = await start(admin, "c-cancel_pending", {"pr": 1})
    assert second["state"] == "queued" and third["state"] == "queued"
    b = await finished(admin, second["id"])
    assert b["state"] == "cancelled" and third["id"] in b["state_reason"]
    assert all(j["task_id"] is None for j in b["steps"])  # it never ran, not even its finally
    assert (await finished(admin, first["id"]))["state"] == "succeeded"
    assert (await finished(admin, third["id"]))["state"] == "succeeded"

    # cancel_running: the new run cancels the running one (whose finally still runs), then starts
    first = await start(admin, "c-cancel_running", {"pr": 1, "wait": 60})
    await job_state(admin, first["id"], "work", {"running"})
    second = await start(admin, "c-cancel_running", {"pr": 1})
    a = await finished(admin, first["id"])
    assert a["state"] == "cancelled" and second["id"] in a["state_reason"]
    assert states(a) == {"work": "cancelled", "done": "succeeded"}
    b = await finished(admin, second["id"])
    assert b["state"] == "succeeded"
    assert b["started_at"] >= a["finished_at"]


async def test_idempotency_key_and_inputs_checked(admin: httpx.AsyncClient, shell_agent: AgentRuntime) -> None:
    await apply(admin, {"name": "idem", "inputs": {"x": {"type": "string"}}, "steps": {"a": sh("echo ${{ inputs.x }}")}})
    one = await admin.post("/api/v1/workflows/idem/runs", json={"inputs": {"x": "1"}}, headers={"Idempotency-Key": "k"})
    two = await admin.post("/api/v1/workflows/idem/runs", json={"inputs": {"x": "1"}}, headers={"Idempotency-Key": "k"})
    assert one.status_code == two.status_code == 201
    assert one.json()["id"] == two.json()["id"] and two.headers["Idempotent-Replayed"] == "true"
    other = await admin.post("/api/v1/workflows/idem/runs", json={"inputs": {"x": "2"}}, headers={"Idempotency-Key": "k"})
    assert other.status_code == 409 and other.json()["error"]["field"] == "Idempotency-Key"
    concurrent = await asyncio.gather(*(admin.post("/api/v1/workflows/idem/runs", json={"inputs": {"x": "3"}},
                                                   headers={"Idempotency-Key": "k2"}) for _ in range(6)))
    assert len({r.json()["id"] for r in concurrent}) == 1
    for body, field in (({"inputs": {}}, "body.inputs.x"), ({"inputs": {"x": 1}}, "body.inputs.x"),
                        ({"inputs": {"x": "a", "y": 1}}, "body.inputs.y")):
        bad = await admin.post("/api/v1/workflows/idem/runs", json=body)
        assert bad.status_code == 422 and bad.json()["error"]["field"] == field, bad.text
    missing = await admin.post("/api/v1/workflows/nope/runs", json={})
    assert missing.status_code == 404
    await finished(admin, one.json()["id"])
