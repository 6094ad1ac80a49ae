"""Root cause analysis from traces: ranked services with evidence, calibrated confidence, memory."""

from aiops.rca.calibration import Calibrator, ReliabilityBin, default_calibrator, fit_logistic, reliability
from aiops.rca.memory import SimilarIncident, incident_signature, remember, similar
from aiops.rca.model import (
    Action,
    Category,
    Change,
    Evidence,
    OperationStats,
    RankedCause,
    RcaResult,
    Recommendation,
)
from aiops.rca.names import normalise_service
from aiops.rca.ranking import analyze, rank_services
from aiops.rca.settings import RcaSettings

__all__ = [
    "Action",
    "Calibrator",
    "Category",
    "Change",
    "Evidence",
    "OperationStats",
    "RankedCause",
    "RcaResult",
    "RcaSettings",
    "Recommendation",
    "ReliabilityBin",
    "SimilarIncident",
    "analyze",
    "default_calibrator",
    "fit_logistic",
    "incident_signature",
    "normalise_service",
    "rank_services",
    "reliability",
    "remember",
    "similar",
]
