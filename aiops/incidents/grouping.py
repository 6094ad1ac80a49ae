"""Which anomalies belong together: the call graph between services, learned from spans.

Two services are on the same call path when one reaches the other by parent -> child edges (a span
whose parent span belongs to another service). An anomaly joins an unresolved incident whose latest
anomaly is at most a correlation window old and which already involves a service on its call path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aiops.incidents.model import Incident
from aiops.traces.model import Span


class CallGraph:
    """Directed service edges with the time each was last seen; edges unseen for ``ttl_ns`` expire."""

    def __init__(self, ttl_ns: int) -> None:
        self.ttl_ns = ttl_ns
        self._seen: dict[tuple[str, str], int] = {}

    def observe(self, spans: Sequence[Span]) -> None:
        """Add the caller -> callee edges of a batch of spans (parents looked up within the batch)."""
        service_of = {(s.trace_id, s.span_id): s.service for s in spans}
        for span in spans:
            if span.parent_id is None:
                continue
            parent = service_of.get((span.trace_id, span.parent_id))
            if parent is not None and parent != span.service:
                edge = (parent, span.service)
                self._seen[edge] = max(self._seen.get(edge, span.start_ns), span.start_ns)

    def expire(self, now_ns: int) -> None:
        """Forget edges not seen since ``now_ns - ttl_ns``."""
        cutoff = now_ns - self.ttl_ns
        self._seen = {edge: at for edge, at in self._seen.items() if at >= cutoff}

    @property
    def edges(self) -> set[tuple[str, str]]:
        """The live edges, ``(caller, callee)``."""
        return set(self._seen)

    def on_same_path(self, a: str, b: str) -> bool:
        """Whether ``a`` and ``b`` are one service, or one calls the other directly or transitively."""
        return a == b or b in self._reachable(a) or a in self._reachable(b)

    def _reachable(self, start: str) -> set[str]:
        callees: dict[str, list[str]] = {}
        for caller, callee in self._seen:
            callees.setdefault(caller, []).append(callee)
        found: set[str] = set()
        todo = [start]
        while todo:
            for nxt in callees.get(todo.pop(), ()):
                if nxt not in found:
                    found.add(nxt)
                    todo.append(nxt)
        return found


def correlated_incident(
    candidates: Iterable[Incident], *, service: str, at_ns: int, window_ns: int, graph: CallGraph
) -> Incident | None:
    """The unresolved incident an anomaly of ``service`` starting at ``at_ns`` joins, or None.

    Among incidents whose latest anomaly ended within ``window_ns`` before ``at_ns`` and which involve a
    service on ``service``'s call path, the one with the most recent anomaly wins.
    """
    matches = [
        incident
        for incident in candidates
        if incident.status != "resolved"
        and at_ns - incident.last_anomaly_ns <= window_ns
        and any(graph.on_same_path(service, other) for other in incident.services)
    ]
    return max(matches, key=lambda i: (i.last_anomaly_ns, i.opened_at), default=None)
