"""Statistics the studies report: rank and linear correlations, and how closely one surface
reproduces another (the sample-size study's fidelity measures)."""

from __future__ import annotations

import math

import numpy as np


def _paired_finite(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"arrays differ in size: {a.size} vs {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def pearson(a, b) -> float:
    """Pearson correlation over the pairs where both are finite; NaN when either side is constant."""
    a, b = _paired_finite(a, b)
    if a.size < 2:
        return math.nan
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / denominator if denominator > 0 else math.nan


def average_ranks(values) -> np.ndarray:
    """Ranks starting at 1, tied values sharing the mean of their ranks."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(values.size)
    sorted_values = values[order]
    start = 0
    while start < values.size:
        stop = start
        while stop + 1 < values.size and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start:stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def spearman(a, b) -> float:
    """Spearman's rank correlation (ties averaged) over the pairs where both are finite."""
    a, b = _paired_finite(a, b)
    return pearson(average_ranks(a), average_ranks(b)) if a.size >= 2 else math.nan


def surface_fidelity(loss, reference_loss, xs, ys=None) -> dict[str, float]:
    """How well `loss` reproduces `reference_loss` on the same grid: Pearson correlation and RMSE of
    ln(loss) over the points both have, and the distance in (α, β) between their minima."""
    loss, reference_loss = np.asarray(loss, dtype=float), np.asarray(reference_loss, dtype=float)
    if loss.shape != reference_loss.shape:
        raise ValueError(f"surfaces differ in shape: {loss.shape} vs {reference_loss.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        ln_a, ln_b = np.log(loss), np.log(reference_loss)
    a, b = _paired_finite(ln_a, ln_b)
    rmse = float(np.sqrt(np.mean((a - b) ** 2))) if a.size else math.nan
    return {
        "pearson_ln_loss": pearson(ln_a, ln_b),
        "rmse_ln_loss": rmse,
        "argmin_distance": float(np.linalg.norm(_argmin_coords(loss, xs, ys) - _argmin_coords(reference_loss, xs, ys))),
    }


def _argmin_coords(loss: np.ndarray, xs, ys) -> np.ndarray:
    filled = np.where(np.isfinite(loss), loss, np.inf)
    index = np.unravel_index(int(np.argmin(filled)), loss.shape)
    if ys is None:
        return np.array([xs[index[0]]], dtype=float)
    iy, ix = index  # Z[iy, ix]
    return np.array([xs[ix], ys[iy]], dtype=float)
