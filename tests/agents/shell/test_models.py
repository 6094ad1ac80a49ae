"""ShellInput validation: every error names the field that is wrong."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from agents.shell import ShellInput


def error_of(data: dict[str, Any]) -> tuple[str, str]:
    with pytest.raises(ValidationError) as caught:
        ShellInput.model_validate(data)
    first = caught.value.errors()[0]
    return ".".join(str(part) for part in first["loc"]), first["msg"]


def test_minimal_inputs() -> None:
    assert ShellInput(command=["make", "test"]).workdir == "."
    assert ShellInput(script="make test", repo="https://example.com/r.git", ref="main").ref == "main"


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        ({"command": ["a"], "script": "b"}, "", "exactly one of command and script"),
        ({}, "", "exactly one of command and script"),
        ({"command": []}, "command", "at least 1"),
        ({"script": ""}, "script", "at least 1"),
        ({"script": "x", "ref": "v1"}, "", "ref is set but repo is not"),
        ({"script": "x", "repo": "r", "ref": "--upload-pack=evil"}, "ref", "must not start with '-'"),
        ({"script": "x", "workdir": "../up"}, "workdir", "relative path inside the checkout"),
        ({"script": "x", "workdir": "/abs"}, "workdir", "relative path inside the checkout"),
        ({"script": "x", "artifacts": ["ok/*", "../*"]}, "artifacts", "relative path inside the checkout"),
        ({"script": "x", "env": {"1BAD": "v"}}, "env", "not environment variable names"),
        ({"script": "x", "secret_env": {"A-B": {"name": "n", "key": "k"}}}, "secret_env", "not environment"),
        ({"script": "x", "secret_env": {"TOKEN": {"name": "n"}}}, "secret_env.TOKEN.key", "Field required"),
        (
            {"script": "x", "env": {"T": "1"}, "secret_env": {"T": {"name": "n", "key": "k"}}},
            "",
            "env and secret_env",
        ),
        ({"script": "x", "timeout_s": 0}, "timeout_s", "greater than 0"),
        ({"script": "x", "sandbox": {"workdir": "/"}}, "sandbox.workdir", "Extra inputs"),
        ({"script": "x", "sandbox": {"kind": "docker"}}, "sandbox.kind", "'local' or 'kubernetes'"),
        ({"script": "x", "sandbox": {"resources": {"gpu": "1"}}}, "sandbox.resources.gpu", "Extra inputs"),
        ({"script": "x", "shell": "bash"}, "shell", "Extra inputs"),
    ],
)
def test_bad_input_names_the_field(data: dict[str, Any], where: str, words: str) -> None:
    loc, message = error_of(data)
    assert loc == where
    assert words in message
