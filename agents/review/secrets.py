"""Secrets written into the code: known token formats, private keys, and high-entropy assignments."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

from agents.review.diff import Added


@dataclass(frozen=True)
class _Pattern:
    rule: str
    what: str
    regex: re.Pattern[str]


_PATTERNS = (
    _Pattern("DS001", "an AWS access key id", re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b")),
    _Pattern("DS002", "a GitHub token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255})\b")),
    _Pattern("DS003", "a private key", re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY( BLOCK)?-----")),
)
_ASSIGNMENT = re.compile(
    r"""(?i)(?P<name>[\w.-]*(?:secret|token|passw(?:or)?d|api[_-]?key|access[_-]?key|credential)[\w.-]*)"""
    r"""["']?\s*[:=]\s*["'](?P<value>[^"'\s]{16,})["']"""
)
ENTROPY_BITS = 3.5
"""Shannon entropy per character above which an assigned literal counts as a secret."""


def entropy(text: str) -> float:
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def scan(added: Added) -> list[tuple[str, int, str, str]]:
    """``(path, line, rule, message)`` for each added line that looks like it holds a secret."""
    found = []
    for path, lines in added.items():
        for number, text in lines.items():
            hit = next(((p.rule, p.what) for p in _PATTERNS if p.regex.search(text)), None)
            if hit is None and (m := _ASSIGNMENT.search(text)) and entropy(m["value"]) >= ENTROPY_BITS:
                hit = ("DS004", f"a high-entropy value assigned to {m['name']}")
            if hit is not None:
                found.append((path, number, hit[0], f"this line adds what looks like {hit[1]}; use a secret store"))
    return found
