"""What every ``devart`` subcommand shares: exit codes, common options, the API client, output.

A command module registers its subcommands with :func:`command` (and :func:`group` for nested ones)
and returns an exit code from its ``run(args)``; it raises :class:`CliError` for every expected
failure, which ``devart`` prints as one line on stderr (no traceback) with the error's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from enum import IntEnum
from pathlib import Path
from typing import Any

import httpx

from control_plane import runstate


class Exit(IntEnum):
    """``devart``'s exit codes; the README's table lists them."""

    OK = 0
    ERROR = 1
    """Unexpected: a bug (the traceback is printed)."""
    USAGE = 2
    """Bad options or arguments, missing token, unreadable input file."""
    REFUSED = 3
    """The API (or the database, for commands that use it directly) said no: a 4xx, with its message."""
    UNREACHABLE = 4
    """The API did not answer (connection refused, timeout)."""
    SERVER_ERROR = 5
    """The API answered 5xx."""
    FAILED = 10
    DEAD = 11
    TIMED_OUT = 12
    CANCELLED = 13


EXIT_BY_STATUS = {"succeeded": Exit.OK, "failed": Exit.FAILED, "dead": Exit.DEAD, "timed_out": Exit.TIMED_OUT,
                  "cancelled": Exit.CANCELLED}

Run = Callable[[argparse.Namespace], int]


class CliError(Exception):
    def __init__(self, message: str, code: Exit) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class Parser(argparse.ArgumentParser):
    """Usage errors exit with :attr:`Exit.USAGE` and a pointer to ``--help``."""

    def error(self, message: str) -> Any:
        self.print_usage(sys.stderr)
        self.exit(int(Exit.USAGE), f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def common_options() -> argparse.ArgumentParser:
    """Options every subcommand takes, after its name: ``devart tasks list -v --output json``."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="print the home and API in use, and log at INFO (-vv: DEBUG)")
    common.add_argument("--output", "-o", choices=["text", "json"], default="text",
                        help="text for people (default) or json for scripts")
    common.add_argument("--url", help="API base URL (default $DEVART_URL, else the one `devart up` "
                                      "recorded in DEVART_HOME, else http://127.0.0.1:8000)")
    common.add_argument("--token", help="API token (default $DEVART_TOKEN)")
    common.add_argument("--home", type=Path,
                        help="DEVART_HOME: embedded database, broker and run state (default $DEVART_HOME, "
                             "else ~/.local/share/devart)")
    return common


_COMMON = common_options()


def command(sub: argparse._SubParsersAction, name: str, *, help: str, run: Run,
            description: str | None = None) -> argparse.ArgumentParser:
    """Add subcommand ``name`` with the common options; ``run(args) -> exit code`` executes it."""
    parser = sub.add_parser(name, help=help, description=description or help, parents=[_COMMON])
    parser.set_defaults(run=run, prog=parser.prog)
    return parser


def group(sub: argparse._SubParsersAction, name: str, *, help: str) -> argparse._SubParsersAction:
    """A command with subcommands of its own (``devart tasks list``)."""
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND", parser_class=Parser)


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, not {text}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


# --- where things are ------------------------------------------------------------------------------


def api_url(args: argparse.Namespace) -> str:
    if getattr(args, "url", None):
        return args.url
    if os.environ.get("DEVART_URL"):
        return os.environ["DEVART_URL"]
    state = runstate.read(home(args))
    return state.api_url if state is not None else "http://127.0.0.1:8000"


def home(args: argparse.Namespace) -> Path:
    from control_plane.settings import Settings

    return Settings().home


def describe_context(args: argparse.Namespace) -> None:
    """With ``-v``: which home and API this command uses (on stderr, so stdout stays clean)."""
    if args.verbose:
        print(f"devart: home {home(args)}; API {api_url(args)}", file=sys.stderr)


# --- the API ---------------------------------------------------------------------------------------


class Api:
    """The REST API with the caller's token; every failure becomes a :class:`CliError`."""

    def __init__(self, base_url: str, token: str, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout_s)

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise unreachable(self.base_url, exc) from exc
        check(response)
        return response.json() if response.content else None

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.request("POST", path, **kwargs)


def unreachable(base_url: str, exc: Exception) -> CliError:
    return CliError(f"cannot reach the API at {base_url} ({type(exc).__name__}: {exc or 'no answer'}); "
                    "is `devart up` running? (`devart status` tells)", Exit.UNREACHABLE)


def check(response: httpx.Response) -> None:
    """Raise the :class:`CliError` an error response means."""
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error", {})
        message, field = error.get("message") or response.reason_phrase, error.get("field")
    except (ValueError, AttributeError):
        message, field = response.text[:300] or response.reason_phrase, None
    where = f" [{field}]" if field and field not in message else ""
    code = Exit.REFUSED if response.status_code < 500 else Exit.SERVER_ERROR
    raise CliError(f"the API said {response.status_code}: {message}{where}", code)


def api(args: argparse.Namespace, *, timeout_s: float = 30.0) -> Api:
    secret = getattr(args, "token", None) or os.environ.get("DEVART_TOKEN")
    if not secret:
        raise CliError("no API token: set DEVART_TOKEN or pass --token "
                       "(an admin creates one with `devart token create --name NAME --role ROLE`)", Exit.USAGE)
    return Api(api_url(args), secret, timeout_s=timeout_s)


# --- output ----------------------------------------------------------------------------------------


def emit(args: argparse.Namespace, data: Any, text: Callable[[Any], str] | str | None = None) -> None:
    """Print ``data`` as JSON with ``--output json``, else as ``text(data)``."""
    if args.output == "json":
        print(json.dumps(data, indent=2, default=str))
    elif text is not None:
        out = text(data) if callable(text) else text
        if out:
            print(out)


def table(rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]], *, empty: str = "(none)") -> str:
    """Aligned columns: ``columns`` is ``[(key, header), ...]``."""
    cells = [[_cell(row.get(key)) for key, _ in columns] for row in rows]
    if not cells:
        return empty
    headers = [header for _, header in columns]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."
