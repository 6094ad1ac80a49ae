"""The one span model every trace source is converted to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SpanKind = Literal["internal", "server", "client", "producer", "consumer", "unspecified"]
SpanStatus = Literal["unset", "ok", "error"]


@dataclass(frozen=True, slots=True)
class Span:
    """A finished span. Ids are lower-case hex; times are Unix nanoseconds; ``parent_id`` is None
    for a root (or for a span whose parent was never seen)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    service: str
    name: str
    kind: SpanKind
    start_ns: int
    end_ns: int
    status: SpanStatus = "unset"
    attributes: dict[str, Any] = field(default_factory=dict)

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns
