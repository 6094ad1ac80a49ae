"""Step outputs: values picked out of a task's result by JSONPath-like selectors, size-capped.

A selector starts at ``$`` (the task's result) and walks ``.name``, ``['name']``, ``[index]``
(negative counts from the end) and ``[*]`` (every element, giving a list). A selector that leads
nowhere gives ``null``.
"""

from __future__ import annotations

import json
import re
from typing import Any

_STEP = re.compile(r"""\.([A-Za-z_][A-Za-z0-9_-]*)|\[(-?\d+)\]|\['((?:[^'\\]|\\.)*)'\]|\["((?:[^"\\]|\\.)*)"\]|\[(\*)\]""")

Selector = tuple[str | int, ...]
WILDCARD = "*"


class SelectorError(ValueError):
    pass


class OutputsTooLarge(ValueError):
    pass


def compile_selector(text: str) -> Selector:
    if not text.startswith("$"):
        raise SelectorError("a selector starts with '$' (the step's result)")
    parts: list[str | int] = []
    pos = 1
    while pos < len(text):
        match = _STEP.match(text, pos)
        if match is None:
            raise SelectorError(f"cannot read the selector at {text[pos:]!r} (use .name, [0], ['name'] or [*])")
        name, index, single, double, star = match.groups()
        if star:
            parts.append(WILDCARD)
        elif index is not None:
            parts.append(int(index))
        else:
            parts.append(name if name is not None else re.sub(r"\\(.)", r"\1", single if single is not None else double))
        pos = match.end()
    return tuple(parts)


def select(value: Any, selector: Selector) -> Any:
    for i, part in enumerate(selector):
        if part == WILDCARD and isinstance(value, list):
            return [select(item, selector[i + 1:]) for item in value]
        if isinstance(value, dict) and isinstance(part, str):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value):
            value = value[part]
        else:
            return None
    return value


def extract(result: Any, selectors: dict[str, Selector], *, max_bytes: int) -> dict[str, Any]:
    """The outputs named by ``selectors``; raises ``OutputsTooLarge`` past ``max_bytes`` of JSON."""
    outputs = {name: select(result, selector) for name, selector in selectors.items()}
    size = len(json.dumps(outputs, separators=(",", ":")).encode())
    if size > max_bytes:
        raise OutputsTooLarge(f"outputs are {size} bytes, more than the {max_bytes} a step may keep")
    return outputs
