"""The workflow expression language: a small, safe grammar evaluated by a tree walk (no ``eval``).

Inside ``${{ ... }}``::

    expr    := or
    or      := and ('||' and)*
    and     := unary ('&&' unary)*
    unary   := '!' unary | compare
    compare := primary (('==' | '!=' | '<' | '<=' | '>' | '>=') primary)?
    primary := literal | path | '(' expr ')'
    path    := NAME ('.' NAME | '[' (STRING | INT) ']')*
    literal := 'string' | "string" | number | true | false | null

``&&`` and ``||`` return one of their operands (like GitHub Actions), ``!`` a boolean. A path that
leads nowhere is ``null``. ``==`` between values of different types is false; ordering them is an
error. A template is a string holding ``${{ }}`` parts: a template that is exactly one expression
keeps the expression's type, any other text makes a string.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_EXPRESSION_CHARS = 2000
MAX_DEPTH = 32

_TEMPLATE = re.compile(r"\$\{\{(.*?)\}\}", re.S)
_TOKEN = re.compile(
    r"""\s*(?:
        (?P<number>-?\d+(?:\.\d+)?)
      | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<name>[A-Za-z_][A-Za-z0-9_-]*)
      | (?P<op>==|!=|<=|>=|&&|\|\||[<>!().\[\]])
    )""",
    re.X,
)


class ExpressionError(ValueError):
    """An expression that does not parse, or cannot be evaluated on these values."""


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class Path:
    parts: tuple[str | int, ...]


@dataclass(frozen=True)
class Not:
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


Node = Literal | Path | Not | Binary


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise ExpressionError(f"unexpected character {text[pos:].lstrip()[:1]!r} at {pos}")
        kind = match.lastgroup or ""
        out.append((kind, match.group(kind)))
        pos = match.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_EXPRESSION_CHARS:
            raise ExpressionError(f"expression is longer than {MAX_EXPRESSION_CHARS} characters")
        self.tokens = _tokens(text)
        self.pos = 0
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, value: str | None = None) -> tuple[str, str]:
        token = self.peek()
        if token is None:
            raise ExpressionError("unexpected end of expression" + (f", expected {value!r}" if value else ""))
        if value is not None and token != ("op", value):
            raise ExpressionError(f"expected {value!r}, found {token[1]!r}")
        self.pos += 1
        return token

    def at(self, *ops: str) -> str | None:
        token = self.peek()
        return token[1] if token is not None and token[0] == "op" and token[1] in ops else None

    def parse(self) -> Node:
        if not self.tokens:
            raise ExpressionError("empty expression")
        node = self.expr()
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek()[1]!r} after the expression")  # type: ignore[index]
        return node

    def expr(self) -> Node:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise ExpressionError(f"expression nests deeper than {MAX_DEPTH}")
        node = self.and_()
        while self.at("||"):
            self.take()
            node = Binary("||", node, self.and_())
        self.depth -= 1
        return node

    def and_(self) -> Node:
        node = self.unary()
        while self.at("&&"):
            self.take()
            node = Binary("&&", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.at("!"):
            self.take()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise ExpressionError(f"expression nests deeper than {MAX_DEPTH}")
            node = Not(self.unary())
            self.depth -= 1
            return node
        return self.compare()

    def compare(self) -> Node:
        node = self.primary()
        op = self.at("==", "!=", "<", "<=", ">", ">=")
        if op:
            self.take()
            node = Binary(op, node, self.primary())
            if self.at("==", "!=", "<", "<=", ">", ">="):
                raise ExpressionError("comparisons do not chain; use parentheses and && instead")
        return node

    def primary(self) -> Node:
        kind, value = self.take()
        if kind == "number":
            return Literal(float(value) if "." in value else int(value))
        if kind == "string":
            return Literal(_unquote(value))
        if kind == "name":
            if value in ("true", "false", "null"):
                return Literal({"true": True, "false": False, "null": None}[value])
            return self.path(value)
        if value == "(":
            node = self.expr()
            self.take(")")
            return node
        raise ExpressionError(f"unexpected {value!r}")

    def path(self, first: str) -> Path:
        parts: list[str | int] = [first]
        while self.at(".", "["):
            if self.take()[1] == ".":
                kind, value = self.take()
                if kind != "name":
                    raise ExpressionError(f"expected a name after '.', found {value!r}")
                parts.append(value)
                continue
            kind, value = self.take()
            if kind == "string":
                parts.append(_unquote(value))
            elif kind == "number" and value.lstrip("-").isdigit():
                parts.append(int(value))
            else:
                raise ExpressionError(f"an index is a string or an integer, not {value!r}")
            self.take("]")
        return Path(tuple(parts))


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


def parse(text: str) -> Node:
    """Parse one expression (the text inside ``${{ }}``)."""
    return _Parser(text).parse()


def paths(node: Node) -> Iterator[tuple[str | int, ...]]:
    """Every path the expression reads, for checking references before a run."""
    match node:
        case Path(parts):
            yield parts
        case Not(operand):
            yield from paths(operand)
        case Binary(_, left, right):
            yield from paths(left)
            yield from paths(right)


def truthy(value: Any) -> bool:
    return value not in (None, False, 0, "") and value != [] and value != {}


def evaluate(node: Node, context: dict[str, Any]) -> Any:
    match node:
        case Literal(value):
            return value
        case Path(parts):
            return _lookup(context, parts)
        case Not(operand):
            return not truthy(evaluate(operand, context))
        case Binary("&&", left, right):
            value = evaluate(left, context)
            return evaluate(right, context) if truthy(value) else value
        case Binary("||", left, right):
            value = evaluate(left, context)
            return value if truthy(value) else evaluate(right, context)
        case Binary(op, left, right):
            return _compare(op, evaluate(left, context), evaluate(right, context))
    raise ExpressionError(f"not an expression node: {node!r}")


def _lookup(value: Any, parts: tuple[str | int, ...]) -> Any:
    for part in parts:
        if isinstance(value, dict) and isinstance(part, str):
            value = value.get(part)
        elif isinstance(value, list) and isinstance(part, int) and -len(value) <= part < len(value):
            value = value[part]
        else:
            return None
    return value


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _compare(op: str, left: Any, right: Any) -> bool:
    same = _kind(left) == _kind(right)
    if op == "==":
        return same and left == right
    if op == "!=":
        return not (same and left == right)
    if not same or _kind(left) not in ("number", "string"):
        raise ExpressionError(f"cannot order {_kind(left)} and {_kind(right)} with {op!r}")
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]


@dataclass(frozen=True)
class Template:
    """A string with ``${{ }}`` parts, parsed once."""

    pieces: tuple[str | Node, ...]

    @property
    def nodes(self) -> list[Node]:
        return [p for p in self.pieces if not isinstance(p, str)]

    def render(self, context: dict[str, Any]) -> Any:
        if len(self.pieces) == 1 and not isinstance(self.pieces[0], str):
            return evaluate(self.pieces[0], context)
        return "".join(p if isinstance(p, str) else _as_text(evaluate(p, context)) for p in self.pieces)


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    return json.dumps(value, separators=(",", ":"))


def template(text: str) -> Template:
    """Parse a string that may hold ``${{ }}`` expressions (raises ``ExpressionError``)."""
    pieces: list[str | Node] = []
    pos = 0
    for match in _TEMPLATE.finditer(text):
        if match.start() > pos:
            pieces.append(text[pos:match.start()])
        pieces.append(parse(match.group(1)))
        pos = match.end()
    if pos < len(text):
        pieces.append(text[pos:])
    if any(isinstance(p, str) and "${{" in p for p in pieces):
        raise ExpressionError("'${{' without a closing '}}'")
    return Template(tuple(pieces))


def condition(text: str) -> Node:
    """An ``if``: either a bare expression or one wrapped in ``${{ }}``."""
    stripped = text.strip()
    match = _TEMPLATE.fullmatch(stripped)
    return parse(match.group(1) if match else stripped)


def render_value(value: Any, context: dict[str, Any]) -> Any:
    """Render every string in a JSON value as a template."""
    if isinstance(value, str):
        return template(value).render(context) if "${{" in value else value
    if isinstance(value, list):
        return [render_value(v, context) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, context) for k, v in value.items()}
    return value
