import itertools
import math

import numpy as np
import pytest

from lossviz.stats import (
    average_ranks,
    holm_adjusted,
    null_rate_below,
    pearson,
    smallest_spearman_p_value,
    spearman,
    spearman_bootstrap_interval,
    spearman_p_value,
    surface_fidelity,
)


def test_spearman_on_known_examples():
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7000]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    # Textbook example with ties: x=[1,2,3,4,5], y=[2,1,4,3,5] -> 1 - 6*4/(5*24) = 0.8
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)
    assert average_ranks([10, 20, 20, 30]).tolist() == [1.0, 2.5, 2.5, 4.0]
    # ties: ranks of y = [1, 2.5, 2.5, 4]; pearson of [1,2,3,4] with that = 0.9486832981
    assert spearman([1, 2, 3, 4], [1, 5, 5, 9]) == pytest.approx(0.9486832981)
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    assert spearman([1, 2, np.nan, 4], [3, 2, -100, 1]) == pytest.approx(-1.0)  # the NaN pair is dropped


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=50), rng.normal(size=50)
    assert pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])


def test_surface_fidelity_known_answers():
    xs = np.linspace(-1, 1, 5)
    ys = np.linspace(-1, 1, 3)
    X, Y = np.meshgrid(xs, ys)  # Z[iy, ix]
    reference = np.exp(X**2 + Y**2)  # ln = x^2 + y^2, minimum at (0, 0)
    same = surface_fidelity(reference, reference, xs, ys)
    assert same == {"pearson_ln_loss": pytest.approx(1.0), "rmse_ln_loss": 0.0, "argmin_distance": 0.0}
    shifted = reference * math.e ** 0.5  # ln shifted by 0.5 everywhere: still perfectly correlated
    result = surface_fidelity(shifted, reference, xs, ys)
    assert result["pearson_ln_loss"] == pytest.approx(1.0)
    assert result["rmse_ln_loss"] == pytest.approx(0.5)
    moved = np.exp((X - 1) ** 2 + (Y + 1) ** 2)  # minimum at (1, -1)
    assert surface_fidelity(moved, reference, xs, ys)["argmin_distance"] == pytest.approx(math.sqrt(2))
    with_gap = reference.copy()
    with_gap[0, 0] = np.nan  # clipped points are ignored
    assert surface_fidelity(with_gap, reference, xs, ys)["rmse_ln_loss"] == 0.0
    one_d = surface_fidelity(np.exp(xs**2), np.exp((xs - 0.5) ** 2), xs)
    assert one_d["argmin_distance"] == pytest.approx(0.5)


# ------------------------------------------------------------------ what five models allow (the verdict's statistics)

def brute_force_spearman_p(a, b) -> float:
    """Every ordering of b, with scipy-free Spearman from the textbook formula (no ties)."""
    n = len(a)
    rank_a = np.argsort(np.argsort(a))
    observed = 1 - 6 * np.sum((rank_a - np.argsort(np.argsort(b))) ** 2) / (n * (n * n - 1))
    values = [1 - 6 * np.sum((rank_a - np.argsort(np.argsort(np.asarray(b)[list(order)]))) ** 2) / (n * (n * n - 1))
              for order in itertools.permutations(range(n))]
    return float(np.mean(np.abs(values) >= abs(observed) - 1e-12))


def test_permutation_p_values_are_exact_for_a_handful_of_models():
    assert spearman_p_value([1, 2, 3, 4, 5], [10, 20, 30, 40, 50]) == pytest.approx(2 / 120)
    for b in ([2, 1, 4, 3, 5], [5, 3, 4, 2, 1], [3, 1, 5, 2, 4]):
        assert spearman_p_value([1, 2, 3, 4, 5], b) == pytest.approx(brute_force_spearman_p([1, 2, 3, 4, 5], b))
    assert smallest_spearman_p_value(5) == pytest.approx(2 / 120)
    assert smallest_spearman_p_value(2) == 1.0
    # n = 5: only |ρ| = 1 (2 orderings) reaches p < 0.05; |ρ| = 0.9 gives p = 10/120
    assert spearman_p_value([1, 2, 3, 4, 5], [1, 2, 3, 5, 4]) == pytest.approx(10 / 120)
    assert null_rate_below(0.05, 5) == pytest.approx(2 / 120)
    assert null_rate_below(0.1, 5) == pytest.approx(10 / 120)


def test_holm_adjustment_known_example():
    adjusted = holm_adjusted([0.01, 0.04, np.nan, 0.03, 0.005])
    # sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → kept monotone at 0.06
    assert adjusted[[0, 1, 3, 4]] == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(adjusted[2])
    assert holm_adjusted([0.5, 0.9]).tolist() == [1.0, 1.0]


def test_bootstrap_interval_is_the_exact_bootstrap_for_five_models():
    a, b = [0.1, 0.4, 0.2, 0.9, 0.5], [1.0, 3.0, 2.5, 2.0, 5.0]
    interval = spearman_bootstrap_interval(a, b, level=0.9)
    assert interval["exact"] and interval["resamples"] == 5**5
    # every resample, one at a time, through the plain spearman()
    values = []
    for index in itertools.product(range(5), repeat=5):
        values.append(spearman(np.asarray(a)[list(index)], np.asarray(b)[list(index)]))
    values = np.asarray(values)
    defined = values[np.isfinite(values)]
    assert interval["undefined_fraction"] == pytest.approx(1 - defined.size / values.size)
    assert [interval["low"], interval["high"]] == pytest.approx(np.quantile(defined, [0.05, 0.95]).tolist())
    assert interval["low"] <= spearman(a, b) <= interval["high"]
    rng = np.random.default_rng(1)
    x = rng.normal(size=30)
    sampled = spearman_bootstrap_interval(x, x + 0.3 * rng.normal(size=30), samples=2000)
    assert not sampled["exact"] and sampled["resamples"] == 2000 and 0.5 < sampled["low"] < sampled["high"] <= 1
    assert math.isnan(spearman_bootstrap_interval([1, 2], [3, 4])["low"])
    with pytest.raises(ValueError, match="level"):
        spearman_bootstrap_interval(a, b, level=95)
