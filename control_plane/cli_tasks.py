"""``devart submit`` and ``devart tasks list | show | logs | cancel | retry``."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from control_plane.cli_common import (
    EXIT_BY_STATUS,
    Api,
    CliError,
    Exit,
    api,
    check,
    command,
    emit,
    group,
    positive_float,
    positive_int,
    table,
    unreachable,
)

STATUSES = ["pending", "queued", "running", "succeeded", "failed", "dead", "cancelled", "timed_out"]


def register(sub: argparse._SubParsersAction) -> None:
    submit = command(sub, "submit", run=_submit,
                     help="submit a task and follow it to its end; the exit code says how it ended")
    submit.add_argument("--type", default="shell", help="task type (default shell)")
    submit.add_argument("--input", help="JSON input, or @file holding it (default for shell: the command after --)")
    submit.add_argument("--requires", action="append", metavar="SKILL",
                        help="a capability the agent must have (repeatable)")
    submit.add_argument("--timeout", type=positive_float, metavar="SECONDS",
                        help="wall-clock budget per attempt (default DEVART_DEFAULT_TIMEOUT_S)")
    submit.add_argument("--start-timeout", type=positive_float, metavar="SECONDS",
                        help="end timed_out unless an attempt starts this soon (default DEVART_DEFAULT_START_TIMEOUT_S)")
    submit.add_argument("--deadline", type=positive_float, metavar="SECONDS",
                        help="overall deadline from submission (default none)")
    submit.add_argument("--max-attempts", type=positive_int, help="attempts before the task is dead")
    submit.add_argument("--idempotency-key", help="same key + same body = the same task")
    submit.add_argument("--no-follow", action="store_true", help="print the created task and exit 0")
    submit.add_argument("argv", nargs=argparse.REMAINDER, help="for shell tasks: the command, after --")

    tasks = group(sub, "tasks", help="list, inspect, follow, cancel and retry tasks")
    listing = command(tasks, "list", help="tasks, newest first", run=_list)
    listing.add_argument("--status", choices=STATUSES, help="only tasks in this state")
    listing.add_argument("--type", help="only tasks of this type")
    listing.add_argument("--pool", help="only tasks routed to this pool")
    listing.add_argument("--agent", help="only tasks run by this agent")
    listing.add_argument("--limit", type=positive_int, default=20, help="how many (default 20)")
    listing.add_argument("-q", "--quiet", action="store_true", help="print only the ids, one a line")
    for name, help_text, run in (
        ("show", "one task: state, attempts and every transition (who, when, why)", _show),
        ("logs", "a task's log lines; -f follows them until the task ends", _logs),
        ("cancel", "cancel a pending, queued or running task", _cancel),
        ("retry", "start a new attempt of a failed, dead, cancelled or timed-out task", _retry),
    ):
        parser = command(tasks, name, help=help_text, run=run)
        parser.add_argument("task_id", help="the task's id")
        if name == "logs":
            parser.add_argument("-f", "--follow", action="store_true",
                                help="stream new lines until the task ends; the exit code says how it ended")


def _body(args: argparse.Namespace) -> dict[str, Any]:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    body: dict[str, Any] = {"type": args.type, "requires": args.requires or []}
    if args.input:
        try:
            body["input"] = json.loads(Path(args.input[1:]).read_text() if args.input.startswith("@") else args.input)
        except (OSError, ValueError) as exc:
            raise CliError(f"--input: {exc}", Exit.USAGE) from exc
    elif argv:
        body["input"] = {"command": argv}
    for option, field in (("timeout", "timeout_s"), ("start_timeout", "start_timeout_s"), ("deadline", "deadline_s"),
                          ("max_attempts", "max_attempts")):
        if getattr(args, option) is not None:
            body[field] = getattr(args, option)
    return body


def _submit(args: argparse.Namespace) -> int:
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with api(args) as client:
        task = client.post("/api/v1/tasks", json=_body(args), headers=headers)
        if args.no_follow:
            emit(args, task, lambda t: json.dumps(t))
            return 0
        print(f"task {task['id']} created", file=sys.stderr)
        return _follow(client, task["id"], args)


def _waiting_for(task: dict[str, Any]) -> str:
    """One line on what the task waits for and until when."""
    status, reason = task["status"], task["status_reason"]
    by = _clock(task.get("start_deadline_at"))
    if status == "pending":
        return f"pending: {reason}; waiting for one to say hello (timed_out at {by} otherwise)"
    if status == "queued":
        return f"queued on {task['pool_id']}: waiting for one of its agents to take it (timed_out at {by} otherwise)"
    if status == "running":
        return f"running on {task['agent_id']} (attempt {task['attempt']}/{task['max_attempts']})"
    return f"{status}: {reason}" if reason else status


def _clock(value: str | None) -> str:
    if not value:
        return "-"
    return datetime.fromisoformat(value).astimezone().strftime("%H:%M:%S")


def _follow(client: Api, task_id: str, args: argparse.Namespace) -> int:
    """Stream the task's logs and state changes until it ends; the exit code says how it ended."""
    try:
        with client.http.stream("GET", f"/api/v1/tasks/{task_id}/logs", params={"follow": "true"},
                                timeout=httpx.Timeout(30.0, read=None)) as stream:
            if stream.status_code >= 400:
                stream.read()
                check(stream)
            event = ""
            for line in stream.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: ") and event == "log":
                    entry = json.loads(line[6:])
                    print(entry["line"], file=sys.stderr if entry["stream"] == "stderr" else sys.stdout, flush=True)
                elif line.startswith("data: ") and event == "status":
                    print(f"task {task_id} {_waiting_for(json.loads(line[6:]))}", file=sys.stderr, flush=True)
                elif line.startswith("data: ") and event == "end":
                    break
    except httpx.TransportError as exc:
        raise unreachable(client.base_url, exc) from exc
    task = client.get(f"/api/v1/tasks/{task_id}")
    print(json.dumps({k: task[k] for k in ("id", "status", "status_reason", "result", "error")}))
    return int(EXIT_BY_STATUS.get(task["status"], Exit.ERROR))


