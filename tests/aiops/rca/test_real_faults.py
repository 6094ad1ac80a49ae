"""Ranking on a few real fault injections (nezha-ob, OnlineBoutique), read from the datasets dir.

The source records no span kind and no status: the network fault is only visible as time spent
between a client span and its callee's span, the wrong return value only as callers cutting their
call sequences short right after the faulty service answers.
"""

from __future__ import annotations

import pytest

from aiops.rca.ranking import analyze
from bench.datasets import Fault, baseline_spans, datasets_root, fault_spans, nezha_faults


def _fault(fault_id: str) -> Fault:
    return next(f for f in nezha_faults(datasets_root()) if f.id == fault_id)


@pytest.mark.parametrize(
    ("fault_id", "fault_type"),
    [("2022-08-23-07", "network_delay"), ("2022-08-23-19", "return"), ("2022-08-23-08", "exception")],
)
def test_real_fault_ranks_the_injected_service_first(fault_id: str, fault_type: str) -> None:
    root = datasets_root()
    fault = _fault(fault_id)
    assert fault.fault_type == fault_type
    result = analyze(fault_spans(root, fault), baseline_spans(root, fault.baseline))
    assert result.status == "ok"
    assert result.causes[0].service == fault.root_service
    if fault_type == "network_delay":
        assert result.causes[0].evidence.views["latency"] > 0
    else:
        assert result.causes[0].evidence.views["truncation"] > 0.5
