"""Statistics the studies report: rank and linear correlations with what a handful of models allows
(exact permutation p-values, exact bootstrap intervals, Holm's correction), and how closely one surface
reproduces another (the sample-size study's fidelity measures)."""

from __future__ import annotations

import itertools
import math

import numpy as np

EXACT_PERMUTATIONS_UP_TO = 8  # 8! = 40,320 orderings; beyond, a seeded Monte Carlo estimate
EXACT_BOOTSTRAP_UP_TO = 6  # 6**6 = 46,656 resamples; beyond, a seeded Monte Carlo sample


def finite_or_none(value: float | None) -> float | None:
    """A float, or None for NaN, ±inf and None: strict JSON has no NaN, and a missing value is not zero."""
    return float(value) if value is not None and math.isfinite(value) else None


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


def spearman_p_value(a, b, samples: int = 20_000, seed: int = 0) -> float:
    """Two-sided permutation p-value of Spearman's ρ: the fraction of orderings of `b` whose |ρ| is at
    least the observed |ρ| (exact up to EXACT_PERMUTATIONS_UP_TO pairs, else Monte Carlo). Pairs with a
    non-finite value are dropped; NaN when fewer than 3 pairs remain or a side is constant."""
    x, y = _paired_finite(a, b)
    x, y = average_ranks(x), average_ranks(y)
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


def smallest_spearman_p_value(n: int) -> float:
    """The smallest two-sided permutation p-value Spearman's ρ can reach with n untied pairs: 2/n!, the
    two perfectly monotone orderings (1 below 3 pairs, where every ordering is monotone)."""
    return 1.0 if n < 3 else 2.0 / math.factorial(n)


def null_rate_below(alpha: float, n: int) -> float:
    """Under independence (every ordering equally likely, no ties), the probability that the exact
    permutation p-value of Spearman's ρ on n pairs is below `alpha`: how often a test "succeeds" by chance.
    Exact up to EXACT_PERMUTATIONS_UP_TO pairs; `alpha` beyond (where it is close to alpha)."""
    if n < 3:
        return 0.0
    if n > EXACT_PERMUTATIONS_UP_TO:
        return float(alpha)
    x = np.arange(1.0, n + 1)
    magnitudes = np.array([abs(pearson(x, np.asarray(order, dtype=float))) for order in itertools.permutations(x)])
    p_values = (magnitudes[None, :] >= magnitudes[:, None] - 1e-12).mean(axis=1)
    return float(np.mean(p_values < alpha))


def holm_adjusted(p_values) -> np.ndarray:
    """Holm's step-down adjustment for testing several hypotheses at once (NaN entries are not tests):
    reject where the adjusted p-value is below alpha, and the chance of any false rejection stays <= alpha."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, np.nan)
    tested = np.flatnonzero(np.isfinite(p))
    order = tested[np.argsort(p[tested], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def _rank_rows(values: np.ndarray) -> np.ndarray:
    """average_ranks of every row of a 2-D array (ties share the mean of their ranks)."""
    less = (values[:, None, :] < values[:, :, None]).sum(axis=2)
    equal = (values[:, None, :] == values[:, :, None]).sum(axis=2)
    return less + (equal + 1) / 2


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    denominator = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, (a * b).sum(axis=1) / denominator, np.nan)


def spearman_bootstrap_interval(a, b, level: float = 0.95, samples: int = 10_000, seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap interval of Spearman's ρ over resamples of the pairs (with replacement).

    With up to EXACT_BOOTSTRAP_UP_TO pairs every one of the n**n resamples is taken once (the exact
    bootstrap distribution, no randomness); beyond, `samples` seeded resamples. Resamples in which a side
    is constant have no ρ; they are left out and their fraction reported as `undefined_fraction`."""
    if not 0 < level < 1:
        raise ValueError(f"level={level} is not valid; allowed: 0 < level < 1")
    x, y = _paired_finite(a, b)
    n = x.size
    if n < 3:
        return {"low": math.nan, "high": math.nan, "level": level, "undefined_fraction": math.nan,
                "resamples": 0, "exact": False}
    exact = n <= EXACT_BOOTSTRAP_UP_TO
    if exact:
        indices = np.array(list(itertools.product(range(n), repeat=n)), dtype=np.int64)
    else:
        indices = np.random.default_rng(seed).integers(0, n, size=(samples, n))
    rho = _pearson_rows(_rank_rows(x[indices]), _rank_rows(y[indices]))
    defined = rho[np.isfinite(rho)]
    low, high = np.quantile(defined, [(1 - level) / 2, (1 + level) / 2]) if defined.size else (math.nan, math.nan)
    return {"low": float(low), "high": float(high), "level": level,
            "undefined_fraction": float(1 - defined.size / len(rho)), "resamples": int(len(rho)), "exact": exact}


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
