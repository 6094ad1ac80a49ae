"""RCA benchmark: AC@1, AC@3, Avg@5 per fault kind, calibration on held-out seeds, ranking speed.

Run ``python -m bench.rca`` (about a minute); ``--full`` uses more seeds; ``--store`` also times
the RCA worker's read of the span store; ``--fit`` refits the
confidence calibrator on the training seeds and rewrites ``aiops/rca/calibration_params.py``.
Training seeds are 0..N-1, held-out evaluation seeds start at 10000, so the numbers printed for
calibration are never measured on the data it was fitted on.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiops.rca.calibration import FEATURES, Calibrator, default_calibrator, fit_logistic, reliability
from aiops.rca.evaluation import Outcome, accuracy_at, average_at_5, calibration_data, run_scenarios
from aiops.rca.ranking import analyze
from aiops.simulation import FAULT_KINDS, TOPOLOGIES, make_scenario
from aiops.traces.table import SpanTable
from bench.rca_baselines import self_time_ranking
from bench.rca_store import store_speed_lines

_PARAMS = Path(__file__).resolve().parent.parent / "aiops" / "rca" / "calibration_params.py"
_HELD_OUT = 10_000


def _row(label: str, outcomes: list[Outcome]) -> str:
    return (
        f"| {label} | {len(outcomes)} | {accuracy_at(outcomes, 1):.3f} | {accuracy_at(outcomes, 3):.3f} "
        f"| {average_at_5(outcomes):.3f} |"
    )


@dataclass(frozen=True)
class Speed:
    """Best-of-``runs`` wall and CPU seconds of ``analyze`` on the spans as a :class:`SpanTable`
    (columns, as the RCA worker reads the span store) and as ``Span`` objects, and of the naive
    self-time ranker on the same spans, in the same run; with the 1-minute load average before
    and after."""

    spans: int
    wall_s: float
    cpu_s: float
    objects_wall_s: float
    objects_cpu_s: float
    naive_wall_s: float
    naive_cpu_s: float
    runs: int
    load: tuple[float, float]


def _best(run: Callable[[], object], runs: int) -> tuple[float, float]:
    wall = cpu = float("inf")
    for _ in range(runs):
        w, c = time.perf_counter(), time.process_time()
        run()
        wall, cpu = min(wall, time.perf_counter() - w), min(cpu, time.process_time() - c)
    return wall, cpu


def ranking_speed(spans: int, runs: int = 3) -> Speed:
    """Time ranking ``spans`` simulated incident spans against as many baseline spans. CPU time is
    printed beside wall time because on a shared machine the wall time mostly measures the others.
    The table's time includes nothing of its building (the span store returns one); the objects'
    time includes their transposition into one."""
    load_before = os.getloadavg()[0]
    scenario = make_scenario("web_shop", "cpu", 7, n_traces=-(-spans // 20), strip_status=True)
    incident, baseline = SpanTable.from_spans(scenario.incident), SpanTable.from_spans(scenario.baseline)
    analyze(scenario.incident[:2000], scenario.baseline[:2000])
    wall, cpu = _best(lambda: analyze(incident, baseline), runs)
    objects_wall, objects_cpu = _best(lambda: analyze(scenario.incident, scenario.baseline), runs)
    naive_wall, naive_cpu = _best(lambda: self_time_ranking(scenario.incident, scenario.baseline), runs)
    return Speed(
        len(scenario.incident), wall, cpu, objects_wall, objects_cpu, naive_wall, naive_cpu, runs,
        (load_before, os.getloadavg()[0]),
    )


def speed_lines(speed: Speed) -> list[str]:
    """The printed speed figures: ours from columns and from objects, the naive ranker, the ratios
    and the load."""
    return [
        f"- rank {speed.spans:,} incident spans against {speed.spans:,} baseline spans, as columns "
        f"(what the RCA worker reads from the span store): {speed.wall_s:.3f} s wall, {speed.cpu_s:.3f} s CPU "
        f"(best of {speed.runs})",
        f"- the same spans as Span objects: {speed.objects_wall_s:.3f} s wall, {speed.objects_cpu_s:.3f} s CPU",
        f"- naive largest-self-time-increase ranking of the same spans: {speed.naive_wall_s:.3f} s wall, "
        f"{speed.naive_cpu_s:.3f} s CPU; analyze / naive CPU {speed.cpu_s / speed.naive_cpu_s:.2f}x from columns, "
        f"{speed.objects_cpu_s / speed.naive_cpu_s:.2f}x from objects",
        f"- load average (1 min) before / after: {speed.load[0]:.2f} / {speed.load[1]:.2f} on "
        f"{os.cpu_count()} cores",
    ]


def write_params(calibrator: Calibrator, fitted_on: str) -> None:
    """Rewrite ``aiops/rca/calibration_params.py`` with the calibrator's weights."""
    weights = ", ".join(f"{w:.6f}" for w in calibrator.weights)
    _PARAMS.write_text(
        '"""Fitted by ``python -m bench.real --fit`` (or ``bench.rca --fit``); do not edit by hand."""\n\n'
        f"# features: {', '.join(FEATURES)}; fitted on {fitted_on}\n"
        f"WEIGHTS = ({weights})\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="more seeds (several minutes)")
    parser.add_argument("--fit", action="store_true", help="refit the calibrator and rewrite its parameters")
    parser.add_argument("--spans", type=int, default=100_000, help="incident spans for the speed measurement")
    parser.add_argument("--store", action="store_true",
                        help="also time the RCA worker's read of the span store (embedded Postgres, ~1 min)")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    n_eval = 24 if args.full else 5
    n_train = 40 if args.full else 12

    calibrator = default_calibrator()
    if args.fit:
        train = run_scenarios(TOPOLOGIES, FAULT_KINDS, range(n_train))
        x, y = calibration_data(train)
        calibrator = fit_logistic(x, y)
        write_params(calibrator, f"{len(y)} simulated scenarios")
        print(
            f"fitted calibrator on {len(y)} scenarios (seeds 0..{n_train - 1}): weights {calibrator.weights}"
        )

    held_out = run_scenarios(
        TOPOLOGIES, FAULT_KINDS, range(_HELD_OUT, _HELD_OUT + n_eval), calibrator=calibrator
    )
    print(f"\n## Accuracy on held-out seeds ({len(held_out)} scenarios, {len(TOPOLOGIES)} topologies)\n")
    print("| fault kind | n | AC@1 | AC@3 | Avg@5 |\n|---|---|---|---|---|")
    for kind in FAULT_KINDS:
        print(_row(kind, [o for o in held_out if o.kind == kind]))
    print(_row("no status codes", [o for o in held_out if o.strip_status]))
    print(_row("**overall**", held_out))

    confidence = np.array([o.confidence for o in held_out])
    correct = np.array([float(o.rank == 1) for o in held_out])
    table, ece = reliability(confidence, correct, bins=10)
    print("\n## Calibration of the top cause's confidence (held-out seeds)\n")
    print("| confidence bin | n | mean confidence | accuracy |\n|---|---|---|---|")
    for b in table:
        print(f"| {b.low:.1f}-{b.high:.1f} | {b.count} | {b.mean_confidence:.3f} | {b.accuracy:.3f} |")
    print(f"\nECE: {ece:.4f}")

    per_scenario = np.mean([o.seconds for o in held_out])
    print("\n## Speed\n")
    print("\n".join(speed_lines(ranking_speed(args.spans))))
    if args.store:
        print("\n".join(store_speed_lines(args.spans)))
    print(f"- mean analysis time per scenario: {per_scenario * 1000:.1f} ms")
    print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
