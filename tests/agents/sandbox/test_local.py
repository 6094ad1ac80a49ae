"""LocalSandbox against real processes: streaming, exit codes, deadlines, cancel, caps, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlparse

import pytest

from agents.sandbox import Resources, SandboxError, SandboxSpec, SecretRef
from tests.agents.sandbox.conftest import Harness
from tests.support.processes import marker, running, wait_until_none_running

pytestmark = pytest.mark.timeout(60)


def spec(**fields: object) -> SandboxSpec:
    return SandboxSpec(task_id="task-1", **{"timeout_s": 30, **fields})


async def test_streams_lines_in_order_and_succeeds(harness: Harness) -> None:
    run = await harness.run(
        spec(script="for i in 1 2 3 4 5; do echo out-$i; echo err-$i >&2; done; printf last")
    )
    assert run.result.outcome == "succeeded"
    assert run.result.exit_code == 0
    assert run.stream("stdout") == ["out-1", "out-2", "out-3", "out-4", "out-5", "last"]
    assert run.stream("stderr") == ["err-1", "err-2", "err-3", "err-4", "err-5"]
    assert run.result.stdout_tail.endswith("out-5\nlast")
    assert not run.result.output_truncated


async def test_command_is_an_argv_without_shell(harness: Harness) -> None:
    run = await harness.run(spec(command=["echo", "$HOME", "a b"]))
    assert run.stream("stdout") == ["$HOME a b"]


async def test_non_zero_exit_is_a_failure_with_its_code(harness: Harness) -> None:
    run = await harness.run(spec(script="echo about to fail >&2; exit 7"))
    assert run.result.outcome == "failed"
    assert run.result.exit_code == 7
    assert run.result.reason == "exit code 7"
    assert run.result.stderr_tail == "about to fail\n"


async def test_script_runs_with_errexit_and_nounset(harness: Harness) -> None:
    run = await harness.run(spec(script="false; echo unreachable"))
    assert run.result.outcome == "failed"
    assert run.stream("stdout") == []
    run = await harness.run(spec(script="echo $UNDEFINED_VARIABLE"))
    assert run.result.outcome == "failed"


async def test_death_by_signal_is_named(harness: Harness) -> None:
    run = await harness.run(spec(command=["/bin/sh", "-c", "kill -KILL $$"]))
    assert run.result.outcome == "failed"
    assert run.result.exit_code is None
    assert run.result.reason == "signal SIGKILL"


async def test_missing_program_fails_with_127(harness: Harness) -> None:
    run = await harness.run(spec(command=["definitely-not-a-program-xyz"]))
    assert run.result.outcome == "failed"
    assert run.result.exit_code == 127


async def test_deadline_kills_the_whole_process_tree(harness: Harness) -> None:
    mark = marker()
    run = await harness.run(spec(script=f"sleep {mark} & echo $!; wait", timeout_s=1))
    assert run.result.outcome == "timed_out"
    assert run.result.reason == "deadline of 1s exceeded"
    assert run.stream("stdout")  # the grandchild had started
    assert await wait_until_none_running(mark)


async def test_deadline_kills_a_tree_that_ignores_sigterm(harness: Harness) -> None:
    quick = harness.with_settings(kill_grace_s=0.3)
    mark = marker()
    run = await quick.run(
        spec(script=f"trap '' TERM; sleep {mark} & echo $!; while :; do wait || true; done", timeout_s=1)
    )
    assert run.result.outcome == "timed_out"
    assert run.stream("stdout")
    assert await wait_until_none_running(mark)


async def test_cancel_kills_the_whole_process_tree(harness: Harness) -> None:
    cancel = asyncio.Event()
    pids: asyncio.Queue[int] = asyncio.Queue()
    mark = marker()

    async def on_log(stream: str, text: str) -> None:
        await pids.put(int(text))

    run = asyncio.create_task(
        harness.sandbox.run(spec(script=f"sleep {mark} & echo $!; wait"), on_log=on_log, cancel=cancel)
    )
    await asyncio.wait_for(pids.get(), 20)
    assert running(mark)
    cancel.set()
    result = await asyncio.wait_for(run, 20)
    assert result.outcome == "cancelled"
    assert await wait_until_none_running(mark)


async def test_cancel_before_start_runs_nothing(harness: Harness, tmp_path: Path) -> None:
    cancel = asyncio.Event()
    cancel.set()
    marker = tmp_path / "ran"
    run = await harness.run(spec(command=["touch", str(marker)]), cancel=cancel)
    assert run.result.outcome == "cancelled"
    assert not marker.exists()


async def test_leftover_background_processes_are_killed_on_exit(harness: Harness) -> None:
    mark = marker()
    run = await harness.run(spec(script=f"sleep {mark} >/dev/null 2>&1 & echo $!"))
    assert run.result.outcome == "succeeded"
    assert run.stream("stdout")
    assert await wait_until_none_running(mark)


async def test_output_over_the_cap_is_counted_not_streamed(harness: Harness) -> None:
    capped = harness.with_settings(output_cap_bytes=100, tail_bytes=24)
    run = await capped.run(spec(script="i=10; while [ $i -lt 60 ]; do echo line-$i; i=$((i+1)); done"))
    assert run.result.outcome == "succeeded"
    assert run.stream("stdout") == [f"line-{i}" for i in range(10, 22)]  # 12 lines of 8 bytes fit in 100
    assert run.result.output_truncated
    assert run.result.stdout_tail == "line-57\nline-58\nline-59\n"


async def test_a_single_line_longer_than_the_cap_is_not_streamed(harness: Harness) -> None:
    capped = harness.with_settings(output_cap_bytes=1000, tail_bytes=10)
    run = await capped.run(spec(script="head -c 5000 /dev/zero | tr '\\0' x; echo; echo after >&2"))
    assert run.stream("stdout") == []
    assert run.stream("stderr") == ["after"]
    assert run.result.output_truncated
    assert run.result.stdout_tail == "xxxxxxxxx\n"


async def test_file_size_limit_applies(harness: Harness) -> None:
    limited = harness.with_settings(file_size_bytes=1024 * 1024)
    run = await limited.run(spec(script="head -c 3000000 /dev/zero > big || echo write-failed; wc -c < big"))
    assert run.stream("stdout") == ["write-failed", "1048576"]


# An anonymous mapping reserves address space without touching memory: fast, and enough for RLIMIT_AS.
# The agent's own interpreter (a virtualenv) is not mounted in the sandbox: use the system's.
_ALLOCATE = ["python3", "-c", "import mmap; mmap.mmap(-1, 512 * 1024 * 1024); print('allocated')"]


async def test_address_space_limit_applies(harness: Harness) -> None:
    run = await harness.run(spec(command=_ALLOCATE))
    assert run.stream("stdout") == ["allocated"]
    limited = harness.with_settings(address_space_bytes=256 * 1024 * 1024)
    run = await limited.run(spec(command=_ALLOCATE))
    assert run.result.outcome == "failed"
    assert "Cannot allocate memory" in run.result.stderr_tail


async def test_explicit_memory_request_tightens_the_address_space(harness: Harness) -> None:
    run = await harness.run(spec(command=_ALLOCATE, resources=Resources(memory="300Mi")))
    assert run.result.outcome == "failed"
    assert "Cannot allocate memory" in run.result.stderr_tail


async def test_descriptor_and_cpu_limits_are_set(harness: Harness) -> None:
    limited = harness.with_settings(open_files=77)
    run = await limited.run(spec(script="ulimit -n; ulimit -t", timeout_s=10, resources=Resources(cpu="2")))
    assert run.stream("stdout") == ["77", "21"]
    fixed = harness.with_settings(cpu_seconds=5)
    run = await fixed.run(spec(script="ulimit -t"))
    assert run.stream("stdout") == ["5"]


async def test_environment_is_scrubbed(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "agent-only-secret")
    monkeypatch.setenv("LANG", "C.UTF-8")
    traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    run = await harness.run(spec(script="env", env={"MY_FLAG": "on"}, traceparent=traceparent))
    env = dict(line.split("=", 1) for line in run.stream("stdout"))
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert "agent-only-secret" not in run.result.stdout_tail
    assert env["LANG"] == "C.UTF-8"
    # Same trace; the parent is the caller's span, or the sandbox's own span when tracing is on.
    assert env["TRACEPARENT"].split("-")[1] == traceparent.split("-")[1]
    assert env["MY_FLAG"] == "on"
    workspace = Path(env["HOME"])
    assert workspace.parent == harness.root.absolute()
    assert env["TMPDIR"] == str(workspace / "tmp")


async def test_secrets_come_from_agent_variables_or_files(
    harness: Harness, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DEVART_SECRET_DB_MAIN_PASSWORD", "pw-from-env")
    secrets = tmp_path / "secrets"
    (secrets / "registry").mkdir(parents=True)
    (secrets / "registry" / "token").write_text("tok-from-file")
    with_files = harness.with_settings(secrets_dir=secrets)
    run = await with_files.run(
        spec(
            script='echo "$PGPASSWORD $TOKEN"',
            secret_env={
                "PGPASSWORD": SecretRef(name="db-main", key="password"),
                "TOKEN": SecretRef(name="registry", key="token"),
            },
        )
    )
    assert run.stream("stdout") == ["pw-from-env tok-from-file"]


async def test_missing_secret_is_a_spec_error(harness: Harness) -> None:
    with pytest.raises(SandboxError, match=r"secret vault/nothing not found .*DEVART_SECRET_VAULT_NOTHING"):
        await harness.run(spec(script="true", secret_env={"X": SecretRef(name="vault", key="nothing")}))


def _connect_script(port: int) -> list[str]:
    code = (
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {port}), timeout=5).close(); print('reached')\n"
        "except OSError as exc:\n"
        "    print('unreachable', exc.errno)\n"
    )
    return ["python3", "-c", code]


async def test_network_none_cannot_reach_the_broker_but_host_can(harness: Harness, amqp_url: str) -> None:
    port = urlparse(amqp_url).port or 5672
    isolated = await harness.run(spec(command=_connect_script(port)))
    assert isolated.stream("stdout")[0].startswith("unreachable")
    shared = await harness.with_settings(network="host").run(spec(command=_connect_script(port)))
    assert shared.stream("stdout") == ["reached"]


async def test_checkout_at_a_tag(harness: Harness, git_repo: Path) -> None:
    run = await harness.run(
        spec(repo=str(git_repo), ref="v1", script="cat version.txt; git rev-parse --abbrev-ref HEAD")
    )
    assert run.result.outcome == "succeeded"
    assert run.stream("stdout") == ["v1", "HEAD"]


async def test_checkout_of_the_default_branch_into_a_workdir(harness: Harness, git_repo: Path) -> None:
    run = await harness.run(spec(repo=str(git_repo), workdir="sub", script="cat here.txt ../version.txt"))
    assert run.stream("stdout") == ["inside sub", "v2"]


async def test_unknown_ref_fails_the_checkout(harness: Harness, git_repo: Path) -> None:
    run = await harness.run(spec(repo=str(git_repo), ref="no-such-ref", command=["true"]))
    assert run.result.outcome == "failed"
    assert run.result.reason is not None
    assert run.result.reason.startswith("checkout failed: git checkout exited 128:")
    assert "no-such-ref" in run.result.reason


async def test_missing_repository_fails_the_checkout(harness: Harness, tmp_path: Path) -> None:
    run = await harness.run(spec(repo=str(tmp_path / "nowhere"), command=["true"]))
    assert run.result.outcome == "failed"
    assert run.result.reason is not None
    assert run.result.reason.startswith("checkout failed: git clone exited 128:")


async def test_missing_workdir_fails(harness: Harness, git_repo: Path) -> None:
    run = await harness.run(spec(repo=str(git_repo), workdir="nope", command=["true"]))
    assert run.result.outcome == "failed"
    assert run.result.reason == "workdir 'nope' does not exist in the checkout"


@pytest.mark.parametrize("workdir", ["..", "../elsewhere", "/tmp", "sub/../../x"])
async def test_workdir_escaping_the_checkout_is_rejected(harness: Harness, workdir: str) -> None:
    with pytest.raises(SandboxError, match="workdir"):
        await harness.run(spec(workdir=workdir, command=["true"]))


async def test_workdir_escaping_through_a_symlink_is_rejected(harness: Harness, git_repo: Path) -> None:
    with pytest.raises(SandboxError, match="escapes the checkout through a symlink"):
        await harness.run(spec(repo=str(git_repo), workdir="escape", command=["true"]))


async def test_artifacts_are_globbed_inside_the_checkout_only(harness: Harness, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    script = (
        "mkdir -p out/deep && echo a > out/a.txt && echo b > out/deep/b.txt && echo c > out/c.log\n"
        f"ln -s {outside}/secret.txt out/leak.txt\n"
        f"ln -s {outside} out/linked\n"
        "ln -s a.txt out/alias.txt\n"
    )
    run = await harness.run(
        spec(script=script, artifacts=["out/*.txt", "out/**/*.txt", "out/linked/secret.txt"])
    )
    assert run.result.outcome == "succeeded"
    assert run.result.artifacts == ["out/a.txt", "out/alias.txt", "out/deep/b.txt"]


@pytest.mark.parametrize("pattern", ["../*", "/etc/*", ""])
async def test_artifact_patterns_must_stay_relative(harness: Harness, pattern: str) -> None:
    with pytest.raises(SandboxError, match="artifacts"):
        await harness.run(spec(command=["true"], artifacts=[pattern]))


async def test_workspace_is_removed_unless_kept(harness: Harness) -> None:
    await harness.run(spec(command=["true"]))
    assert list(harness.root.iterdir()) == []
    keeping = harness.with_settings(keep_workspaces=True)
    await keeping.run(spec(script="echo kept > file.txt", attempt=2))
    assert (harness.root / "task-1.2" / "checkout" / "file.txt").read_text() == "kept\n"


async def test_a_failing_log_sink_stops_the_run_and_surfaces(harness: Harness) -> None:
    keeping = harness.with_settings(keep_workspaces=True)

    async def broken(stream: str, text: str) -> None:
        raise RuntimeError("log sink down")

    mark = marker()
    with pytest.raises(RuntimeError, match="log sink down"):
        await keeping.sandbox.run(
            spec(script=f"sleep {mark} & echo $! > pid; echo one; wait"), on_log=broken, cancel=asyncio.Event()
        )
    assert (harness.root / "task-1.1" / "checkout" / "pid").read_text()
    assert await wait_until_none_running(mark)
