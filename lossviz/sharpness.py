"""Sharpness of a minimizer, and whether it predicts generalization across a set of trained models.

The measures (`MEASURES`; each function's docstring gives its reference and definition):
- from the surface (`lossviz.shape.surface_metrics`): depth, flatness, convex fraction and the centre
  curvature, which is Böttcher & Wheeler's (2022) two-slice estimate of the normalized Hessian trace;
- from the Hessian (`lossviz.curvature`): its top and smallest eigenvalues (Lanczos), its trace (Hutch++)
  and the normalized trace tr(D·H), the expected curvature of a random filter-normalized slice;
- by perturbing the weights: ε-sharpness (Keskar et al. 2017) and adaptive sharpness (Kwon et al. 2021).
`measure_minimizer` computes the model-side ones on the surface's examples; `sharpness_measures` picks a
study row's values from the results.

The verdict of the batch-size study (seed paper, Figure 4): the generalization gap of each model, Spearman
correlations of every measure with test error and with the gap, exact permutation p-values, exact bootstrap
intervals and Holm's correction (`lossviz.stats`), and `verdict_sentence`, what five models can and cannot
show. Models are evaluated in eval mode (BatchNorm running statistics, no dropout), as the surface is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from lossviz.curvature import expected_slice_curvature, hessian_metrics
from lossviz.stats import (
    holm_adjusted,
    null_rate_below,
    smallest_spearman_p_value,
    spearman,
    spearman_bootstrap_interval,
    spearman_p_value,
)
from lossviz.tasks import LossFn, cross_entropy_per_example

# name → (what it is, which way is "sharper"). Flatness and convex fraction grow as a minimum flattens.
MEASURES: dict[str, tuple[str, str]] = {
    "depth": ("surface max − min loss inside the clip disk", "larger is sharper"),
    "flatness": ("fraction of the disk within flat_tolerance of the centre loss", "larger is flatter"),
    "centre_curvature": ("mean eigenvalue of the surface's 2×2 finite-difference Hessian at the centre (two "
                         "random slices: Böttcher & Wheeler's estimate of normalized_trace)", "larger is sharper"),
    "convex_fraction": ("fraction of disk points whose 2×2 surface Hessian is positive semi-definite",
                        "larger is more convex"),
    "hessian_top_eigenvalue": ("largest eigenvalue of the loss Hessian at the weights (Lanczos)",
                               "larger is sharper"),
    "hessian_trace": ("trace of the loss Hessian at the weights (Hutch++)", "larger is sharper"),
    "hessian_min_eigenvalue": ("smallest eigenvalue of the loss Hessian at the weights (Lanczos); negative: a "
                               "direction of descent the slices may hide", "more negative is less convex"),
    "normalized_trace": ("tr(D·H), the expected centre curvature of a random slice drawn like the surface's "
                         "directions (Böttcher & Wheeler 2022; Hutch++)", "larger is sharper"),
    "epsilon_sharpness": ("largest loss rise in the box |z_i| <= ε(|θ_i|+1), in % of 1 + L (Keskar et al. 2017)",
                          "larger is sharper"),
    "adaptive_sharpness": ("largest loss rise for ‖z/(|θ|+η)‖₂ <= ρ (Kwon et al. 2021, ASAM)",
                           "larger is sharper"),
}
# The six measures the batch_landscapes stage has tabulated so far (its table, plots and tests use them).
SHARPNESS_MEASURES: dict[str, tuple[str, str]] = {name: MEASURES[name] for name in (
    "depth", "flatness", "centre_curvature", "convex_fraction", "hessian_top_eigenvalue", "hessian_trace")}
TARGETS: dict[str, str] = {
    "test_error": "1 − test accuracy",
    "gap_acc": "generalization gap in accuracy: train accuracy − test accuracy",
    "gap_loss": "generalization gap in loss: test loss − train loss",
}
# Where each model-side measure comes from in `measure_minimizer`'s result (surface ones: `shape`).
_SURFACE_KEYS = {"depth": "depth", "flatness": "flatness", "centre_curvature": "centre_curvature_mean",
                 "convex_fraction": "convex_fraction"}
_MODEL_KEYS = ("hessian_top_eigenvalue", "hessian_trace", "hessian_min_eigenvalue", "normalized_trace",
               "epsilon_sharpness", "adaptive_sharpness")


def generalization_gap(train_acc: float, test_acc: float, train_loss: float, test_loss: float) -> dict[str, float]:
    """Both gaps, oriented so that a positive value means the model does better on its training data."""
    return {"gap_acc": float(train_acc) - float(test_acc), "gap_loss": float(test_loss) - float(train_loss)}


def sharpness_measures(shape: Mapping[str, Any], model_side: Mapping[str, Any]) -> dict[str, float]:
    """A study row's measures, in `MEASURES` order: the surface's from `surface_metrics(...)`, the rest from
    `measure_minimizer(...)` (or `hessian_metrics(...)`, which holds the Hessian ones): every measure present."""
    picked = {name: float(shape[key]) for name, key in _SURFACE_KEYS.items()}
    picked.update({name: float(model_side[name]) for name in _MODEL_KEYS if name in model_side})
    return {name: picked[name] for name in MEASURES if name in picked}


# ------------------------------------------------------------------------------------ perturbation measures

class _LossAt:
    """The mean loss on fixed examples (eval mode) as a function of the parameters, via functional_call."""

    def __init__(self, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, loss_fn: LossFn):
        self.model, self.inputs, self.targets, self.loss_fn = model, inputs, targets, loss_fn
        self.names = [name for name, _ in model.named_parameters()]
        self.buffers = dict(model.named_buffers())
        self.evaluations = 0

    def __call__(self, parameters: Sequence[torch.Tensor], gradient: bool = False
                 ) -> tuple[float, list[torch.Tensor] | None]:
        self.evaluations += 1
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad() if gradient else torch.no_grad():
                leaves = [p.detach().requires_grad_(gradient) for p in parameters]
                outputs = functional_call(self.model, {**self.buffers, **dict(zip(self.names, leaves, strict=True))},
                                          (self.inputs,))
                loss = self.loss_fn(outputs, self.targets).mean()
                if not gradient:
                    return float(loss), None
                grads = torch.autograd.grad(loss, leaves, allow_unused=True)
                return float(loss.detach()), [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves,
                                                                                             strict=True)]
        finally:
            self.model.train(was_training)


def epsilon_sharpness(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      loss_fn: LossFn = cross_entropy_per_example, epsilon: float = 1e-3, steps: int = 10,
                      seed: int = 0) -> dict[str, Any]:
    """ε-sharpness (Keskar, Mudigere, Nocedal, Smelyanskiy & Tang 2017, "On large-batch training for deep
    learning", Metric 2.1, full space A = I):

        φ(θ, ε) = 100 · (max_{z ∈ C_ε} L(θ + z) − L(θ)) / (1 + L(θ)),  C_ε = {z : |z_i| <= ε(|θ_i| + 1)},

    the largest loss rise within a box scaled per parameter, in percent of 1 + L. Keskar et al. maximize
    with a few L-BFGS-B iterations; here `steps` steps of projected sign-gradient ascent (the steepest ascent
    in a box), step 2.5·ε(|θ|+1)/steps, from a seeded random point of the box, keeping the best point seen:
    a lower bound on the true maximum that grows with `steps`. All parameters are perturbed."""
    if epsilon <= 0 or steps < 1:
        raise ValueError(f"epsilon={epsilon}, steps={steps}: allowed: epsilon > 0, steps >= 1")
    loss_at = _LossAt(model, inputs, targets, loss_fn)
    theta = [p.detach() for p in model.parameters()]
    half_widths = [epsilon * (p.abs() + 1) for p in theta]
    generator = torch.Generator().manual_seed(seed)
    offsets = [(torch.rand(p.shape, generator=generator, dtype=torch.float64) * 2 - 1).to(p) * h
               for p, h in zip(theta, half_widths, strict=True)]
    base, _ = loss_at(theta)
    best = base
    for _ in range(steps):
        value, grads = loss_at([p + z for p, z in zip(theta, offsets, strict=True)], gradient=True)
        best = max(best, value)
        offsets = [torch.clamp(z + 2.5 * h / steps * g.sign(), -h, h)
                   for z, h, g in zip(offsets, half_widths, grads, strict=True)]
    best = max(best, loss_at([p + z for p, z in zip(theta, offsets, strict=True)])[0])
    return {"epsilon_sharpness": 100 * (best - base) / (1 + base), "loss": base, "max_loss": best,
            "epsilon": epsilon, "steps": steps, "loss_evaluations": loss_at.evaluations}


def adaptive_sharpness(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                       loss_fn: LossFn = cross_entropy_per_example, rho: float = 0.5, eta: float = 0.01,
                       steps: int = 10, seed: int = 0) -> dict[str, Any]:
    """Adaptive sharpness (Kwon, Kim, Park & Choi 2021, "ASAM: Adaptive sharpness-aware minimization", eq. 5
    with T_θ = diag(|θ| + η)):

        S_ρ(θ) = max_{‖T_θ⁻¹ z‖₂ <= ρ} L(θ + z) − L(θ),

    the worst loss rise in a ball whose radius is scaled per parameter by its magnitude, so that rescalings
    which leave the network's function unchanged (Dinh et al. 2017) leave it unchanged too (exactly with
    η = 0). Maximized in u = T⁻¹z: first ASAM's first-order step u = ρ·T∇L/‖T∇L‖ (`first_order` in the
    result), then `steps` − 1 normalized gradient-ascent steps of ρ/2 projected back onto ‖u‖ <= ρ, keeping
    the best point (a lower bound on the maximum). Defaults ρ = 0.5, η = 0.01 are ASAM's for CIFAR-10."""
    if rho <= 0 or eta < 0 or steps < 1:
        raise ValueError(f"rho={rho}, eta={eta}, steps={steps}: allowed: rho > 0, eta >= 0, steps >= 1")
    loss_at = _LossAt(model, inputs, targets, loss_fn)
    theta = [p.detach() for p in model.parameters()]
    scales = [p.abs() + eta for p in theta]

    def norm(tensors: Sequence[torch.Tensor]) -> float:
        return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))

    base, grads = loss_at(theta, gradient=True)
    direction = [s * g for s, g in zip(scales, grads, strict=True)]
    if norm(direction) == 0:  # a stationary point: start along a seeded random direction instead
        generator = torch.Generator().manual_seed(seed)
        direction = [torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p) for p in theta]
    length = norm(direction)
    u = [rho * d / length for d in direction]
    best = first_order = None
    for step in range(steps):
        value, grads = loss_at([p + s * v for p, s, v in zip(theta, scales, u, strict=True)], gradient=True)
        first_order = value if first_order is None else first_order
        best = value if best is None else max(best, value)
        if step == steps - 1:
            break
        ascent = [s * g for s, g in zip(scales, grads, strict=True)]
        length = norm(ascent)
        if length == 0:
            break
        u = [v + 0.5 * rho * a / length for v, a in zip(u, ascent, strict=True)]
        size = norm(u)
        if size > rho:
            u = [v * (rho / size) for v in u]
    return {"adaptive_sharpness": best - base, "first_order": first_order - base, "loss": base,
            "max_loss": best, "rho": rho, "eta": eta, "steps": steps, "loss_evaluations": loss_at.evaluations}


