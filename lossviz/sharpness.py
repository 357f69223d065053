"""Does sharpness predict generalization? The verdict's arithmetic, across a set of trained models.

`lossviz.metrics` measures one minimizer (surface depth, flatness, curvature; Hessian eigenvalue and
trace) and `lossviz.stats.spearman` correlates two series. This module owns what the batch-size study
(seed paper, Figure 4) adds on top: the generalization gap of each model, and a table of Spearman
correlations of every sharpness measure with test error and with the gap, each with an exact
permutation p-value (a study has a handful of models, where asymptotic p-values mean nothing).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lossviz.stats import average_ranks, pearson, spearman

# name → (what it is, which way is "sharper"). Flatness and convex fraction grow as a minimum flattens.
SHARPNESS_MEASURES: dict[str, tuple[str, str]] = {
    "depth": ("surface max − min loss inside the clip disk", "larger is sharper"),
    "flatness": ("fraction of the disk within flat_tolerance of the centre loss", "larger is flatter"),
    "centre_curvature": ("mean eigenvalue of the surface's 2×2 finite-difference Hessian at the centre",
                         "larger is sharper"),
    "convex_fraction": ("fraction of disk points whose 2×2 surface Hessian is positive semi-definite",
                        "larger is more convex"),
    "hessian_top_eigenvalue": ("top eigenvalue of the loss Hessian at the weights (power iteration)",
                               "larger is sharper"),
    "hessian_trace": ("trace of the loss Hessian at the weights (Hutchinson)", "larger is sharper"),
}
TARGETS: dict[str, str] = {
    "test_error": "1 − test accuracy",
    "gap_acc": "generalization gap in accuracy: train accuracy − test accuracy",
    "gap_loss": "generalization gap in loss: test loss − train loss",
}
EXACT_PERMUTATIONS_UP_TO = 8  # 8! = 40,320 orderings; beyond, a seeded Monte Carlo estimate


def generalization_gap(train_acc: float, test_acc: float, train_loss: float, test_loss: float) -> dict[str, float]:
    """Both gaps, oriented so that a positive value means the model does better on its training data."""
    return {"gap_acc": float(train_acc) - float(test_acc), "gap_loss": float(test_loss) - float(train_loss)}


def sharpness_measures(shape: Mapping[str, Any], hessian: Mapping[str, Any]) -> dict[str, float]:
    """The study's measures picked from `surface_metrics(...)` and `hessian_metrics(...)` results."""
    return {"depth": float(shape["depth"]), "flatness": float(shape["flatness"]),
            "centre_curvature": float(shape["centre_curvature_mean"]),
            "convex_fraction": float(shape["convex_fraction"]),
            "hessian_top_eigenvalue": float(hessian["hessian_top_eigenvalue"]),
            "hessian_trace": float(hessian["hessian_trace"])}


def spearman_p_value(a: Sequence[float], b: Sequence[float], samples: int = 20_000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's ρ: the fraction of orderings of `b` whose |ρ| is at
    least the observed |ρ| (exact up to EXACT_PERMUTATIONS_UP_TO pairs, else Monte Carlo). Pairs with a
    non-finite value are dropped; NaN when fewer than 3 pairs remain or a side is constant."""
    x, y = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = average_ranks(x[keep]), average_ranks(y[keep])
    observed = pearson(x, y)
    if x.size < 3 or math.isnan(observed):
        return math.nan
    threshold = abs(observed) - 1e-12
    if x.size <= EXACT_PERMUTATIONS_UP_TO:
        orderings = (y[list(order)] for order in itertools.permutations(range(y.size)))
        values = [abs(pearson(x, ordered)) for ordered in orderings]
        return float(np.mean(np.asarray(values) >= threshold))
    rng = np.random.default_rng(seed)
    hits = sum(abs(pearson(x, rng.permutation(y))) >= threshold for _ in range(samples))
    return float((hits + 1) / (samples + 1))


def correlation_table(rows: Sequence[Mapping[str, float]], measures: Sequence[str] = tuple(SHARPNESS_MEASURES),
                      targets: Sequence[str] = tuple(TARGETS)) -> dict[str, dict[str, dict[str, float]]]:
    """{measure: {target: {"spearman": ρ, "p_value": p, "n": pairs}}} over `rows` (one per model, each
    holding every measure and target by name; missing or non-finite values drop that pair)."""
    def column(name: str) -> np.ndarray:
        return np.asarray([float(row.get(name, math.nan)) for row in rows], dtype=float)

    table: dict[str, dict[str, dict[str, float]]] = {}
    for measure in measures:
        x = column(measure)
        table[measure] = {}
        for target in targets:
            y = column(target)
            pairs = int((np.isfinite(x) & np.isfinite(y)).sum())
            table[measure][target] = {"spearman": spearman(x, y), "p_value": spearman_p_value(x, y),
                                      "n": pairs}
    return table
