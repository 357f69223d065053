"""Curvature measures against closed forms and brute force: a quadratic model whose Hessian is known
(eigenvalues, trace, spectral density, eigenvectors), a tiny network against the full Hessian from
torch.autograd.functional.hessian, the expected curvature of random slices, and per-point curvature maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lossviz.curvature import (
    HessianVectorProduct,
    curvature_map,
    expected_slice_curvature,
    hessian_directions,
    hessian_metrics,
    hessian_trace,
    lanczos_extremes,
    sampled_slice_curvatures,
    slice_curvature_weights,
    spectral_density,
    surface_examples,
)
from lossviz.directions import random_directions
from lossviz.engine import compute_surface
from lossviz.figures import curvature_map_figure
from lossviz.tasks import select_examples

# A spectrum with multiplicities: the density has a peak at each distinct value with mass multiplicity / n.
EIGENVALUES = [-1.0] * 2 + [0.5] * 5 + [2.0] * 6 + [6.0, 9.0]
DISTINCT = sorted(set(EIGENVALUES))


def known_hessian(eigenvalues, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A = Q diag(λ) Qᵀ with a seeded random orthogonal Q (float64)."""
    generator = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(len(eigenvalues), len(eigenvalues), generator=generator, dtype=torch.float64))
    return q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T, q


