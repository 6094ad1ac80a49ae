"""The one place that says which detector is the default."""

from __future__ import annotations

from aiops.detection.alerting import Alerter, AlerterSettings
from aiops.detection.robust import RobustDetector, RobustSettings


def make_detector(settings: RobustSettings | None = None) -> RobustDetector:
    """A fresh default detector for one series (settings from the environment unless given)."""
    return RobustDetector(settings)


def make_alerter(
    detector_settings: RobustSettings | None = None, alerter_settings: AlerterSettings | None = None
) -> Alerter:
    """The default detector wrapped in the default alerting rules, for one series."""
    return Alerter(make_detector(detector_settings), alerter_settings)
