"""``python -m bench.real`` in its quick mode on the real data sets, so the benchmark cannot rot, and
the rules that find the data sets."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.datasets import datasets_root, nab_names, nab_split, nezha_faults
from bench.real import main


def test_quick_mode_prints_every_table(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--quick"])
    out = capsys.readouterr().out
    assert "## Detection: NAB score on nab-dev, split dev (6 series" in out
    for detector in ("devart (default)", "devart live path (incidents)", "numenta", "relativeEntropy", "windowedGaussian",
                     "random"):
        assert f"| {detector} |" in out
    assert "points/s" in out and "s/incident" in out
    assert "## RCA on nezha-ob, split dev (5 faults)" in out
    assert "| **all** | 5 |" in out and "top cause right" in out


def test_splits_are_fixed_rules_and_disjoint() -> None:
    root = datasets_root()
    names = nab_names(root)
    dev, held = nab_split(names, "dev"), nab_split(names, "held_out")
    assert len(held) == len(names) // 3 and not set(dev) & set(held) and sorted(dev + held) == names
    assert held[0] == sorted(names)[2]
    assert {f.day for f in nezha_faults(root, "held_out")} == {"2022-08-22"}
    assert {f.day for f in nezha_faults(root, "dev")} == {"2022-08-23"}


def test_dataset_location_explicit_env_and_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "nab-dev").mkdir()
    assert datasets_root(tmp_path) == tmp_path
    monkeypatch.setenv("DEVART_DATASETS", str(tmp_path))
    assert datasets_root() == tmp_path
    monkeypatch.setenv("DEVART_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        datasets_root()


def test_ranking_speed_prints_ours_from_columns_and_objects_beside_the_naive_ranker_and_the_load() -> None:
    from bench.rca import ranking_speed, speed_lines

    speed = ranking_speed(2_000, runs=1)
    lines = speed_lines(speed)
    assert speed.spans >= 1_900 and speed.cpu_s > 0 and speed.objects_cpu_s > 0 and speed.naive_cpu_s > 0
    assert "as columns" in lines[0] and "s CPU (best of 1)" in lines[0] and "Span objects" in lines[1]
    assert "analyze / naive CPU" in lines[2] and "load average" in lines[3]


def test_store_read_is_timed_as_objects_and_as_columns_then_ranked() -> None:
    from bench.rca_store import store_speed_lines

    lines = store_speed_lines(1_000, runs=1)
    assert "read at once as devart_service" in lines[0]
    labels = [line.split(":")[0].strip("- ") for line in lines[1:5]]
    assert labels == [
        "read as Span objects", "read as columns", "read as Span objects, then rank",
        "read as columns, then rank (the worker)",
    ]
    assert all(" s wall, " in line for line in lines[1:5]) and "load average" in lines[5]
