"""The secrets scan on added lines: each kind it knows, and look-alikes it leaves alone."""

from __future__ import annotations

import pytest

from agents.review.diff import added_lines
from agents.review.secrets import scan

# Built from parts so that no literal credential sits in this repository.
GITHUB_TOKEN = "ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2
PRIVATE_KEY = "-----BEGIN " + "OPENSSH PRIVATE KEY-----"
RANDOM_VALUE = "q8Zr2LxV0pW7nT4yKc9s"


@pytest.mark.parametrize(("line", "rule"), [
    (f'token = "{GITHUB_TOKEN}"', "DS002"),
    (PRIVATE_KEY, "DS003"),
    (f'DB_PASSWORD = "{RANDOM_VALUE}"', "DS004"),
    (f'"api_key": "{RANDOM_VALUE}",', "DS004"),
])
def test_each_kind_is_found(line: str, rule: str) -> None:
    diff = f"+++ b/app.py\n@@ -0,0 +7 @@\n+{line}\n"
    ((path, number, found, message),) = scan(added_lines(diff))
    assert (path, number, found) == ("app.py", 7, rule) and "secret store" in message


@pytest.mark.parametrize("line", [
    'password = "changeme-changeme"',  # low entropy
    f'greeting = "{RANDOM_VALUE}"',  # a random literal, but not assigned to a secret-like name
    'token = os.environ["GITHUB_TOKEN"]',  # read from the environment
])
def test_look_alikes_are_left_alone(line: str) -> None:
    assert scan(added_lines(f"+++ b/app.py\n@@ -0,0 +1 @@\n+{line}\n")) == []


def test_only_added_lines_count() -> None:
    diff = f"+++ b/app.py\n@@ -3 +3 @@\n-{PRIVATE_KEY}\n+fixed = True\n"
    assert added_lines(diff) == {"app.py": {3: "fixed = True"}}
    assert scan(added_lines(diff)) == []
