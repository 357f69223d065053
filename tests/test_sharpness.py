"""Sharpness measures against closed forms (ε-sharpness on a separable quadratic, adaptive sharpness on a
linear loss, its invariance to rescalings that leave the function unchanged), and the verdict on five
models: what it computes and what its sentence says."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from lossviz.sharpness import (
    MEASURES,
    SHARPNESS_MEASURES,
    adaptive_sharpness,
    epsilon_sharpness,
    measure_minimizer,
    sharpness_measures,
    verdict,
)


class Separable(nn.Module):
    """Loss Σ_i a_i (θ_i − c_i)² / 2 for every example, whatever its input."""

    def __init__(self, theta, curvatures, centre):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))
        self.register_buffer("a", torch.tensor(curvatures, dtype=torch.float64))
        self.register_buffer("c", torch.tensor(centre, dtype=torch.float64))

    def forward(self, x):
        return (0.5 * (self.a * (self.theta - self.c) ** 2).sum()).expand(len(x))


class Linear(nn.Module):
    """Loss gᵀθ for every example."""

    def __init__(self, theta, gradient):
        super().__init__()
        self.theta = nn.Parameter(torch.tensor(theta, dtype=torch.float64))
        self.register_buffer("g", torch.tensor(gradient, dtype=torch.float64))

    def forward(self, x):
        return (self.g @ self.theta).expand(len(x))


def as_loss(outputs, targets):
    return outputs


X, Y = torch.zeros(3, 1, dtype=torch.float64), torch.zeros(3)


def test_epsilon_sharpness_reaches_the_far_corner_of_the_box():
    theta, a, c = [0.5, -2.0, 1.0], [1.0, 4.0, 0.5], [3.0, 1.0, -2.0]  # the box lies on one side of every c_i
    epsilon = 0.05
    model = Separable(theta, a, c)
    result = epsilon_sharpness(model, X, Y, as_loss, epsilon=epsilon, steps=10)
    base = 0.5 * sum(ai * (t - ci) ** 2 for t, ai, ci in zip(theta, a, c, strict=True))
    # each coordinate moves away from c_i by its half-width ε(|θ_i| + 1)
    far = 0.5 * sum(ai * (abs(t - ci) + epsilon * (abs(t) + 1)) ** 2 for t, ai, ci in zip(theta, a, c, strict=True))
    assert result["loss"] == pytest.approx(base)
    assert result["max_loss"] == pytest.approx(far, rel=1e-12)
    assert result["epsilon_sharpness"] == pytest.approx(100 * (far - base) / (1 + base), rel=1e-12)
    smaller = epsilon_sharpness(model, X, Y, as_loss, epsilon=epsilon / 2, steps=10)
    assert 0 < smaller["epsilon_sharpness"] < result["epsilon_sharpness"]
    with pytest.raises(ValueError, match="epsilon"):
        epsilon_sharpness(model, X, Y, as_loss, epsilon=0)


def test_adaptive_sharpness_of_a_linear_loss_is_rho_times_the_scaled_gradient_norm():
    theta, gradient = [0.5, -2.0, 0.0], [1.0, 3.0, -2.0]
    rho, eta = 0.3, 0.1
    result = adaptive_sharpness(Linear(theta, gradient), X, Y, as_loss, rho=rho, eta=eta, steps=5)
    scaled = [(abs(t) + eta) * g for t, g in zip(theta, gradient, strict=True)]
    assert result["adaptive_sharpness"] == pytest.approx(rho * math.sqrt(sum(s * s for s in scaled)), rel=1e-12)
    assert result["first_order"] == pytest.approx(result["adaptive_sharpness"], rel=1e-12)


def test_adaptive_sharpness_ignores_rescalings_that_keep_the_function_and_epsilon_sharpness_does_not():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    rescaled = nn.Sequential(nn.Linear(4, 6, bias=False), nn.ReLU(), nn.Linear(6, 3, bias=False)).double()
    with torch.no_grad():
        rescaled[0].weight.copy_(model[0].weight * 4.0)  # ReLU(4z) = 4·ReLU(z): the same function
        rescaled[2].weight.copy_(model[2].weight / 4.0)
    assert torch.allclose(model(x), rescaled(x))
    original = adaptive_sharpness(model, x, y, rho=0.5, eta=0.0)["adaptive_sharpness"]
    assert original > 0
    assert adaptive_sharpness(rescaled, x, y, rho=0.5, eta=0.0)["adaptive_sharpness"] == pytest.approx(original,
                                                                                                        rel=1e-9)
    plain = epsilon_sharpness(model, x, y, epsilon=1e-2)["epsilon_sharpness"]
    assert epsilon_sharpness(rescaled, x, y, epsilon=1e-2)["epsilon_sharpness"] != pytest.approx(plain, rel=0.05)


def test_measure_minimizer_fills_every_model_side_measure_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Dropout(0.5), nn.Tanh(), nn.Linear(3, 3))
    x, y = torch.randn(30, 4), torch.randint(0, 3, (30,))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    measured = measure_minimizer(model, x, y, lanczos_steps=10, trace_samples=9, ascent_steps=3)
    shape = {"depth": 1.0, "flatness": 0.5, "centre_curvature_mean": 2.0, "convex_fraction": 1.0}
    row = sharpness_measures(shape, measured)
    assert list(row) == list(MEASURES)  # every measure, in the registry's order
    assert all(math.isfinite(value) for value in row.values())
    assert row["epsilon_sharpness"] > 0 and row["adaptive_sharpness"] > 0
    assert row["hessian_min_eigenvalue"] <= row["hessian_top_eigenvalue"]
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    # the six measures the stage tabulated so far, from an older Hessian result, stay exactly these
    old = {"hessian_top_eigenvalue": 5.0, "hessian_trace": 9.0, "hessian_trace_se": 1.0}
    assert list(sharpness_measures(shape, old)) == list(SHARPNESS_MEASURES)


def five_models(depth=(1.0, 2.0, 3.0, 4.0, 5.0)) -> list[dict[str, float]]:
    errors = [0.10, 0.12, 0.15, 0.16, 0.20]
    return [{"test_error": e, "gap_acc": 0.01 * (i % 3), "gap_loss": 0.1 * (5 - i), "depth": d,
             "flatness": 1.0 - 0.1 * d, "hessian_trace": [2.0, 1.0, 4.0, 3.0, 5.0][i], "normalized_trace": math.nan}
            for i, (e, d) in enumerate(zip(errors, depth, strict=True))]


def test_verdict_on_five_models_says_what_can_and_cannot_be_concluded():
    result = verdict(five_models())
    assert result["n_models"] == 5 and result["smallest_attainable_p"] == pytest.approx(2 / 120)
    # measures held by no row (normalized_trace: NaN everywhere) are left out; 3 measures × 3 targets
    assert set(result["table"]) == {"depth", "flatness", "hessian_trace"} and result["n_tests"] == 9
    depth = result["table"]["depth"]["test_error"]
    assert depth["spearman"] == pytest.approx(1.0) and depth["p_value"] == pytest.approx(2 / 120)
    assert depth["ci_low"] == pytest.approx(1.0) and depth["ci_high"] == pytest.approx(1.0)  # every resample agrees
    # Holm over 9 tests: the smallest p, 2/120, becomes at least 9·2/120 = 0.15
    assert depth["p_holm"] == pytest.approx(min(1.0, 9 * 2 / 120))
    assert ["depth", "test_error"] in result["significant"] and ["flatness", "test_error"] in result["significant"]
    assert result["significant_after_holm"] == []
    assert result["expected_by_chance"] == pytest.approx(9 * 2 / 120)
    sentence = result["sentence"]
    assert "0.0167" in sentence and "cannot reach" in sentence and "None survives Holm's correction" in sentence
    assert "depth vs test_error (ρ = +1.00, p = 0.017)" in sentence
    assert "not a finding" in sentence and "nor does it show that sharpness is unrelated" in sentence


def test_verdict_with_many_models_can_find_a_correlation():
    rng = np.random.default_rng(0)
    error = np.sort(rng.uniform(0.1, 0.3, size=12))
    rows = [{"test_error": e, "gap_acc": rng.normal(), "gap_loss": rng.normal(), "depth": 10 * e + 0.01 * rng.normal()}
            for e in error]
    result = verdict(rows, measures=["depth"], targets=["test_error"])
    assert result["significant_after_holm"] == [["depth", "test_error"]]
    assert "After Holm's correction these remain: depth vs test_error" in result["sentence"]
    assert "not evidence that sharpness causes" in result["sentence"]
    assert "no rank correlation can be tested" in verdict(five_models()[:2])["sentence"]
