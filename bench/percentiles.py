"""The latency summary every benchmark prints: the median and the 99th percentile."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def p50_p99(values: Sequence[float]) -> tuple[float, float]:
    """Median and 99th percentile of ``values`` (not empty)."""
    p50, p99 = np.percentile(np.asarray(values), [50, 99])
    return float(p50), float(p99)
