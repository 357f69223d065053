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
import re
import sys
from pathlib import Path

import numpy as np

# argparse reads "-1:1:51" as an unknown option; this lets `--x -1:1:51` (the documented form) through.
_NEGATIVE_OR_AXIS = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[\d.]*:")
AXIS_FORM = "MIN:MAX:NUM, e.g. -1:1:51 (NUM ≥ 1 points, endpoints included)"


class CliError(ValueError):
    """Bad command-line input; the message names the flag and what is allowed."""


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


def _load_model(args: argparse.Namespace, input_shape: tuple[int, int, int], num_classes: int):
    from lossviz.checkpoints import load_model_weights
    from lossviz.models import build_model

    model = build_model(args.model, input_shape, num_classes)
    load_model_weights(model, args.checkpoint)
    return model


def _load_split(args: argparse.Namespace):
    from lossviz.data import load_splits

    splits = load_splits(args.data_root, args.dataset, val_size=0, normalize=args.normalize_inputs)
    return splits, (splits.test if args.split == "test" else splits.train)


def _directions(args: argparse.Namespace, model, two_d: bool):
    from lossviz.directions import Directions, random_directions

    if args.dir_file and Path(args.dir_file).exists():
        directions = Directions.load(args.dir_file, model)
        if two_d and directions.y is None:
            raise CliError(f"--dir-file {args.dir_file} holds one direction; --y needs two")
        return directions
    directions = random_directions(model, seed=args.seed, norm=args.norm, ignore=args.ignore, mode=args.mode,
                                   two_d=two_d)
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
    except CliError as error:  # the same on every rank under torchrun: rank 0 reports it
        if distributed.launch_rank() == 0:
            print(f"lossviz surface: error: {error}", file=sys.stderr)
        return 2
    try:
        # Under torchrun: one group for the whole command, each rank on its own device (nothing otherwise).
        with distributed.process_group(args.device) as device:
            splits, split = _load_split(args)
            model = _load_model(args, splits.input_shape, splits.num_classes)
            # Rank 0 alone reads or writes --dir-file; the other ranks get its directions.
            directions = distributed.from_rank_zero(lambda: _directions(args, model, ys is not None))
            surface = compute_surface(
                model, split.x, split.y, directions, xs, ys, n_examples=_examples(args), seed=args.seed,
                batch_size=args.batch_size, device=device, clip_radius=args.clip_radius, out=args.out,
                progress=not args.no_progress, method=args.method, adaptive=args.adaptive,
                meta={"model": args.model, "dataset": args.dataset, "split": args.split,
                      "checkpoint": str(args.checkpoint), "dir_file": args.dir_file or ""})
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
    done = int(np.isfinite(surface.loss).sum()) - interpolated
    print(f"wrote {args.out}: {done} points computed{f', {interpolated} interpolated' if interpolated else ''}, "
          f"loss from {np.nanmin(surface.loss):.4f} to {np.nanmax(surface.loss):.4f}")
    if surface.meta.get("n_examples_auto"):
        meta = surface.meta
        print(f"examples: auto chose n={meta['n_examples']} (tolerance {meta['auto_tolerance']:g}; worst standard "
              f"error of ln(loss) in the clip disk {meta['auto_max_ln_loss_se']:.4g})")
    if args.adaptive is not None:
        from lossviz.adaptive import certificate_of

        print(f"adaptive: {certificate_of(surface).summary()}")
    return 0


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
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    from lossviz.options import IGNORES, METHODS, MODES, NORMS

    surface = subparsers.add_parser("surface", help="compute a loss surface around a checkpoint (resumable)",
                                    description=__doc__.split("\n\n")[0])
    surface._negative_number_matcher = _NEGATIVE_OR_AXIS
    surface.add_argument("--model", required=True, help="registered model name, e.g. lenet5, resnet56")
    surface.add_argument("--checkpoint", required=True, help="state_dict file (ours or the official .t7)")
    surface.add_argument("--dataset", required=True, help="prepared dataset name, e.g. fashion_mnist")
    surface.add_argument("--data-root", default="data/prepared", help="prepared data directory")
    surface.add_argument("--split", choices=("test", "train"), default="test")
    surface.add_argument("--normalize-inputs", action="store_true",
                         help="normalize inputs by the dataset's channel statistics (as the model was trained)")
    surface.add_argument("--x", default="-1:1:51", help=f"α axis, {AXIS_FORM}")
    surface.add_argument("--y", default=None, help=f"β axis (omit for a 1-D slice), {AXIS_FORM}")
    surface.add_argument("--examples", type=parse_examples, default=250,
                         help="seeded random examples per point, or 'auto': the smallest n whose worst standard "
                              "error of ln(loss) on a pilot grid is at most --auto-tolerance")
    surface.add_argument("--auto-tolerance", type=float, default=None,
                         help="with --examples auto: the largest acceptable standard error of ln(loss) "
                              "(default: lossviz.sampling.DEFAULT_TOLERANCE, 0.05)")
    surface.add_argument("--adaptive", type=parse_tolerance, default=None, metavar="TOL",
                         help="evaluate only where interpolation would be off by more than TOL in ln(loss) "
                              "(never tighter than a quarter of the points' standard error of ln(loss)) and fill "
                              "the rest by interpolation; 0 evaluates every point (default: off, every point)")
    surface.add_argument("--seed", type=int, default=0, help="seed of the examples and the directions")
    surface.add_argument("--norm", choices=NORMS, default="filter")
    surface.add_argument("--ignore", choices=IGNORES, default="biasbn")
    surface.add_argument("--mode", choices=MODES, default="weights")
    surface.add_argument("--dir-file", default=None,
                         help="direction file: read when it exists (ours or the official tool's), else written")
    surface.add_argument("--clip-radius", type=float, default=None, help="skip points farther than this")
    surface.add_argument("--batch-size", type=int, default=None, help="examples per forward (default: all)")
    surface.add_argument("--device", default="auto")
    surface.add_argument("--method", choices=METHODS, default="auto")
    surface.add_argument("--no-progress", action="store_true")
    surface.add_argument("--out", required=True, help="HDF5 surface file (resumed when it exists)")
    surface.set_defaults(func=_surface)

    metrics = subparsers.add_parser("metrics", help="shape metrics of a surface file, as JSON")
    metrics.add_argument("file", metavar="FILE.h5")
    metrics.add_argument("--clip-radius", type=float, default=None)
    metrics.add_argument("--flat-tolerance", type=float, default=0.1, help="loss units")
    metrics.set_defaults(func=_metrics)
