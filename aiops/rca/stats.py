"""Grouped statistics over numpy columns (quantiles per group code without Python loops)."""

from __future__ import annotations

import numpy as np


def group_quantiles(
    codes: np.ndarray, values: np.ndarray, n_groups: int, qs: tuple[float, ...]
) -> np.ndarray:
    """Array of shape (len(qs), n_groups): the lower-nearest-rank quantiles of ``values`` per group;
    NaN for empty groups."""
    out = np.full((len(qs), n_groups), np.nan)
    if codes.size == 0:
        return out
    order = np.lexsort((values, codes))
    sorted_codes, sorted_values = codes[order], values[order]
    counts = np.bincount(sorted_codes, minlength=n_groups)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    present = counts > 0
    for row, q in enumerate(qs):
        pos = starts + np.floor(q * (counts - 1)).astype(np.int64)
        out[row, present] = sorted_values[pos[present]]
    return out


def group_sum(codes: np.ndarray, values: np.ndarray | None, n_groups: int) -> np.ndarray:
    """Sum (or count when ``values`` is None) per group code."""
    return np.bincount(codes, weights=values, minlength=n_groups).astype(np.float64)
