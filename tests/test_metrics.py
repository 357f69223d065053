"""Shape metrics on synthetic surfaces with known answers. (The Hessian measures, against the full Hessian
of a tiny model and closed forms, are in tests/test_curvature.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from lossviz.shape import surface_metrics
from lossviz.surface import Surface


def _quadratic(a: float, b: float, c: float = 1.0, n: int = 21) -> Surface:
    xs = ys = np.linspace(-1, 1, n)
    alpha, beta = np.meshgrid(xs, ys)
    loss = c + a * alpha**2 + b * beta**2 + 0.0 * alpha * beta
    shape = loss.shape
    return Surface(xs, ys, loss, np.zeros(shape), np.zeros(shape), np.arange(3), {})


def test_bowl_metrics_match_closed_forms():
    metrics = surface_metrics(_quadratic(2.0, 0.5), flat_tolerance=0.3)
    assert metrics["centre"] == [0.0, 0.0] and metrics["centre_loss"] == pytest.approx(1.0)
    assert metrics["centre_curvature_xx"] == pytest.approx(4.0)  # exact for quadratics
    assert metrics["centre_curvature_yy"] == pytest.approx(1.0)
    assert metrics["centre_curvature_xy"] == pytest.approx(0.0, abs=1e-9)
    assert metrics["centre_curvature_max"] == pytest.approx(4.0)
    assert metrics["convex_fraction"] == 1.0
    xs = np.linspace(-1, 1, 21)
    alpha, beta = np.meshgrid(xs, xs)
    inside = np.hypot(alpha, beta) <= 1.0
    values = 2 * alpha[inside] ** 2 + 0.5 * beta[inside] ** 2
    assert metrics["n_points_in_disk"] == inside.sum()
    assert metrics["depth"] == pytest.approx(values.max() - values.min())
    assert metrics["flatness"] == pytest.approx(np.mean(values <= 0.3))


def test_saddle_is_not_convex_and_one_d_works():
    saddle = surface_metrics(_quadratic(1.0, -1.0))
    assert saddle["convex_fraction"] == 0.0
    assert saddle["centre_curvature_min"] == pytest.approx(-2.0)
    xs = np.linspace(-2, 2, 9)
    line = Surface(xs, None, np.abs(xs) ** 3, np.zeros(9), np.zeros(9), np.arange(2), {})
    metrics = surface_metrics(line, clip_radius=2.0)
    assert metrics["centre_curvature_xx"] == pytest.approx(2 * 0.5**3 / 0.5**2)
    assert metrics["convex_fraction"] == 1.0 and metrics["depth"] == pytest.approx(8.0)
