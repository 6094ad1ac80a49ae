"""Benchmark on real labelled data: NAB-scored detection (nab-dev) and RCA accuracy (nezha-ob).

    python -m bench.real [--datasets DIR] [--split dev|held_out|all] [--quick] [--only detection|rca] [--store]

Detection: the default detector scores every row of each nab-dev series (fed in order, no
look-ahead); the NAB scorer in ``bench/nab.py`` turns the scores into the normalised score of each
profile, next to the published detectors' scores from ``reference/`` scored the same way. Per
series: precision, recall and mean detection delay at the standard profile's optimal threshold.
RCA: ``analyze`` on each nezha-ob fault window against its day's baseline; AC@1, AC@3, Avg@5 per
fault type next to a random ranking and a "largest self-time increase" ranking, plus the
reliability table of the top cause's confidence. Both print their runtime. ``--quick`` scores a
few series and faults only (for CI). See ``bench/datasets.py`` for the fixed dev / held-out split.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiops.detection import RobustDetector, StreamingDetector, make_detector
from aiops.incidents.pipeline import live_rules
from aiops.rca.calibration import FEATURES, fit_logistic, reliability
from aiops.rca.evaluation import calibration_data, run_scenarios
from aiops.rca.ranking import analyze
from aiops.settings import AiopsSettings
from aiops.simulation import FAULT_KINDS, TOPOLOGIES
from bench.datasets import (
    NabSeries,
    Split,
    baseline_spans,
    datasets_root,
    fault_spans,
    load_nab,
    load_reference_scores,
    nab_names,
    nab_profiles,
    nab_split,
    nezha_faults,
    reference_detectors,
)
from bench.nab import Profile, score_corpus, series_stats
from bench.rca import ranking_speed, speed_lines, write_params
from bench.rca_baselines import random_accuracy, self_time_ranking
from bench.rca_store import store_speed_lines

QUICK_SERIES = 6
QUICK_FAULTS = 5
OURS = "devart (default)"
PREVIOUS = "devart robust (previous default)"
_PROFILE_LABELS = {"standard": "standard", "reward_low_FP_rate": "low FP", "reward_low_FN_rate": "low FN"}


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- detection ---------------------------------------------------------------------------------------


OURS_DETECTORS: dict[str, Callable[[], StreamingDetector]] = {OURS: make_detector, PREVIOUS: RobustDetector}
LIVE = "devart live path (incidents)"


def live_path_detections(series: NabSeries, settings: AiopsSettings | None = None) -> np.ndarray:
    """1.0 at each row where the live path's series would open an anomaly (its alert, after the
    debounce, starting an episode), 0.0 elsewhere: the incidents' view of the default detector,
    one point per step as the AIOps pipeline feeds it."""
    tracked = live_rules(settings if settings is not None else AiopsSettings()).new_series(("nab", series.name, "value"))
    stamps = (series.timestamps * 1e9).astype(np.int64).tolist()
    return np.array(
        [1.0 if tracked.observe(t, v).fired else 0.0 for t, v in zip(stamps, series.values.tolist(), strict=True)]
    )


def detection_report(
    root: Path,
    split: Split,
    *,
    quick: bool = False,
    detectors: dict[str, Callable[[], StreamingDetector]] = OURS_DETECTORS,
    live: bool = True,
) -> str:
    """The detection section: NAB scores per profile for ours, the live path's incident openings
    (scored as detections: their threshold is the detector's own alert boundary, nothing to sweep)
    and the published detectors, per-series precision / recall / delay, and throughput."""
    names = nab_split(nab_names(root), split)
    if quick:
        names = names[:: max(len(names) // QUICK_SERIES, 1)][:QUICK_SERIES]
    series = load_nab(root, names)
    points = sum(len(s.values) for s in series)
    scored: dict[str, list[np.ndarray]] = {}
    speed: dict[str, float] = {}
    for label, make in detectors.items():
        began = time.perf_counter()
        scored[label] = [make().score_series(s.timestamps, s.values) for s in series]
        speed[label] = points / (time.perf_counter() - began)
    if live:
        began = time.perf_counter()
        scored[LIVE] = [live_path_detections(s) for s in series]
        speed[LIVE] = points / (time.perf_counter() - began)
    for detector in reference_detectors(root):
        scored[detector] = [load_reference_scores(root, detector, s.name) for s in series]
    profiles = {name: Profile(*w) for name, w in nab_profiles(root).items()}
    results = {
        det: {p: score_corpus(list(zip(scores, (s.windows for s in series), strict=True)), prof)
              for p, prof in profiles.items()}
        for det, scores in scored.items()
    }
    out = [
        f"## Detection: NAB score on nab-dev, split {split} ({len(series)} series, {points} rows, "
        f"{sum(len(s.windows) for s in series)} windows)\n",
        _table(
            ["detector", *(_PROFILE_LABELS.get(p, p) for p in profiles), "threshold (standard)"],
            [
                [det, *(f"{r[p].score:.2f}" for p in profiles), f"{r['standard'].threshold:.4f}"]
                for det, r in results.items()
            ],
        ),
        "\nPer series, at each detector's optimal standard-profile threshold (precision: detected "
        "windows / (detected windows + false detections); delay: rows from window start to first "
        "detection):\n",
    ]
    compare = "numenta" if "numenta" in scored else None
    shown = [*detectors, *([compare] if compare else [])]
    header = ["series", "windows"]
    for det in shown:
        short = "HTM" if det == "numenta" else det.split(" ")[1]
        header += [f"{short} P", f"{short} R", f"{short} FP", f"{short} delay"]
    rows = []
    for i, s in enumerate(series):
        row = [s.name, str(len(s.windows))]
        for det in shown:
            st = series_stats(scored[det][i], s.windows, results[det]["standard"].threshold)
            row += [_fmt(st.precision, 2), _fmt(st.recall, 2), str(st.false_positives), _fmt(st.mean_delay_rows, 1)]
        rows.append(row)
    out.append(_table(header, rows))
    for label, rate in speed.items():
        out.append(f"\n{label} runtime: {rate:,.0f} points/s ({points} rows, one core)")
    return "\n".join(out)


# --- RCA ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RcaOutcome:
    """One fault: the true cause's rank under ours and the self-time baseline, and candidates."""

    fault_type: str
    rank: int | None
    baseline_rank: int | None
    services: int
    confidence: float
    seconds: float
    spans: int
    features: tuple[float, ...] = ()


def _rank(names: Sequence[str], truth: str) -> int | None:
    return names.index(truth) + 1 if truth in names else None


def run_rca(root: Path, split: Split, *, quick: bool = False) -> list[RcaOutcome]:
    """Analyse every fault of ``split`` against its day's baseline."""
    faults = nezha_faults(root, split)
    if quick:
        faults = faults[:: max(len(faults) // QUICK_FAULTS, 1)][:QUICK_FAULTS]
    baselines = {day: baseline_spans(root, day) for day in sorted({f.baseline for f in faults})}
    out = []
    for fault in faults:
        incident, baseline = fault_spans(root, fault), baselines[fault.baseline]
        began = time.perf_counter()
        result = analyze(incident, baseline)
        seconds = time.perf_counter() - began
        names = [c.service for c in result.causes]
        out.append(
            RcaOutcome(
                fault_type=fault.fault_type,
                rank=_rank(names, fault.root_service),
                baseline_rank=_rank(self_time_ranking(incident, baseline), fault.root_service),
                services=len({s.service for s in incident}),
                confidence=result.causes[0].confidence if result.causes else 0.0,
                seconds=seconds,
                spans=len(incident),
                features=(1.0, *(result.stats.get(f"feature_{f}", 0.0) for f in FEATURES[1:])),
            )
        )
    return out


def _ac(ranks: Sequence[int | None], k: int) -> float:
    return sum(r is not None and r <= k for r in ranks) / len(ranks) if ranks else 0.0


def _avg5(ranks: Sequence[int | None]) -> float:
    return float(np.mean([_ac(ranks, k) for k in range(1, 6)]))


def rca_report(outcomes: Sequence[RcaOutcome], split: Split) -> str:
    """The RCA section: accuracy per fault type against the baselines, reliability, runtime."""
    groups: dict[str, list[RcaOutcome]] = defaultdict(list)
    for o in outcomes:
        groups[o.fault_type].append(o)
    rows = []
    for label, group in [*sorted(groups.items()), ("**all**", list(outcomes))]:
        ours = [o.rank for o in group]
        naive = [o.baseline_rank for o in group]
        rnd = [np.mean([random_accuracy(o.services, k) for o in group]) for k in (1, 3)]
        rnd5 = float(np.mean([np.mean([random_accuracy(o.services, k) for k in range(1, 6)]) for o in group]))
        rows.append([
            label, str(len(group)),
            f"{_ac(ours, 1):.2f}", f"{_ac(ours, 3):.2f}", f"{_avg5(ours):.2f}",
            f"{_ac(naive, 1):.2f}", f"{_ac(naive, 3):.2f}", f"{_avg5(naive):.2f}",
            f"{rnd[0]:.2f}", f"{rnd[1]:.2f}", f"{rnd5:.2f}",
        ])
    out = [
        f"## RCA on nezha-ob, split {split} ({len(outcomes)} faults)\n",
        _table(
            ["fault type", "n", "AC@1", "AC@3", "Avg@5", "self-time AC@1", "self-time AC@3",
             "self-time Avg@5", "random AC@1", "random AC@3", "random Avg@5"],
            rows,
        ),
    ]
    confidence = np.array([o.confidence for o in outcomes])
    correct = np.array([float(o.rank == 1) for o in outcomes])
    if outcomes:
        table, ece = reliability(confidence, correct, bins=5)
        out.append("\nCalibration of the top cause's confidence (how often the top cause is right):\n")
        out.append(_table(
            ["confidence", "n", "mean confidence", "top cause right"],
            [[f"{b.low:.1f}-{b.high:.1f}", str(b.count), f"{b.mean_confidence:.3f}", f"{b.accuracy:.3f}"]
             for b in table],
        ))
        out.append(f"\nECE {ece:.3f}; mean confidence {confidence.mean():.3f}, AC@1 {correct.mean():.3f}")
        seconds = sum(o.seconds for o in outcomes)
        spans = sum(o.spans for o in outcomes)
        out.append(
            f"\nRCA runtime: {seconds / len(outcomes):.3f} s/incident (mean over {len(outcomes)}; "
            f"{spans / seconds:,.0f} incident spans/s, baseline ~23k spans)"
        )
    return "\n".join(out)


FIT_SIMULATED_SEEDS = 12
"""Simulated training seeds per (topology, fault kind) the calibrator is fitted on with the real dev faults."""


def fit_calibration(root: Path) -> str:
    """Refit the confidence calibrator on the real dev faults plus simulated training scenarios and
    rewrite ``aiops/rca/calibration_params.py``; the held-out day is never used."""
    real = [o for o in run_rca(root, "dev") if o.features and o.features[1] > 0]
    x_real = np.array([o.features for o in real])
    y_real = np.array([float(o.rank == 1) for o in real])
    x_sim, y_sim = calibration_data(run_scenarios(TOPOLOGIES, FAULT_KINDS, range(FIT_SIMULATED_SEEDS)))
    calibrator = fit_logistic(np.vstack((x_real, x_sim)), np.concatenate((y_real, y_sim)))
    write_params(calibrator, f"{len(y_real)} real nezha-ob dev faults and {len(y_sim)} simulated scenarios")
    return f"fitted calibrator on {len(y_real)} real + {len(y_sim)} simulated incidents: {calibrator.weights}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default=None,
                        help="directory holding nab-dev/ and nezha-ob/ (default: DEVART_DATASETS, "
                             "else ../shared/datasets beside the repository)")
    parser.add_argument("--split", choices=["dev", "held_out", "all"], default="dev",
                        help="which part of each data set (held_out: look once, at the end)")
    parser.add_argument("--quick", action="store_true", help="a few series and faults (CI)")
    parser.add_argument("--only", choices=["detection", "rca"], default=None, help="one half only")
    parser.add_argument("--store", action="store_true",
                        help="also time the RCA worker's read of 100k spans from the span store (embedded Postgres)")
    parser.add_argument("--fit", action="store_true",
                        help="refit the RCA confidence calibrator on dev faults plus simulated ones first")
    args = parser.parse_args(argv)
    root = datasets_root(args.datasets)
    if args.fit:
        print(fit_calibration(root))
    started = time.perf_counter()
    print(f"datasets: {root}{' (quick)' if args.quick else ''}\n")
    if args.only in (None, "detection"):
        print(detection_report(root, args.split, quick=args.quick), flush=True)
    if args.only in (None, "rca"):
        print()
        print(rca_report(run_rca(root, args.split, quick=args.quick), args.split), flush=True)
        if not args.quick:
            print("\nRanking speed (simulated spans, same run):")
            print("\n".join(speed_lines(ranking_speed(100_000))), flush=True)
            if args.store:
                print("\n".join(store_speed_lines(100_000)), flush=True)
    print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
