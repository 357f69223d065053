"""Shape metrics of a loss landscape: numbers that say how deep, flat, curved and convex a minimizer is.

From a `Surface` (no model needed): loss at the centre, depth (max − min inside the clip disk), flatness
(fraction of the disk within `flat_tolerance` of the centre loss), curvature at the centre from finite
differences of the surface, and the fraction of locally convex points (2×2 finite-difference Hessian
positive semi-definite; second difference ≥ 0 in 1-D).
From the model at θ*: the top Hessian eigenvalue (power iteration) and the Hessian trace (Hutchinson),
both from Hessian-vector products on the same examples as the surface.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from lossviz.engine import LossFn, cross_entropy_per_example
from lossviz.surface import Surface, outside_radius


def default_clip_radius(surface: Surface) -> float:
    """LossPlot's and the seed paper's clip: half the larger axis span."""
    spans = [np.ptp(surface.xs)] + ([np.ptp(surface.ys)] if surface.is_2d else [])
    return float(max(spans)) / 2


def _centre_index(surface: Surface) -> tuple[int, ...]:
    ix = int(np.argmin(np.abs(surface.xs)))
    return (int(np.argmin(np.abs(surface.ys))), ix) if surface.is_2d else (ix,)


def _second_differences(surface: Surface) -> dict[str, np.ndarray]:
    """Central second differences at interior points (NaN at the border): d²L/dα², d²L/dβ², d²L/dαdβ.
    Grids must be uniform (they are: linspace)."""
    loss = np.asarray(surface.loss, dtype=np.float64)
    hx = float(surface.xs[1] - surface.xs[0]) if len(surface.xs) > 1 else math.nan
    if not surface.is_2d:
        dxx = np.full_like(loss, np.nan)
        dxx[1:-1] = (loss[2:] - 2 * loss[1:-1] + loss[:-2]) / hx**2
        return {"xx": dxx}
    hy = float(surface.ys[1] - surface.ys[0]) if len(surface.ys) > 1 else math.nan
    dxx, dyy, dxy = (np.full_like(loss, np.nan) for _ in range(3))
    dxx[:, 1:-1] = (loss[:, 2:] - 2 * loss[:, 1:-1] + loss[:, :-2]) / hx**2
    dyy[1:-1, :] = (loss[2:, :] - 2 * loss[1:-1, :] + loss[:-2, :]) / hy**2
    dxy[1:-1, 1:-1] = (loss[2:, 2:] - loss[2:, :-2] - loss[:-2, 2:] + loss[:-2, :-2]) / (4 * hx * hy)
    return {"xx": dxx, "yy": dyy, "xy": dxy}


def surface_metrics(surface: Surface, clip_radius: float | None = None,
                    flat_tolerance: float = 0.1) -> dict[str, Any]:
    """Shape metrics of a surface (see the module docstring). `clip_radius` defaults to the surface's own
    clip radius, else LossPlot's; `flat_tolerance` is in loss units."""
    radius = clip_radius if clip_radius is not None else (
        surface.meta.get("clip_radius") or default_clip_radius(surface))
    loss = np.asarray(surface.loss, dtype=np.float64)
    alpha, beta = surface.coordinates()
    inside = ~outside_radius(alpha, beta, radius) & np.isfinite(loss)
    centre = _centre_index(surface)
    centre_loss = float(loss[centre])
    values = loss[inside]
    second = _second_differences(surface)
    if surface.is_2d:
        hessians = np.stack([np.stack([second["xx"], second["xy"]], -1),
                             np.stack([second["xy"], second["yy"]], -1)], -2)  # (ny, nx, 2, 2)
        valid = inside & np.isfinite(hessians).all(axis=(-1, -2))
        eigen = np.full(loss.shape + (2,), np.nan)
        eigen[valid] = np.linalg.eigvalsh(hessians[valid])
        convex = eigen[valid].min(axis=-1) >= 0
        centre_eigen = eigen[centre]
        curvature = {"centre_curvature_xx": float(second["xx"][centre]),
                     "centre_curvature_yy": float(second["yy"][centre]),
                     "centre_curvature_xy": float(second["xy"][centre]),
                     "centre_curvature_min": float(centre_eigen[0]),
                     "centre_curvature_max": float(centre_eigen[1]),
                     "centre_curvature_mean": float(np.mean(centre_eigen))}
    else:
        valid = inside & np.isfinite(second["xx"])
        convex = second["xx"][valid] >= 0
        curvature = {"centre_curvature_xx": float(second["xx"][centre]),
                     "centre_curvature_mean": float(second["xx"][centre])}
    return {
        "centre": [float(surface.xs[centre[-1]])] + ([float(surface.ys[centre[0]])] if surface.is_2d else []),
        "centre_loss": centre_loss,
        "clip_radius": float(radius),
        "n_points_in_disk": int(inside.sum()),
        "min_loss": float(values.min()) if values.size else math.nan,
        "max_loss": float(values.max()) if values.size else math.nan,
        "depth": float(values.max() - values.min()) if values.size else math.nan,
        "flat_tolerance": flat_tolerance,
        "flatness": float(np.mean(np.abs(values - centre_loss) <= flat_tolerance)) if values.size else math.nan,
        **curvature,
        "convex_fraction": float(convex.mean()) if convex.size else math.nan,
    }


