"""The runtime against the real broker: the test plays the control plane."""

from __future__ import annotations

from aio_pika.abc import AbstractIncomingMessage

from agents.sdk import (
    AgentHeartbeat,
    AgentHello,
    ControlCommand,
    TaskFailed,
    TaskLog,
    TaskMessage,
    TaskProgress,
    TaskStarted,
    TaskSucceeded,
)
from agents.sdk.messages import HEADER_DEAD_REASON, HEADER_TRACEPARENT, TERMINAL_EVENT_KINDS
from agents.sdk.topology import declare_dead_queue
from tests.agents.sdk import sample_agent
from tests.agents.sdk.broker import TRACEPARENT, ControlPlane, until
from tests.support.system import StartAgent


def _of(task_id: object, kind: type) -> object:
    return lambda e: isinstance(e, kind) and getattr(e, "task_id", None) == task_id


async def test_hello_then_heartbeats(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent(slots=3))
    agent = runtime.agent
    hello = await cp.received.wait_for(lambda e: isinstance(e, AgentHello))
    assert (hello.agent_id, hello.pool_id, hello.slots, hello.seq) == (agent.agent_id, agent.pool_id, 3, 0)
    assert hello.types == ["echo", "fail", "sleep", "wait-cancel"] and hello.skills == ["test"]
    await cp.received.wait_for(lambda e: isinstance(e, AgentHeartbeat) and e.seq >= 2)
    beats = cp.received.matching(lambda e: isinstance(e, AgentHeartbeat))
    assert all(b.state == "active" and b.free_slots == 3 and b.running == [] for b in beats)
    assert [b.seq for b in beats] == sorted({b.seq for b in beats})


async def test_success_with_batched_ordered_logs(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent(), log_batch_lines=100)
    task = await cp.submit(runtime.agent.pool_id, "echo", {"lines": 250, "text": "row"})
    done = await cp.received.wait_for(_of(task.task_id, TaskSucceeded))
    assert done.result == {"lines": 250, "text": "row"}

    events = sorted(
        cp.received.matching(lambda e: getattr(e, "task_id", None) == task.task_id), key=lambda e: e.seq
    )
    assert [e.seq for e in events] == list(range(len(events)))
    assert isinstance(events[0], TaskStarted) and events[-1] is done
    logs = [e for e in events if isinstance(e, TaskLog)]
    assert all(len(e.lines) <= 100 for e in logs) and len(logs) >= 3
    lines = [line for e in logs for line in e.lines]
    assert [line.seq for line in lines] == list(range(250))
    assert [line.text for line in lines] == [f"row {i}" for i in range(250)]
    assert lines[1].stream == "stderr" and lines[2].stream == "stdout"
    assert any(isinstance(e, TaskProgress) and e.progress == 1.0 for e in events)
    # the events continue the delivery's trace (their parent is the attempt's span when a tracer
    # provider records, the delivery's own context otherwise)
    trace_id = TRACEPARENT.split("-")[1]
    assert all(cp.received.headers_of(e)[HEADER_TRACEPARENT].split("-")[1] == trace_id for e in events)
    assert sample_agent.RUNS[task.task_id] == 1


async def test_failure_mapping(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent(slots=4))
    pool = runtime.agent.pool_id
    retryable = await cp.submit(pool, "fail", {"kind": "retryable"})
    final = await cp.submit(pool, "fail", {"kind": "non-retryable"})
    plain = await cp.submit(pool, "fail", {"kind": "plain"})
    invalid = await cp.submit(pool, "fail", {"kind": "sideways"})

    failed = await cp.received.wait_for(_of(retryable.task_id, TaskFailed))
    assert (failed.reason, failed.retryable, failed.retry_delay_s, failed.error) == (
        "error",
        True,
        7.5,
        "try later",
    )
    assert failed.error_type == "RetryableError"
    failed = await cp.received.wait_for(_of(final.task_id, TaskFailed))
    assert (failed.retryable, failed.error_type, failed.error) == (False, "NonRetryableError", "never works")
    failed = await cp.received.wait_for(_of(plain.task_id, TaskFailed))
    assert (failed.retryable, failed.error_type, failed.result) == (True, "_CommandFailed", {"exit_code": 2})
    failed = await cp.received.wait_for(_of(invalid.task_id, TaskFailed))
    assert (failed.retryable, failed.error_type) == (False, "ValidationError")
    assert "input.kind" in failed.error
    assert not cp.received.matching(lambda e: isinstance(e, TaskLog) and e.task_id == invalid.task_id)


