"""The real labelled data sets the ``bench.real`` benchmark reads, and where to find them.

The data lives outside the repository (``../shared/datasets`` next to a clone by default). The
location is, in order: an explicit path, ``DEVART_DATASETS``, or the first ``shared/datasets``
found beside the repository root or one of its parents (a git worktree sits deeper than a clone).

Splits are fixed rules decided before any result was seen: NAB holds out every third series in
name order (``category/file``, indices 2, 5, 8, ...); nezha-ob holds out the day 2022-08-22 and
tunes on 2022-08-23.
"""

from __future__ import annotations

import csv
import gzip
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np

from aiops.traces.model import Span

Split = Literal["dev", "held_out", "all"]
NEZHA_HELD_OUT_DAY = "2022-08-22"
"""The nezha-ob day looked at only once, at the end (the other day is the tuning set)."""
NAB_HELD_OUT_EVERY = 3
"""Every third NAB series in name order is held out."""

_REPO = Path(__file__).resolve().parent.parent


def datasets_root(explicit: str | Path | None = None) -> Path:
    """The directory holding ``nab-dev/`` and ``nezha-ob/``; raises FileNotFoundError naming where
    it looked."""
    if explicit is not None:
        candidates = [Path(explicit)]
    elif os.environ.get("DEVART_DATASETS"):
        candidates = [Path(os.environ["DEVART_DATASETS"])]
    else:
        candidates = [parent / "shared" / "datasets" for parent in (_REPO, *_REPO.parents)]
    for path in candidates:
        if (path / "nab-dev").is_dir() or (path / "nezha-ob").is_dir():
            return path
    raise FileNotFoundError(
        "datasets: none of " + ", ".join(str(p) for p in candidates) + " holds nab-dev/ or nezha-ob/"
    )


# --- NAB --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NabSeries:
    """One NAB series: ``name`` is ``category/file.csv``; ``windows`` are (start, end) row indices,
    inclusive, resolved from the labelled timestamps."""

    name: str
    timestamps: np.ndarray
    values: np.ndarray
    windows: tuple[tuple[int, int], ...]


def _parse_time(text: str) -> float:
    return datetime.fromisoformat(text.strip()).timestamp() if text else float("nan")


def nab_names(root: Path) -> list[str]:
    """Every series name (``category/file.csv``) of nab-dev, sorted."""
    labels = json.loads((root / "nab-dev" / "labels" / "combined_windows.json").read_text())
    return sorted(labels)


def nab_split(names: list[str], split: Split) -> list[str]:
    """The names in ``split``: held out = every third name in sorted order (indices 2, 5, ...)."""
    ordered = sorted(names)
    if split == "all":
        return ordered
    held = {n for i, n in enumerate(ordered) if i % NAB_HELD_OUT_EVERY == NAB_HELD_OUT_EVERY - 1}
    return [n for n in ordered if (n in held) == (split == "held_out")]


def load_nab(root: Path, names: list[str] | None = None, *, max_rows: int | None = None) -> list[NabSeries]:
    """The series (all of nab-dev unless ``names``), each cut to its first ``max_rows`` rows."""
    base = root / "nab-dev"
    labels = json.loads((base / "labels" / "combined_windows.json").read_text())
    out = []
    for name in names if names is not None else sorted(labels):
        with open(base / "data" / name, newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        if max_rows is not None:
            rows = rows[:max_rows]
        stamps = [r[0] for r in rows]
        ts = np.array([_parse_time(s) for s in stamps])
        values = np.array([float(r[1]) for r in rows])
        out.append(NabSeries(name, ts, values, _window_rows(stamps, labels[name])))
    return out


def _window_rows(stamps: list[str], windows: list[list[str]]) -> tuple[tuple[int, int], ...]:
    """Row indices of each window's first and last timestamp (the first row carrying it, as NAB
    does); a window not fully inside the rows is dropped."""
    first: dict[float, int] = {}
    for i, s in enumerate(stamps):
        first.setdefault(_parse_time(s), i)
    out = []
    for start, end in windows:
        a, b = first.get(_parse_time(start)), first.get(_parse_time(end))
        if a is not None and b is not None:
            out.append((a, b))
    return tuple(out)


def load_reference_scores(root: Path, detector: str, name: str) -> np.ndarray:
    """The published per-row anomaly scores of ``detector`` on series ``name``."""
    path = root / "nab-dev" / "reference" / detector / (name + ".gz")
    with gzip.open(path, "rt", newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return np.array([float(r[1]) for r in rows])


def reference_detectors(root: Path) -> list[str]:
    """The published detectors whose scores ``reference/`` holds."""
    ref = root / "nab-dev" / "reference"
    return sorted(p.name for p in ref.iterdir() if p.is_dir()) if ref.is_dir() else []


def expected_scores(root: Path) -> dict[str, dict[str, float]]:
    """``{detector: {profile: normalised score}}`` as published with the data set."""
    return json.loads((root / "nab-dev" / "reference" / "expected_scores.json").read_text())["scores"]


def nab_profiles(root: Path) -> dict[str, tuple[float, float, float]]:
    """``{profile: (tp weight, fp weight, fn weight)}`` from ``config/profiles.json``."""
    raw = json.loads((root / "nab-dev" / "config" / "profiles.json").read_text())
    return {
        name: (m["CostMatrix"]["tpWeight"], m["CostMatrix"]["fpWeight"], m["CostMatrix"]["fnWeight"])
        for name, m in raw.items()
    }


# --- nezha-ob ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One injected fault: its id, day, type, the service injected into and its baseline day."""

    id: str
    day: str
    fault_type: str
    root_service: str
    baseline: str
    inject_ns: int


def nezha_faults(root: Path, split: Split = "all") -> list[Fault]:
    """The faults that have spans, in time order, restricted to ``split`` (held out = 2022-08-22)."""
    base = root / "nezha-ob"
    faults = [
        Fault(f["id"], f["day"], f["fault_type"], f["root_service"], f["baseline"], int(f["inject_timestamp"]) * 10**9)
        for f in json.loads((base / "faults.json").read_text())
        if (base / "spans" / f"{f['id']}.csv.gz").exists()
    ]
    if split == "all":
        return faults
    return [f for f in faults if (f.day == NEZHA_HELD_OUT_DAY) == (split == "held_out")]


def service_of_pod(pod: str) -> str:
    """A Kubernetes pod's workload: the name without its last two dash-separated parts."""
    parts = pod.split("-")
    return "-".join(parts[:-2]) if len(parts) > 2 else pod


def _read_spans(path: Path) -> Iterator[Span]:
    with gzip.open(path, "rt", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        for trace_id, span_id, parent_id, pod, operation, start, end in reader:
            yield Span(
                trace_id=trace_id,
                span_id=span_id,
                parent_id=parent_id or None,
                service=service_of_pod(pod),
                name=operation,
                kind="unspecified",
                start_ns=int(start),
                end_ns=int(end),
                attributes={"k8s.pod.name": pod},
            )


def fault_spans(root: Path, fault: Fault) -> list[Span]:
    """The spans of the fault's window, as recorded (the source has no span kind or status)."""
    return list(_read_spans(root / "nezha-ob" / "spans" / f"{fault.id}.csv.gz"))


def baseline_spans(root: Path, day: str) -> list[Span]:
    """The fault-free minute recorded on ``day``."""
    return list(_read_spans(root / "nezha-ob" / "baseline" / f"{day}.csv.gz"))
