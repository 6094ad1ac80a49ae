"""The no-broker harness maps outcomes exactly as the runtime does."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import BaseModel

from agents.sdk import HandlerOutcome, TaskContext, current_task, run_handler, task_handler
from tests.agents.sdk import sample_agent


async def test_success_with_logs_and_progress() -> None:
    outcome = await run_handler(sample_agent.echo, {"lines": 3, "text": "x"})
    assert isinstance(outcome, HandlerOutcome)
    assert (outcome.status, outcome.result, outcome.reason) == ("succeeded", {"lines": 3, "text": "x"}, None)
    assert outcome.logs == [("stdout", "x 0"), ("stderr", "x 1"), ("stdout", "x 2")]
    assert outcome.progress == [(1.0, "echoed")]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("retryable", ("error", True, 7.5, "RetryableError", {})),
        ("non-retryable", ("error", False, None, "NonRetryableError", {})),
        ("plain", ("error", True, None, "_CommandFailed", {"exit_code": 2})),
        ("timeout", ("timeout", False, None, "TimeoutError", {})),
    ],
)
async def test_failure_mapping(kind: str, expected: tuple[object, ...]) -> None:
    outcome = await run_handler(sample_agent.fail, {"kind": kind})
    assert outcome.status == "failed"
    assert (
        outcome.reason,
        outcome.retryable,
        outcome.retry_delay_s,
        outcome.error_type,
        outcome.result,
    ) == expected
    assert outcome.logs == [("stdout", f"failing as {kind}")]


async def test_invalid_input_names_the_field() -> None:
    outcome = await run_handler(sample_agent.sleep, {"seconds": -1})
    assert (outcome.status, outcome.error_type, outcome.retryable) == ("failed", "ValidationError", False)
    assert outcome.error.startswith("invalid input: input.seconds: ")


async def test_overrun_is_a_timeout() -> None:
    outcome = await run_handler(sample_agent.sleep, {"seconds": 30}, timeout_s=0.1, grace_s=0.1)
    assert (outcome.status, outcome.reason, outcome.retryable) == ("failed", "timeout", False)
    assert "timeout of 0.1s" in outcome.error
    assert outcome.logs == [("stdout", "sleeping 30.0s")]


async def test_cooperative_cancel() -> None:
    outcome = await run_handler(sample_agent.wait_cancel, {}, cancel_after=0.05)
    assert (outcome.status, outcome.reason, outcome.retryable) == ("failed", "cancelled", False)
    assert outcome.logs == [("stdout", "cancel seen, cleaning up")]


class _Empty(BaseModel):
    pass


async def test_cancel_of_a_handler_that_ignores_it() -> None:
    finished = asyncio.Event()

    @task_handler("stubborn", input=_Empty)
    async def stubborn(ctx: TaskContext, data: _Empty) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            finished.set()

    outcome = await run_handler(stubborn, {}, cancel_after=0.05, grace_s=0.1)
    assert outcome.reason == "cancelled"
    assert finished.is_set()


async def test_context_is_current_inside_and_bad_results_fail() -> None:
    seen = []

    @task_handler("introspect", input=_Empty)
    async def introspect(ctx: TaskContext, data: _Empty) -> object:
        seen.append(current_task() is ctx and ctx.remaining() > 0)
        await ctx.log("bad stream", stream="nowhere")
        return None

    outcome = await run_handler(introspect, _Empty())
    assert seen == [True]
    assert (outcome.status, outcome.error_type, outcome.retryable) == ("failed", "ValidationError", True)
    assert "stream" in outcome.error

    @task_handler("weird", input=_Empty)
    async def weird(ctx: TaskContext, data: _Empty) -> object:
        return ["not", "a", "mapping"]

    outcome = await run_handler(weird, {})
    assert (outcome.status, outcome.error_type, outcome.retryable) == ("failed", "NonRetryableError", False)
    assert "list" in outcome.error
    with pytest.raises(RuntimeError, match="outside a task handler"):
        current_task()


async def test_cancel_of_a_handler_that_never_stops() -> None:
    release = asyncio.Event()

    @task_handler("deaf", input=_Empty)
    async def deaf(ctx: TaskContext, data: _Empty) -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    outcome = await run_handler(deaf, {}, cancel_after=0.05, grace_s=0.1)
    assert (outcome.reason, outcome.retryable) == ("cancelled", False)
    release.set()
