"""Curvature of the loss at given weights, measured on a fixed example subset (the surface's own).

Owns the Hessian of the mean loss over the model's parameters as a matrix-free operator
(`HessianVectorProduct`), and what is measured through it:

- `lanczos_extremes`: the largest and smallest Hessian eigenvalues with their eigenvectors (Lanczos),
  each with its Ritz residual ‖Hv − λv‖ (some eigenvalue lies within that distance of λ);
- `hessian_trace`: tr(H) by Hutch++ (Meyer et al. 2021; Hutchinson below 9 products), with the standard
  error over its probes;
- `spectral_density`: the eigenvalue density by stochastic Lanczos quadrature (Ghorbani et al. 2019),
  with its spread over probe vectors;
- `hessian_metrics`: the numbers the batch-size study reports (top eigenvalues, λ_min, trace);
- `expected_slice_curvature`: Böttcher & Wheeler's (2022) link between a random slice of the landscape
  and the Hessian: the expected curvature at the centre of a slice along a random direction drawn as
  `lossviz.directions.random_directions` draws it is tr(D·H) (+ a fixed part), D = E[δδᵀ] (see
  `slice_curvature_weights` for D under each normalization);
- `hessian_directions`: plot axes along Hessian eigenvectors (top-1/top-2, or the most negative);
- `curvature_map`: Li et al.'s convexity maps, λ_min and λ_max of the full Hessian at every point of a
  (coarse) grid of a plot plane, and |λ_min/λ_max|.

The Krylov and stochastic algorithms are hessian-eigenthings' (a maintained library: seeded Lanczos with
full reorthogonalization, Hutch++ with its standard error, SLQ with per-probe nodes and weights). The
Hessian-vector product is our own double backpropagation through a gradient graph built once per weight
vector: on lenet5 at 250 examples it costs about two thirds of the library operators' products, which
rebuild the forward pass for every product (benchmarks/bench_curvature.py measures both).

Models are evaluated in eval mode (BatchNorm running statistics, dropout off), as the surface is, through
`torch.func.functional_call`: the model's own tensors and training flag are left as they were.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from hessian_eigenthings import CurvatureOperator, hutch_plus_plus, hutchinson, lanczos_tridiagonal
from hessian_eigenthings import spectral_density as slq_spectral_density
from torch import nn
from torch.func import functional_call
from tqdm.auto import tqdm

from lossviz.directions import Directions, model_tensors, random_directions, vector_directions
from lossviz.engine import grid_points
from lossviz.options import IGNORES, NORMS
from lossviz.surface import Surface, outside_radius
from lossviz.tasks import LossFn, cross_entropy_per_example, select_examples

Vector = torch.Tensor  # a flat vector over the Hessian's parameters, in `named_parameters()` order


# ------------------------------------------------------------------------------------ the operator

class HessianVectorProduct(CurvatureOperator):
    """v ↦ H·v, H the Hessian of the mean of `loss_fn(model(inputs), targets)` over the model's
    parameters (all, or those in `names`), at the model's weights or at the tensors in `at` (name →
    tensor, e.g. θ* + αδ + βη; buffers too, for directions in "states" mode).

    The model runs once, in eval mode, and the gradient graph is kept: each product is one double
    backward. `products` counts them. Vectors are flat (`matvec`, the hessian-eigenthings interface) or
    lists of per-parameter tensors (`apply`)."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                 loss_fn: LossFn = cross_entropy_per_example, names: Sequence[str] | None = None,
                 at: Mapping[str, torch.Tensor] | None = None):
        parameters = dict(model.named_parameters())
        self.names = list(names) if names is not None else list(parameters)
        unknown = [name for name in self.names if name not in parameters]
        if unknown:
            raise ValueError(f"names {unknown[:3]} are not parameters of the model; allowed: parameter names "
                             "of model.named_parameters()")
        tensors = {**dict(model.named_buffers()), **{name: p.detach() for name, p in parameters.items()}}
        if at is not None:
            foreign = [name for name in at if name not in tensors]
            if foreign:
                raise ValueError(f"`at` names {foreign[:3]} are neither parameters nor buffers of the model")
            tensors.update({name: tensor.detach() for name, tensor in at.items()})
        self.leaves = [tensors[name].detach().requires_grad_(True) for name in self.names]
        tensors.update(zip(self.names, self.leaves, strict=True))
        self.shapes = [leaf.shape for leaf in self.leaves]
        self.sizes = [leaf.numel() for leaf in self.leaves]
        self.products = 0
        was_training = model.training
        model.eval()
        try:
            with torch.enable_grad():
                per_example = loss_fn(functional_call(model, tensors, (inputs,)), targets)
                if per_example.dim() != 1:
                    raise ValueError("loss_fn must return one loss per example (e.g. reduction='none')")
                self.loss = per_example.mean()
                gradients = torch.autograd.grad(self.loss, self.leaves, create_graph=True, allow_unused=True)
        finally:
            model.train(was_training)
        # A gradient that does not depend on the weights has a zero row (and, H being symmetric, column).
        self._live = [i for i, g in enumerate(gradients) if g is not None and g.requires_grad]
        self._gradients = [gradients[i] for i in self._live]

    @property
    def size(self) -> int:
        return sum(self.sizes)

    @property
    def device(self) -> torch.device:
        return self.leaves[0].device

    @property
    def dtype(self) -> torch.dtype:
        return self.leaves[0].dtype

    def apply(self, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """H·v for v given per parameter (shapes of the parameters), the result likewise."""
        self.products += 1
        if not self._gradients:
            return [torch.zeros_like(leaf) for leaf in self.leaves]
        vectors = [v.to(device=self.device, dtype=self.dtype) for v in vectors]
        products = torch.autograd.grad(self._gradients, self.leaves,
                                       grad_outputs=[vectors[i] for i in self._live],
                                       retain_graph=True, allow_unused=True)
        return [torch.zeros_like(leaf) if p is None else p.detach() for p, leaf in zip(products, self.leaves,
                                                                                      strict=True)]

    def matvec(self, v: Vector) -> Vector:
        if v.shape != (self.size,):
            raise ValueError(f"expected a flat vector of {self.size} entries, got shape {tuple(v.shape)}")
        return self.flatten(self.apply(self.split(v)))

    def split(self, v: Vector) -> list[torch.Tensor]:
        return [piece.reshape(shape) for piece, shape in zip(v.split(self.sizes), self.shapes, strict=True)]

    def flatten(self, tensors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> Vector:
        if isinstance(tensors, Mapping):
            tensors = [tensors[name] for name in self.names]
        return torch.cat([t.reshape(-1).to(device=self.device, dtype=self.dtype) for t in tensors])

    def unflatten(self, v: Vector) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, self.split(v), strict=True))


