"""Handlers the SDK tests drive, and an entry point to run them as a separate agent process."""

from __future__ import annotations

import argparse
import asyncio
from collections import Counter
from uuid import UUID

from pydantic import BaseModel, Field

from agents.sdk import Agent, NonRetryableError, RetryableError, TaskContext, run_agent, task_handler

RUNS: Counter[UUID] = Counter()
"""How many times each task id entered a handler in this process."""


class SleepInput(BaseModel):
    seconds: float = Field(ge=0)


@task_handler("sleep", input=SleepInput)
async def sleep(ctx: TaskContext, data: SleepInput) -> dict[str, float]:
    RUNS[ctx.task_id] += 1
    await ctx.log(f"sleeping {data.seconds}s")
    await asyncio.sleep(data.seconds)  # the workload itself, not a test synchronisation
    await ctx.log("woke up")
    return {"slept": data.seconds}


class EchoInput(BaseModel):
    lines: int = Field(ge=0)
    text: str = "line"


class EchoResult(BaseModel):
    lines: int
    text: str


@task_handler("echo", input=EchoInput)
async def echo(ctx: TaskContext, data: EchoInput) -> EchoResult:
    RUNS[ctx.task_id] += 1
    for i in range(data.lines):
        await ctx.log(f"{data.text} {i}", stream="stderr" if i % 2 else "stdout")
    await ctx.progress(1.0, "echoed")
    return EchoResult(lines=data.lines, text=data.text)


class _CommandFailed(Exception):
    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.result = {"exit_code": exit_code}


class FailInput(BaseModel):
    kind: str = Field(pattern="^(retryable|non-retryable|plain|timeout)$")


@task_handler("fail", input=FailInput)
async def fail(ctx: TaskContext, data: FailInput) -> None:
    await ctx.log(f"failing as {data.kind}")
    if data.kind == "retryable":
        raise RetryableError("try later", delay=7.5)
    if data.kind == "non-retryable":
        raise NonRetryableError("never works")
    if data.kind == "timeout":
        raise TimeoutError("upstream timed out")
    raise _CommandFailed("command exited with 2", exit_code=2)


class WaitInput(BaseModel):
    pass


@task_handler("wait-cancel", input=WaitInput)
async def wait_cancel(ctx: TaskContext, data: WaitInput) -> dict[str, str]:
    """Runs until cancelled, then cleans up and returns."""
    await ctx.progress(0.5, "waiting for cancel")
    await ctx.cancelled.wait()
    await ctx.log("cancel seen, cleaning up")
    return {"cleaned": "yes"}


HANDLERS = [sleep, echo, fail, wait_cancel]


def build_agent(slots: int = 2) -> Agent:
    return Agent("sample", skills=["test"], slots=slots, handlers=HANDLERS)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--slots", type=int, default=2)
    run_agent(build_agent(parser.parse_args().slots))
