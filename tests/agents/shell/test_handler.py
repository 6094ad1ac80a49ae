"""The shell handler driven directly through a TaskContext and through the SDK harness."""

from __future__ import annotations

import asyncio

import pytest

from agents.sandbox import SandboxSettings
from agents.sdk import NonRetryableError, run_handler
from agents.shell import (
    CommandCancelled,
    CommandFailed,
    CommandTimedOut,
    ShellInput,
    ShellResult,
    shell_handler,
)
from tests.agents.shell.conftest import Collected

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_success_returns_a_shell_result_and_forwards_logs(sandbox_settings: SandboxSettings) -> None:
    handler = shell_handler(sandbox_settings)
    run = Collected(traceparent=TRACEPARENT)
    result = await handler(
        run.ctx,
        ShellInput(script='echo "$GREETING"; echo "$TRACEPARENT"; echo warn >&2', env={"GREETING": "hi"}),
    )
    assert isinstance(result, ShellResult)
    assert result.exit_code == 0
    hi, child_traceparent = result.stdout_tail.splitlines()
    assert hi == "hi"
    # Same trace; the parent is the caller's span, or the sandbox's own span when tracing is on.
    assert child_traceparent.split("-")[1] == TRACEPARENT.split("-")[1]
    assert run.logs == [("stdout", "hi"), ("stdout", child_traceparent), ("stderr", "warn")]


async def test_workspace_is_per_task_and_attempt(sandbox_settings: SandboxSettings) -> None:
    run = Collected(attempt=3)
    result = await shell_handler(sandbox_settings)(run.ctx, ShellInput(command=["sh", "-c", "echo $HOME"]))
    assert isinstance(result, ShellResult)
    assert result.stdout_tail.strip().endswith(f"{run.ctx.task_id}.3")


async def test_non_zero_exit_raises_command_failed_with_the_result(sandbox_settings: SandboxSettings) -> None:
    with pytest.raises(CommandFailed, match="command failed: exit code 4") as caught:
        await shell_handler(sandbox_settings)(Collected().ctx, ShellInput(script="echo broken >&2; exit 4"))
    assert isinstance(caught.value, NonRetryableError)
    assert caught.value.result["exit_code"] == 4
    assert caught.value.result["stderr_tail"] == "broken\n"


async def test_input_timeout_raises_a_timeout_error(sandbox_settings: SandboxSettings) -> None:
    with pytest.raises(CommandTimedOut) as caught:
        await shell_handler(sandbox_settings)(
            Collected().ctx, ShellInput(script="echo started; sleep 60", timeout_s=0.5)
        )
    assert isinstance(caught.value, TimeoutError)
    assert caught.value.result["stdout_tail"] == "started\n"


async def test_the_task_deadline_bounds_the_command(sandbox_settings: SandboxSettings) -> None:
    with pytest.raises(CommandTimedOut):
        await shell_handler(sandbox_settings)(Collected(timeout_s=0.5).ctx, ShellInput(script="sleep 60"))


async def test_input_timeout_cannot_exceed_the_task_timeout(sandbox_settings: SandboxSettings) -> None:
    with pytest.raises(NonRetryableError, match=r"timeout_s: 60s exceeds the task's timeout of 30s"):
        await shell_handler(sandbox_settings)(Collected().ctx, ShellInput(script="true", timeout_s=60))


async def test_cancel_raises_command_cancelled(sandbox_settings: SandboxSettings) -> None:
    run = Collected()
    started = asyncio.Event()

    async def sink(stream: str, text: str) -> None:
        started.set()

    run.ctx._log_sink = sink
    handling = asyncio.create_task(
        shell_handler(sandbox_settings)(run.ctx, ShellInput(script="echo up; sleep 60"))
    )
    await asyncio.wait_for(started.wait(), 20)
    run.ctx.cancelled.set()
    with pytest.raises(CommandCancelled):
        await asyncio.wait_for(handling, 20)


