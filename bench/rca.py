"""RCA benchmark: AC@1, AC@3, Avg@5 per fault kind, calibration on held-out seeds, ranking speed.

Run ``python -m bench.rca`` (about a minute); ``--full`` uses more seeds; ``--fit`` refits the
confidence calibrator on the training seeds and rewrites ``aiops/rca/calibration_params.py``.
Training seeds are 0..N-1, held-out evaluation seeds start at 10000, so the numbers printed for
calibration are never measured on the data it was fitted on.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from aiops.rca.calibration import FEATURES, Calibrator, default_calibrator, fit_logistic, reliability
from aiops.rca.evaluation import Outcome, accuracy_at, average_at_5, calibration_data, run_scenarios
from aiops.rca.ranking import analyze
from aiops.simulation import FAULT_KINDS, TOPOLOGIES, make_scenario

_PARAMS = Path(__file__).resolve().parent.parent / "aiops" / "rca" / "calibration_params.py"
_HELD_OUT = 10_000


def _row(label: str, outcomes: list[Outcome]) -> str:
    return (
        f"| {label} | {len(outcomes)} | {accuracy_at(outcomes, 1):.3f} | {accuracy_at(outcomes, 3):.3f} "
        f"| {average_at_5(outcomes):.3f} |"
    )


def _speed(spans: int) -> tuple[int, float]:
    scenario = make_scenario("web_shop", "cpu", 7, n_traces=-(-spans // 20), strip_status=True)
    analyze(scenario.incident[:2000], scenario.baseline[:2000])
    best = float("inf")
    for _ in range(3):
        began = time.perf_counter()
        analyze(scenario.incident, scenario.baseline)
        best = min(best, time.perf_counter() - began)
    return len(scenario.incident), best


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

    n_spans, seconds = _speed(args.spans)
    per_scenario = np.mean([o.seconds for o in held_out])
    print("\n## Speed\n")
    print(
        f"- rank {n_spans:,} incident spans against {n_spans:,} baseline spans: {seconds:.3f} s (best of 3)"
    )
    print(f"- mean analysis time per scenario: {per_scenario * 1000:.1f} ms")
    print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
