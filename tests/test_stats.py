import math

import numpy as np
import pytest

from lossviz.stats import average_ranks, pearson, spearman, surface_fidelity


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
