"""Which spans a query wants: one filter type shared by the Postgres store and Tempo (as TraceQL)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aiops.traces.model import Span, SpanKind, SpanStatus


@dataclass(frozen=True, slots=True, init=False)
class SpanFilter:
    """Spans whose service, name, kind and status are each in the given set; an empty set means
    any value. Sets of one field are OR-ed, fields are AND-ed."""

    services: frozenset[str]
    names: frozenset[str]
    kinds: frozenset[SpanKind]
    statuses: frozenset[SpanStatus]

    def __init__(
        self,
        *,
        services: Iterable[str] = (),
        names: Iterable[str] = (),
        kinds: Iterable[SpanKind] = (),
        statuses: Iterable[SpanStatus] = (),
    ) -> None:
        object.__setattr__(self, "services", frozenset(services))
        object.__setattr__(self, "names", frozenset(names))
        object.__setattr__(self, "kinds", frozenset(kinds))
        object.__setattr__(self, "statuses", frozenset(statuses))

    def matches(self, span: Span) -> bool:
        """True when ``span`` passes every non-empty field of the filter."""
        return (
            (not self.services or span.service in self.services)
            and (not self.names or span.name in self.names)
            and (not self.kinds or span.kind in self.kinds)
            and (not self.statuses or span.status in self.statuses)
        )

    def to_traceql(self) -> str:
        """The same filter as a TraceQL spanset selector, e.g. ``{ resource.service.name = "api" }``."""
        clauses = [
            _any_of("resource.service.name", [_quote(s) for s in sorted(self.services)]),
            _any_of("name", [_quote(n) for n in sorted(self.names)]),
            _any_of("kind", sorted(self.kinds)),
            _any_of("status", sorted(self.statuses)),
        ]
        body = " && ".join(c for c in clauses if c)
        return f"{{ {body} }}" if body else "{}"


ANY_SPAN = SpanFilter()
"""The filter that lets every span through."""


def _any_of(field: str, values: list[str]) -> str:
    if not values:
        return ""
    alternatives = " || ".join(f"{field} = {v}" for v in values)
    return f"({alternatives})" if len(values) > 1 else alternatives


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
