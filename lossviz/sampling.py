"""How many evaluation examples a surface needs.

Owns the two answers to that question:

- the sample-size study (the seed paper's Figures 2–3): surfaces of one model along the same directions at
  several numbers of examples n, each compared with the largest: `compare_sample_sizes` (Pearson and RMSE of
  ln(loss), argmin distance, mean standard error, wall time, speed-up), drawn by `lossviz.figures.sample_size_figure`;
- the adaptive choice, `n_examples="auto"` in `compute_surface` (this module's, which `lossviz.compute_surface`
  is: the engine's plus "auto"): evaluate a coarse pilot grid at increasing
  n and take the smallest n whose worst per-point standard error of ln(loss) inside the clip disk is below
  a tolerance (`choose_n_examples`, `adaptive_surface`, configured by `AutoExamples`).

The standard error of ln(loss) at a point is the delta-method value se(loss) / loss, i.e. the loss's
relative standard error: 0.05 means the mean loss is known to about ±5 %. The candidate subsets are the
engine's seeded subsets, which are nested (the first n of one seeded permutation), so a larger n only adds
examples to a smaller one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lossviz import distributed, engine
from lossviz.directions import Directions
from lossviz.engine import make_evaluator
from lossviz.inputs import count_examples
from lossviz.stats import finite_or_none, surface_fidelity
from lossviz.surface import Surface, clip_radius_of, default_clip_radius, half_span_radius, outside_radius
from lossviz.tasks import LossFn, Task, cross_entropy_per_example, select_examples

DEFAULT_TOLERANCE = 0.05
DEFAULT_CANDIDATES = (10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000)
DEFAULT_PILOT_POINTS = 7


@dataclass(frozen=True)
class AutoExamples:
    """Settings of `n_examples="auto"`: pass an instance as `compute_surface(..., n_examples=AutoExamples(...))`.

    tolerance     the largest acceptable worst-point standard error of ln(loss) inside the clip disk
    candidates    the numbers of examples tried, smallest first (capped at the examples available)
    pilot_points  points per axis of the pilot grid, spanning the same ranges as the surface's grid
    """

    tolerance: float = DEFAULT_TOLERANCE
    candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    pilot_points: int = DEFAULT_PILOT_POINTS

    def __post_init__(self) -> None:
        if not (isinstance(self.tolerance, int | float) and math.isfinite(self.tolerance) and self.tolerance > 0):
            raise ValueError(f"tolerance={self.tolerance!r} must be a positive number (a standard error of ln(loss))")
        candidates = tuple(int(n) for n in self.candidates)
        if not candidates or any(n < 2 for n in candidates) or list(candidates) != sorted(set(candidates)):
            raise ValueError(f"candidates={self.candidates!r} must be increasing integers of at least 2 "
                             "(one example has no standard error)")
        object.__setattr__(self, "candidates", candidates)
        if int(self.pilot_points) != self.pilot_points or self.pilot_points < 2:
            raise ValueError(f"pilot_points={self.pilot_points!r} must be an integer of at least 2")


def as_auto(n_examples: Any) -> AutoExamples:
    """"auto" → the default settings; an AutoExamples passes through; anything else is an error."""
    if isinstance(n_examples, AutoExamples):
        return n_examples
    if n_examples == "auto":
        return AutoExamples()
    raise ValueError(f"n_examples={n_examples!r} is not valid; expected a positive integer, None (all examples), "
                     "'auto' or lossviz.sampling.AutoExamples(...)")


@dataclass(frozen=True)
class SampleSizeChoice:
    """The outcome of the pilot: the chosen n and the worst pilot error of every n tried."""

    n_examples: int
    tolerance: float
    max_ln_loss_se: float              # the worst pilot error at the chosen n
    met: bool                          # False: no candidate met the tolerance, the largest was taken
    trials: tuple[tuple[int, float], ...] = field(default=())  # (n, worst pilot error), in the order tried

    def meta(self) -> dict[str, Any]:
        """The entries stored in the surface's metadata."""
        return {"n_examples_auto": True, "auto_tolerance": self.tolerance, "auto_tolerance_met": self.met,
                "auto_pilot_max_ln_loss_se": self.max_ln_loss_se,
                "auto_pilot_trials": ", ".join(f"{n}: {se:.4g}" for n, se in self.trials)}


