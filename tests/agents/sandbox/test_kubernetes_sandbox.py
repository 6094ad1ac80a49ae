"""KubernetesSandbox end to end: the official client against the fake API server in tests.k8s_fake."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from agents.sandbox.base import SandboxResult, SandboxSpec
from agents.sandbox.kubernetes import (
    KubernetesSandbox,
    KubernetesSandboxSettings,
    build_job_manifest,
    job_name,
)
from tests.k8s_fake import FakeKubernetes

NAMESPACE = "devart-sandbox"


@pytest.fixture
def fake() -> Iterator[FakeKubernetes]:
    with FakeKubernetes((NAMESPACE,)) as cluster:
        yield cluster


@pytest.fixture
def settings(fake: FakeKubernetes, tmp_path: Path) -> KubernetesSandboxSettings:
    return KubernetesSandboxSettings(
        kubeconfig=fake.write_kubeconfig(tmp_path / "kubeconfig"),
        reconcile_interval_s=1.0,
        unschedulable_timeout_s=0.3,
        waiting_timeout_s=0.3,
        log_drain_timeout_s=5,
        watch_timeout_s=30,
    )


@pytest.fixture
async def sandbox(settings: KubernetesSandboxSettings) -> AsyncIterator[KubernetesSandbox]:
    async with KubernetesSandbox(settings) as box:
        yield box


async def eventually(condition: Callable[[], object], within_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Running:
    """One ``sandbox.run`` in the background, with the lines it streamed and its cancel event."""

    def __init__(self, sandbox: KubernetesSandbox, spec: SandboxSpec) -> None:
        self.spec = spec
        self.job = job_name(spec.task_id, spec.attempt)
        self.lines: list[tuple[str, str]] = []
        self.cancel = asyncio.Event()
        self.task = asyncio.create_task(sandbox.run(spec, on_log=self._on_log, cancel=self.cancel))

    async def _on_log(self, stream: str, line: str) -> None:
        self.lines.append((stream, line))

    async def result(self) -> SandboxResult:
        async with asyncio.timeout(15):
            return await self.task


def _spec(task_id: str = "task-1", **overrides: object) -> SandboxSpec:
    return SandboxSpec(task_id=task_id, command=["python", "-c", "print('hi')"], **overrides)


async def _started(fake: FakeKubernetes, sandbox: KubernetesSandbox, spec: SandboxSpec) -> Running:
    run = Running(sandbox, spec)
    await eventually(lambda: fake.pods_of(run.job))
    return run


async def test_logs_stream_while_the_pod_runs_then_success(
    fake: FakeKubernetes, sandbox: KubernetesSandbox
) -> None:
    run = await _started(fake, sandbox, _spec())
    fake.start(run.job)
    fake.log(run.job, "collecting", "3 passed")
    await eventually(lambda: len(run.lines) == 2)
    assert not run.task.done(), "lines must arrive while the pod still runs"
    fake.log(run.job, "done")
    fake.finish(run.job, 0)

    result = await run.result()
    assert result.outcome == "succeeded" and result.exit_code == 0
    assert run.lines == [("stdout", "collecting"), ("stdout", "3 passed"), ("stdout", "done")]
    assert result.stdout_tail == "collecting\n3 passed\ndone"
    assert [job["metadata"]["name"] for job in fake.jobs()] == [run.job]


@pytest.mark.parametrize(("exit_code", "reason"), [(3, "Error"), (137, "OOMKilled")])
async def test_failure_reports_exit_code_and_reason(
    fake: FakeKubernetes, sandbox: KubernetesSandbox, exit_code: int, reason: str
) -> None:
    run = await _started(fake, sandbox, _spec())
    fake.start(run.job)
    fake.log(run.job, "boom")
    fake.finish(run.job, exit_code, reason)

    result = await run.result()
    assert (result.outcome, result.exit_code, result.reason) == ("failed", exit_code, reason)
    assert result.stdout_tail == "boom"


async def test_deadline_exceeded_is_timed_out(fake: FakeKubernetes, sandbox: KubernetesSandbox) -> None:
    run = await _started(fake, sandbox, _spec(timeout_s=30))
    fake.start(run.job)
    fake.exceed_deadline(run.job)

    result = await run.result()
    assert (result.outcome, result.reason) == ("timed_out", "DeadlineExceeded")


async def test_unschedulable_too_long_fails_and_removes_the_job(
    fake: FakeKubernetes, sandbox: KubernetesSandbox
) -> None:
    run = await _started(fake, sandbox, _spec())
    fake.unschedulable(run.job)

    result = await run.result()
    assert (result.outcome, result.reason) == ("failed", "Unschedulable")
    assert "Insufficient memory" in result.stderr_tail
    assert fake.jobs() == [] and fake.pods_of(run.job) == []


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("ImagePullBackOff", 'Back-off pulling image "python:3.11-slim"'),
        ("CreateContainerConfigError", 'secret "gh" not found'),
    ],
)
async def test_container_stuck_waiting_too_long_fails(
    fake: FakeKubernetes, sandbox: KubernetesSandbox, reason: str, message: str
) -> None:
    run = await _started(fake, sandbox, _spec())
    fake.wait_container(run.job, reason, message)

    result = await run.result()
    assert (result.outcome, result.reason) == ("failed", reason)
    assert message in result.stderr_tail
    assert fake.jobs() == []


async def test_job_deleted_by_someone_else_ends_the_run(
    fake: FakeKubernetes, sandbox: KubernetesSandbox
) -> None:
    run = await _started(fake, sandbox, _spec())
    fake.start(run.job)
    await asyncio.to_thread(
        sandbox.batch.delete_namespaced_job, run.job, NAMESPACE, propagation_policy="Background"
    )

    result = await run.result()
    assert (result.outcome, result.reason) == ("cancelled", "JobDeleted")


async def test_job_deleted_before_the_run_first_reads_it_ends_the_run(
    fake: FakeKubernetes, sandbox: KubernetesSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Someone deletes the Job as soon as it is created, before the run's watches list it: the run
    # created it, so finding none means it was deleted (under load, the race above lands here too).
    create = fake._create

    def create_then_delete(resource: str, namespace: str, body: dict[str, object]) -> object:
        created = create(resource, namespace, body)
        if resource == "jobs":
            name = created.body["metadata"]["name"]
            for pod in fake.pods_of(name, namespace):
                fake.store.delete("pods", namespace, pod["metadata"]["name"])
            fake.store.delete("jobs", namespace, name)
        return created

    monkeypatch.setattr(fake, "_create", create_then_delete)
    result = await Running(sandbox, _spec()).result()
    assert (result.outcome, result.reason) == ("cancelled", "JobDeleted")


async def test_cancel_deletes_the_job_with_a_propagation_policy(
    fake: FakeKubernetes, sandbox: KubernetesSandbox
) -> None:
    run = await _started(fake, sandbox, _spec())
    fake.start(run.job)
    fake.log(run.job, "working")
    await eventually(lambda: run.lines)
    run.cancel.set()

    result = await run.result()
    assert result.outcome == "cancelled"
    assert fake.deletions == [{"resource": "jobs", "name": run.job, "propagationPolicy": "Foreground"}]
    assert fake.jobs() == [] and fake.pods_of(run.job) == [], "no pod may be orphaned"


async def test_same_attempt_twice_adopts_the_existing_job(
    fake: FakeKubernetes, sandbox: KubernetesSandbox
) -> None:
    first = await _started(fake, sandbox, _spec())
    first.task.cancel()  # the agent died mid-run; its Job lives on
    await asyncio.gather(first.task, return_exceptions=True)
    fake.start(first.job)

    second = await _started(fake, sandbox, _spec())
    fake.log(first.job, "still me")
    fake.finish(first.job, 0)

    result = await second.result()
    assert result.outcome == "succeeded" and result.stdout_tail == "still me"
    assert len(fake.jobs()) == 1 and len(fake.pods_of(first.job)) == 1
    creates = [r for r in fake.requests if r.method == "POST" and r.resource == "jobs"]
    assert len(creates) == 2


async def test_watch_survives_410_gone(fake: FakeKubernetes, settings: KubernetesSandboxSettings) -> None:
    # No periodic read within the test's time: only the re-listed watch can deliver the outcome.
    async with KubernetesSandbox(settings.model_copy(update={"reconcile_interval_s": 600})) as sandbox:
        await _watch_across_gone(fake, sandbox)


async def _watch_across_gone(fake: FakeKubernetes, sandbox: KubernetesSandbox) -> None:
    run = await _started(fake, sandbox, _spec())

    def lists() -> int:
        return sum(
            1 for r in fake.requests if r.resource == "jobs" and r.method == "GET" and "watch" not in r.query
        )

    await eventually(
        lambda: any(r.query.get("watch") == "true" for r in fake.requests if r.resource == "jobs")
    )
    before = lists()
    fake.store.expire_history()
    await eventually(lambda: lists() > before)
    fake.start(run.job)
    fake.log(run.job, "after the gap")
    fake.finish(run.job, 0)

    result = await run.result()
    assert result.outcome == "succeeded" and result.stdout_tail == "after the gap"


async def test_sweeper_deletes_only_jobs_of_terminal_tasks(
    fake: FakeKubernetes, sandbox: KubernetesSandbox, settings: KubernetesSandboxSettings
) -> None:
    for task_id in ("done-task", "live-task"):
        manifest = build_job_manifest(_spec(task_id), settings)
        await asyncio.to_thread(sandbox.batch.create_namespaced_job, NAMESPACE, manifest)
    seen: list[str] = []

    async def is_terminal(task_id: str) -> bool:
        seen.append(task_id)
        return task_id == "done-task"

    deleted = await sandbox.sweep_finished_jobs(is_terminal)

    assert deleted == [job_name("done-task", 1)]
    assert sorted(seen) == ["done-task", "live-task"]
    assert [job["metadata"]["name"] for job in fake.jobs()] == [job_name("live-task", 1)]
    assert fake.pods_of(job_name("done-task", 1)) == []
