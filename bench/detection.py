"""Detection benchmark: alerting quality per detector and series category, and throughput.

Run ``python -m bench.detection`` (options: ``--seed``, ``--copies``, ``--points``). It rebuilds the
labelled evaluation set from the seed, runs every detector behind the default alerting rules, prints
a Markdown table per category and overall, then scores ``--points`` points per detector to report
points per second on one core.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

from aiops.detection import (
    EwmaDetector,
    RobustDetector,
    RollingSigmaDetector,
    StreamingDetector,
    make_detector,
)
from aiops.evaluation import build_evaluation_set, evaluate, format_table, summarise

DETECTORS: dict[str, Callable[[], StreamingDetector]] = {
    "default": make_detector,
    "robust (previous default)": RobustDetector,
    "rolling-3sigma": RollingSigmaDetector,
    "ewma-z": EwmaDetector,
}


def _throughput(make: Callable[[], StreamingDetector], points: int) -> float:
    rng = np.random.default_rng(0)
    ts = 1_767_225_600.0 + 60.0 * np.arange(points)
    values = 100 + 20 * np.sin(2 * np.pi * ts / 86400) + rng.normal(0, 3, points)
    detector = make()
    start = time.perf_counter()
    detector.score_series(ts, values)
    return points / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the evaluation set")
    parser.add_argument("--copies", type=int, default=3, help="series per category and simulated workloads")
    parser.add_argument(
        "--points", type=int, default=200_000, help="points scored per detector for throughput"
    )
    args = parser.parse_args(argv)

    started = time.perf_counter()
    dataset = build_evaluation_set(seed=args.seed, copies=args.copies)
    points = sum(len(s.values) for s in dataset)
    windows = sum(len(s.windows) for s in dataset)
    print(
        f"evaluation set: seed {args.seed}, {len(dataset)} series, {points} points, {windows} anomaly windows"
    )
    by_detector = {name: summarise(name, evaluate(make, dataset)) for name, make in DETECTORS.items()}
    print("\n## Overall\n")
    print(format_table(rows[-1] for rows in by_detector.values()))
    print("\n## Per series category\n")
    categories = [s.group for s in next(iter(by_detector.values()))[:-1]]
    print(
        format_table(
            row for c in categories for rows in by_detector.values() for row in rows if row.group == c
        )
    )
    print("\n## Throughput (one core, score_series)\n")
    for name, make in DETECTORS.items():
        print(f"- {name}: {_throughput(make, args.points):,.0f} points/s")
    print(f"\n(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
