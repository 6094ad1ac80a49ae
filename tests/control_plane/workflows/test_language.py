"""The expression language, output selectors, cron schedules and definition parsing, without services."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from control_plane.workflows.cron import CronError, parse_cron
from control_plane.workflows.definition import (
    DefinitionError,
    load_document,
    parse_definition,
    parse_duration,
)
from control_plane.workflows.expressions import (
    ExpressionError,
    condition,
    evaluate,
    parse,
    render_value,
    template,
)
from control_plane.workflows.outputs import OutputsTooLarge, SelectorError, compile_selector, extract, select

CONTEXT = {"inputs": {"ref": "main", "n": 3, "flag": False, "list": [1, 2]},
           "steps": {"build": {"status": "succeeded", "outputs": {"art": "a.tgz", "py=3.11": 1}}}}


@pytest.mark.parametrize(("text", "value"), [
    ("inputs.ref == 'main'", True),
    ("inputs.ref != \"main\"", False),
    ("inputs.n > 2 && inputs.n <= 3", True),
    ("!inputs.flag", True),
    ("inputs.flag || 'fallback'", "fallback"),
    ("inputs.ref && inputs.n", 3),
    ("steps.build.status == 'succeeded' && steps.build.outputs.art == 'a.tgz'", True),
    ("steps.build.outputs['py=3.11']", 1),
    ("inputs.list[1]", 2),
    ("inputs.list[-1]", 2),
    ("inputs.missing.deeper", None),
    ("inputs.n == '3'", False),
    ("(inputs.n == 3 || false) && !(inputs.ref == 'x')", True),
    ("1.5 < 2", True),
    ("null == inputs.nothing", True),
])
def test_expressions(text: str, value: object) -> None:
    assert evaluate(parse(text), CONTEXT) == value


@pytest.mark.parametrize("text", [
    "", "inputs.", "a ==", "a == b == c", "f(1)", "a.b[1.5]", "'unclosed", "a ; b", "import os", "a +",
    "(" * 40 + "1" + ")" * 40,
])
def test_bad_expressions(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse(text)


def test_ordering_mismatched_types_is_an_error() -> None:
    with pytest.raises(ExpressionError, match="cannot order string and number"):
        evaluate(parse("inputs.ref < 1"), CONTEXT)


def test_templates_keep_types_or_make_text() -> None:
    assert template("${{ inputs.n }}").render(CONTEXT) == 3
    assert template("n=${{ inputs.n }} ${{ inputs.list }} ${{ inputs.none }}!").render(CONTEXT) == "n=3 [1,2] !"
    assert render_value({"a": ["${{ inputs.ref }}", 1], "b": "plain"}, CONTEXT) == {"a": ["main", 1], "b": "plain"}
    assert evaluate(condition("${{ inputs.n == 3 }}"), CONTEXT) is True
    with pytest.raises(ExpressionError):
        template("${{ inputs.n ")


def test_selectors() -> None:
    result = {"artifacts": ["a", "b"], "x": {"y-z": [{"v": 1}, {"v": 2}]}}
    assert select(result, compile_selector("$.artifacts[0]")) == "a"
    assert select(result, compile_selector("$.artifacts[-1]")) == "b"
    assert select(result, compile_selector("$['x'][\"y-z\"][*].v")) == [1, 2]
    assert select(result, compile_selector("$.nothing[3]")) is None
    assert select(result, compile_selector("$")) == result
    for bad in ("artifacts", "$.", "$[x]", "$..a"):
        with pytest.raises(SelectorError):
            compile_selector(bad)
    assert extract(result, {"a": compile_selector("$.artifacts")}, max_bytes=100) == {"a": ["a", "b"]}
    with pytest.raises(OutputsTooLarge, match="more than the 10"):
        extract(result, {"a": compile_selector("$.artifacts")}, max_bytes=10)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(("cron", "after", "expected"), [
    ("*/15 * * * *", "2026-12-01 09:07", "2026-12-01 09:15"),
    ("*/15 * * * *", "2026-12-01 09:15", "2026-12-01 09:30"),
    ("0 0 * * *", "2026-12-31 23:59", "2027-01-01 00:00"),
    ("30 2 * * MON-FRI", "2026-12-04 03:00", "2026-12-07 02:30"),  # Friday after 02:30 -> Monday
    ("0 12 29 2 *", "2026-03-01 00:00", "2028-02-29 12:00"),
    ("0 0 1 * 0", "2026-12-01 01:00", "2026-12-06 00:00"),  # day 1 OR Sunday (both restricted)
    ("5,10-12 8 * JAN,dec 7", "2026-12-01 00:00", "2026-12-06 08:05"),
    ("@hourly", "2026-12-01 09:07", "2026-12-01 10:00"),
])
def test_cron(cron: str, after: str, expected: str) -> None:
    assert parse_cron(cron).next_after(at(after)) == at(expected)


@pytest.mark.parametrize("text", ["* * * *", "60 * * * *", "* 24 * * *", "*/0 * * * *", "5-1 * * * *", "x * * * *",
                                  "0 0 31 2 *"])
def test_bad_cron(text: str) -> None:
    with pytest.raises(CronError):
        parse_cron(text).next_after(at("2026-01-01 00:00"))


def test_durations_and_yaml_on_key() -> None:
    assert [parse_duration(v) for v in ("90s", "15m", "2h", "1d", "1h30m", 5, 0.5)] == [
        90, 900, 7200, 86400, 5400, 5, 0.5]
    for bad in ("", "soon", 0, -1, True, "5 minutes"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    document = load_document("name: n\non: {schedule: '@daily'}\nsteps: {a: {}}\n")
    assert parse_definition(document).schedule.cron_text == "@daily"


def test_every_problem_is_reported_with_its_path() -> None:
    with pytest.raises(DefinitionError) as caught:
        parse_definition({"name": "x", "steps": {"a": {"needs": ["zz"], "timeout": "never", "max_parallel": -1}}})
    assert [p for p, _ in caught.value.problems] == ["steps.a.max_parallel", "steps.a.timeout"]