class _ScaledOperator(CurvatureOperator):
    """S·H·S for a diagonal S (a flat vector): the Hessian seen through a direction distribution."""

    def __init__(self, hessian: HessianVectorProduct, scale: Vector):
        self.hessian, self.scale = hessian, scale

    @property
    def size(self) -> int:
        return self.hessian.size

    @property
    def device(self) -> torch.device:
        return self.hessian.device

    @property
    def dtype(self) -> torch.dtype:
        return self.hessian.dtype

    def matvec(self, v: Vector) -> Vector:
        return self.scale * self.hessian.matvec(self.scale * v)


def surface_examples(surface: Surface, inputs: torch.Tensor, targets: torch.Tensor
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The examples a surface was computed on, taken from the split it was drawn from (the same subset
    `lossviz.engine.select_examples` drew with the surface's seed and n; refused if it is not)."""
    indices = np.asarray(surface.example_indices, dtype=np.int64)
    seed, n = surface.meta.get("seed"), surface.meta.get("n_examples")
    if seed is not None and n is not None:
        expected = select_examples(len(targets), int(n), int(seed))
        if not np.array_equal(expected, indices):
            raise ValueError(f"the surface's example_indices are not select_examples({len(targets)}, n={n}, "
                             f"seed={seed}): pass the split the surface was computed on")
    index = torch.from_numpy(indices)
    return inputs[index], targets[index]


# ------------------------------------------------------------------------------------ eigenvalues

@dataclass(frozen=True)
class Eigenpairs:
    """Extreme Ritz pairs of one Lanczos run. `top` descends from the largest eigenvalue, `bottom`
    ascends from the smallest; vectors are unit rows (k, n); residuals are ‖Hv − λv‖, measured (one more
    product per pair), so they include the rounding of the products. `products` counts every product."""

    top: np.ndarray
    top_residuals: np.ndarray
    top_vectors: torch.Tensor
    bottom: np.ndarray
    bottom_residuals: np.ndarray
    bottom_vectors: torch.Tensor
    steps: int
    products: int


def lanczos_extremes(operator: CurvatureOperator, steps: int = 30, top_k: int = 1, bottom_k: int = 1,
                     seed: int = 0) -> Eigenpairs:
    """The `top_k` largest and `bottom_k` smallest eigenpairs from one Lanczos run of `steps` products
    (hessian-eigenthings' `lanczos_tridiagonal`, full reorthogonalization) started from a seeded Gaussian
    vector, plus one product per returned pair to measure its residual. Both ends of the spectrum converge
    first, so one Krylov space serves both. An eigenvalue of H lies within the residual of each returned
    value (H symmetric); a residual far below the gap to the next eigenvalue means the pair has converged.
    (The tridiagonal's own estimate |β_m·s_m| assumes exact products and reads 0 in float32: not used.)"""
    if steps < 1:
        raise ValueError(f"steps={steps} is not valid; allowed: an integer >= 1")
    if top_k < 0 or bottom_k < 0 or top_k + bottom_k == 0:
        raise ValueError(f"top_k={top_k}, bottom_k={bottom_k}: allowed: integers >= 0, not both 0")
    steps = min(steps, operator.size)
    start = torch.randn(operator.size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    before = getattr(operator, "products", 0)
    krylov = lanczos_tridiagonal(operator, start.to(device=operator.device, dtype=operator.dtype), steps,
                                 reorthogonalize=True)
    size = krylov.alphas.numel()
    tridiagonal = torch.diag(krylov.alphas.double().cpu())
    if size > 1:
        off = krylov.betas[:size - 1].double().cpu()
        tridiagonal += torch.diag(off, 1) + torch.diag(off, -1)
    theta, s = torch.linalg.eigh(tridiagonal)
    basis = torch.stack(krylov.basis[:size]).to(torch.float64)  # (m, n)

    def pairs(order: torch.Tensor) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        vectors = (s[:, order].T.to(basis.device) @ basis)
        vectors = (vectors / vectors.norm(dim=1, keepdim=True).clamp_min(1e-300)).to(operator.dtype)
        values = theta[order].numpy()
        residuals = np.array([float((operator.matvec(v).double() - value * v.double()).norm())
                              for v, value in zip(vectors, values, strict=True)])
        return values, residuals, vectors

    top = pairs(torch.argsort(theta, descending=True)[:top_k])
    bottom = pairs(torch.argsort(theta)[:bottom_k])
    return Eigenpairs(*top, *bottom, steps=krylov.iterations, products=getattr(
        operator, "products", before + krylov.iterations + len(top[0]) + len(bottom[0])) - before)


def _fix_sign(vector: Vector) -> Vector:
    """An eigenvector's sign is arbitrary: make its largest-magnitude entry positive (as PCA directions)."""
    return -vector if vector[vector.abs().argmax()] < 0 else vector


# ------------------------------------------------------------------------------------ trace and density

# Below this many products Hutch++ has fewer than 3 residual probes: Hutchinson with them all is steadier.
HUTCHPP_FROM_MATVECS = 9


@dataclass(frozen=True)
class TraceEstimate:
    estimate: float
    standard_error: float  # over the (residual) probes; for Hutch++ the sketch's part of the trace is exact
    products: int
    method: str  # "hutch++" or "hutchinson"


def hessian_trace(operator: CurvatureOperator, matvecs: int = 30, seed: int = 0) -> TraceEstimate:
    """tr(H) from `matvecs` products, unbiased, with its standard error.

    From HUTCHPP_FROM_MATVECS products on, Hutch++ (Meyer, Musco, Musco & Woodruff 2021; hessian-eigenthings'
    `hutch_plus_plus`, which uses matvecs rounded down to a multiple of 3): a third of the products sketch the
    dominant subspace, whose trace is then exact, a third evaluate it, the last third estimate the rest with
    Rademacher probes. On a spectrum with a few large eigenvalues (a trained network's Hessian) its spread is
    a third of Hutchinson's at 30 products (benchmarks/bench_curvature.py). Below that, Hutchinson with
    Rademacher probes (hessian-eigenthings' `hutchinson`): a one-vector sketch removes almost nothing from a
    large Hessian and leaves a single residual probe, several times Hutchinson's variance at the same cost."""
    if matvecs < 2:
        raise ValueError(f"matvecs={matvecs} is not valid; allowed: an integer >= 2 (Hutch++ from "
                         f"{HUTCHPP_FROM_MATVECS}, a multiple of 3 is used in full)")
    before = getattr(operator, "products", 0)
    if matvecs < HUTCHPP_FROM_MATVECS:
        result, method, expected = hutchinson(operator, num_samples=matvecs, seed=seed), "hutchinson", matvecs
    else:
        result, method = hutch_plus_plus(operator, num_matvecs=matvecs, seed=seed), "hutch++"
        expected = 3 * (matvecs // 3)
    used = getattr(operator, "products", before + expected) - before
    return TraceEstimate(float(result.estimate), float(result.stderr), used, method)


@dataclass(frozen=True)
class SpectralDensity:
    """The eigenvalue density φ(t) = (1/n) Σ δ(t − λ_i), Gaussian-smoothed with width `sigma`, on `grid`:
    the mean over probe runs (`density`) and its standard deviation across runs (`density_std`). `nodes` and
    `weights` (runs, steps) are each run's quadrature: the run's mass near λ is Σ weights of nodes near λ."""

    grid: np.ndarray
    density: np.ndarray
    density_std: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    products: int

    def mass(self, low: float, high: float) -> tuple[float, float]:
        """Fraction of eigenvalues in [low, high] (mean over runs) and its standard error over runs."""
        inside = np.where((self.nodes >= low) & (self.nodes <= high), self.weights, 0.0).sum(axis=1)
        spread = inside.std(ddof=1) / math.sqrt(len(inside)) if len(inside) > 1 else math.nan
        return float(inside.mean()), float(spread)


def spectral_density(operator: CurvatureOperator, runs: int = 10, steps: int = 40, seed: int = 0,
                     grid_points: int = 1000, sigma: float | None = None) -> SpectralDensity:
    """Stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Ghorbani, Krishnan & Xiao 2019;
    hessian-eigenthings' `spectral_density`): `runs` Lanczos runs of `steps` products from Rademacher
    vectors (seeds seed, seed+1, ...). `sigma` defaults to the library's spectrum range / steps."""
    if runs < 1 or steps < 1:
        raise ValueError(f"runs={runs}, steps={steps}: allowed: integers >= 1")
    steps = min(steps, operator.size)
    before = getattr(operator, "products", 0)
    result = slq_spectral_density(operator, num_runs=runs, lanczos_steps=steps, num_grid_points=grid_points,
                                  sigma=sigma, seed=seed)
    grid = result.grid.double().cpu().numpy()
    nodes = result.raw_eigenvalues.double().cpu().numpy()
    weights = result.raw_weights.double().cpu().numpy()
    kernel = np.exp(-(grid[None, :, None] - np.nan_to_num(nodes)[:, None, :]) ** 2 / (2 * result.sigma**2))
    per_run = (kernel * weights[:, None, :]).sum(axis=2) / (result.sigma * math.sqrt(2 * math.pi))
    return SpectralDensity(grid, per_run.mean(axis=0), per_run.std(axis=0, ddof=1) if runs > 1 else
                           np.full_like(grid, np.nan), nodes, weights, float(result.sigma),
                           getattr(operator, "products", before + runs * steps) - before)


# ------------------------------------------------------------------------------------ the study's numbers

def hessian_metrics(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss_fn: LossFn = cross_entropy_per_example, seed: int = 0, top_k: int = 3,
                    max_iterations: int = 30, trace_samples: int = 30) -> dict[str, Any]:
    """The Hessian at the model's weights on these examples: the `top_k` largest eigenvalues and the
    smallest from one Lanczos run of `max_iterations` steps (one Hessian-vector product each), with their
    residuals, and the trace from `trace_samples` products (`hessian_trace`: Hutch++, or Hutchinson below 9),
    with its standard error.
    `hessian_top_eigenvalue` is the largest algebraic eigenvalue (the sharpest upward curvature; the
    power iteration this replaces returned the largest in magnitude, the same at a minimum)."""
    if top_k < 1:
        raise ValueError(f"top_k={top_k} is not valid; allowed: an integer >= 1")
    started = time.perf_counter()
    hessian = HessianVectorProduct(model, inputs, targets, loss_fn)
    eigen = lanczos_extremes(hessian, max_iterations, top_k=top_k, bottom_k=1, seed=seed)
    trace = hessian_trace(hessian, trace_samples, seed)
    return {"hessian_top_eigenvalue": float(eigen.top[0]),
            "hessian_top_eigenvalues": eigen.top.tolist(),
            "hessian_top_residuals": eigen.top_residuals.tolist(),
            "hessian_min_eigenvalue": float(eigen.bottom[0]),
            "hessian_min_residual": float(eigen.bottom_residuals[0]),
            "hessian_lanczos_steps": eigen.steps,
            "hessian_trace": trace.estimate, "hessian_trace_se": trace.standard_error,
            "hessian_trace_matvecs": trace.products, "hessian_trace_method": trace.method,
            "hessian_products": hessian.products, "hessian_seconds": time.perf_counter() - started,
            "hessian_parameters": hessian.size, "hessian_n_examples": int(len(targets))}


# ------------------------------------------------------------------------------------ random slices

def slice_curvature_weights(model: nn.Module, norm: str = "filter", ignore: str = "biasbn",
                            mask: Mapping[str, torch.Tensor] | None = None
                            ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """E[δδᵀ] for δ drawn as `random_directions(model, norm=norm, ignore=ignore, mask=mask)` ("weights"
    mode) draws it: a diagonal D (returned per tensor) plus a fixed vector b (δ's deterministic part) with
    E[δδᵀ] = D + bbᵀ, so the expected centre curvature of the slice is E[δᵀHδ] = tr(D·H) + bᵀHb.

    Per tensor of 2 or more dimensions, with m the mask (ones without one), k_i the unmasked entries of
    filter i (a slice along dim 0) and K those of the tensor, a Gaussian g masked then normalized gives
      filter: δ_i = ‖w_i‖·(g⊙m)_i/‖(g⊙m)_i‖, uniform on a sphere, so D = ‖w_i‖²/k_i · m;
      layer: D = ‖W‖²/K · m;   weight: δ = w⊙g⊙m, D = w²·m;   dfilter: m/k_i;   dlayer: m/K;   none: m.
    Biases and BatchNorm (1-D): zero under ignore="biasbn"; under "none" δ = w, the fixed part b."""
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not valid; allowed: {', '.join(NORMS)}")
    if ignore not in IGNORES:
        raise ValueError(f"ignore={ignore!r} is not valid; allowed: {', '.join(IGNORES)}")
    variances, fixed = {}, {}
    for name, weight in model_tensors(model, "weights").items():
        weight = weight.detach().double()
        variance, constant = torch.zeros_like(weight), torch.zeros_like(weight)
        if weight.dim() <= 1:
            if ignore == "none":
                constant = weight.clone()
        else:
            keep = torch.ones_like(weight) if mask is None or name not in mask else \
                mask[name].detach().to(weight.device, torch.float64)
            per_filter = keep.flatten(1).sum(dim=1).clamp_min(1).view(-1, *[1] * (weight.dim() - 1))
            total = keep.sum().clamp_min(1)
            if norm == "filter":
                variance = weight.flatten(1).pow(2).sum(dim=1).view_as(per_filter) / per_filter * keep
            elif norm == "layer":
                variance = weight.pow(2).sum() / total * keep
            elif norm == "weight":
                variance = weight.pow(2) * keep
            elif norm == "dfilter":
                variance = keep / per_filter
            elif norm == "dlayer":
                variance = keep / total
            else:
                variance = keep
        variances[name], fixed[name] = variance, constant
    return variances, fixed


def expected_slice_curvature(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                             loss_fn: LossFn = cross_entropy_per_example, norm: str = "filter",
                             ignore: str = "biasbn", mask: Mapping[str, torch.Tensor] | None = None,
                             matvecs: int = 30, seed: int = 0) -> dict[str, Any]:
    """The normalized Hessian trace tr(D·H) + bᵀHb (`slice_curvature_weights`): the expected second
    derivative d²L/dα² at α = 0 of the slice L(θ + αδ) along a random direction δ drawn with these
    options (Böttcher & Wheeler 2022, "Visualizing high-dimensional loss landscapes with Hessian
    directions", worked out for our normalizations). The trace is Hutch++ on D^½·H·D^½.

    A surface's own centre curvature (`surface_metrics`' centre_curvature_xx, _yy, their mean) is a
    sample of this quantity from one or two random directions (plus finite-difference error), so it
    estimates the normalized trace, and hides any direction of negative curvature the trace averages out."""
    variances, fixed = slice_curvature_weights(model, norm, ignore, mask)
    hessian = HessianVectorProduct(model, inputs, targets, loss_fn)
    scale = hessian.flatten(variances).clamp_min(0).sqrt()
    trace = hessian_trace(_ScaledOperator(hessian, scale), matvecs, seed)
    constant = hessian.flatten(fixed)
    fixed_part = float(constant.double() @ hessian.matvec(constant).double()) if bool(constant.any()) else 0.0
    return {"expected_curvature": trace.estimate + fixed_part, "expected_curvature_se": trace.standard_error,
            "fixed_part": fixed_part, "products": hessian.products, "norm": norm, "ignore": ignore,
            "masked": mask is not None, "n_examples": int(len(targets))}


def sampled_slice_curvatures(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                             seeds: Sequence[int], loss_fn: LossFn = cross_entropy_per_example,
                             norm: str = "filter", ignore: str = "biasbn",
                             mask: Mapping[str, torch.Tensor] | None = None) -> np.ndarray:
    """δᵀHδ, the exact centre curvature of the slice, for both directions (x, then y) of
    `random_directions(model, seed, norm, ignore, mask=mask)` for every seed: (len(seeds), 2). Their mean
    is a direct Monte Carlo estimate of `expected_slice_curvature`."""
    hessian = HessianVectorProduct(model, inputs, targets, loss_fn)
    values = []
    for seed in seeds:
        directions = random_directions(model, seed=seed, norm=norm, ignore=ignore, mask=mask)
        row = []
        for axis in directions.axes():
            delta = hessian.flatten(axis)
            row.append(float(delta.double() @ hessian.matvec(delta).double()))
        values.append(row)
    return np.asarray(values, dtype=np.float64)


# ------------------------------------------------------------------------------------ eigen-directions

_WHICH = re.compile(r"^(top(?P<k>[1-9][0-9]*)|min)$")


def hessian_directions(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                       loss_fn: LossFn = cross_entropy_per_example, which: Sequence[str] = ("top1", "top2"),
                       steps: int = 30, seed: int = 0, norm: str = "none", ignore: str = "none") -> Directions:
    """Plot axes along Hessian eigenvectors at the model's weights, on these examples (give the surface's):
    `which` names one or two of "top1", "top2", … (largest eigenvalues) and "min" (the smallest: the most
    negative where H has negative eigenvalues),
    e.g. ("top1", "top2") for the plane of sharpest curvature or ("top1", "min") for a saddle's plane.

    Filter normalization is OFF by default (norm="none", ignore="none"): the axes are then unit
    eigenvectors, the slice's curvature at the centre is exactly the eigenvalue, L(θ + αv) ≈ L(θ) + ½λα²,
    and α is a distance in weight space (choose the grid extent from λ, e.g. a few multiples of 1/√λ).
    Normalizing (norm="filter", like random directions) rescales each filter, so the axes are no longer
    eigenvectors. Signs are fixed (largest-magnitude entry positive). meta: kind "hessian", which, the
    eigenvalues and their residuals ‖Hv − λv‖, steps, seed, n_examples."""
    which = list(which)
    if not 1 <= len(which) <= 2 or len(set(which)) != len(which) or not all(_WHICH.match(w) for w in which):
        raise ValueError(f"which={tuple(which)!r} is not valid; allowed: one or two distinct names among "
                         "'top1', 'top2', … and 'min'")
    top_k = max([int(w[3:]) for w in which if w.startswith("top")], default=0)
    hessian = HessianVectorProduct(model, inputs, targets, loss_fn)
    eigen = lanczos_extremes(hessian, max(steps, top_k + 1), top_k=top_k, bottom_k=1 if "min" in which else 0,
                             seed=seed)
    vectors, eigenvalues, residuals = [], [], []
    for name in which:
        if name == "min":
            vector, value, residual = eigen.bottom_vectors[0], eigen.bottom[0], eigen.bottom_residuals[0]
        else:
            k = int(name[3:]) - 1
            if k >= len(eigen.top):
                raise ValueError(f"which={name!r}: Lanczos found only {len(eigen.top)} eigenpairs in {steps} "
                                 "steps; raise steps")
            vector, value, residual = eigen.top_vectors[k], eigen.top[k], eigen.top_residuals[k]
        vectors.append(hessian.unflatten(_fix_sign(vector)))
        eigenvalues.append(float(value))
        residuals.append(float(residual))
    meta = {"kind": "hessian", "which": which, "eigenvalues": eigenvalues, "residuals": residuals,
            "lanczos_steps": eigen.steps, "seed": seed, "n_examples": int(len(targets))}
    return vector_directions(model, vectors, meta, norm=norm, ignore=ignore)


# ------------------------------------------------------------------------------------ curvature maps

@dataclass
class CurvatureMap:
    """λ_min and λ_max of the full Hessian at every point θ + αδ + βη of a grid (arrays (ny, nx), or (nx,)
    for one direction; NaN where clipped), with their measured residuals: Li et al.'s (2018) convexity
    maps, which the official tool computes with scipy's eigsh."""

    xs: np.ndarray
    ys: np.ndarray | None
    min_eigenvalue: np.ndarray
    max_eigenvalue: np.ndarray
    min_residual: np.ndarray
    max_residual: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> np.ndarray:
        """|λ_min / λ_max|: near 0 where the landscape is locally convex, large where it is not."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(self.min_eigenvalue / self.max_eigenvalue)


def curvature_map(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, directions: Directions,
                  xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray | None = None,
                  loss_fn: LossFn = cross_entropy_per_example, steps: int = 20, seed: int = 0,
                  clip_radius: float | None = None, progress: bool = True) -> CurvatureMap:
    """The extreme Hessian eigenvalues over a (coarse) grid of the plane of `directions`, on these examples
    (give the surface's, `surface_examples`). Each point costs one Lanczos run of `steps` products."""
    xs = np.asarray(xs, dtype=np.float64).ravel()
    ys = None if ys is None else np.asarray(ys, dtype=np.float64).ravel()
    if ys is not None and directions.y is None:
        raise ValueError("a 2-D curvature map (ys given) needs two directions; these have no y direction")
    base = model_tensors(model, directions.mode)
    for axis in directions.axes():
        for name, tensor in axis.items():
            if name not in base or tuple(base[name].shape) != tuple(tensor.shape):
                raise ValueError(f"direction {name!r} does not fit the model's {directions.mode} tensors")
    moving = [name for name in base if base[name].is_floating_point()
              and any(bool(axis[name].any()) for axis in directions.axes())]
    alphas, betas = grid_points(xs, ys)
    clipped = outside_radius(alphas, None if ys is None else betas, clip_radius) if clip_radius is not None \
        else np.zeros(len(alphas), dtype=bool)
    shape = (len(xs),) if ys is None else (len(ys), len(xs))
    arrays = {key: np.full(shape, np.nan) for key in ("min", "max", "min_res", "max_res")}
    products, started = 0, time.perf_counter()
    for flat in tqdm(np.flatnonzero(~clipped), unit="pt", desc="curvature map", disable=not progress):
        alpha, beta = float(alphas[flat]), float(betas[flat])
        at = {}
        for name in moving:
            step = alpha * directions.x[name]
            if directions.y is not None and ys is not None:
                step = step + beta * directions.y[name]
            at[name] = base[name] + step.to(device=base[name].device, dtype=base[name].dtype)
        hessian = HessianVectorProduct(model, inputs, targets, loss_fn, at=at)
        eigen = lanczos_extremes(hessian, steps, top_k=1, bottom_k=1, seed=seed)
        for key, value in (("min", eigen.bottom[0]), ("max", eigen.top[0]),
                           ("min_res", eigen.bottom_residuals[0]), ("max_res", eigen.top_residuals[0])):
            arrays[key].flat[flat] = value
        products += hessian.products
    meta = {"steps": steps, "seed": seed, "n_examples": int(len(targets)), "products": products,
            "seconds": time.perf_counter() - started, "clip_radius": clip_radius,
            "direction_kind": directions.meta.get("kind"), "mode": directions.mode}
    return CurvatureMap(xs, ys, arrays["min"], arrays["max"], arrays["min_res"], arrays["max_res"], meta)
