"""The `devart` command as a user runs it: a subprocess against a real API, database and broker."""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from agents.sandbox import SandboxSettings
from agents.sdk import Agent
from agents.shell import build_shell_agent
from control_plane.api.app import create_app
from control_plane.serving import free_port
from tests.agents.sdk.sample_agent import HANDLERS
from tests.support.cli import devart
from tests.support.loopback import ThreadedServer
from tests.support.system import StartAgent, client


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A DEVART_HOME of the test's own, so nothing reads or writes the user's."""
    return tmp_path / "home"


async def test_token_one_liner_prints_only_the_token_and_fails_loudly_the_second_time(
    database_url: str, base_url: str, home: Path
) -> None:
    line = f"export DEVART_TOKEN=$({sys.executable} -m control_plane.cli token create --name me --role admin); " \
           'printf "%s" "$DEVART_TOKEN"'
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEVART_")}
    env |= {"DATABASE_URL": database_url, "DEVART_HOME": str(home)}

    async def shell() -> tuple[str, str]:
        process = await asyncio.create_subprocess_exec("sh", "-c", line, env=env, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        out, err = await process.communicate()
        return out.decode(), err.decode()

    token, err = await shell()
    assert token.startswith("dvt_") and "\n" not in token
    assert "INFO" not in err and "XDG_RUNTIME_DIR" not in err and "Traceback" not in err
    async with client(base_url, token) as api:
        assert (await api.get("/api/v1/tokens")).status_code == 200

    token, err = await shell()
    assert token == ""
    assert "a token named 'me' already exists" in err and "Traceback" not in err

    code, out, err = await devart("token", "create", "--name", "me", "--role", "admin",
                                   env={"DATABASE_URL": database_url}, home=home)
    assert code == 3 and out == "" and "already exists" in err


async def test_token_list_and_revoke(database_url: str, base_url: str, home: Path) -> None:
    env = {"DATABASE_URL": database_url}
    _, token, _ = await devart("token", "create", "--name", "ci-bot", "--role", "ci", env=env, home=home)
    code, out, _ = await devart("token", "list", "--output", "json", env=env, home=home)
    assert code == 0
    assert [(t["name"], t["role"], t["revoked_at"]) for t in json.loads(out)] == [("ci-bot", "ci", None)]
    assert "dvt_" not in out
    code, out, _ = await devart("token", "revoke", "ci-bot", env=env, home=home)
    assert code == 0 and "revoked token 'ci-bot'" in out
    code, _, err = await devart("token", "revoke", "ci-bot", env=env, home=home)
    assert code == 3 and "no active token" in err
    code, _, err = await devart("tasks", "list", env={"DEVART_URL": base_url, "DEVART_TOKEN": token.strip()},
                                 home=home)
    assert code == 3 and "401" in err and "Traceback" not in err


async def test_an_agent_token_is_scoped_to_the_pools_named(database_url: str, home: Path) -> None:
    env = {"DATABASE_URL": database_url}
    code, _, err = await devart("token", "create", "--name", "shells", "--role", "agent", "--pool", "pool-a",
                                 "--pool", "pool-b", env=env, home=home)
    assert code == 0, err
    code, out, _ = await devart("token", "list", "--output", "json", env=env, home=home)
    assert [(t["name"], t["pools"]) for t in json.loads(out)] == [("shells", ["pool-a", "pool-b"])]
    code, _, err = await devart("token", "create", "--name", "ci-pools", "--role", "ci", "--pool", "pool-a",
                                 env=env, home=home)
    assert code == 3 and "only an agent token is scoped to pools" in err


async def test_migrate_is_idempotent(database_url: str, home: Path) -> None:
    code, out, _ = await devart("migrate", env={"DATABASE_URL": database_url}, home=home)
    assert code == 0 and "up to date" in out


@pytest.fixture
async def cli_env(base_url: str, admin: httpx.AsyncClient, start_agent: StartAgent, tmp_path: Path) -> dict[str, str]:
    await start_agent(build_shell_agent(slots=2, settings=SandboxSettings(root=tmp_path / "sandboxes")))
    await start_agent(Agent("sample", skills=["test"], slots=2, handlers=HANDLERS))
    token = (await admin.post("/api/v1/tokens", json={"name": "operator", "role": "supervisor"})).json()["token"]
    return {"DEVART_URL": base_url, "DEVART_TOKEN": token}


async def test_each_task_outcome_has_its_exit_code(cli_env: dict[str, str], home: Path, tmp_path: Path) -> None:
    # the task waits for a file in its workspace, made once the CLI has said it runs: a task that ends
    # at once may go from queued to succeeded between two status events, and the CLI shows only the latest
    async def release_when_running(line: str) -> None:
        if running := re.match(r"task (\S+) running on ", line):
            (tmp_path / "sandboxes" / f"{running[1]}.1" / "go").touch()

    code, out, err = await devart("submit", "--requires", "shell", "--", "sh", "-c",
                                   'echo hello; until [ -e "$HOME/go" ]; do sleep 0.05; done; echo oops >&2',
                                   env=cli_env, home=home, on_stderr=release_when_running)
    assert code == 0, err
    assert "hello" in out and "oops" in err
    assert "running on" in err  # it says what it waits for and where it runs
    assert json.loads(out.strip().splitlines()[-1])["status"] == "succeeded"

    code, out, _ = await devart("submit", "--requires", "shell", "--", "sh", "-c", "exit 3", env=cli_env, home=home)
    assert code == 10
    assert json.loads(out.strip().splitlines()[-1])["result"]["exit_code"] == 3

    code, out, _ = await devart("submit", "--type", "fail", "--requires", "test", "--input", '{"kind": "retryable"}',
                                 "--max-attempts", "1", env=cli_env, home=home)
    assert code == 11 and json.loads(out.strip().splitlines()[-1])["status"] == "dead"

    code, out, err = await devart("submit", "--type", "nosuch", "--start-timeout", "0.5", env=cli_env, home=home)
    assert code == 12
    assert "pending: no live agent pool" in err and "waiting for one to say hello" in err
    assert "no live pool for type 'nosuch' within 0.5 s" in out

    code, out, _ = await devart("submit", "--type", "wait-cancel", "--requires", "test", "--no-follow",
                                 env=cli_env, home=home)
    task_id = json.loads(out)["id"]
    code, out, _ = await devart("tasks", "cancel", task_id, env=cli_env, home=home)
    assert code == 0 and "cancelled" in out
    code, _, _ = await devart("tasks", "logs", "-f", task_id, env=cli_env, home=home)
    assert code == 13


async def test_usage_errors_and_refusals(cli_env: dict[str, str], home: Path) -> None:
    for args in (["submit", "--timeout", "0", "--", "true"], ["submit", "--timeout", "soon"], ["tasks"],
                 ["tasks", "list", "--status", "nosuch"], ["nosuch"]):
        code, out, err = await devart(*args, env=cli_env, home=home)
        assert code == 2 and out == "" and "Traceback" not in err, (args, err)
    code, _, err = await devart("submit", "--timeout", "0", "--", "true", env=cli_env, home=home)
    assert "must be greater than 0" in err

    code, _, err = await devart("tasks", "list", env={"DEVART_URL": cli_env["DEVART_URL"]}, home=home)
    assert code == 2 and "DEVART_TOKEN" in err

    code, _, err = await devart("submit", "--type", "bad type", env=cli_env, home=home)
    assert code == 3 and "body.type" in err and "422" in err
    code, _, err = await devart("tasks", "show", "00000000-0000-0000-0000-000000000000", env=cli_env, home=home)
    assert code == 3 and "404" in err
    code, _, err = await devart("tasks", "list", env=cli_env | {"DEVART_TOKEN": "dvt_wrong"}, home=home)
    assert code == 3 and "401" in err and "Traceback" not in err


async def test_unreachable_api(home: Path) -> None:
    env = {"DEVART_URL": f"http://127.0.0.1:{free_port()}", "DEVART_TOKEN": "dvt_x"}
    for args in (["tasks", "list"], ["submit", "--", "true"], ["agents"]):
        code, out, err = await devart(*args, env=env, home=home)
        assert code == 4 and out == "" and "cannot reach the API" in err and "Traceback" not in err, err
    code, out, _ = await devart("status", env=env, home=home)
    assert code == 4 and "ready         no" in out


class _Failing(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        body = json.dumps({"error": {"status": 500, "code": "error", "message": "database exploded"}}).encode()
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_api() -> Iterator[str]:
    with ThreadedServer(_Failing) as server:
        yield server.url


async def test_server_error(failing_api: str, home: Path) -> None:
    code, out, err = await devart("tasks", "list", env={"DEVART_URL": failing_api, "DEVART_TOKEN": "dvt_x"},
                                   home=home)
    assert code == 5 and out == "" and "500: database exploded" in err


async def test_reading_commands_and_json_output(cli_env: dict[str, str], home: Path) -> None:
    code, out, _ = await devart("submit", "--requires", "shell", "--no-follow", "--", "sh", "-c", "echo line-1",
                                 env=cli_env, home=home)
    task_id = json.loads(out)["id"]
    code, _, _ = await devart("tasks", "logs", "-f", task_id, env=cli_env, home=home)
    assert code == 0

    code, out, _ = await devart("tasks", "list", "-o", "json", env=cli_env, home=home)
    assert code == 0 and json.loads(out)["items"][0]["id"] == task_id
    code, out, _ = await devart("tasks", "list", "--status", "succeeded", env=cli_env, home=home)
    assert code == 0 and out.splitlines()[0].split() == ["ID", "STATUS", "TYPE", "CREATED", "REASON"]
    assert task_id in out
    code, out, _ = await devart("tasks", "show", task_id, "--output", "json", env=cli_env, home=home)
    assert [t["to_status"] for t in json.loads(out)["transitions"]][-1] == "succeeded"
    code, out, _ = await devart("tasks", "show", task_id, env=cli_env, home=home)
    assert "succeeded" in out and "started on" in out
    code, out, _ = await devart("tasks", "logs", task_id, env=cli_env, home=home)
    assert code == 0 and out.strip() == "line-1"
    code, out, _ = await devart("tasks", "logs", task_id, "-o", "json", env=cli_env, home=home)
    assert [line["line"] for line in json.loads(out)] == ["line-1"]
    code, out, _ = await devart("tasks", "retry", task_id, env=cli_env, home=home)
    assert code == 3  # a succeeded task cannot be retried: 409

    code, out, _ = await devart("agents", "-o", "json", env=cli_env, home=home)
    assert code == 0 and len(json.loads(out)) == 2
    code, out, _ = await devart("pools", env=cli_env, home=home)
    assert code == 0 and out.splitlines()[0].startswith("ID")
    code, out, err = await devart("pools", "-v", "-o", "json", env=cli_env, home=home)
    assert len(json.loads(out)) == 2
    assert f"home {home}" in err and f"API {cli_env['DEVART_URL']}" in err


def test_every_option_has_help() -> None:
    from control_plane.cli import parser

    missing = []

    def walk(p: object, path: str) -> None:
        for action in p._actions:  # type: ignore[attr-defined]
            if action.choices and isinstance(action.choices, dict):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not action.help and action.dest != "help":
                missing.append(f"{path} {action.dest}")

    walk(parser(), "devart")
    assert missing == []


def test_operation_ids_are_stable() -> None:
    """Generated clients name their methods after these: renaming or removing one is a breaking change
    (adding endpoints is not, so new ids need no edit here)."""
    schema = create_app().openapi()
    ids = {op["operationId"] for path in schema["paths"].values() for op in path.values()}
    published = {
        "acknowledge_incident", "approve_approval", "cancel_task", "confirm_incident_cause",
        "create_maintenance_window", "create_silence", "create_task", "create_tasks", "create_token",
        "delete_maintenance_window", "delete_silence", "drain_agent", "get_agent", "get_approval", "get_incident",
        "get_incident_rca", "get_task", "get_trace", "healthz", "ingest_traces", "list_agents", "list_approvals",
        "list_changes", "list_incidents", "list_maintenance_windows", "list_pools", "list_silences", "list_tasks",
        "list_tokens", "pause_agent", "readyz", "record_change", "refuse_approval", "register_agent",
        "resolve_incident", "resume_agent",
        "retry_task", "revoke_token", "stream_events", "task_logs",
    }
    assert published <= ids, sorted(published - ids)


async def test_the_remediation_kill_switch_from_the_cli_and_in_status(
    base_url: str, admin: httpx.AsyncClient, database_url: str, home: Path
) -> None:
    admin_token = (await admin.post("/api/v1/tokens", json={"name": "oncall", "role": "admin"})).json()["token"]
    viewer_token = (await admin.post("/api/v1/tokens", json={"name": "watcher", "role": "viewer"})).json()["token"]
    as_admin = {"DEVART_URL": base_url, "DEVART_TOKEN": admin_token}
    as_viewer = {"DEVART_URL": base_url, "DEVART_TOKEN": viewer_token}
    code, out, _ = await devart("remediation", "status", env=as_viewer, home=home)
    assert code == 0 and out.startswith("remediation   active")
    code, _, _ = await devart("remediation", "pause", env=as_viewer, home=home)
    assert code == 3  # only admins pull it: the API said 403
    assert (await admin.get("/api/v1/remediation/status")).json()["paused"] is False
    code, out, _ = await devart("remediation", "pause", "--reason", "incident review", env=as_admin, home=home)
    assert code == 0 and "PAUSED by oncall" in out and "(incident review)" in out
    assert (await admin.get("/api/v1/remediation/status")).json()["paused"] is True
    code, out, _ = await devart("status", env=as_viewer, home=home)
    assert code == 0
    assert "remediation   PAUSED by oncall" in out and "nothing is applied" in out
    code, out, _ = await devart("status", "-o", "json", env=as_viewer, home=home)
    assert json.loads(out)["remediation"]["paused"] is True
    code, out, _ = await devart("remediation", "resume", env=as_admin, home=home)
    assert code == 0 and out.startswith("remediation   active")
    code, out, _ = await devart("remediation", "status", "-o", "json", env=as_viewer, home=home)
    assert json.loads(out)["paused"] is False and json.loads(out)["changed_by"] == "oncall"
