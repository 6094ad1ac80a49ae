"""Keeps generated parts of the documentation in step with the code (``make docs``)."""

from __future__ import annotations

import sys
from pathlib import Path

from control_plane.configuration import env_file, markdown_table

START, END = "<!-- config:start -->", "<!-- config:end -->"


def readme_with_config(readme: str) -> str:
    head, rest = readme.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{markdown_table()}{END}{tail}"


def main(root: Path) -> None:
    readme = root / "README.md"
    readme.write_text(readme_with_config(readme.read_text()))
    (root / ".env.example").write_text(env_file())


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd())
