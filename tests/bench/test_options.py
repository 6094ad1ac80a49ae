"""The benchmarks' command lines: one typed flag per settings field, the environment kept for the rest."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bench.identity import IdentityBenchSettings
from bench.options import settings_parser
from bench.streams import StreamsBenchSettings


def _settings(argv: list[str]) -> StreamsBenchSettings:
    parsed = settings_parser(StreamsBenchSettings, prog="bench", doc="Streams.\nMore.").parse_args(argv)
    return StreamsBenchSettings(**vars(parsed))


def test_flags_are_typed_as_the_defaults_and_the_environment_fills_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEVART_BENCH_SUBMITS", "30")
    settings = _settings(["--streams", "5", "--rate", "2.5", "--database-url", "postgresql://x/y"])
    assert (settings.streams, settings.rate, settings.database_url, settings.submits) == (5, 2.5, "postgresql://x/y", 30)
    assert _settings(["--submits", "40"]).submits == 40  # a flag wins over the environment


def test_a_bad_value_is_refused_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        _settings(["--streams", "many"])
    assert "--streams: invalid int value: 'many'" in capsys.readouterr().err
    with pytest.raises(ValidationError, match="streams"):
        _settings(["--streams", "0"])


def test_help_lists_every_field_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings_parser(IdentityBenchSettings, prog="python -m bench.identity", doc="Identity.\n").parse_args(["--help"])
    printed = capsys.readouterr().out
    assert "Identity." in printed and "--amqp-url" in printed and "--rounds" in printed
    assert "reads per app, in total over the rounds" in printed