def measure_minimizer(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor,
                      loss_fn: LossFn = cross_entropy_per_example, seed: int = 0, norm: str = "filter",
                      ignore: str = "biasbn", lanczos_steps: int = 30, trace_samples: int = 30,
                      epsilon: float = 1e-3, rho: float = 0.5, eta: float = 0.01,
                      ascent_steps: int = 10) -> dict[str, Any]:
    """Every model-side measure at the model's weights on these examples (give the surface's: see
    `lossviz.curvature.surface_examples`): `hessian_metrics` (its keys), the normalized trace for directions
    drawn with `norm`/`ignore` (normalized_trace, normalized_trace_se), ε-sharpness and adaptive sharpness,
    and the seconds each took."""
    started = time.perf_counter()
    result: dict[str, Any] = dict(hessian_metrics(model, inputs, targets, loss_fn, seed=seed,
                                                  max_iterations=lanczos_steps, trace_samples=trace_samples))
    mark = time.perf_counter()
    slices = expected_slice_curvature(model, inputs, targets, loss_fn, norm=norm, ignore=ignore,
                                      matvecs=trace_samples, seed=seed)
    result.update(normalized_trace=slices["expected_curvature"], normalized_trace_se=slices["expected_curvature_se"],
                  normalized_trace_seconds=time.perf_counter() - mark)
    mark = time.perf_counter()
    box = epsilon_sharpness(model, inputs, targets, loss_fn, epsilon=epsilon, steps=ascent_steps, seed=seed)
    result.update(epsilon_sharpness=box["epsilon_sharpness"], epsilon=epsilon,
                  epsilon_sharpness_seconds=time.perf_counter() - mark)
    mark = time.perf_counter()
    ball = adaptive_sharpness(model, inputs, targets, loss_fn, rho=rho, eta=eta, steps=ascent_steps, seed=seed)
    result.update(adaptive_sharpness=ball["adaptive_sharpness"], adaptive_rho=rho, adaptive_eta=eta,
                  adaptive_sharpness_seconds=time.perf_counter() - mark, seconds=time.perf_counter() - started)
    return result