def ln_loss_se(surface: Surface) -> np.ndarray:
    """Per-point standard error of ln(loss), se(loss) / loss (NaN where not computed or loss is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        result = np.asarray(surface.loss_se, float) / np.asarray(surface.loss, float)
    return np.where(np.isfinite(result), result, np.nan)


def max_ln_loss_se(surface: Surface, clip_radius: float | None = None) -> float:
    """The worst standard error of ln(loss) over the computed points inside the clip disk; inf when one of
    them has none (a single example, or a zero loss)."""
    radius = clip_radius_of(surface, clip_radius)
    alpha, beta = surface.coordinates()
    inside = ~outside_radius(alpha, beta, radius) & np.isfinite(np.asarray(surface.loss, float))
    if not inside.any():
        return math.nan
    values = ln_loss_se(surface)[inside]
    return math.inf if np.isnan(values).any() else float(values.max())


def pilot_axes(xs: Sequence[float], ys: Sequence[float] | None, points: int) -> tuple[np.ndarray, np.ndarray | None]:
    """A coarse grid over the same ranges as (xs, ys)."""
    xs = np.asarray(xs, float)
    pilot_x = np.linspace(xs.min(), xs.max(), points) if len(xs) > 1 else xs
    if ys is None:
        return pilot_x, None
    ys = np.asarray(ys, float)
    return pilot_x, (np.linspace(ys.min(), ys.max(), points) if len(ys) > 1 else ys)


def effective_candidates(candidates: Sequence[int], n_available: int) -> list[int]:
    """The candidates capped at the examples available (all of them being the last resort), at least 2."""
    capped = sorted({min(int(n), n_available) for n in candidates})
    return [n for n in capped if n >= 2] or [n_available]


def choose_n_examples(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, directions: Directions,
                      xs: Sequence[float], ys: Sequence[float] | None = None, *, auto: AutoExamples | str = "auto",
                      seed: int = 0, loss_fn: LossFn | None = None, batch_size: int | None = None,
                      device: str | torch.device = "auto", clip_radius: float | None = None, method: str = "auto",
                      points_per_batch: int | None = None, progress: bool = True,
                      task: Task | str | None = None) -> SampleSizeChoice:
    """The smallest candidate n whose worst pilot-grid standard error of ln(loss) inside the clip disk
    (`clip_radius`, else half the larger axis span) is at most the tolerance; the largest candidate when none
    is. Candidates are tried smallest first, each on the same pilot grid and the engine's seeded subset, so the
    choice is deterministic and can only grow as the tolerance shrinks."""
    auto = as_auto(auto)
    xs = np.asarray(xs, float).ravel()
    ys = None if ys is None else np.asarray(ys, float).ravel()
    radius = float(clip_radius) if clip_radius is not None else half_span_radius(xs, ys)
    pilot_x, pilot_y = pilot_axes(xs, ys, auto.pilot_points)
    trials: list[tuple[int, float]] = []
    available = count_examples(inputs, targets)
    if available is None:
        raise ValueError("n_examples='auto' needs examples with a length (tensors or a map-style Dataset); give an "
                         "iterable dataset a number of examples")
    for n in effective_candidates(auto.candidates, available):
        pilot = engine.compute_surface(model, inputs, targets, directions, pilot_x, pilot_y, n_examples=n, seed=seed,
                                loss_fn=loss_fn, task=task, batch_size=batch_size, device=device, clip_radius=radius,
                                progress=progress, method=method, points_per_batch=points_per_batch)
        worst = max_ln_loss_se(pilot, radius)
        trials.append((n, worst))
        if worst <= auto.tolerance:
            return SampleSizeChoice(n, auto.tolerance, worst, True, tuple(trials))
    n, worst = trials[-1]
    return SampleSizeChoice(n, auto.tolerance, worst, False, tuple(trials))


def adaptive_surface(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, directions: Directions,
                     xs: Sequence[float], ys: Sequence[float] | None = None, auto: AutoExamples | str = "auto", *,
                     seed: int = 0, loss_fn: LossFn | None = None, batch_size: int | None = None,
                     device: str | torch.device = "auto", clip_radius: float | None = None,
                     out: str | Path | None = None, progress: bool = True, method: str = "auto",
                     points_per_batch: int | None = None, meta: dict[str, Any] | None = None,
                     adaptive: Any = None, task: Task | str | None = None) -> Surface:
    """`compute_surface(..., n_examples="auto")`: choose n on a pilot grid, then compute the surface with it.
    The surface's meta holds the chosen `n_examples`, the pilot's findings (`auto_*`) and the error achieved
    on the whole grid inside the clip disk (`auto_max_ln_loss_se`)."""
    choice = choose_n_examples(model, inputs, targets, directions, xs, ys, auto=auto, seed=seed, loss_fn=loss_fn,
                               task=task, batch_size=batch_size, device=device, clip_radius=clip_radius, method=method,
                               points_per_batch=points_per_batch, progress=progress)
    surface = engine.compute_surface(model, inputs, targets, directions, xs, ys, n_examples=choice.n_examples,
                                     seed=seed, loss_fn=loss_fn, task=task, batch_size=batch_size, device=device,
                                     clip_radius=clip_radius, out=out, progress=progress, method=method,
                                     points_per_batch=points_per_batch, meta={**(meta or {}), **choice.meta()},
                                     adaptive=adaptive)
    radius = float(clip_radius) if clip_radius is not None else default_clip_radius(surface)
    surface.meta["auto_max_ln_loss_se"] = max_ln_loss_se(surface, radius)
    if out is not None and surface.meta.get("complete"):
        surface.save(out)  # the achieved error is known only now: rewrite the file with it
    return surface


def compute_surface(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, directions: Directions,
                    xs: Sequence[float], ys: Sequence[float] | None = None,
                    n_examples: int | str | AutoExamples | None = 250, **kwargs: Any) -> Surface:
    """`lossviz.engine.compute_surface` (see it for every argument), with `n_examples` also "auto" or an
    `AutoExamples`: n is then chosen on a pilot grid first (`adaptive_surface`)."""
    if isinstance(n_examples, int | np.integer) or n_examples is None:
        return engine.compute_surface(model, inputs, targets, directions, xs, ys, n_examples=n_examples, **kwargs)
    auto = as_auto(n_examples)
    if distributed.rank() != 0:  # only rank 0 may write `out` (adaptive_surface rewrites it at the end)
        kwargs["out"] = None
    return adaptive_surface(model, inputs, targets, directions, xs, ys, auto, **kwargs)


# -- the sample-size study --------------------------------------------------------------------------------
STUDY_KEYS = ("n", "pearson_ln_loss", "rmse_ln_loss", "argmin_distance", "mean_loss_se", "mean_ln_loss_se",
              "max_ln_loss_se", "seconds", "speedup", "cpu_seconds", "cpu_speedup", "point_seconds", "point_speedup")


def _ratio(numerator: float, denominator: float) -> float | None:
    return float(numerator) / float(denominator) if denominator > 0 else None


def compare_sample_sizes(surfaces: Mapping[int, Surface], seconds: Mapping[int, float],
                         clip_radius: float | None = None,
                         cpu_seconds: Mapping[int, float] | None = None,
                         point_seconds: Mapping[int, float] | None = None) -> list[dict[str, Any]]:
    """One row per surface, smallest n first, each compared with the surface of the largest n (the reference):
    `surface_fidelity` (Pearson and RMSE of ln(loss), distance between the argmins), the mean per-point
    standard error of the loss and of ln(loss), the worst standard error of ln(loss) inside the clip disk,
    the wall time and the speed-up (reference time / this time), and with `cpu_seconds` the same in process
    CPU time (`cpu_seconds`, `cpu_speedup`), and with `point_seconds` (from `time_per_point`) the seconds per
    point and the speed-up they give (`point_seconds`, `point_speedup`: the least disturbed by other work).
    Keys are the numbers of examples the surfaces used. Values that do not exist (a standard error from one
    example) are None.

    The surfaces must share their grid and directions: the study compares samples, nothing else."""
    if not surfaces:
        raise ValueError("compare_sample_sizes needs at least one surface")
    for name, times in (("seconds", seconds), ("cpu_seconds", cpu_seconds), ("point_seconds", point_seconds)):
        if times is not None and set(surfaces) != set(times):
            raise ValueError(f"surfaces for n={sorted(surfaces)} but {name} for n={sorted(times)}")
    order = sorted(surfaces)
    reference_n = order[-1]
    reference = surfaces[reference_n]
    for n in order:
        surface = surfaces[n]
        same_grid = surface.shape == reference.shape and np.array_equal(surface.xs, reference.xs) and (
            not reference.is_2d or np.array_equal(surface.ys, reference.ys))
        if not same_grid:
            raise ValueError(f"the surface for n={n} is on another grid than the reference (n={reference_n})")
        if surface.meta.get("directions_hash") != reference.meta.get("directions_hash"):
            raise ValueError(f"the surface for n={n} uses other directions than the reference (n={reference_n})")
    rows = []
    for n in order:
        surface = surfaces[n]
        fidelity = surface_fidelity(surface.loss, reference.loss, surface.xs, surface.ys)
        computed = np.isfinite(np.asarray(surface.loss, float))
        se = np.asarray(surface.loss_se, float)[computed]
        ln_se = ln_loss_se(surface)[computed]
        rows.append({
            "n": int(n),
            **{key: finite_or_none(value) for key, value in fidelity.items()},
            "mean_loss_se": finite_or_none(float(np.mean(se))) if se.size else None,
            "mean_ln_loss_se": finite_or_none(float(np.mean(ln_se))) if ln_se.size else None,
            "max_ln_loss_se": finite_or_none(max_ln_loss_se(surface, clip_radius)),
            "seconds": float(seconds[n]),
            "speedup": _ratio(seconds[reference_n], seconds[n]),
        })
        for name, times in (("cpu", cpu_seconds), ("point", point_seconds)):
            if times is not None:
                rows[-1].update({f"{name}_seconds": float(times[n]),
                                 f"{name}_speedup": _ratio(times[reference_n], times[n])})
    return rows


def time_per_point(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, directions: Directions,
                   ns: Sequence[int], alphas: Sequence[float], betas: Sequence[float], *, rounds: int = 3,
                   seed: int = 0, loss_fn: LossFn = cross_entropy_per_example, batch_size: int | None = None,
                   device: str | torch.device = "auto", method: str = "auto") -> dict[int, float]:
    """Seconds per grid point at each n, measured as a benchmark: every evaluator is built first (not timed),
    then `rounds` rounds each evaluate the same points (α, β) at every n in turn; the fastest round counts,
    the one least disturbed by other work on the machine. The examples are the engine's seeded subsets."""
    if rounds < 1 or not len(alphas):
        raise ValueError("time_per_point needs at least one round and one point")
    evaluators = {}
    best = {n: math.inf for n in ns}
    try:
        for n in ns:
            index = torch.from_numpy(select_examples(len(targets), n, seed))
            evaluators[n] = make_evaluator(method, model, directions, inputs[index], targets[index], loss_fn,
                                           batch_size, device)
        for _ in range(rounds):
            for n, evaluator in evaluators.items():
                start = time.perf_counter()
                evaluator.evaluate_many(alphas, betas)
                best[n] = min(best[n], (time.perf_counter() - start) / len(alphas))
    finally:
        for evaluator in evaluators.values():
            evaluator.close()
    return best
