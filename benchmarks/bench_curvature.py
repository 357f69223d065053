"""Benchmark of the curvature and sharpness measures on lenet5 at 250 Fashion-MNIST test examples: the cost
of each (seconds and Hessian-vector products, HVPs), side by side with the hand-written code it replaced,
and the Böttcher–Wheeler check of a surface's own curvature against the Hutch++ normalized trace.

    python benchmarks/bench_curvature.py [--checkpoint models/train/model.pt] [--data-root data/prepared]
                                         [--seeds 4] [--grid 15]

Without --checkpoint, lenet5 is trained briefly here (Adam, 300 steps of 64, seeded). Measured, on the
surface's example subset (select_examples(10000, 250, seed 0)), in one process on the CPU:
- one HVP three ways: ours (double backward through a gradient graph kept from one forward), and the
  hessian-eigenthings and (when installed) curvlinops operators, which redo the forward for every product;
- the top eigenvalue: the replaced power iteration (tolerance 1e-4, at most 100 HVPs) against Lanczos at
  10, 20 and 30 steps, all against a 90-step Lanczos reference;
- the trace: the replaced Hutchinson against Hutch++ at the same 30 HVPs, over `--seeds` seeds (their
  spread is each estimator's real error), against a 150-HVP Hutch++ reference;
- stochastic Lanczos quadrature, the normalized trace, ε-sharpness, adaptive sharpness, a 3×3 curvature map;
- Böttcher & Wheeler: the surface's centre curvature (finite differences on a --grid² grid over [-1, 1]²,
  the batch_landscapes default), the exact δᵀHδ of the same two directions, a Monte Carlo mean over
  random directions, and the Hutch++ normalized trace tr(D·H).
Prints figures, then a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import hessian_eigenthings
import numpy as np
import torch
import torch.nn.functional as F

from lossviz.checkpoints import load_model_weights
from lossviz.curvature import (
    HessianVectorProduct,
    curvature_map,
    expected_slice_curvature,
    hessian_trace,
    lanczos_extremes,
    sampled_slice_curvatures,
    spectral_density,
)
from lossviz.data import load_splits
from lossviz.directions import random_directions
from lossviz.engine import compute_surface
from lossviz.models import build_model
from lossviz.runtime import configure_cpu
from lossviz.shape import surface_metrics
from lossviz.sharpness import adaptive_sharpness, epsilon_sharpness
from lossviz.tasks import select_examples

try:  # not a dependency: its operator is timed where it is installed
    import curvlinops
except ImportError:
    curvlinops = None

N_EXAMPLES = 250


def train_briefly(train_x: torch.Tensor, train_y: torch.Tensor, steps: int = 300, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model("lenet5")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(train_y), (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(train_x[batch]), train_y[batch]).backward()
        optimizer.step()
    return model.eval()


# -- the replaced hand-written code (lossviz.metrics.hessian_metrics before hessian-eigenthings), verbatim in
#    its algorithm: power iteration for the largest-magnitude eigenvalue, Hutchinson with Rademacher probes
def replaced_power_iteration(hvp: HessianVectorProduct, seed: int = 0, max_iterations: int = 100,
                             tolerance: float = 1e-4) -> tuple[float, int]:
    generator = torch.Generator().manual_seed(seed)
    vector = torch.randn(hvp.size, generator=generator).to(hvp.dtype)
    vector /= vector.norm()
    eigenvalue, iterations = math.nan, 0
    for iterations in range(1, max_iterations + 1):  # noqa: B007 (returned)
        product = hvp.matvec(vector)
        new = float(vector.double() @ product.double())
        norm = float(product.norm())
        if norm == 0:
            return 0.0, iterations
        vector = product / norm
        converged = not math.isnan(eigenvalue) and abs(new - eigenvalue) <= tolerance * (abs(eigenvalue) + 1e-12)
        eigenvalue = new
        if converged:
            break
    return eigenvalue, iterations


def replaced_hutchinson(hvp: HessianVectorProduct, samples: int, seed: int = 0) -> tuple[float, float]:
    generator = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(samples):
        probe = torch.where(torch.randn(hvp.size, generator=generator) >= 0, 1.0, -1.0).to(hvp.dtype)
        values.append(float(probe.double() @ hvp.matvec(probe).double()))
    return float(np.mean(values)), float(np.std(values, ddof=1) / math.sqrt(samples))


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def hvp_costs(model, x, y) -> dict[str, float]:
    """Seconds per HVP (best of 3 rounds of 5), and the largest relative difference to ours."""
    hvp = HessianVectorProduct(model, x, y)
    vector = torch.randn(hvp.size, generator=torch.Generator().manual_seed(0))
    reference = hvp.matvec(vector)
    contenders = {"ours (graph kept)": hvp.matvec}
    operator = hessian_eigenthings.HessianOperator(model, [(x, y)],
                                                   hessian_eigenthings.supervised_loss(F.cross_entropy))
    contenders["hessian-eigenthings HessianOperator"] = operator.matvec
    if curvlinops is None:
        print("curvlinops not installed: its operator is not timed")
    else:
        linear = curvlinops.HessianLinearOperator(model, torch.nn.CrossEntropyLoss(), list(model.parameters()),
                                                  [(x, y)], progressbar=False, check_deterministic=False)
        contenders["curvlinops HessianLinearOperator"] = lambda v: linear @ v
    costs = {}
    for name, function in contenders.items():
        function(vector)
        best = math.inf
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(5):
                product = function(vector)
            best = min(best, (time.perf_counter() - start) / 5)
        difference = float((product - reference).norm() / reference.norm())
        costs[name] = best
        print(f"HVP {name}: {1000 * best:.1f} ms, relative difference to ours {difference:.1e}")
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a lenet5 state_dict (e.g. models/train/model.pt); else trained here")
    parser.add_argument("--data-root", default="data/prepared")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per trace estimator (their spread)")
    parser.add_argument("--grid", type=int, default=15, help="points per axis of the Böttcher–Wheeler surface")
    args = parser.parse_args()
    configure_cpu()
    splits = load_splits(args.data_root, "fashion_mnist", val_size=0)
    index = torch.from_numpy(select_examples(len(splits.test), N_EXAMPLES, seed=0))
    x, y = splits.test.x[index], splits.test.y[index]
    if args.checkpoint:
        model = load_model_weights(build_model("lenet5"), args.checkpoint).eval()
        source = args.checkpoint
    else:
        model = train_briefly(splits.train.x, splits.train.y)
        source = "trained briefly here (Adam, 300 steps of 64)"
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).double().mean().item() * 100
    print(f"lenet5 from {source}: {accuracy:.1f}% on the {N_EXAMPLES} examples; threads {torch.get_num_threads()}")
    out: dict[str, object] = {"threads": torch.get_num_threads(), "model": source, "accuracy_on_examples": accuracy}

    out["seconds_per_hvp"] = hvp_costs(model, x, y)

    # -- top eigenvalue ---------------------------------------------------------------------------------------
    reference_hvp = HessianVectorProduct(model, x, y)
    reference = lanczos_extremes(reference_hvp, steps=90, top_k=3, bottom_k=1)
    top_ref, bottom_ref = float(reference.top[0]), float(reference.bottom[0])
    print(f"reference (Lanczos 90 steps): top eigenvalues {', '.join(f'{v:.5g}' for v in reference.top)} (residuals "
          f"{', '.join(f'{r:.1e}' for r in reference.top_residuals)}), λ_min {bottom_ref:.5g} (residual "
          f"{reference.bottom_residuals[0]:.1e})")
    rows = {}
    hvp = HessianVectorProduct(model, x, y)
    (value, iterations), seconds = timed(replaced_power_iteration, hvp)
    rows["power iteration (replaced)"] = {"value": value, "hvps": hvp.products, "seconds": seconds,
                                          "rel_error": abs(value - top_ref) / abs(top_ref)}
    for steps in (10, 20, 30):
        hvp = HessianVectorProduct(model, x, y)
        eigen, seconds = timed(lanczos_extremes, hvp, steps=steps, top_k=1, bottom_k=1)
        rows[f"Lanczos {steps} steps"] = {"value": float(eigen.top[0]), "residual": float(eigen.top_residuals[0]),
                                          "min": float(eigen.bottom[0]), "hvps": hvp.products, "seconds": seconds,
                                          "rel_error": abs(float(eigen.top[0]) - top_ref) / abs(top_ref),
                                          "min_abs_error": abs(float(eigen.bottom[0]) - bottom_ref)}
    for name, row in rows.items():
        extra = f", residual {row['residual']:.2g}, λ_min {row['min']:.4g}" if "residual" in row else ""
        print(f"top eigenvalue, {name}: {row['value']:.5g} (rel. error {row['rel_error']:.1e}{extra}) "
              f"in {row['hvps']} HVPs, {row['seconds']:.1f} s")
    out["top_eigenvalue"] = {"reference": reference.top.tolist(), "reference_min": bottom_ref, **rows}

    # -- trace ------------------------------------------------------------------------------------------------
    hvp = HessianVectorProduct(model, x, y)
    trace_ref = hessian_trace(hvp, matvecs=150, seed=100)
    print(f"reference trace (Hutch++ 150 HVPs): {trace_ref.estimate:.5g} ± {trace_ref.standard_error:.2g}")
    estimates: dict[str, list[float]] = {"Hutchinson 30 (replaced)": [], "Hutch++ 30": []}
    seconds: dict[str, list[float]] = {k: [] for k in estimates}
    errors: dict[str, list[float]] = {k: [] for k in estimates}
    for seed in range(args.seeds):
        hvp = HessianVectorProduct(model, x, y)
        (value, error), took = timed(replaced_hutchinson, hvp, 30, seed)
        estimates["Hutchinson 30 (replaced)"].append(value)
        seconds["Hutchinson 30 (replaced)"].append(took)
        errors["Hutchinson 30 (replaced)"].append(error)
        hvp = HessianVectorProduct(model, x, y)
        result, took = timed(hessian_trace, hvp, 30, seed)
        estimates["Hutch++ 30"].append(result.estimate)
        seconds["Hutch++ 30"].append(took)
        errors["Hutch++ 30"].append(result.standard_error)
    trace_rows = {}
    for name, values in estimates.items():
        trace_rows[name] = {"mean": statistics.mean(values), "spread_over_seeds": statistics.stdev(values),
                            "reported_se_median": statistics.median(errors[name]), "hvps": 30,
                            "seconds": statistics.median(seconds[name])}
        print(f"trace, {name}: mean {trace_rows[name]['mean']:.5g}, spread over {args.seeds} seeds "
              f"{trace_rows[name]['spread_over_seeds']:.3g} (reported SE {trace_rows[name]['reported_se_median']:.3g}),"
              f" 30 HVPs, {trace_rows[name]['seconds']:.1f} s")
    out["trace"] = {"reference": trace_ref.estimate, "reference_se": trace_ref.standard_error, **trace_rows}

    # -- the other measures --------------------------------------------------------------------------------------
    hvp = HessianVectorProduct(model, x, y)
    density, took = timed(spectral_density, hvp, runs=3, steps=30)
    peak = float(density.grid[np.argmax(density.density)])
    print(f"spectral density (SLQ 3 runs × 30 steps): {density.products} HVPs, {took:.1f} s; bulk peak at {peak:.3g}, "
          f"support {density.nodes[np.isfinite(density.nodes)].min():.3g} … {density.nodes.max():.4g}")
    out["spectral_density"] = {"hvps": density.products, "seconds": took, "peak": peak}
    normalized, took = timed(expected_slice_curvature, model, x, y, matvecs=30)
    print(f"normalized trace tr(D·H) (Hutch++ 30): {normalized['expected_curvature']:.4g} ± "
          f"{normalized['expected_curvature_se']:.2g}, {normalized['products']} HVPs, {took:.1f} s")
    out["normalized_trace"] = {**normalized, "seconds": took}
    box, took = timed(epsilon_sharpness, model, x, y, epsilon=1e-3, steps=10)
    print(f"ε-sharpness (ε = 1e-3, 10 steps): {box['epsilon_sharpness']:.4g} %, {box['loss_evaluations']} "
          f"loss/gradient evaluations, {took:.1f} s")
    out["epsilon_sharpness"] = {**box, "seconds": took}
    ball, took = timed(adaptive_sharpness, model, x, y, rho=0.5, eta=0.01, steps=10)
    print(f"adaptive sharpness (ρ = 0.5, η = 0.01, 10 steps): {ball['adaptive_sharpness']:.4g} (first-order step "
          f"{ball['first_order']:.4g}), {ball['loss_evaluations']} evaluations, {took:.1f} s")
    out["adaptive_sharpness"] = {**ball, "seconds": took}
    directions = random_directions(model, seed=0)
    grid = np.linspace(-1, 1, 3)
    cmap, took = timed(curvature_map, model, x, y, directions, grid, grid, steps=15, progress=False)
    print(f"curvature map 3×3, 15 Lanczos steps a point: {cmap.meta['products']} HVPs, {took:.1f} s "
          f"({took / 9:.1f} s a point); λ_min {np.nanmin(cmap.min_eigenvalue):.3g} … "
          f"{np.nanmax(cmap.min_eigenvalue):.3g}, λ_max {np.nanmin(cmap.max_eigenvalue):.3g} … "
          f"{np.nanmax(cmap.max_eigenvalue):.3g}")
    out["curvature_map"] = {"hvps": cmap.meta["products"], "seconds": took, "min_eigenvalue":
                            cmap.min_eigenvalue.tolist(), "max_eigenvalue": cmap.max_eigenvalue.tolist()}

    # -- Böttcher & Wheeler: the surface's own curvature vs the normalized trace ------------------------------
    axis = np.linspace(-1, 1, args.grid)
    surface, took = timed(compute_surface, model, splits.test.x, splits.test.y, directions, axis, axis,
                          n_examples=N_EXAMPLES, seed=0, progress=False, device="cpu")
    shape = surface_metrics(surface)
    exact = sampled_slice_curvatures(model, x, y, seeds=[0])[0]
    sampled = sampled_slice_curvatures(model, x, y, seeds=range(1, 21)).ravel()
    predicted, predicted_se = normalized["expected_curvature"], normalized["expected_curvature_se"]
    print(f"Böttcher–Wheeler on a {args.grid}×{args.grid} surface ({took:.1f} s): finite-difference centre "
          f"curvature xx {shape['centre_curvature_xx']:.4g}, yy {shape['centre_curvature_yy']:.4g}, mean "
          f"{shape['centre_curvature_mean']:.4g}; exact δᵀHδ of the same directions {exact[0]:.4g}, {exact[1]:.4g} "
          f"(mean {exact.mean():.4g}); 40 other random directions {sampled.mean():.4g} ± "
          f"{sampled.std(ddof=1) / math.sqrt(sampled.size):.2g} (sd {sampled.std(ddof=1):.3g}); Hutch++ tr(D·H) "
          f"{predicted:.4g} ± {predicted_se:.2g}; surface / tr(D·H) = {shape['centre_curvature_mean'] / predicted:.3f}")
    out["boettcher_wheeler"] = {
        "grid": args.grid, "surface_centre_curvature_xx": shape["centre_curvature_xx"],
        "surface_centre_curvature_yy": shape["centre_curvature_yy"],
        "surface_centre_curvature_mean": shape["centre_curvature_mean"], "exact_slice_curvatures": exact.tolist(),
        "sampled_mean": float(sampled.mean()), "sampled_se": float(sampled.std(ddof=1) / math.sqrt(sampled.size)),
        "sampled_sd": float(sampled.std(ddof=1)), "hutchpp_normalized_trace": predicted,
        "hutchpp_normalized_trace_se": predicted_se, "hessian_trace": trace_ref.estimate}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
