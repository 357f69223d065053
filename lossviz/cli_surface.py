"""`lossviz surface` and `lossviz metrics`: the landscape engine from the command line.

    lossviz surface --model resnet56 --checkpoint model_300.t7 --dataset cifar10 \\
        --x -1:1:51 --y -1:1:51 --examples 250 --seed 0 --out surface.h5
    lossviz metrics surface.h5

`surface` resumes `--out` when it holds the same computation (rerun the same command after a crash).
`--adaptive TOL` evaluates only where interpolation would be off by more than TOL in ln(loss) and fills the
other points by interpolation (flagged in the file; the certificate is printed; see lossviz.adaptive).
Started by torchrun it splits the grid points between the ranks (gloo on CPUs, NCCL with one GPU per
process), with the same result:

    torchrun --standalone --nproc_per_node 4 -m lossviz.cli surface --model resnet56 ... --out surface.h5

Rank 0 alone reads and writes `--out` and `--dir-file`, and prints the summary. A job whose rank died
is resumed like a single process: rerun the same command (any number of ranks) and only the points
missing from `--out` are computed. Across nodes, and for the threads of CPU ranks: see lossviz.distributed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lossviz.cli import CliError, check_input_file, check_output_file, nonnegative_float, positive_float, positive_int

# argparse reads "-1:1:51" as an unknown option; this lets `--x -1:1:51` (the documented form) through.
_NEGATIVE_OR_AXIS = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]*:")
AXIS_FORM = "MIN:MAX:NUM, e.g. -1:1:51 (NUM ≥ 1 points, endpoints included)"


def parse_axis(spec: str, flag: str) -> np.ndarray:
    """'-1:1:51' → linspace(-1, 1, 51) (the official tool's form)."""
    parts = spec.split(":")
    try:
        if len(parts) != 3:
            raise ValueError
        low, high, num = float(parts[0]), float(parts[1]), float(parts[2])
    except ValueError:
        raise CliError(f"{flag} {spec!r} is not valid; expected {AXIS_FORM}") from None
    if not (math.isfinite(low) and math.isfinite(high)) or num != int(num) or num < 1 or (num > 1 and low >= high):
        raise CliError(f"{flag} {spec!r} is not valid; expected {AXIS_FORM} with MIN < MAX")
    return np.linspace(low, high, int(num))


# lossviz.tasks.TASKS's names: that module imports torch, which `--help` and argument errors need not load
# (tests/test_cli_errors.py checks they agree).
TASK_NAMES = ("classification", "regression", "language_modelling")


class DefaultExamples(int):
    """--examples when not given: a split with fewer examples is used whole (with a note), while a number
    asked for that the split cannot give is an error."""


def parse_examples(text: str) -> int | str:
    """`--examples`: a number, or 'auto' (chosen from a pilot grid's standard errors, lossviz.sampling)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; expected a positive integer or 'auto'") from None


def parse_tolerance(text: str) -> float:
    """`--adaptive`: a tolerance in ln(loss) units, ≥ 0 (0 evaluates every point)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not valid; expected a tolerance in ln(loss) units, a number "
                                         "≥ 0 (e.g. 0.05; 0 evaluates every point)")
    return value


def _load_model(args: argparse.Namespace, input_shape: tuple[int, ...] | None, num_classes: int | None):
    """A registered model (--checkpoint required) or the user's factory (--model-kwargs; --checkpoint optional)."""
    from lossviz.checkpoints import load_model_weights
    from lossviz.models import MODELS
    from lossviz.user_specs import build_user_model, parse_kwargs

    if args.checkpoint is None and args.model in MODELS:
        raise CliError(f"--checkpoint is required with a registered --model ({args.model}); a "
                       "package.module:factory model may load its own weights")
    model = build_user_model(args.model, parse_kwargs(args.model_kwargs, "--model-kwargs"), input_shape,
                             num_classes)
    if args.checkpoint is not None:
        load_model_weights(model, args.checkpoint)
    return model


@dataclass
class _DatasetSplit:
    """A split of a user's dataset (`lossviz.user_specs`), shaped like a prepared split: x the Dataset, no y
    (the targets are in its items)."""

    x: Any
    y: None = None

    def __len__(self) -> int:
        return len(self.x)


