"""Streaming anomaly detection: detectors scoring one series point by point, and alerting rules."""

from aiops.detection.alerting import Alerter, AlerterSettings, AlertEvent
from aiops.detection.base import StreamingDetector, load_detector, squash
from aiops.detection.baselines import EwmaDetector, EwmaSettings, RollingSigmaDetector, RollingSigmaSettings
from aiops.detection.conformal import ConformalDetector, ConformalSettings
from aiops.detection.factory import make_alerter, make_detector
from aiops.detection.robust import RobustDetector, RobustSettings

__all__ = [
    "AlertEvent",
    "ConformalDetector",
    "ConformalSettings",
    "Alerter",
    "AlerterSettings",
    "EwmaDetector",
    "EwmaSettings",
    "RobustDetector",
    "RobustSettings",
    "RollingSigmaDetector",
    "RollingSigmaSettings",
    "StreamingDetector",
    "load_detector",
    "make_alerter",
    "make_detector",
    "squash",
]
