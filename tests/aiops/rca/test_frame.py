"""Self time and ownership of spans in the columnar frame."""

from __future__ import annotations

import numpy as np

from aiops.rca.frame import FACET_INBOUND, FACET_PEER, FACET_SELF, Vocabulary, build_frame
from aiops.traces.model import Span

_T = "a" * 32


def _s(sid: str, parent: str | None, service: str, kind: str, start: int, end: int, **attrs: object) -> Span:
    return Span(_T, sid, parent, service, f"op-{sid}", kind, start, end, "unset", dict(attrs))  # type: ignore[arg-type]


def test_self_time_with_parallel_children_skewed_callees_and_peers() -> None:
    spans = [
        _s("1", None, "front-7d9f8b6c5d-x2k4q", "server", 0, 100),
        _s("2", "1", "front", "client", 10, 40),  # parallel with 3
        _s("3", "1", "front", "client", 20, 50),
        _s("4", "2", "cart", "server", 500, 520),  # 480 ns of clock skew; 20 of the 30 are the callee's
        _s("5", "3", "front", "client", 25, 45, **{"peer.service": "redis", "db.system": "redis"}),
        _s("6", "missing", "cart", "server", 0, 7),
    ]
    vocab = Vocabulary()
    frame = build_frame(spans, vocab)
    names = vocab.service_names()
    np.testing.assert_array_equal(frame.exclusive, [60, 10, 10, 20, 20, 7])
    assert [names[o] for o in frame.owner] == ["front", "cart", "front", "cart", "redis", "cart"]
    assert frame.facet.tolist() == [FACET_SELF, FACET_INBOUND, FACET_SELF, FACET_SELF, FACET_PEER, FACET_SELF]
    assert frame.parent.tolist() == [-1, 0, 0, 1, 2, -1], "a parent that was never seen is -1"
    assert vocab.services["redis"] in frame.datastore
    assert frame.n_traces == 1 and frame.malformed == 0