def _load_split(args: argparse.Namespace):
    """(what the model is built for: input_shape and num_classes, the split evaluated on)."""
    from lossviz.user_specs import is_user_dataset, parse_kwargs, user_dataset

    if is_user_dataset(args.dataset):
        data = user_dataset(args.dataset, args.split, args.data_root, parse_kwargs(args.dataset_kwargs,
                                                                                   "--dataset-kwargs"))
        return data, _DatasetSplit(data.dataset)
    from lossviz.data import load_splits

    splits = load_splits(args.data_root, args.dataset, val_size=0, normalize=args.normalize_inputs)
    return splits, (splits.test if args.split == "test" else splits.train)


def parse_params(text: str) -> str | list[str]:
    """`--params`: all, trainable, or comma-separated fnmatch patterns of parameter names."""
    return text if text in ("all", "trainable") else [part.strip() for part in text.split(",") if part.strip()]


def _directions(args: argparse.Namespace, model, two_d: bool):
    from lossviz.directions import Directions, random_directions

    if args.dir_file and Path(args.dir_file).exists():
        directions = Directions.load(args.dir_file, model)
        if two_d and directions.y is None:
            raise CliError(f"--dir-file {args.dir_file} holds one direction; --y needs two")
        return directions
    directions = random_directions(model, seed=args.seed, norm=args.norm, ignore=args.ignore, mode=args.mode,
                                   two_d=two_d, params=parse_params(args.params))
    if args.dir_file:
        directions.save(args.dir_file)
    return directions


def _examples(args: argparse.Namespace):
    if args.examples != "auto":
        return args.examples
    from lossviz.sampling import AutoExamples

    return AutoExamples() if args.auto_tolerance is None else AutoExamples(tolerance=args.auto_tolerance)


def _surface(args: argparse.Namespace) -> int:
    from lossviz import distributed
    from lossviz.checkpoints import CheckpointError
    from lossviz.data import DataError
    from lossviz.sampling import compute_surface
    from lossviz.surface import SurfaceFileError

    try:
        xs = parse_axis(args.x, "--x")
        ys = parse_axis(args.y, "--y") if args.y else None
        if args.examples != "auto" and args.examples < 1:
            raise CliError(f"--examples {args.examples} is not valid; expected a positive integer")
        if int(os.environ.get("WORLD_SIZE", 1)) == 1:  # under torchrun only rank 0's node needs them
            check_output_file(args.out, "--out")
            if args.dir_file:
                (check_input_file if Path(args.dir_file).exists() else check_output_file)(args.dir_file, "--dir-file")
    except CliError as error:  # the same on every rank under torchrun: rank 0 reports it
        if distributed.launch_rank() == 0:
            print(f"lossviz surface: error: {error}", file=sys.stderr)
        return 2
    try:
        # Under torchrun: one group for the whole command, each rank on its own device (nothing otherwise).
        with distributed.process_group(args.device) as device:
            splits, split = _load_split(args)
            if args.examples != "auto" and args.examples > len(split):
                if not isinstance(args.examples, DefaultExamples):  # asked for: an error, not a silent cut
                    raise CliError(f"--examples {args.examples} is more than the {len(split)} examples of the "
                                   f"{args.split} split of {args.dataset}; use at most {len(split)}")
                if distributed.launch_rank() == 0:
                    print(f"lossviz surface: note: the {args.split} split of {args.dataset} has {len(split)} "
                          f"examples, fewer than the default --examples {args.examples}: using all of them",
                          file=sys.stderr)
            before = _evaluated_in(args.out) if distributed.launch_rank() == 0 else 0
            model = _load_model(args, splits.input_shape, splits.num_classes)
            # Rank 0 alone reads or writes --dir-file; the other ranks get its directions.
            directions = distributed.from_rank_zero(lambda: _directions(args, model, ys is not None))
            surface = compute_surface(
                model, split.x, split.y, directions, xs, ys, n_examples=_examples(args), seed=args.seed,
                batch_size=args.batch_size, device=device, clip_radius=args.clip_radius, out=args.out,
                progress=not args.no_progress, method=args.method, adaptive=args.adaptive, task=args.task,
                meta={"model": args.model, "dataset": args.dataset, "split": args.split,
                      "checkpoint": str(args.checkpoint or ""), "dir_file": args.dir_file or ""})
    except (CliError, CheckpointError, DataError, SurfaceFileError, ValueError) as error:
        # Under torchrun rank 0 reports the errors every rank shares (a refused --out, differing ranks...);
        # another rank reports its own (e.g. a checkpoint missing on its node), else it would go unseen.
        if distributed.launch_rank() == 0:
            print(f"lossviz surface: error: {error}", file=sys.stderr)
        elif distributed.reports(error):
            print(f"lossviz surface: error on rank {distributed.launch_rank()}: {error}", file=sys.stderr)
        return 2
    if distributed.launch_rank() != 0:
        return 0
    interpolated = 0 if surface.interpolated is None else int(surface.interpolated.sum())
    evaluated, nonfinite = _evaluated(surface), surface.meta.get("nonfinite_points", 0)
    if nonfinite and evaluated == nonfinite:
        print(f"lossviz surface: error: all {nonfinite} evaluated points have a non-finite loss or accuracy (NaN or "
              f"±inf): the checkpoint {args.checkpoint} holds NaN/inf weights, or they overflow along the "
              f"directions (try a smaller --x/--y range); {args.out} records the points as non-finite",
              file=sys.stderr)
        return 1
    if evaluated == before:
        print(f"{args.out}: nothing left to compute; its {evaluated} points were computed before", end="")
    else:
        print(f"wrote {args.out}: {evaluated - before} points computed"
              f"{f' ({before} already in the file)' if before else ''}", end="")
    finite = np.isfinite(surface.loss).any()
    print(f"{f', {interpolated} interpolated' if interpolated else ''}"
          f"{f', loss from {np.nanmin(surface.loss):.4f} to {np.nanmax(surface.loss):.4f}' if finite else ''}")
    if nonfinite:
        print(f"lossviz surface: warning: {nonfinite} points have a non-finite loss or accuracy (NaN or ±inf); "
              "they are stored as non-finite, not as computed", file=sys.stderr)
    if surface.meta.get("n_examples_auto"):
        meta = surface.meta
        print(f"examples: auto chose n={meta['n_examples']} (tolerance {meta['auto_tolerance']:g}; worst standard "
              f"error of ln(loss) in the clip disk {meta['auto_max_ln_loss_se']:.4g})")
    if args.adaptive is not None:
        from lossviz.adaptive import certificate_of

        print(f"adaptive: {certificate_of(surface).summary()}")
    return 0


