"""The lines a unified diff (``git diff -U0``) adds, per file of the new side."""

from __future__ import annotations

import re

_FILE = re.compile(r"^\+\+\+ (?:b/(?P<path>.+)|/dev/null)$")
_HUNK = re.compile(r"^@@ -\d+(?:,\d+)? \+(?P<start>\d+)(?:,\d+)? @@")

Added = dict[str, dict[int, str]]
"""path -> line number in the new file -> the added text."""


def added_lines(diff: str) -> Added:
    added: Added = {}
    path: str | None = None
    line = 0
    for text in diff.splitlines():
        if text.startswith("+++ "):
            match = _FILE.match(text)
            path = match["path"] if match and match["path"] else None
            if path is not None:
                added.setdefault(path, {})
        elif (hunk := _HUNK.match(text)) is not None:
            line = int(hunk["start"])
        elif text.startswith("+") and path is not None:
            added[path][line] = text[1:]
            line += 1
        elif text.startswith(" "):
            line += 1
    return added
