"""The ``code-review`` task handler: analyse a change in the sandbox, then judge its added lines.

The conclusion is ``failure`` exactly when a static finding (ruff, shellcheck, secrets) is on an
added line; the model's comments are added as ``notice`` findings and never change it.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from agents.review import model
from agents.review.analysis import Sections, parse, script_env
from agents.review.diff import added_lines
from agents.review.models import Finding, ReviewInput, ReviewResult
from agents.review.secrets import scan
from agents.review.settings import ReviewSettings
from agents.sandbox import Sandbox, SandboxError, SandboxSettings, SandboxSpec, make_sandbox
from agents.sdk import NonRetryableError, TaskContext, task_handler
from agents.sdk.handlers import HandlerDefinition


class ReviewFailed(NonRetryableError):
    """The change could not be analysed (checkout, unknown base, analyser output cut or unreadable)."""


class _Reviewer:
    def __init__(self, settings: ReviewSettings | None, sandbox: SandboxSettings | None) -> None:
        self._settings = settings
        self._sandbox_settings = sandbox
        self._sandbox: Sandbox | None = None

    def _current(self) -> tuple[ReviewSettings, Sandbox]:
        if self._settings is None:
            self._settings = ReviewSettings()
        if self._sandbox is None:
            sandbox = self._sandbox_settings or SandboxSettings()
            ruff_dir = self._settings.ruff.parent
            if ruff_dir not in sandbox.system_paths:  # the venv's ruff, read-only inside the boundary
                sandbox = sandbox.model_copy(update={"system_paths": [*sandbox.system_paths, ruff_dir]})
            self._sandbox = make_sandbox(sandbox)
        return self._settings, self._sandbox

    async def run(self, ctx: TaskContext, data: ReviewInput) -> ReviewResult:
        settings, sandbox = self._current()
        script, env = script_env(base=data.base, ruff=str(settings.ruff), shellcheck=settings.shellcheck)
        stdout: list[str] = []

        async def collect(stream: str, line: str) -> None:
            if stream == "stdout":
                stdout.append(line)
            else:
                await ctx.log(line, stream)

        timeout_s = ctx.remaining()
        if timeout_s <= 0:
            raise TimeoutError("no time left before the task's deadline")
        spec = SandboxSpec(task_id=str(ctx.task_id), attempt=ctx.attempt, script="set -eu\n" + script, env=env,
                           repo=data.repo, ref=data.ref, timeout_s=timeout_s, traceparent=ctx.traceparent)
        try:
            outcome = await sandbox.run(spec, on_log=collect, cancel=ctx.cancelled)
        except SandboxError as exc:
            raise NonRetryableError(str(exc)) from exc
        if outcome.outcome == "timed_out":
            raise TimeoutError(f"review timed out: {outcome.reason}")
        if outcome.outcome == "cancelled":
            raise NonRetryableError("review cancelled")  # the runtime already knows; as a shell task does
        if outcome.outcome != "succeeded":
            raise ReviewFailed(f"analysis failed: {outcome.reason}: {outcome.stderr_tail[-500:]}")
        if outcome.output_truncated:
            raise ReviewFailed("the analysis output went over DEVART_SANDBOX_OUTPUT_CAP_BYTES: the change is too big")
        try:
            sections = parse(stdout, env["REVIEW_MARK"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ReviewFailed(f"an analyser's output is unreadable: {exc}") from None
        if not sections.complete:
            raise ReviewFailed("the analysis ended before its last section")
        return await self._judge(ctx, settings, sections)

    async def _judge(self, ctx: TaskContext, settings: ReviewSettings, sections: Sections) -> ReviewResult:
        added = added_lines(sections.diff)
        static: list[Finding] = []

        def keep(path: str, line: int, rule: str, message: str, source: str) -> None:
            if line in added.get(path, {}):
                static.append(Finding(path=path, line=line, rule=rule, message=message, level="failure",
                                      source=source))  # type: ignore[arg-type]

        root = PurePosixPath(sections.root)
        for item in sections.ruff:
            path = PurePosixPath(item["filename"])
            relative = str(path.relative_to(root)) if path.is_relative_to(root) else str(path)
            keep(relative, int(item["location"]["row"]), item.get("code") or "ruff", item["message"], "ruff")
        for item in sections.shellcheck:
            keep(item["file"].removeprefix("./"), int(item["line"]), f"SC{item['code']}", item["message"],
                 "shellcheck")
        for path, line, rule, message in scan(added):
            keep(path, line, rule, message, "secrets")
        result = {"conclusion": "failure" if static else "success", "findings": static, "files": len(added)}
        if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
            return ReviewResult(**result)
        diff, truncated = model.fit(sections.diff, settings)
        try:
            comments = await model.ask(diff, added, settings)
        except model.ModelFailed as exc:
            await ctx.log(f"review: model comments skipped: {exc}", "stderr")
            return ReviewResult(**result, model=settings.model, model_error=str(exc), diff_truncated=truncated)
        advisory = [Finding(path=c.path.removeprefix("./"), line=c.line, rule="model", message=c.message,
                            level="notice", source="model") for c in comments]
        return ReviewResult(**{**result, "findings": static + advisory}, model=settings.model,
                            diff_truncated=truncated)


def review_handler(settings: ReviewSettings | None = None, sandbox: SandboxSettings | None = None) -> HandlerDefinition:
    """A ``code-review`` handler (default settings: the environment, read on the first task)."""
    return task_handler("code-review", input=ReviewInput)(_Reviewer(settings, sandbox).run)
