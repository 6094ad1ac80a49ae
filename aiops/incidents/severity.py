"""How bad an incident is, from the size and breadth of its deviations (no fixed table)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from aiops.incidents.model import Anomaly


def anomaly_size(anomaly: Anomaly) -> float:
    """One anomaly's size in [0, 1]: the detector's peak score times how large the change was.

    The change factor is ``1 - exp(-|relative change|)`` (a doubling counts ~0.63, a tenfold rise ~1);
    a change away from a zero baseline (errors where there were none) counts as complete.
    """
    if anomaly.relative_change is None:
        change = 1.0 if anomaly.peak_value not in (None, 0.0) else 0.5
    else:
        change = 1.0 - math.exp(-abs(anomaly.relative_change))
    return anomaly.peak_score * change


def severity(anomalies: Sequence[Anomaly]) -> float:
    """Severity in [0, 1]: the deviations combined as independent evidence (``1 - prod(1 - size)``),
    so every further anomalous series raises it, scaled by breadth: one service gives x0.75, and each
    further service on the call path brings the factor closer to 1 (``0.5 + 0.5 * n / (n + 1)``)."""
    if not anomalies:
        return 0.0
    calm = math.prod(1.0 - anomaly_size(a) for a in anomalies)
    services = len({a.service for a in anomalies})
    return (1.0 - calm) * (0.5 + 0.5 * services / (services + 1))
