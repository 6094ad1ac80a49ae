"""A labelled, seed-reproducible evaluation set for anomaly detectors, and alerting-style scoring."""

from aiops.evaluation.dataset import build_evaluation_set
from aiops.evaluation.scoring import SeriesOutcome, Summary, evaluate, format_table, outcome, summarise
from aiops.evaluation.series import AnomalyWindow, LabelledSeries
from aiops.evaluation.synthetic import GENERATORS
from aiops.evaluation.workload import simulate

__all__ = [
    "GENERATORS",
    "AnomalyWindow",
    "LabelledSeries",
    "SeriesOutcome",
    "Summary",
    "build_evaluation_set",
    "evaluate",
    "format_table",
    "outcome",
    "simulate",
    "summarise",
]
