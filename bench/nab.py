"""The Numenta Anomaly Benchmark's scoring method (Lavin & Ahmad 2015), written from its description.

Per series, each row gets a *sweep score*: inside a labelled window, the scaled sigmoid of its
relative position (about ``A_tp`` at the left edge, 0 at the right edge); outside, minus ``A_fp``
times the sigmoid continued past the previous window's right edge (``-A_fp`` before any window and
beyond three window widths). Rows of the probationary period (the first 15%, at most 750 rows) are
ignored. At a threshold, a row whose anomaly score reaches it is a detection: every detection
outside windows adds its sweep score, each window adds the best (earliest) detection's, or
``-A_fn`` without one. One threshold is swept over all series together and the best total is
normalised so that the null detector scores 0 and the perfect one 100.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROBATION_SHARE = 0.15
"""Share of a series' first rows where detections are ignored (NAB's probationary period)."""
PROBATION_CAP_ROWS = 750
"""Cap of the probationary period: 15% of NAB's 5000-row reference length."""
_SIGMOID_SLOPE = 5.0
_FAR_PAST = 3.0


@dataclass(frozen=True)
class Profile:
    """The weights of a NAB profile's cost matrix."""

    tp: float
    fp: float
    fn: float


def scaled_sigmoid(position: float) -> float:
    """``2 sigmoid(-5 x) - 1``: ~0.987 at the window's left edge (-1), 0 at its right edge (0),
    negative past it, and -1 from three widths on."""
    if position >= _FAR_PAST:
        return -1.0
    return 2.0 / (1.0 + math.exp(_SIGMOID_SLOPE * position)) - 1.0


def probation_rows(n: int) -> int:
    """How many leading rows of an ``n``-row series are probationary."""
    return int(min(math.floor(PROBATION_SHARE * n), PROBATION_CAP_ROWS))


def sweep_scores(n: int, windows: Sequence[tuple[int, int]], profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the weighted sweep score and the index of its window (-1 outside every window,
    -2 in the probationary period)."""
    max_tp = scaled_sigmoid(-1.0)
    sweep = np.empty(n)
    window = np.full(n, -1, np.int64)
    starts = {a: (k, b) for k, (a, b) in enumerate(windows)}
    current: tuple[int, int, float] | None = None  # (window index, right row, width)
    previous: tuple[int, float] | None = None  # (right row, width)
    for i in range(n):
        if current is None and i in starts:
            k, right = starts[i]
            current = (k, right, float(right - i + 1))
        if current is not None:
            k, right, width = current
            sweep[i] = scaled_sigmoid(-(right - i + 1) / width) * profile.tp / max_tp
            window[i] = k
            if i == right:
                previous, current = (right, width), None
        else:
            past = _FAR_PAST if previous is None else abs(previous[0] - i) / (previous[1] - 1.0)
            sweep[i] = scaled_sigmoid(past) * profile.fp
    window[: probation_rows(n)] = -2
    return sweep, window


@dataclass(frozen=True)
class NabResult:
    """The best normalised score over thresholds, the threshold reaching it and the raw totals."""

    score: float
    threshold: float
    raw: float
    null: float
    perfect: float


def score_corpus(
    series: Sequence[tuple[np.ndarray, Sequence[tuple[int, int]]]], profile: Profile
) -> NabResult:
    """Score ``(anomaly scores, windows)`` per series with one threshold optimised over all of them."""
    scores, sweeps, windows = [], [], []
    offset = 0
    n_windows = 0
    for anomaly, wins in series:
        sweep, window = sweep_scores(len(anomaly), wins, profile)
        keep = window != -2
        scorable = np.unique(window[keep & (window >= 0)])
        remap = np.full(len(wins) + 1, -1, np.int64)
        remap[scorable] = offset + np.arange(scorable.size)
        window = np.where(window >= 0, remap[np.maximum(window, 0)], -1)
        offset += scorable.size
        n_windows += scorable.size
        scores.append(np.asarray(anomaly, np.float64)[keep])
        sweeps.append(sweep[keep])
        windows.append(window[keep])
    score = np.concatenate(scores)
    sweep = np.concatenate(sweeps)
    window = np.concatenate(windows)
    order = np.argsort(-score, kind="stable")
    null = -profile.fn * n_windows
    perfect = profile.tp * n_windows
    best_window = np.full(n_windows, -profile.fn)
    fp_total, windows_total = 0.0, null
    best_raw, best_threshold = null, 1.1
    sorted_scores = score[order].tolist()
    for j, (i, s) in enumerate(zip(order.tolist(), sorted_scores, strict=True)):
        k = int(window[i])
        if k < 0:
            fp_total += float(sweep[i])
        elif sweep[i] > best_window[k]:
            windows_total += float(sweep[i]) - best_window[k]
            best_window[k] = sweep[i]
        last_of_threshold = j + 1 == len(sorted_scores) or sorted_scores[j + 1] != s
        if last_of_threshold and fp_total + windows_total > best_raw:
            best_raw, best_threshold = fp_total + windows_total, s
    span = perfect - null
    return NabResult(100.0 * (best_raw - null) / span if span else 0.0, best_threshold, best_raw, null, perfect)


@dataclass(frozen=True)
class SeriesStats:
    """Detection quality of one series at a threshold: windows hit, false detections, delay."""

    windows: int
    detected: int
    false_positives: int
    mean_delay_rows: float | None

    @property
    def recall(self) -> float | None:
        return self.detected / self.windows if self.windows else None

    @property
    def precision(self) -> float | None:
        """Detected windows over detected windows plus false detections (each window counts once,
        as NAB counts only its first detection)."""
        hits = self.detected + self.false_positives
        return self.detected / hits if hits else None


def series_stats(anomaly: np.ndarray, windows: Sequence[tuple[int, int]], threshold: float) -> SeriesStats:
    """Detections at ``threshold`` after the probationary period, against the labelled windows."""
    n = len(anomaly)
    detect = np.asarray(anomaly) >= threshold
    detect[: probation_rows(n)] = False
    inside = np.zeros(n, bool)
    delays = []
    detected = 0
    for a, b in windows:
        inside[a : b + 1] = True
        hits = np.flatnonzero(detect[a : b + 1])
        if hits.size and b >= probation_rows(n):
            detected += 1
            delays.append(int(hits[0]))
    scorable = [w for w in windows if w[1] >= probation_rows(n)]
    return SeriesStats(
        windows=len(scorable),
        detected=detected,
        false_positives=int((detect & ~inside).sum()),
        mean_delay_rows=float(np.mean(delays)) if delays else None,
    )