def _list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("status", args.status), ("type", args.type), ("pool", args.pool),
                                ("agent", args.agent), ("limit", args.limit)) if v is not None}
    with api(args) as client:
        page = client.get("/api/v1/tasks", params=params)
    if args.quiet:
        emit(args, [t["id"] for t in page["items"]], "\n".join(t["id"] for t in page["items"]))
        return 0
    emit(args, page, lambda p: table(p["items"], [("id", "id"), ("status", "status"), ("type", "type"),
                                                  ("created_at", "created"), ("status_reason", "reason")],
                                     empty="no tasks"))
    return 0


def _show(args: argparse.Namespace) -> int:
    with api(args) as client:
        task = client.get(f"/api/v1/tasks/{args.task_id}")
    emit(args, task, _describe)
    return 0


def _describe(task: dict[str, Any]) -> str:
    fields = ["id", "type", "status", "status_reason", "requires", "pool_id", "agent_id", "attempt", "max_attempts",
              "timeout_s", "start_deadline_at", "expires_at", "created_by", "created_at", "started_at", "finished_at",
              "trace_id"]
    lines = [f"{name:18} {task.get(name) if task.get(name) not in (None, '', []) else '-'}" for name in fields]
    for name in ("input", "result", "error"):
        if task.get(name):
            lines.append(f"{name:18} {json.dumps(task[name])}")
    lines += ["", table(task["transitions"], [("at", "at"), ("attempt", "attempt"), ("from_status", "from"),
                                              ("to_status", "to"), ("actor", "by"), ("reason", "why")])]
    return "\n".join(lines)


def _logs(args: argparse.Namespace) -> int:
    with api(args) as client:
        if args.follow:
            return _follow(client, args.task_id, args)
        lines: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = client.get(f"/api/v1/tasks/{args.task_id}/logs", params={"after": after} if after else {})
            lines += page["lines"]
            if not page["lines"] or page["next_after"] is None:
                break
            after = page["next_after"]
    if args.output == "json":
        emit(args, lines)
    for entry in lines if args.output == "text" else []:
        print(entry["line"], file=sys.stderr if entry["stream"] == "stderr" else sys.stdout)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with api(args) as client:
        task = client.post(f"/api/v1/tasks/{args.task_id}/cancel")
    emit(args, task, f"task {task['id']} {task['status']}: {task['status_reason']}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    with api(args) as client:
        task = client.post(f"/api/v1/tasks/{args.task_id}/retry")
    emit(args, task, f"task {task['id']} {_waiting_for(task)}")
    return 0
