"""The one place that says which detector is the default."""

from __future__ import annotations

from aiops.detection.alerting import Alerter, AlerterSettings
from aiops.detection.conformal import ConformalDetector, ConformalSettings


def make_detector(settings: ConformalSettings | None = None) -> ConformalDetector:
    """A fresh default detector for one series (settings from the environment unless given).

    The conformal detector is the default because it is the one that holds up on real labelled
    series (NAB, ``python -m bench.real``), not only on the project's own simulator."""
    return ConformalDetector(settings)


def make_alerter(
    detector_settings: ConformalSettings | None = None, alerter_settings: AlerterSettings | None = None
) -> Alerter:
    """The default detector wrapped in the default alerting rules, for one series."""
    return Alerter(make_detector(detector_settings), alerter_settings)