# ------------------------------------------------------------------------------------ the verdict

def correlation_table(rows: Sequence[Mapping[str, float]], measures: Sequence[str] = tuple(SHARPNESS_MEASURES),
                      targets: Sequence[str] = tuple(TARGETS), level: float = 0.95
                      ) -> dict[str, dict[str, dict[str, float]]]:
    """{measure: {target: {"spearman": ρ, "p_value": p, "ci_low", "ci_high": the `level` bootstrap interval
    of ρ, "n": pairs}}} over `rows` (one per model, each holding every measure and target by name; missing
    or non-finite values drop that pair). p is the exact two-sided permutation p-value."""
    def column(name: str) -> np.ndarray:
        return np.asarray([float(row.get(name, math.nan)) for row in rows], dtype=float)

    table: dict[str, dict[str, dict[str, float]]] = {}
    for measure in measures:
        x = column(measure)
        table[measure] = {}
        for target in targets:
            y = column(target)
            pairs = int((np.isfinite(x) & np.isfinite(y)).sum())
            interval = spearman_bootstrap_interval(x, y, level=level)
            table[measure][target] = {"spearman": spearman(x, y), "p_value": spearman_p_value(x, y),
                                      "ci_low": interval["low"], "ci_high": interval["high"], "n": pairs}
    return table