# -------------------------------------------------------------------------------- Hessian of the loss

class HessianVectorProduct:
    """v ↦ H·v for the mean loss of `model` (eval mode) on fixed examples, over its parameters."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                 loss_fn: LossFn = cross_entropy_per_example, names: Sequence[str] | None = None):
        named = dict(model.named_parameters())
        self.names = list(names) if names is not None else list(named)
        self.params = [named[name] for name in self.names]
        loss = loss_fn(model(inputs), targets).mean()
        self.gradients = torch.autograd.grad(loss, self.params, create_graph=True)

    def __call__(self, vectors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        products = torch.autograd.grad(self.gradients, self.params, grad_outputs=list(vectors),
                                       retain_graph=True)
        return [p.detach() for p in products]


def _dot(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    return float(sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True)))


def hessian_metrics(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                    loss_fn: LossFn = cross_entropy_per_example, seed: int = 0, max_iterations: int = 100,
                    tolerance: float = 1e-4, trace_samples: int = 100) -> dict[str, float]:
    """Top Hessian eigenvalue (power iteration: the eigenvalue of largest magnitude, as PyHessian) and
    Hutchinson's trace estimate with Rademacher vectors (its standard error too), at the model's weights.
    The model is evaluated in eval mode and left as it was."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    try:
        hvp = HessianVectorProduct(model, inputs, targets, loss_fn)
        shapes = [p.shape for p in hvp.params]
        device, dtype = hvp.params[0].device, hvp.params[0].dtype

        def random_vector(rademacher: bool) -> list[torch.Tensor]:
            draws = [torch.randn(s, generator=generator, dtype=dtype) for s in shapes]
            if rademacher:
                draws = [torch.where(d >= 0, 1.0, -1.0).to(dtype) for d in draws]
            return [d.to(device) for d in draws]

        vector = random_vector(False)
        norm = math.sqrt(_dot(vector, vector))
        vector = [v / norm for v in vector]
        eigenvalue, iterations = math.nan, 0
        for iterations in range(1, max_iterations + 1):  # noqa: B007 (reported below)
            product = hvp(vector)
            new_eigenvalue = _dot(vector, product)
            norm = math.sqrt(_dot(product, product))
            if norm == 0:
                new_eigenvalue = 0.0
                break
            vector = [p / norm for p in product]
            converged = not math.isnan(eigenvalue) and abs(new_eigenvalue - eigenvalue) <= tolerance * (
                abs(eigenvalue) + 1e-12)
            eigenvalue = new_eigenvalue
            if converged:
                break
        eigenvalue = new_eigenvalue
        samples = []
        for _ in range(trace_samples):
            probe = random_vector(True)
            samples.append(_dot(probe, hvp(probe)))
        samples_array = np.asarray(samples)
        trace_se = float(samples_array.std(ddof=1) / math.sqrt(len(samples))) if len(samples) > 1 else math.nan
        return {"hessian_top_eigenvalue": float(eigenvalue), "hessian_power_iterations": iterations,
                "hessian_trace": float(samples_array.mean()), "hessian_trace_se": trace_se,
                "hessian_trace_samples": trace_samples, "hessian_n_examples": int(len(targets))}
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
