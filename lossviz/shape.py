"""Shape metrics of a loss landscape: numbers that say how deep, flat, curved and convex a minimizer is.

From a `Surface` (no model needed): loss at the centre, depth (max − min inside the clip disk), flatness
(fraction of the disk within `flat_tolerance` of the centre loss), curvature at the centre from finite
differences of the surface, and the fraction of locally convex points (2×2 finite-difference Hessian
positive semi-definite; second difference ≥ 0 in 1-D).
On an adaptive surface (`lossviz.adaptive`) some inputs are interpolated, not evaluated: `interpolated_fraction`
(of the points in the disk), `centre_stencil_interpolated` and `convex_stencils_interpolated` (of the
finite-difference stencils behind the centre curvature and the convex fraction) say how many. Second differences
of interpolated points are those of the interpolation: read curvature and convexity there as estimates.
Measures that need the model itself (the Hessian at θ*) are in `lossviz.curvature`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from lossviz.surface import Surface, clip_radius_of, outside_radius


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


def _interpolated_inputs(surface: Surface, inside: np.ndarray, centre: tuple[int, ...],
                         valid: np.ndarray) -> dict[str, float]:
    """Which inputs of the metrics were interpolated: fractions of the points in the disk, of the centre's
    finite-difference stencil (the point and its neighbours) and of the convexity stencils with any
    interpolated point. All 0 for a fully evaluated surface."""
    if surface.interpolated is None:
        return {"interpolated_fraction": 0.0, "centre_stencil_interpolated": 0.0, "convex_stencils_interpolated": 0.0}
    flags = np.asarray(surface.interpolated, bool)
    # A point's stencil: itself and its neighbours at ±1 along each axis (and the diagonals in 2-D).
    padded = np.pad(flags, 1)
    shifts = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)] if flags.ndim == 2 else [(d,) for d in (-1, 0, 1)]
    touched = np.zeros_like(flags)
    for shift in shifts:
        touched |= padded[tuple(slice(1 + d, 1 + d + n) for d, n in zip(shift, flags.shape, strict=True))]
    stencil = tuple(slice(max(i - 1, 0), i + 2) for i in centre)
    return {
        "interpolated_fraction": float(flags[inside].mean()) if inside.any() else 0.0,
        "centre_stencil_interpolated": float(flags[stencil].mean()),
        "convex_stencils_interpolated": float(touched[valid].mean()) if valid.any() else 0.0,
    }


def surface_metrics(surface: Surface, clip_radius: float | None = None,
                    flat_tolerance: float = 0.1) -> dict[str, Any]:
    """Shape metrics of a surface (see the module docstring). `clip_radius` defaults to the surface's own
    clip radius, else LossPlot's; `flat_tolerance` is in loss units."""
    radius = clip_radius_of(surface, clip_radius)
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
        **_interpolated_inputs(surface, inside, centre, valid),
    }
