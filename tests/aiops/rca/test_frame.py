"""Self time and ownership of spans in the columnar frame."""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np

from aiops.rca.frame import ATTRIBUTES, FACET_INBOUND, FACET_PEER, FACET_SELF, Frame, Vocabulary, build_frame
from aiops.traces.model import Span
from aiops.traces.table import SpanTable

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


def test_parents_are_found_within_the_trace_when_span_ids_repeat_across_traces() -> None:
    """Ids such as "1", "2" reused by every trace: a parent is the span of that id in the same
    trace (the last one when a trace repeats an id), never one of another trace."""
    spans = [
        Span("t1", "1", None, "a", "root", "server", 0, 10),
        Span("t2", "1", None, "a", "root", "server", 0, 10),
        Span("t2", "2", "1", "a", "child", "internal", 1, 5),
        Span("t1", "2", "1", "a", "child", "internal", 2, 4),
        Span("t1", "3", "9", "a", "orphan", "internal", 2, 4),
        Span("t2", "1", None, "a", "again", "server", 0, 10),
        Span("t2", "3", "1", "a", "late", "internal", 6, 7),
    ]
    frame = build_frame(spans, Vocabulary())
    assert frame.parent.tolist() == [-1, -1, 5, 0, -1, -1, 5]
    assert frame.n_traces == 2 and frame.trace.tolist() == [0, 1, 1, 0, 0, 1, 1]


def test_a_table_and_its_spans_give_the_same_frame_and_malformed_spans_are_counted() -> None:
    good = [
        _s("1", None, "front", "server", 0, 100, **{"k8s.pod.name": "front-7d9f8b6c5d-x2k4q"}),
        _s("2", "1", "front", "client", 10, 40, **{"http.status_code": 503}),
        _s("3", "2", "cart", "server", 12, 30, **{"service.version": "1.5"}),
    ]
    bad: list[object] = [
        Span(_T, "4", None, "cart", "op", "server", 9, 8),  # ends before it starts
        Span(_T, "", None, "cart", "op", "server", 1, 2),  # no span id
        Span("", "5", None, "cart", "op", "server", 1, 2),  # no trace id
        Span(_T, "6", None, "cart", "op", "server", 1.0, 2),  # type: ignore[arg-type]
        "not a span",
    ]
    spans = [good[0], bad[0], good[1], *bad[1:], good[2]]
    from_spans = build_frame(spans, Vocabulary())  # type: ignore[arg-type]
    from_table = build_frame(SpanTable.from_spans(spans), Vocabulary())
    assert from_spans.size == 3 and from_spans.malformed == 5
    for frame in (from_spans, from_table):
        assert frame.malformed == 5
        assert frame.parent.tolist() == [-1, 0, 1]
        assert frame.error.tolist() == [False, True, False] and frame.own_error.tolist() == [False, True, False]
        assert frame.versions == {1: {"1.5"}}
        np.testing.assert_array_equal(frame.exclusive, from_spans.exclusive)
        np.testing.assert_array_equal(frame.instance, from_spans.instance)


def test_the_frame_reads_no_attribute_beyond_those_it_names() -> None:
    """What a reader may leave out (``ATTRIBUTES``) changes nothing in the frame."""
    spans = [
        _s("1", None, "front-7d9f8b6c5d-x2k4q", "server", 0, 100, **{"k8s.pod.name": "front-7d9f8b6c5d-x2k4q",
                                                                    "service.version": "2.0", "http.url": "/a"}),
        _s("2", "1", "front", "client", 10, 40, **{"peer.service": "billing", "net.peer.ip": "10.0.0.1"}),
        _s("3", "1", "front", "client", 20, 50, **{"db.system": "postgresql", "db.statement": "SELECT 1"}),
        _s("4", "1", "front", "internal", 55, 60, **{"http.response.status_code": 503}),
        _s("5", "1", "front", "internal", 60, 61, **{"http.status_code": 500, "thread.id": 7}),
    ]
    cut = [replace(s, attributes={k: v for k, v in s.attributes.items() if k in ATTRIBUTES}) for s in spans]
    whole, kept = Vocabulary(), Vocabulary()
    a, b = build_frame(spans, whole), build_frame(cut, kept)
    assert a.error.tolist() == [False, False, False, True, True] and a.versions and a.datastore
    assert whole.services == kept.services and whole.instances == kept.instances
    for field in fields(Frame):
        left, right = getattr(a, field.name), getattr(b, field.name)
        if isinstance(left, np.ndarray):
            np.testing.assert_array_equal(left, right, err_msg=field.name)
        else:
            assert left == right, field.name