async def test_override_outside_the_allow_list_is_refused(sandbox_settings: SandboxSettings) -> None:
    handler = shell_handler(sandbox_settings)
    with pytest.raises(NonRetryableError, match=r"sandbox\.kind: per-task override not allowed"):
        await handler(Collected().ctx, ShellInput(script="true", sandbox={"kind": "kubernetes"}))
    with pytest.raises(NonRetryableError, match=r"sandbox\.kind: per-task override not allowed"):
        await handler(Collected(sandbox={"kind": "kubernetes"}).ctx, ShellInput(script="true"))
    with pytest.raises(NonRetryableError, match=r"sandbox\.resources\.memory: 64Gi exceeds the maximum 8Gi"):
        await handler(Collected().ctx, ShellInput(script="true", sandbox={"resources": {"memory": "64Gi"}}))
    with pytest.raises(
        NonRetryableError,
        match=r"invalid sandbox overrides: sandbox\.node_selector: Extra inputs are not permitted",
    ):
        await handler(Collected(sandbox={"node_selector": "x"}).ctx, ShellInput(script="true"))


async def test_allowed_overrides_reach_the_sandbox(sandbox_settings: SandboxSettings) -> None:
    handler = shell_handler(
        sandbox_settings.model_copy(update={"overridable": ["kind", "resources", "image"]})
    )
    script = "ulimit -v"  # KiB of address space: the explicit memory request
    result = await handler(
        Collected(sandbox={"kind": "local", "image": "ignored:locally"}).ctx,
        ShellInput(script=script, sandbox={"resources": {"memory": "1Gi"}}),
    )
    assert isinstance(result, ShellResult)
    assert result.stdout_tail == f"{1024 * 1024}\n"


async def test_sandbox_spec_errors_are_not_retried(sandbox_settings: SandboxSettings) -> None:
    with pytest.raises(NonRetryableError, match="secret vault/none not found"):
        await shell_handler(sandbox_settings)(
            Collected().ctx, ShellInput(script="true", secret_env={"X": {"name": "vault", "key": "none"}})
        )


async def test_run_handler_success(sandbox_settings: SandboxSettings) -> None:
    outcome = await run_handler(
        shell_handler(sandbox_settings), {"script": "echo one; echo two"}, timeout_s=30
    )
    assert outcome.status == "succeeded"
    assert outcome.result["exit_code"] == 0
    assert outcome.result["stdout_tail"] == "one\ntwo\n"
    assert outcome.logs == [("stdout", "one"), ("stdout", "two")]


async def test_run_handler_failure_is_not_retryable(sandbox_settings: SandboxSettings) -> None:
    outcome = await run_handler(
        shell_handler(sandbox_settings), {"command": ["sh", "-c", "exit 9"]}, timeout_s=30
    )
    assert (outcome.status, outcome.reason, outcome.retryable) == ("failed", "error", False)
    assert outcome.error_type == "CommandFailed"
    assert outcome.result["exit_code"] == 9


async def test_run_handler_timeout(sandbox_settings: SandboxSettings) -> None:
    outcome = await run_handler(
        shell_handler(sandbox_settings), {"script": "sleep 60", "timeout_s": 0.3}, timeout_s=30
    )
    assert (outcome.status, outcome.reason) == ("failed", "timeout")
    assert outcome.result["reason"] == "deadline of 0.3s exceeded"


async def test_run_handler_cancel_keeps_the_partial_result(sandbox_settings: SandboxSettings) -> None:
    outcome = await run_handler(
        shell_handler(sandbox_settings),
        {"script": "echo partial; sleep 60"},
        timeout_s=30,
        cancel_after=1.0,
        grace_s=5,
    )
    assert (outcome.status, outcome.reason) == ("failed", "cancelled")
    assert outcome.result["reason"] == "cancelled"


async def test_run_handler_invalid_input_names_the_field(sandbox_settings: SandboxSettings) -> None:
    outcome = await run_handler(shell_handler(sandbox_settings), {"script": "true", "workdir": "../.."})
    assert (outcome.status, outcome.retryable) == ("failed", False)
    assert "workdir" in outcome.error


async def test_default_handler_reads_settings_on_first_task(
    monkeypatch: pytest.MonkeyPatch, sandbox_settings: SandboxSettings
) -> None:
    monkeypatch.setenv("DEVART_SANDBOX_ROOT", str(sandbox_settings.root))
    monkeypatch.setenv("DEVART_SANDBOX_KEEP_WORKSPACES", "true")
    handler = shell_handler()
    run = Collected()
    await handler(run.ctx, ShellInput(script="echo kept > proof"))
    assert (sandbox_settings.root / f"{run.ctx.task_id}.1" / "checkout" / "proof").read_text() == "kept\n"
