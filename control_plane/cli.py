"""The ``devart`` command.

Each group of subcommands lives in a module of its own with a ``register(subparsers)`` function
(see ``control_plane.cli_common``); adding one is a line in :data:`COMMANDS`. Every expected failure
is one line on stderr and an exit code from :class:`~control_plane.cli_common.Exit`, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from types import ModuleType

from control_plane import (
    cli_admin,
    cli_demo,
    cli_remediation,
    cli_server,
    cli_supabase,
    cli_tasks,
    cli_telegram,
    cli_workflows,
)
from control_plane.cli_common import CliError, Exit, Parser, describe_context

COMMANDS: list[ModuleType] = [cli_server, cli_tasks, cli_workflows, cli_admin, cli_remediation, cli_demo, cli_telegram,
                              cli_supabase]
"""Modules whose ``register(subparsers)`` adds their subcommands, in ``--help`` order."""

EXIT_CODES = """exit codes:
  0   success (a followed task succeeded)
  1   unexpected error (a bug: the traceback is printed)
  2   usage error (bad option, missing token, unreadable input)
  3   the API said no (4xx: invalid input, unknown id, wrong role, name taken)
  4   cannot reach the API
  5   the API failed (5xx)
  10  task (or workflow run) failed   11  task dead   12  task timed out   13  task (or run) cancelled
"""


def parser() -> argparse.ArgumentParser:
    root = Parser(prog="devart", description="devart: orchestrator for teams of DevOps agents",
                  epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = root.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for module in COMMANDS:
        module.register(sub)
    return root


def _quiet(verbose: int) -> None:
    """Logs at WARNING unless ``-v``; third-party chatter (pgserver, httpx, platformdirs) likewise."""
    level = os.environ.get("DEVART_LOG_LEVEL") or ("DEBUG" if verbose > 1 else "INFO" if verbose else "WARNING")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("DEVART_LOG_LEVEL", level)  # the agents `devart up` starts log alike
    if verbose < 2:
        for name in ("httpx", "pgserver", "uvicorn.error"):
            logging.getLogger(name).setLevel(max(logging.getLogger().level, logging.WARNING))
    if not verbose:
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.home is not None:
        os.environ["DEVART_HOME"] = str(args.home.expanduser().resolve())
    _quiet(args.verbose)
    try:
        describe_context(args)
        return args.run(args)
    except CliError as exc:
        print(f"{args.prog}: {exc.message}", file=sys.stderr)
        return int(exc.code)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from pydantic import ValidationError

        from control_plane.broker import BrokerUnavailable

        if isinstance(exc, ValidationError | BrokerUnavailable):  # settings from the environment, no broker
            print(f"{args.prog}: {exc}", file=sys.stderr)
            return int(Exit.USAGE if isinstance(exc, ValidationError) else Exit.UNREACHABLE)
        raise


if __name__ == "__main__":
    sys.exit(main())