def _evaluated(surface) -> int:
    """Points evaluated (finite or not), interpolated ones excluded."""
    interpolated = 0 if surface.interpolated is None else int(surface.interpolated.sum())
    return int(np.isfinite(surface.loss).sum()) - interpolated + surface.meta.get("nonfinite_points", 0)


def _evaluated_in(out: str) -> int:
    """Points already evaluated in `out` (0 when it does not exist or cannot be read: the engine reports why)."""
    from lossviz.surface import Surface, SurfaceFileError

    try:
        return _evaluated(Surface.load(out)) if Path(out).is_file() else 0
    except SurfaceFileError:
        return 0


def json_safe(value):
    """`value` with every NaN or ±inf float replaced by None, so that it prints as valid JSON (null)."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def _metrics(args: argparse.Namespace) -> int:
    from lossviz.shape import surface_metrics
    from lossviz.surface import Surface, SurfaceFileError

    try:
        if not Path(args.file).is_file():
            raise CliError(f"FILE {args.file}: no such file")
        surface = Surface.load(args.file)
        result = surface_metrics(surface, clip_radius=args.clip_radius, flat_tolerance=args.flat_tolerance)
    except (CliError, SurfaceFileError, OSError) as error:
        print(f"lossviz metrics: error: {error}", file=sys.stderr)
        return 2
    result["complete"] = surface.meta.get("complete")
    result["nonfinite_points"] = surface.meta.get("nonfinite_points", 0)
    print(json.dumps(json_safe(result), indent=2, sort_keys=True, allow_nan=False))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from lossviz.options import IGNORES, METHODS, MODES, NORMS
    surface = subparsers.add_parser(
        "surface", help="compute a loss surface around a checkpoint (resumable)",
        description="Compute the loss and accuracy of a checkpoint on a grid along two (or one) random filter-"
                    "normalized directions, and write them to an HDF5 surface file; rerunning the same command "
                    "resumes it.\n\n" + __doc__.split("\n\n", 1)[1])
    surface._negative_number_matcher = _NEGATIVE_OR_AXIS
    surface.add_argument("--model", required=True,
                         help="registered model name (e.g. lenet5, resnet56) or package.module:factory, your function "
                              "returning an nn.Module")
    surface.add_argument("--model-kwargs", default=None, metavar="KWARGS",
                         help="keyword arguments of a package.module:factory model: JSON ('{\"width\": 8}') or "
                              "key=value,key=value")
    surface.add_argument("--checkpoint", default=None,
                         help="state_dict file (ours or the official .t7); required for a registered model")
    surface.add_argument("--dataset", required=True,
                         help="prepared dataset name (e.g. fashion_mnist), folder:PATH (image folder), PATH.npz "
                              "(x_test/y_test arrays), torchvision:CLASS (read from --data-root) or "
                              "package.module:function (returning train and test datasets)")
    surface.add_argument("--dataset-kwargs", default=None, metavar="KWARGS",
                         help="keyword arguments of a torchvision:CLASS or package.module:function dataset, as "
                              "--model-kwargs")
    surface.add_argument("--task", choices=TASK_NAMES, default="classification",
                         help="what the loss and accuracy are: classification (cross-entropy, top-1), regression "
                              "(MSE, no accuracy), language_modelling (token cross-entropy, token accuracy)")
    surface.add_argument("--params", default="all",
                         help="which parameters move: all, trainable (requires_grad: a frozen backbone stays put) "
                              "or comma-separated name patterns, e.g. 'classifier.*,fc.weight'")
    surface.add_argument("--data-root", default="data/prepared", help="prepared data directory")
    surface.add_argument("--split", choices=("test", "train"), default="test", help="the examples to evaluate on")
    surface.add_argument("--normalize-inputs", action="store_true",
                         help="normalize inputs by the dataset's channel statistics (as the model was trained)")
    surface.add_argument("--x", default="-1:1:51", help=f"α axis, {AXIS_FORM}")
    surface.add_argument("--y", default=None, help=f"β axis (omit for a 1-D slice), {AXIS_FORM}")
    surface.add_argument("--examples", type=parse_examples, default=DefaultExamples(250),
                         help="seeded random examples per point, or 'auto': the smallest n whose worst standard "
                              "error of ln(loss) on a pilot grid is at most --auto-tolerance")
    surface.add_argument("--auto-tolerance", type=positive_float, default=None,
                         help="with --examples auto: the largest acceptable standard error of ln(loss) "
                              "(default: lossviz.sampling.DEFAULT_TOLERANCE, 0.05)")
    surface.add_argument("--adaptive", type=parse_tolerance, default=None, metavar="TOL",
                         help="evaluate only where interpolation would be off by more than TOL in ln(loss) "
                              "(never tighter than a quarter of the points' standard error of ln(loss)) and fill "
                              "the rest by interpolation; 0 evaluates every point (default: off, every point)")
    surface.add_argument("--seed", type=int, default=0, help="seed of the examples and the directions")
    surface.add_argument("--norm", choices=NORMS, default="filter",
                         help="how each direction is scaled to the weights: per filter (Li et al.), per layer, ...")
    surface.add_argument("--ignore", choices=IGNORES, default="biasbn",
                         help="biasbn: zero directions for biases and BatchNorm parameters; none: perturb them too")
    surface.add_argument("--mode", choices=MODES, default="weights",
                         help="perturb the parameters only, or the whole state_dict (BatchNorm running stats too)")
    surface.add_argument("--dir-file", default=None,
                         help="direction file: read when it exists (ours or the official tool's), else written")
    surface.add_argument("--clip-radius", type=nonnegative_float, default=None,
                         help="skip points farther than this from the centre (default: compute every point)")
    surface.add_argument("--batch-size", type=positive_int, default=None, help="examples per forward (default: all)")
    surface.add_argument("--device", default="auto", help="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or "
                                                          "'cuda:N'")
    surface.add_argument("--method", choices=METHODS, default="auto",
                         help="evaluator: naive (one forward per point), fast (fused CPU kernels), vmap (batched "
                              "points, GPUs); auto: vmap on CUDA, fast elsewhere")
    surface.add_argument("--no-progress", action="store_true", help="no progress bar")
    surface.add_argument("--out", required=True, help="HDF5 surface file (resumed when it exists)")
    surface.set_defaults(func=_surface)

    metrics = subparsers.add_parser("metrics", help="shape metrics of a surface file, as JSON",
                                    description="Print a surface file's shape metrics (centre loss, convexity, "
                                                "flatness, ...) as JSON; values that are not finite print as null.")
    metrics.add_argument("file", metavar="FILE.h5", help="surface file (ours or the official tool's)")
    metrics.add_argument("--clip-radius", type=nonnegative_float, default=None,
                         help="look inside this radius (default: the radius the surface was computed with, else "
                              "half the grid's span)")
    metrics.add_argument("--flat-tolerance", type=nonnegative_float, default=0.1,
                         help="a point within this of the centre's loss counts as flat (the flatness metric), in "
                              "loss units")
    metrics.set_defaults(func=_metrics)
