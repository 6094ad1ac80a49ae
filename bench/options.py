"""A benchmark's command line, made from its pydantic settings class: one ``--flag`` per field."""

from __future__ import annotations

import argparse

from pydantic_settings import BaseSettings


def settings_parser(settings: type[BaseSettings], *, prog: str, doc: str) -> argparse.ArgumentParser:
    """``--some-field`` for each field of ``settings``, typed as its default (``str`` when it has none),
    its description as the help; the first line of ``doc`` describes the command.

    A flag left out is absent from the parsed namespace, so ``settings(**vars(parsed))`` keeps the
    environment's value or the default for it.
    """
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0], argument_default=argparse.SUPPRESS)
    for name, info in settings.model_fields.items():
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=info.description,
                            type=type(info.default) if info.default is not None else str)
    return parser