class Quadratic(nn.Module):
    """Loss ½(θ − c)ᵀA(θ − c) for every example, whatever its input; θ is a (3, k) weight and a (3,) bias,
    so the Hessian (= A everywhere) spans two parameter tensors."""

    def __init__(self, hessian: torch.Tensor, centre: torch.Tensor | None = None):
        super().__init__()
        size = hessian.shape[0]
        if (size - 3) % 3:
            raise ValueError("size must be 3 + 3k")
        self.register_buffer("hessian", hessian)
        self.register_buffer("centre", torch.zeros(size, dtype=torch.float64) if centre is None else centre)
        generator = torch.Generator().manual_seed(1)
        self.weight = nn.Parameter(torch.randn(3, (size - 3) // 3, generator=generator, dtype=torch.float64))
        self.bias = nn.Parameter(torch.randn(3, generator=generator, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        theta = torch.cat([self.weight.reshape(-1), self.bias]) - self.centre
        return (0.5 * theta @ self.hessian @ theta).expand(len(x))


def as_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return outputs


def quadratic(eigenvalues=EIGENVALUES) -> tuple[Quadratic, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    hessian, q = known_hessian(eigenvalues)
    return Quadratic(hessian), q, torch.zeros(4, 1, dtype=torch.float64), torch.zeros(4), hessian


def flat(direction) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in direction.values()])


def test_quadratic_eigenvalues_trace_and_products_are_exact():
    model, _, x, y, hessian = quadratic()
    operator = HessianVectorProduct(model, x, y, as_loss)
    v = torch.randn(operator.size, dtype=torch.float64)
    assert torch.allclose(operator.matvec(v), hessian @ v, atol=1e-12)
    eigen = lanczos_extremes(operator, steps=15, top_k=3, bottom_k=1)
    # one start vector sees one vector per eigenspace: the distinct values, each once
    assert eigen.top == pytest.approx([9.0, 6.0, 2.0], abs=1e-9)
    assert eigen.bottom == pytest.approx([-1.0], abs=1e-9)
    assert max(eigen.top_residuals.max(), eigen.bottom_residuals.max()) < 1e-8
    trace = hessian_trace(operator, matvecs=45)  # a sketch of 15 columns spans everything: exact
    assert trace.estimate == pytest.approx(sum(EIGENVALUES), abs=1e-9)
    assert trace.products == 45
    metrics = hessian_metrics(model, x, y, as_loss, top_k=2, max_iterations=15, trace_samples=45)
    assert metrics["hessian_top_eigenvalues"] == pytest.approx([9.0, 6.0], abs=1e-9)
    assert metrics["hessian_min_eigenvalue"] == pytest.approx(-1.0, abs=1e-9)
    assert metrics["hessian_trace"] == pytest.approx(sum(EIGENVALUES), abs=1e-9)
    # Lanczos stops once the Krylov space is invariant: after one step per distinct eigenvalue
    assert metrics["hessian_lanczos_steps"] == len(DISTINCT)
    # and one product per returned pair measures its residual (2 top, 1 bottom)
    assert metrics["hessian_products"] == len(DISTINCT) + 3 + 45 and metrics["hessian_parameters"] == 15


def test_hutch_plus_plus_is_unbiased_and_beats_hutchinson_at_equal_cost():
    # 60 parameters, a few large eigenvalues over a bulk: the shape of a trained network's spectrum
    eigenvalues = [50.0, 30.0, 20.0, 10.0] + [0.02 * k for k in range(1, 57)]
    model, _, x, y, _ = quadratic(eigenvalues)
    operator = HessianVectorProduct(model, x, y, as_loss)
    estimates = np.array([hessian_trace(operator, matvecs=18, seed=s).estimate for s in range(40)])
    exact = sum(eigenvalues)
    assert abs(estimates.mean() - exact) < 4 * estimates.std(ddof=1) / np.sqrt(len(estimates))
    hutchinson = []
    for seed in range(40):
        probes = torch.randint(0, 2, (18, operator.size), generator=torch.Generator().manual_seed(seed)) * 2.0 - 1
        hutchinson.append(float(np.mean([p.double() @ operator.matvec(p.double()) for p in probes])))
    assert estimates.std() < 0.25 * np.std(hutchinson)
    # a budget too small for Hutch++'s thirds goes to Hutchinson, with all its products as probes
    few = [hessian_trace(operator, matvecs=4, seed=s) for s in range(40)]
    assert {t.method for t in few} == {"hutchinson"} and {t.products for t in few} == {4}
    values = np.array([t.estimate for t in few])
    assert abs(values.mean() - exact) < 4 * values.std(ddof=1) / np.sqrt(len(values))
    assert np.median([t.standard_error for t in few]) == pytest.approx(values.std(ddof=1), rel=0.5)
    assert hessian_trace(operator, matvecs=9).method == "hutch++"


def test_spectral_density_peaks_and_masses():
    model, _, x, y, _ = quadratic()
    operator = HessianVectorProduct(model, x, y, as_loss)
    density = spectral_density(operator, runs=60, steps=15, seed=0, grid_points=2001, sigma=0.05)
    assert density.products == 60 * len(DISTINCT)  # each run's Krylov space closes after 5 steps
    grid, values = density.grid, density.density
    peaks = [grid[i] for i in range(1, len(grid) - 1)
             if values[i] > values[i - 1] and values[i] >= values[i + 1] and values[i] > 0.01 * values.max()]
    spacing = grid[1] - grid[0]
    assert len(peaks) == len(DISTINCT)
    assert np.allclose(peaks, DISTINCT, atol=2 * spacing)
    for value in DISTINCT:
        mass, standard_error = density.mass(value - 0.1, value + 0.1)
        expected = EIGENVALUES.count(value) / len(EIGENVALUES)
        assert abs(mass - expected) < 4 * standard_error + 1e-9, (value, mass, expected, standard_error)
    assert np.trapezoid(values, grid) == pytest.approx(1.0, abs=1e-3)
    assert (density.density_std > 0).any()  # the spread over probes is reported


def test_hessian_directions_are_the_eigenvectors_up_to_sign():
    model, q, x, y, _ = quadratic()
    directions = hessian_directions(model, x, y, as_loss, which=("top1", "min"), steps=15)
    assert directions.meta["kind"] == "hessian" and directions.meta["norm"] == "none"
    assert directions.meta["eigenvalues"] == pytest.approx([9.0, -1.0], abs=1e-9)
    top = q[:, EIGENVALUES.index(9.0)]
    assert abs(float(flat(directions.x) @ top)) == pytest.approx(1.0, abs=1e-6)
    # the most negative eigenvalue has a 2-D eigenspace: the direction lies in it, with unit norm
    negative = q[:, [i for i, v in enumerate(EIGENVALUES) if v == -1.0]]
    inside = negative.T @ flat(directions.y)
    assert float(inside.norm()) == pytest.approx(1.0, abs=1e-6)
    for axis in directions.axes():  # the sign convention: the largest-magnitude entry is positive
        vector = flat(axis)
        assert vector[vector.abs().argmax()] > 0
    second = hessian_directions(model, x, y, as_loss, which=("top2",), steps=15)
    assert second.y is None and second.meta["eigenvalues"] == pytest.approx([6.0], abs=1e-9)
    assert abs(float(flat(second.x) @ q[:, EIGENVALUES.index(6.0)])) == pytest.approx(1.0, abs=1e-6)
    # the slice along a unit eigenvector curves by exactly its eigenvalue: L(θ + αv) − L(θ) = ½λα² + gα
    weights = dict(model.named_parameters())
    loss = [float(torch.func.functional_call(model, {n: weights[n].detach() + a * second.x[n].double()
                                                     for n in weights}, (x,))[0]) for a in (-1.0, 0.0, 1.0)]
    assert loss[0] + loss[2] - 2 * loss[1] == pytest.approx(6.0, rel=1e-5)
    with pytest.raises(ValueError, match="which"):
        hessian_directions(model, x, y, as_loss, which=("top1", "top1"))
    with pytest.raises(ValueError, match="which"):
        hessian_directions(model, x, y, as_loss, which=("max",))
    # asked for, filter normalization and zeroed biases, as random directions have them
    normalized = hessian_directions(model, x, y, as_loss, which=("top1",), steps=15, norm="filter", ignore="biasbn")
    assert not normalized.x["bias"].any() and normalized.meta["norm"] == "filter"
    assert torch.allclose(normalized.x["weight"].norm(dim=1), model.weight.detach().float().norm(dim=1))


def test_curvature_map_of_a_quadratic_bowl_is_constant_and_exact():
    bowl = [0.5] * 4 + [2.0] * 7 + [9.0] * 4
    model, _, x, y, _ = quadratic(bowl)
    directions = random_directions(model, seed=3, norm="none", ignore="none")
    grid = np.linspace(-1, 1, 3)
    result = curvature_map(model, x, y, directions, grid, grid, as_loss, steps=15, progress=False)
    assert result.min_eigenvalue.shape == (3, 3)
    assert np.allclose(result.min_eigenvalue, 0.5, atol=1e-9) and np.allclose(result.max_eigenvalue, 9.0, atol=1e-9)
    assert np.allclose(result.ratio, 0.5 / 9.0)
    assert result.meta["products"] == 9 * (3 + 2)  # 3 distinct eigenvalues: 3 Lanczos steps, 2 residuals
    clipped = curvature_map(model, x, y, directions, grid, grid, as_loss, steps=15, clip_radius=1.0, progress=False)
    assert np.isnan(clipped.max_eigenvalue[0, 0]) and np.isfinite(clipped.max_eigenvalue[1, 1])
    figure = curvature_map_figure(clipped, title="bowl")
    assert [trace.type for trace in figure.data] == ["heatmap"] * 3
    assert [annotation.text for annotation in figure.layout.annotations] == ["λ_max", "λ_min", "|λ_min / λ_max|"]
    assert np.array_equal(np.asarray(figure.data[1].z, dtype=float), clipped.min_eigenvalue, equal_nan=True)
    assert figure.data[1].zmin == -figure.data[1].zmax == pytest.approx(-0.5)  # diverging about 0
    assert figure.layout.meta["lossviz"]["kind"] == "curvature"


# ------------------------------------------------------------------------------------ a tiny network

def tiny_network(batchnorm: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    layers = [nn.Linear(4, 3)] + ([nn.BatchNorm1d(3), nn.Dropout(0.5)] if batchnorm else []) + [nn.Tanh(),
                                                                                               nn.Linear(3, 3)]
    model = nn.Sequential(*layers).double()
    if batchnorm:  # running statistics that differ from any batch's own, so train mode would show
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model, torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))


def full_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, at: dict | None = None) -> torch.Tensor:
    """The Hessian built in full, with the model in eval mode, over the flattened parameters."""
    named = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    shapes = {name: p.shape for name, p in named.items()}
    start = torch.cat([(at or {}).get(name, p).detach().reshape(-1) for name, p in named.items()])

    def loss_of(vector: torch.Tensor) -> torch.Tensor:
        pieces, offset = {}, 0
        for name, shape in shapes.items():
            pieces[name] = vector[offset:offset + shape.numel()].reshape(shape)
            offset += shape.numel()
        outputs = torch.func.functional_call(model, {**buffers, **pieces}, (x,))
        return nn.functional.cross_entropy(outputs, y)

    was_training = model.training
    model.eval()
    try:
        return torch.autograd.functional.hessian(loss_of, start)
    finally:
        model.train(was_training)


@pytest.mark.parametrize("batchnorm", [False, True])
def test_tiny_network_matches_the_full_hessian(batchnorm):
    model, x, y = tiny_network(batchnorm)
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hessian = full_hessian(model, x, y)
    exact = torch.linalg.eigvalsh(hessian)
    operator = HessianVectorProduct(model, x, y)
    v = torch.randn(operator.size, dtype=torch.float64)
    assert torch.allclose(operator.matvec(v), hessian @ v, atol=1e-10)
    metrics = hessian_metrics(model, x, y, top_k=3, max_iterations=operator.size, trace_samples=3 * operator.size)
    assert metrics["hessian_top_eigenvalues"] == pytest.approx(exact.flip(0)[:3].tolist(), rel=1e-7, abs=1e-9)
    assert metrics["hessian_min_eigenvalue"] == pytest.approx(exact[0].item(), rel=1e-7, abs=1e-9)
    assert metrics["hessian_trace"] == pytest.approx(torch.trace(hessian).item(), rel=1e-8)
    few = hessian_metrics(model, x, y, max_iterations=10, trace_samples=9, seed=1)  # fewer products than n
    assert abs(few["hessian_trace"] - torch.trace(hessian).item()) < 5 * few["hessian_trace_se"] + 1e-9
    assert model.training  # left as it was, parameters and running statistics untouched
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_curvature_map_matches_the_full_hessian_at_each_point():
    model, x, y = tiny_network()
    directions = random_directions(model, seed=0)
    grid = np.array([-0.5, 0.5])
    result = curvature_map(model, x, y, directions, grid, grid, steps=30, progress=False)
    base = dict(model.named_parameters())
    for iy, beta in enumerate(grid):
        for ix, alpha in enumerate(grid):
            at = {n: base[n].detach() + alpha * directions.x[n].double() + beta * directions.y[n].double()
                  for n in base}
            exact = torch.linalg.eigvalsh(full_hessian(model, x, y, at))
            assert result.min_eigenvalue[iy, ix] == pytest.approx(exact[0].item(), abs=1e-8)
            assert result.max_eigenvalue[iy, ix] == pytest.approx(exact[-1].item(), rel=1e-8)
    surface = compute_surface(model, x, y, directions, grid, grid, n_examples=None, progress=False, device="cpu",
                              method="naive")
    figure = curvature_map_figure(result, surface=surface)  # the surface's ln(loss) beside the maps
    assert [annotation.text for annotation in figure.layout.annotations][0] == "ln(loss)" and len(figure.data) == 4
    assert np.allclose(np.asarray(figure.data[0].z, dtype=float), np.log(surface.loss))


# ------------------------------------------------------------------------------------ random slices

def independent_slice_weights(model: nn.Module) -> torch.Tensor:
    """E[δδᵀ]'s diagonal for filter-normalized, biasbn-ignored directions, written out by hand: each row w_i
    of a weight matrix gets ‖w_i‖² / (row length); biases 0."""
    pieces = []
    for p in model.parameters():
        if p.dim() > 1:
            rows = p.detach().pow(2).sum(dim=1, keepdim=True) / p.shape[1]
            pieces.append(rows.expand_as(p).reshape(-1))
        else:
            pieces.append(torch.zeros(p.numel(), dtype=p.dtype))
    return torch.cat(pieces)


def test_expected_slice_curvature_is_the_normalized_trace():
    model, x, y = tiny_network()
    hessian = full_hessian(model, x, y)
    weights = independent_slice_weights(model)
    exact = float((weights * torch.diagonal(hessian)).sum())  # tr(D·H)
    variances, fixed = slice_curvature_weights(model, "filter", "biasbn")
    assert torch.allclose(torch.cat([v.reshape(-1) for v in variances.values()]), weights)
    assert not any(bool(t.any()) for t in fixed.values())
    n = sum(p.numel() for p in model.parameters())
    result = expected_slice_curvature(model, x, y, norm="filter", ignore="biasbn", matvecs=3 * n)
    assert result["expected_curvature"] == pytest.approx(exact, rel=1e-8)
    # Monte Carlo over the directions random_directions really draws: an independent check of D
    samples = sampled_slice_curvatures(model, x, y, seeds=range(100)).ravel()
    assert abs(samples.mean() - exact) < 4 * samples.std(ddof=1) / np.sqrt(samples.size)
    # ignore="none": biases are copied into δ (δ_b = b), adding the fixed part bᵀH_bb b
    biases = torch.cat([p.detach().reshape(-1) if p.dim() <= 1 else torch.zeros(p.numel(), dtype=p.dtype)
                        for p in model.parameters()])
    with_bias = expected_slice_curvature(model, x, y, norm="filter", ignore="none", matvecs=3 * n)
    assert with_bias["fixed_part"] == pytest.approx(float(biases @ hessian @ biases), rel=1e-8)
    assert with_bias["expected_curvature"] == pytest.approx(exact + with_bias["fixed_part"], rel=1e-8)
    samples = sampled_slice_curvatures(model, x, y, seeds=range(100), ignore="none").ravel()
    assert abs(samples.mean() - with_bias["expected_curvature"]) < 4 * samples.std(ddof=1) / np.sqrt(samples.size)


@pytest.mark.parametrize("norm", ["layer", "weight", "dfilter", "dlayer", "none"])
def test_slice_weights_of_every_normalization_match_sampled_directions(norm):
    model, _, _ = tiny_network()
    draws = [torch.cat([d.reshape(-1).double() for d in axis.values()])
             for seed in range(1000) for axis in random_directions(model, seed=seed, norm=norm).axes()]
    second_moment = torch.stack(draws).pow(2).mean(dim=0)
    variances, _ = slice_curvature_weights(model, norm, "biasbn")
    expected = torch.cat([v.reshape(-1) for v in variances.values()])
    assert torch.allclose(second_moment, expected, rtol=0.25, atol=1e-12)


def test_surface_examples_are_the_surfaces_own():
    model, _, _ = tiny_network()
    x, y = torch.randn(50, 4, dtype=torch.float64), torch.randint(0, 3, (50,))
    surface = compute_surface(model, x, y, random_directions(model, seed=0), [-0.1, 0.0, 0.1], n_examples=7,
                              seed=5, progress=False, device="cpu")
    chosen_x, chosen_y = surface_examples(surface, x, y)
    index = torch.from_numpy(select_examples(50, 7, 5))
    assert torch.equal(chosen_x, x[index]) and torch.equal(chosen_y, y[index])
    with pytest.raises(ValueError, match="example_indices"):
        surface_examples(surface, x[:40], y[:40])
