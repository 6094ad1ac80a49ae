"""The README's configuration table and .env.example list exactly the variables the code reads."""

from pathlib import Path

from control_plane.configuration import env_file, variables
from control_plane.docs import readme_with_config

ROOT = Path(__file__).resolve().parents[2]


def test_readme_configuration_table_is_current() -> None:
    readme = (ROOT / "README.md").read_text()
    assert readme_with_config(readme) == readme, "run `make docs` and commit README.md"


def test_env_example_is_current() -> None:
    assert (ROOT / ".env.example").read_text() == env_file(), "run `make docs` and commit .env.example"


def test_every_setting_is_described_and_unique() -> None:
    found = variables()
    assert len(found) > 50
    assert all(v.description for v in found), [v.name for v in found if not v.description]
    names = [v.name for v in found]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_readme_starts_with_the_two_commands() -> None:
    first_block = (ROOT / "README.md").read_text().split("```")[1]
    assert "make run" in first_block and "make test" in first_block


def test_readme_agent_example_is_the_tested_module() -> None:
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "agents" / "examples" / "hello.py").read_text()
    body = example.split('"""', 2)[2].replace("from __future__ import annotations\n\n", "").strip()
    assert body in readme