async def test_timeout(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent(), timeout_grace_s=0.1)
    own = await cp.submit(runtime.agent.pool_id, "sleep", {"seconds": 30}, timeout_s=0.3)
    raised = await cp.submit(runtime.agent.pool_id, "fail", {"kind": "timeout"})
    failed = await cp.received.wait_for(_of(own.task_id, TaskFailed))
    assert (failed.reason, failed.retryable, failed.error_type) == ("timeout", False, "TimeoutError")
    assert 0.3 <= failed.duration_s < 5
    failed = await cp.received.wait_for(_of(raised.task_id, TaskFailed))
    assert (failed.reason, failed.error) == ("timeout", "upstream timed out")


async def test_cancel_running_task(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent())
    task = await cp.submit(runtime.agent.pool_id, "wait-cancel")
    await cp.received.wait_for(_of(task.task_id, TaskProgress))
    beat = await cp.received.wait_for(lambda e: isinstance(e, AgentHeartbeat) and e.running)
    assert (beat.running[0].task_id, beat.running[0].progress, beat.free_slots) == (task.task_id, 0.5, 1)

    await cp.command(
        runtime.agent.agent_id, ControlCommand(action="cancel", task_id=task.task_id, reason="by test")
    )
    failed = await cp.received.wait_for(_of(task.task_id, TaskFailed))
    assert (failed.reason, failed.retryable, failed.error) == (
        "cancelled",
        False,
        "cancelled on request: by test",
    )
    logs = cp.received.matching(_of(task.task_id, TaskLog))
    assert [line.text for e in logs for line in e.lines] == ["cancel seen, cleaning up"]
    assert max(e.seq for e in logs) < failed.seq


async def test_poison_messages_reach_the_dead_queue(cp: ControlPlane, start_agent: StartAgent) -> None:
    dead = await declare_dead_queue(cp.channel, cp.topology)
    runtime = await start_agent(sample_agent.build_agent())
    pool = runtime.agent.pool_id
    await cp.publish_raw(pool, b"{not json", headers={"x-origin": "test"})
    unknown = await cp.submit(pool, "paint")

    reasons = {}
    async with dead.iterator() as messages:
        async for message in messages:
            async with message.process():
                reasons[message.body] = (message.headers[HEADER_DEAD_REASON], message.headers.get("x-origin"))
            if len(reasons) == 2:
                break
    assert reasons[b"{not json"][0].startswith("undecodable: ")
    assert reasons[b"{not json"][1] == "test"
    assert reasons[unknown.model_dump_json().encode()][0] == "unknown task type 'paint'"
    assert not cp.received.matching(lambda e: isinstance(e, TaskStarted))
    await runtime.drain()
    assert await cp.take_from_pool(pool) is None, "a poison message went back to the pool queue"


async def test_redelivered_attempt_is_reported_not_rerun(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent())
    pool = runtime.agent.pool_id
    first = await cp.submit(pool, "echo", {"lines": 1})
    done = await cp.received.wait_for(_of(first.task_id, TaskSucceeded))
    await cp.submit(pool, "echo", {"lines": 1}, task_id=first.task_id)
    await until(
        lambda: len(cp.received.matching(_of(first.task_id, TaskSucceeded))) == 2, what="re-reported result"
    )
    again = cp.received.matching(_of(first.task_id, TaskSucceeded))[1]
    assert again == done
    assert len(cp.received.matching(_of(first.task_id, TaskStarted))) == 1

    # a duplicate of an attempt still running is acked with the run, not run again
    slow = await cp.submit(pool, "sleep", {"seconds": 0.5})
    await cp.received.wait_for(_of(slow.task_id, TaskStarted))
    await cp.submit(pool, "sleep", {"seconds": 0.5}, task_id=slow.task_id)
    await cp.received.wait_for(_of(slow.task_id, TaskSucceeded))
    assert sample_agent.RUNS[first.task_id] == 1 and sample_agent.RUNS[slow.task_id] == 1
    assert await runtime.drain()
    assert await cp.take_from_pool(pool) is None, "a duplicate went back to the pool queue"
    assert (
        len(cp.received.matching(lambda e: e.kind in TERMINAL_EVENT_KINDS and e.task_id == slow.task_id)) == 1
    )