def verdict(rows: Sequence[Mapping[str, float]], measures: Sequence[str] | None = None,
            targets: Sequence[str] = tuple(TARGETS), alpha: float = 0.05, level: float = 0.95) -> dict[str, Any]:
    """The study's answer: `correlation_table` over every measure the rows hold (or `measures`), each cell
    with its Holm-adjusted p-value over all the cells tested ("p_holm"), the smallest p-value the number of
    models allows, how many cells would pass p < alpha by chance alone, which pass before and after Holm's
    correction, and `sentence` (`verdict_sentence`)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha} is not valid; allowed: 0 < alpha < 1")
    names = list(measures) if measures is not None else [
        name for name in MEASURES if any(math.isfinite(float(row.get(name, math.nan))) for row in rows)]
    table = correlation_table(rows, names, targets, level)
    cells = [(m, t) for m in names for t in targets]
    adjusted = holm_adjusted([table[m][t]["p_value"] for m, t in cells])
    for (m, t), p_holm in zip(cells, adjusted, strict=True):
        table[m][t]["p_holm"] = float(p_holm)
    tested = [(m, t) for m, t in cells if math.isfinite(table[m][t]["p_value"])]
    n_models = len(rows)
    result = {
        "n_models": n_models, "alpha": alpha, "level": level, "n_tests": len(tested),
        "smallest_attainable_p": smallest_spearman_p_value(n_models),
        "expected_by_chance": len(tested) * null_rate_below(alpha, n_models),
        "significant": [[m, t] for m, t in tested if table[m][t]["p_value"] < alpha],
        "significant_after_holm": [[m, t] for m, t in tested if table[m][t]["p_holm"] < alpha],
        "measures": {name: f"{MEASURES[name][0]} ({MEASURES[name][1]})" for name in names if name in MEASURES},
        "targets": {t: TARGETS.get(t, t) for t in targets},
        "table": table,
    }
    result["sentence"] = verdict_sentence(result)
    return result


def _cell_text(table: Mapping[str, Any], measure: str, target: str) -> str:
    cell = table[measure][target]
    return f"{measure} vs {target} (ρ = {cell['spearman']:+.2f}, p = {cell['p_value']:.3f})"


def verdict_sentence(result: Mapping[str, Any]) -> str:
    """What the correlations of `verdict(...)` can and cannot conclude, in plain words, for the report."""
    n, tests, alpha = result["n_models"], result["n_tests"], result["alpha"]
    if n < 3 or tests == 0:
        return (f"With {n} model{'s' if n != 1 else ''} no rank correlation can be tested (Spearman's ρ needs at "
                "least 3 models with finite, non-constant values): nothing can be concluded about sharpness and "
                "generalization.")
    table = result["table"]
    smallest, threshold = result["smallest_attainable_p"], alpha / tests
    passed, survived = result["significant"], result["significant_after_holm"]
    widths = [table[m][t]["ci_high"] - table[m][t]["ci_low"] for m in table for t in table[m]
              if math.isfinite(table[m][t]["ci_high"] - table[m][t]["ci_low"])]
    parts = [f"{n} models give Spearman's ρ {math.factorial(n):,} possible orderings, so its smallest two-sided "
             f"p-value is {smallest:.3g}" + (" (only a perfectly monotone ranking reaches it)" if n <= 8 else "")
             + f"; {tests} measure–target pairs were tested, and Holm's correction asks for p < {threshold:.2g} "
             "for the first of them" + (", which these models cannot reach." if smallest >= threshold else ".")]
    listed = "; ".join(_cell_text(table, m, t) for m, t in passed[:4]) + ("; …" if len(passed) > 4 else "")
    parts.append(f"{len(passed)} pair{' reaches' if len(passed) == 1 else 's reach'} p < {alpha:g} before correction"
                 + (f" ({listed})" if passed else "")
                 + f", where about {result['expected_by_chance']:.1f} would by chance alone if every measure were "
                   "unrelated to generalization.")
    if widths:
        parts.append(f"The {round(100 * result['level'])}% bootstrap intervals of ρ have a median width of "
                     f"{float(np.median(widths)):.2f} on the scale −1 … 1.")
    if survived:
        names = "; ".join(_cell_text(table, m, t) for m, t in survived)
        parts.append(f"After Holm's correction these remain: {names}. They rank these {n} models as their "
                     "generalization does; as the models differ in training batch size, this is an association "
                     "across batch sizes, not evidence that sharpness causes the difference.")
    else:
        parts.append(f"None survives Holm's correction, so these {n} models establish no correlation between "
                     "any sharpness measure and generalization, in either direction: the table describes how "
                     "they happen to rank, a hypothesis to test on many more models (Jiang et al. 2019 trained "
                     "thousands), not a finding; nor does it show that sharpness is unrelated to "
                     "generalization.")
    return " ".join(parts)
