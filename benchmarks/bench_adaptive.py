"""Benchmark of adaptive surfaces (`lossviz.adaptive`) on the CPU: ratios measured in one run.

    python benchmarks/bench_adaptive.py [--data-root data/prepared] [--lenet5 CKPT] [--fashion-cnn CKPT]
        [--grid lenet5=125 --grid fashion_cnn=125 --grid resnet20_noshort=33]
        [--stride lenet5=1 --stride fashion_cnn=3 --stride resnet20_noshort=1] [--tolerance 0.05]

For each model: one pair of filter-normalized directions (seed 0), 250 seeded test examples, the clip disk of
radius 1 on [-1, 1]², the adaptive surface on the target grid and the fully evaluated reference, timed back to
back (same process, same threads). The reference is the whole target grid (stride 1), or, where that takes too
long on a shared CPU, every stride-th point of it along each axis (a sub-lattice of the same grid, so the two
are compared at identical points, interpolated ones among them; the time of every point is then extrapolated
from the reference's). Printed per model: evaluations ÷ grid points (and ÷ drawn points), the certificate, the
largest |Δ ln(loss)| between the two at the interpolated points beside the certified bound and the tolerance,
Pearson r of ln(loss) over the compared drawn points, and the wall-time ratio.

The models: lenet5 and fashion_cnn from checkpoints when given (the `train` stage's models/train/model.pt, a
batch-sweep trial's model.pt), else trained briefly here; and a non-smooth case, resnet20_noshort trained briefly
(Adam) on a small subset of Fashion-MNIST.

End to end against the official tool's way (lenet5): its per-point loop (`bench_surface.official_way_rate`:
weights set from the direction file, a fresh DataLoader with 2 workers and PIL transforms, the full 10k test set)
is timed on a sample of points, checked against our losses on the same examples, and extrapolated to its 125×125
surface (every point: the official tool has no clip disk); ours is the adaptive lenet5 surface above, end to end.
Equal fidelity: Pearson r of ln(loss) between our adaptive surface (250 examples) and the full-data loss, both at
a seeded sample of drawn grid points (the full-data values by our evaluator on all 10k examples, the numbers the
official loop computes). Prints figures, then a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_surface import official_way_rate, train_briefly  # noqa: E402  (the official loop, shared)

from lossviz.adaptive import certificate_of  # noqa: E402
from lossviz.checkpoints import load_model_weights  # noqa: E402
from lossviz.data import load_splits  # noqa: E402
from lossviz.directions import random_directions, save_directions  # noqa: E402
from lossviz.engine import compute_surface, point_function  # noqa: E402
from lossviz.models import build_model  # noqa: E402
from lossviz.runtime import configure_cpu  # noqa: E402

N_EXAMPLES = 250
CLIP_RADIUS = 1.0
DEFAULT_GRIDS = {"lenet5": 125, "fashion_cnn": 125, "resnet20_noshort": 33}
DEFAULT_STRIDES = {"lenet5": 1, "fashion_cnn": 3, "resnet20_noshort": 1}
SMALL_SUBSET = 2000  # training examples of the non-smooth case


def ln(values: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(values, float), 1e-12))


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a, b)[0, 1])


def load_or_train(name: str, checkpoint: str | None, splits, steps: int, subset: int | None = None):
    model = build_model(name, splits.input_shape, splits.num_classes)
    if checkpoint:
        load_model_weights(model, checkpoint)
        return model.eval(), f"checkpoint {checkpoint}"
    x, y = splits.train.x, splits.train.y
    if subset:
        x, y = x[:subset], y[:subset]
    trained = train_briefly(name, x, y, steps=steps)
    return trained, f"trained briefly here (Adam, {steps} steps of 64{f', on {subset} examples' if subset else ''})"


def compare(name: str, model, test, grid_points: int, stride: int, tolerance: float) -> dict:
    """The adaptive surface and the fully evaluated reference (every `stride`-th point), and how they compare."""
    directions = random_directions(model, seed=0)
    axis = np.linspace(-1, 1, grid_points)
    options = dict(n_examples=N_EXAMPLES, seed=0, clip_radius=CLIP_RADIUS, device="cpu", progress=False,
                   method="fast")
    start = time.perf_counter()
    adaptive = compute_surface(model, test.x, test.y, directions, axis, axis, adaptive=tolerance, **options)
    adaptive_seconds = time.perf_counter() - start
    start = time.perf_counter()
    full = compute_surface(model, test.x, test.y, directions, axis[::stride], axis[::stride], **options)
    reference_seconds = time.perf_counter() - start
    certificate = certificate_of(adaptive)
    drawn = np.isfinite(full.loss)
    full_seconds = reference_seconds * certificate.drawn / drawn.sum()  # every point (measured when stride is 1)
    ours = adaptive.loss[::stride, ::stride]
    flags = np.zeros(adaptive.shape, bool) if adaptive.interpolated is None else adaptive.interpolated
    filled = flags[::stride, ::stride]
    gaps = np.abs(ln(ours) - ln(full.loss))
    evaluated_same = bool(np.array_equal(ours[drawn & ~filled], full.loss[drawn & ~filled]))
    return {
        "model": name, "grid": grid_points, "grid_points": grid_points**2, "drawn": certificate.drawn,
        "reference_stride": stride, "compared_points": int(drawn.sum()), "compared_interpolated": int(filled.sum()),
        "reference_seconds": reference_seconds,
        "evaluations": certificate.evaluations, "evaluated": certificate.evaluated, "support": certificate.support,
        "interpolated": certificate.interpolated,
        "evaluations_per_grid_point": certificate.evaluations / grid_points**2,
        "evaluations_per_drawn_point": certificate.evaluated_fraction,
        "tolerance": tolerance, "certified_max_error": certificate.max_error,
        "max_cell_tolerance": certificate.max_cell_tolerance,
        "max_abs_ln_loss_diff": float(gaps[filled].max()) if filled.any() else 0.0,
        "mean_abs_ln_loss_diff": float(gaps[filled].mean()) if filled.any() else 0.0,
        "pearson_ln_loss": pearson(ln(ours[drawn]), ln(full.loss[drawn])),
        "evaluated_points_identical": evaluated_same,
        "adaptive_seconds": adaptive_seconds, "full_seconds": full_seconds,
        "wall_time_ratio": full_seconds / adaptive_seconds, "ln_loss_range": [float(ln(full.loss[drawn]).min()),
                                                                               float(ln(full.loss[drawn]).max())],
        "max_ln_loss_se": float(np.nanmax(full.loss_se[drawn] / full.loss[drawn])),
        "_surface": adaptive, "_directions": directions,
    }


def end_to_end(model, test, row: dict, sample_points: int, official_points: int) -> dict:
    """Our adaptive lenet5 surface against the official tool's way at equal fidelity (see the docstring)."""
    surface, directions = row["_surface"], row["_directions"]
    rng = np.random.default_rng(0)
    alpha, beta = surface.coordinates()
    drawn = np.flatnonzero(np.isfinite(surface.loss).ravel())
    sample = np.sort(rng.choice(drawn, size=min(sample_points, len(drawn)), replace=False))
    everything = np.arange(len(test.y))
    start = time.perf_counter()
    with point_function(model, test.x, test.y, directions, everything, method="fast", device="cpu") as evaluate:
        full_data, _, _ = evaluate(alpha.ravel()[sample], beta.ravel()[sample])
        official_sample = sample[:: max(1, len(sample) // official_points)][:official_points]
        ours_on_official, _, _ = evaluate(alpha.ravel()[official_sample], beta.ravel()[official_sample])
    reference_seconds = time.perf_counter() - start
    ours = surface.loss.ravel()[sample]
    fidelity = pearson(ln(ours), ln(full_data))

    workdir = Path(tempfile.mkdtemp(prefix="bench_adaptive_"))
    dir_file = workdir / "lenet5_directions.h5"
    save_directions(directions, dir_file)
    raw_images = (test.x[:, 0] * 255).round().to(torch.uint8).numpy()
    points = list(zip(alpha.ravel()[official_sample], beta.ravel()[official_sample], strict=True))
    rate, official_losses = official_way_rate(model, raw_images, test.y.numpy(), dir_file, points)
    official_point = 1.0 / rate
    rel_diff = max(abs(a - b) / abs(b) for a, b in zip(official_losses, ours_on_official, strict=True))
    official_surface = official_point * row["grid_points"]  # every point: the official tool has no clip disk
    ours_surface = row["adaptive_seconds"]
    return {
        "fidelity_points": int(len(sample)), "pearson_ln_loss_vs_full_data": fidelity,
        "max_abs_ln_loss_diff_vs_full_data": float(np.abs(ln(ours) - ln(full_data)).max()),
        "official_points_timed": len(points), "official_seconds_per_point": official_point,
        "official_max_rel_loss_diff": rel_diff, "official_seconds_per_surface": official_surface,
        "ours_seconds_per_surface": ours_surface, "ours_seconds_per_grid_point": ours_surface / row["grid_points"],
        "ratio_per_surface": official_surface / ours_surface,
        "ratio_per_surface_drawn_points_only": official_point * row["drawn"] / ours_surface,
        "ratio_per_point": official_point / (ours_surface / row["grid_points"]),
        "reference_seconds": reference_seconds,
    }


def parse_per_model(items: list[str], defaults: dict[str, int], flag: str, least: int) -> dict[str, int]:
    values = dict(defaults)
    for item in items:
        name, _, size = item.partition("=")
        if name not in defaults or not size.isdigit() or int(size) < least:
            raise SystemExit(f"{flag} {item!r} is not valid; expected NAME=NUMBER with NAME one of "
                             f"{', '.join(defaults)} and NUMBER ≥ {least}")
        values[name] = int(size)
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="data/prepared")
    parser.add_argument("--lenet5", default=None, help="lenet5 checkpoint (else trained briefly here)")
    parser.add_argument("--fashion-cnn", default=None, help="fashion_cnn checkpoint (else trained briefly here)")
    parser.add_argument("--grid", action="append", default=[], help="NAME=POINTS per axis, e.g. fashion_cnn=125")
    parser.add_argument("--stride", action="append", default=[],
                        help="NAME=K: the reference evaluates every K-th point per axis (1: the whole grid)")
    parser.add_argument("--tolerance", type=float, default=0.05, help="ln(loss) units")
    parser.add_argument("--noshort-steps", type=int, default=300)
    parser.add_argument("--fidelity-points", type=int, default=200)
    parser.add_argument("--official-points", type=int, default=3)
    args = parser.parse_args()
    grids = parse_per_model(args.grid, DEFAULT_GRIDS, "--grid", 2)
    strides = parse_per_model(args.stride, DEFAULT_STRIDES, "--stride", 1)
    configure_cpu()
    splits = load_splits(args.data_root, "fashion_mnist", val_size=0)
    test = splits.test
    print(f"threads {torch.get_num_threads()}; {len(test.y)} test examples; {N_EXAMPLES} per point; clip radius "
          f"{CLIP_RADIUS}; tolerance {args.tolerance:g} ln(loss)", flush=True)

    models = {"lenet5": load_or_train("lenet5", args.lenet5, splits, steps=300),
              "fashion_cnn": load_or_train("fashion_cnn", args.fashion_cnn, splits, steps=100),
              "resnet20_noshort": load_or_train("resnet20_noshort", None, splits, steps=args.noshort_steps,
                                                subset=SMALL_SUBSET)}
    rows = []
    for name, (model, origin) in models.items():
        with torch.no_grad():
            accuracy = (model(test.x[:2000]).argmax(1) == test.y[:2000]).float().mean().item() * 100
        print(f"{name}: {origin}; {accuracy:.1f}% on 2000 test examples; target {grids[name]}×{grids[name]}",
              flush=True)
        row = compare(name, model, test, grids[name], strides[name], args.tolerance)
        rows.append(row)
        print(f"  evaluated {row['evaluations']} points ({row['evaluated']} drawn + {row['support']} support) of "
              f"{row['grid_points']} grid points = {row['evaluations_per_grid_point']:.3f} of the grid, "
              f"{row['evaluations_per_drawn_point']:.3f} of the {row['drawn']} drawn points", flush=True)
        reference = "the whole grid" if row["reference_stride"] == 1 else \
            f"1 point in {row['reference_stride']} per axis"
        print(f"  reference: {reference}, {row['compared_points']} drawn points of which the adaptive surface "
              f"interpolated {row['compared_interpolated']}", flush=True)
        print(f"  interpolated points: max |Δ ln loss| vs fully evaluated {row['max_abs_ln_loss_diff']:.4f} "
              f"(mean {row['mean_abs_ln_loss_diff']:.5f}); certified ≤ {row['certified_max_error']:.4f}; tolerance "
              f"{row['tolerance']:g} (largest cell tolerance {row['max_cell_tolerance']:.4f}); Pearson r of ln loss "
              f"{row['pearson_ln_loss']:.6f}; evaluated points bit-identical: {row['evaluated_points_identical']}",
              flush=True)
        estimated = "" if row["reference_stride"] == 1 else \
            f" (extrapolated from the reference's {row['reference_seconds']:.1f} s)"
        print(f"  wall time: adaptive {row['adaptive_seconds']:.1f} s, every point {row['full_seconds']:.1f} s"
              f"{estimated}, ratio {row['wall_time_ratio']:.1f}× (ln loss spans {row['ln_loss_range'][0]:.2f} … "
              f"{row['ln_loss_range'][1]:.2f}; worst se of ln loss {row['max_ln_loss_se']:.3f})", flush=True)

    lenet = next(row for row in rows if row["model"] == "lenet5")
    e2e = end_to_end(models["lenet5"][0], test, lenet, args.fidelity_points, args.official_points)
    print(f"end to end, lenet5 {lenet['grid']}×{lenet['grid']}: official way {e2e['official_seconds_per_point']:.3f} s "
          f"per point on all {len(test.y)} examples ({e2e['official_points_timed']} points timed; its losses vs ours "
          f"max relative difference {e2e['official_max_rel_loss_diff']:.1e}) → "
          f"{e2e['official_seconds_per_surface']:.0f} s per surface ({lenet['grid_points']} points)", flush=True)
    print(f"  ours (adaptive, {N_EXAMPLES} examples): {e2e['ours_seconds_per_surface']:.2f} s per surface = "
          f"{1e3 * e2e['ours_seconds_per_grid_point']:.3f} ms per grid point; fidelity vs the full-data loss on "
          f"{e2e['fidelity_points']} drawn points: Pearson r of ln loss {e2e['pearson_ln_loss_vs_full_data']:.4f} "
          f"(goal ≥ 0.99), max |Δ ln loss| {e2e['max_abs_ln_loss_diff_vs_full_data']:.3f}", flush=True)
    print(f"  wall-time ratio at equal fidelity: {e2e['ratio_per_surface']:.0f}× per surface and per grid point "
          f"(goal ≥ 2000); {e2e['ratio_per_surface_drawn_points_only']:.0f}× counting only the drawn points",
          flush=True)
    goals = {
        "smooth_evaluations_per_grid_point_le_0.2": all(r["evaluations_per_grid_point"] <= 0.2 for r in rows
                                                        if r["model"] != "resnet20_noshort"),
        "tolerance_holds_everywhere": all(r["max_abs_ln_loss_diff"] <= r["max_cell_tolerance"] or
                                          r["interpolated"] == 0 for r in rows),
        "certificate_bounds_error_everywhere": all(r["max_abs_ln_loss_diff"] <= r["certified_max_error"] or
                                                   r["interpolated"] == 0 for r in rows),
        "smooth_pearson_ge_0.999": all(r["pearson_ln_loss"] >= 0.999 for r in rows if r["model"] != "resnet20_noshort"),
        "end_to_end_ratio_ge_2000_at_r_ge_0.99": e2e["ratio_per_surface"] >= 2000 and
        e2e["pearson_ln_loss_vs_full_data"] >= 0.99,
    }
    print("goals: " + ", ".join(f"{k}: {v}" for k, v in goals.items()))
    print(json.dumps({"threads": torch.get_num_threads(), "tolerance": args.tolerance, "n_examples": N_EXAMPLES,
                      "models": [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()
                                  if not k.startswith("_")} for r in rows],
                      "end_to_end": e2e, "goals": goals}))


if __name__ == "__main__":
    main()