async def test_pause_and_resume(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent())
    agent_id = runtime.agent.agent_id
    await cp.received.wait_for(lambda e: isinstance(e, AgentHello))
    await cp.command(agent_id, ControlCommand(action="pause"))
    paused = await cp.received.wait_for(lambda e: isinstance(e, AgentHeartbeat) and e.state == "paused")
    assert paused.free_slots == 0
    task = await cp.submit(runtime.agent.pool_id, "echo", {"lines": 0})
    # heartbeats are the clock: three more of them pass while the task stays queued
    await cp.received.wait_for(lambda e: isinstance(e, AgentHeartbeat) and e.seq >= paused.seq + 3)
    assert not cp.received.matching(_of(task.task_id, TaskStarted))
    await until(lambda: cp.pool_holds(runtime.agent.pool_id, 1), within=30,
                what="the task's message counted in the pool queue")

    await cp.command(agent_id, ControlCommand(action="resume"))
    await cp.received.wait_for(_of(task.task_id, TaskSucceeded))
    last = cp.received.matching(lambda e: isinstance(e, AgentHeartbeat))[-1]
    assert last.state == "active"


async def test_log_is_capped_per_attempt(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent(), max_log_bytes=65)
    task = await cp.submit(runtime.agent.pool_id, "echo", {"lines": 20, "text": "0123456789"})
    await cp.received.wait_for(_of(task.task_id, TaskSucceeded))
    lines = [line for e in cp.received.matching(_of(task.task_id, TaskLog)) for line in e.lines]
    assert [line.text for line in lines] == [f"0123456789 {i}" for i in range(5)] + ["[log truncated]"]
    assert lines[-1].stream == "system"


async def test_drain_command_says_bye(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent())
    task = await cp.submit(runtime.agent.pool_id, "sleep", {"seconds": 0.3})
    await cp.received.wait_for(_of(task.task_id, TaskStarted))
    await cp.command(runtime.agent.agent_id, ControlCommand(action="drain"))
    assert await runtime.run_until_stopped() is True
    bye = await cp.received.wait_for(lambda e: e.kind == "bye")
    done = cp.received.matching(_of(task.task_id, TaskSucceeded))
    assert len(done) == 1 and bye.agent_id == runtime.agent.agent_id
    assert await cp.take_from_pool(runtime.agent.pool_id) is None, "the drained task went back to the pool queue"


async def test_drain_timeout_leaves_the_task_to_the_broker(cp: ControlPlane, start_agent: StartAgent) -> None:
    runtime = await start_agent(sample_agent.build_agent(), drain_timeout_s=0.2)
    task = await cp.submit(runtime.agent.pool_id, "sleep", {"seconds": 30})
    await cp.received.wait_for(_of(task.task_id, TaskStarted))
    assert await runtime.drain() is False
    await cp.received.wait_for(lambda e: e.kind == "bye")
    assert not cp.received.matching(lambda e: e.kind in TERMINAL_EVENT_KINDS)
    returned: list[AbstractIncomingMessage] = []

    async def back_in_the_pool() -> bool:
        message = await cp.take_from_pool(runtime.agent.pool_id)
        if message is not None:
            returned.append(message)
        return bool(returned)

    await until(back_in_the_pool, what="the abandoned task back in the pool queue")
    assert TaskMessage.model_validate_json(returned[0].body).task_id == task.task_id
    assert returned[0].redelivered
