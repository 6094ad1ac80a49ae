"""``devart workflow apply | run`` and ``devart runs list | show | cancel | rerun``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TextIO

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
    positive_int,
    table,
    unreachable,
)

RUN_STATES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
_FINISHED = frozenset({"succeeded", "failed", "cancelled"})


def register(sub: argparse._SubParsersAction) -> None:
    workflow = group(sub, "workflow", help="apply workflow definitions and run them")
    apply = command(workflow, "apply", run=_apply,
                    help="create a workflow, or its next version, from a YAML or JSON file")
    apply.add_argument("file", type=Path, help="the definition (.yaml, .yml or .json)")
    run = command(workflow, "run", run=_run,
                  help="start a run; with --wait, show its steps live and exit with its verdict")
    run.add_argument("name", help="the workflow's name")
    run.add_argument("--input", action="append", default=[], metavar="KEY=VALUE",
                     help="an input (repeatable); VALUE is read as JSON when it parses, else as text")
    run.add_argument("--version", type=positive_int, help="the version to run (default the latest)")
    run.add_argument("--idempotency-key", help="same key + same inputs = the same run")
    run.add_argument("--wait", action="store_true",
                     help="follow the run until it ends: exit 0 succeeded, 10 failed, 13 cancelled")

    runs = group(sub, "runs", help="list, inspect, cancel and re-run workflow runs")
    listing = command(runs, "list", help="runs, newest first", run=_list)
    listing.add_argument("--workflow", help="only runs of this workflow")
    listing.add_argument("--state", choices=RUN_STATES, help="only runs in this state")
    listing.add_argument("--trigger", choices=["api", "schedule", "rerun", "webhook"], help="only runs so started")
    listing.add_argument("--limit", type=positive_int, default=20, help="how many (default 20)")
    for name, help_text, handler in (
        ("show", "a run and its steps: state, attempts, skip reasons, outputs, tasks", _show),
        ("cancel", "cancel a run: running steps stop, then its finally steps run", _cancel),
        ("rerun", "re-run a failed or cancelled run from its failed steps", _rerun),
    ):
        parser = command(runs, name, help=help_text, run=handler)
        parser.add_argument("run_id", help="the run's id")
        if name in ("show", "rerun"):
            parser.add_argument("--wait", action="store_true", help="follow the run until it ends")


def _apply(args: argparse.Namespace) -> int:
    try:
        text = args.file.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc}", Exit.USAGE) from exc
    media = "application/json" if args.file.suffix == ".json" else "application/yaml"
    with api(args) as client:
        try:
            response = client.http.post("/api/v1/workflows", content=text.encode(), headers={"Content-Type": media})
        except httpx.TransportError as exc:
            raise unreachable(client.base_url, exc) from exc
        check(response)
    workflow = response.json()
    verb = "created" if response.status_code == 201 else "unchanged at"
    emit(args, workflow, f"workflow {workflow['name']} {verb} version {workflow['version']}")
    return 0


def parse_input(item: str) -> tuple[str, Any]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise CliError(f"--input {item!r} is not KEY=VALUE", Exit.USAGE)
    try:
        return key, json.loads(value)
    except ValueError:
        return key, value


def _run(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"inputs": dict(parse_input(item) for item in args.input)}
    if args.version:
        body["version"] = args.version
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with api(args) as client:
        run = client.post(f"/api/v1/workflows/{args.name}/runs", json=body, headers=headers)
        print(f"run {run['id']} {run['state']}", file=sys.stderr)
        if not args.wait:
            emit(args, run, run["id"])
            return 0
        return follow(client, run["id"], sys.stdout)


def follow(client: Api, run_id: str, out: TextIO) -> int:
    """Print the step table each time the run changes (told by the event stream) until it ends."""
    shown = ""
    try:
        with client.http.stream("GET", "/api/v1/events", timeout=httpx.Timeout(30.0, read=None)) as stream:
            if stream.status_code >= 400:
                stream.read()
                check(stream)
            lines = stream.iter_lines()
            for line in lines:  # subscribed from here on: no change can be missed after this read
                if line == ": connected":
                    break
            while True:
                run = client.get(f"/api/v1/runs/{run_id}")
                text = step_table(run)
                if text != shown:
                    print(text, file=out, flush=True)
                    shown = text
                if run["state"] in _FINISHED:
                    return int(EXIT_BY_STATUS[run["state"]])
                for line in lines:
                    if line.startswith("data: ") and run_id in line:
                        break
                else:
                    raise CliError("the event stream ended before the run did", Exit.UNREACHABLE)
    except httpx.TransportError as exc:
        raise unreachable(client.base_url, exc) from exc


def step_table(run: dict[str, Any]) -> str:
    rows = [{"job": j["job"], "state": j["state"], "attempts": j["attempts"],
             "detail": j["skip_reason"] or j["reason"] or None} for j in run["steps"]]
    head = f"run {run['id']} ({run['workflow']} v{run['version']}): {run['state']}"
    if run["state_reason"]:
        head += f" - {run['state_reason']}"
    return head + "\n" + table(rows, [("job", "step"), ("state", "state"), ("attempts", "attempts"),
                                      ("detail", "detail")]) + "\n"


def _list(args: argparse.Namespace) -> int:
    params = {k: v for k, v in (("workflow", args.workflow), ("state", args.state), ("trigger", args.trigger),
                                ("limit", args.limit)) if v is not None}
    with api(args) as client:
        page = client.get("/api/v1/runs", params=params)
    emit(args, page, lambda p: table(p["items"], [("id", "id"), ("workflow", "workflow"), ("version", "v"),
                                                  ("state", "state"), ("trigger", "trigger"),
                                                  ("created_at", "created")], empty="no runs"))
    return 0


def _show(args: argparse.Namespace) -> int:
    with api(args) as client:
        if args.wait:
            return follow(client, args.run_id, sys.stdout)
        run = client.get(f"/api/v1/runs/{args.run_id}")
    emit(args, run, step_table(run).rstrip("\n"))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    with api(args) as client:
        run = client.post(f"/api/v1/runs/{args.run_id}/cancel")
    emit(args, run, f"run {run['id']} {run['state']}: {run['state_reason']}")
    return 0


def _rerun(args: argparse.Namespace) -> int:
    with api(args) as client:
        run = client.post(f"/api/v1/runs/{args.run_id}/rerun")
        print(f"run {run['id']} {run['state']} (re-run of {args.run_id})", file=sys.stderr)
        if args.wait:
            return follow(client, run["id"], sys.stdout)
    emit(args, run, run["id"])
    return 0
