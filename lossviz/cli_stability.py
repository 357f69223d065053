"""`lossviz interpolate` and `lossviz plane`: linear mode connectivity and planes through checkpoints.

    lossviz interpolate A.pt B.pt --model lenet5 --dataset fashion_mnist --examples 2000 --html path.html
    lossviz plane A.pt B.pt C.pt --model lenet5 --dataset fashion_mnist --grid 21 --html plane.html

Any checkpoints of one architecture (ours or the official .t7 layout). `--mask` applies a lottery mask to every
checkpoint, so pruned weights stay zero along the path and on the plane. `interpolate` prints the error and loss
barriers (Frankle et al. 2020) as JSON; `plane` prints the three points' coordinates and losses. `--out` keeps the
surface file and resumes it when it holds the same computation.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from torch import nn

from lossviz.checkpoints import CheckpointError, load_model_weights
from lossviz.data import DataError, TensorSplit, load_splits
from lossviz.figures import path_curves_figure, plane_figure
from lossviz.lottery import load_mask
from lossviz.models import build_model
from lossviz.options import METHODS
from lossviz.pages import write_html
from lossviz.pruning import Mask
from lossviz.stability import PATH_POINTS, STABLE_THRESHOLD, linear_path, plane_surface, plane_through
from lossviz.surface import SurfaceFileError


def _checkpoints(args: argparse.Namespace) -> list[str]:
    return [getattr(args, name) for name in ("A", "B", "C") if hasattr(args, name)]


def _inputs(args: argparse.Namespace) -> tuple[nn.Module, list[dict], TensorSplit, Mask | None]:
    """The architecture, each checkpoint's state (checked against it), the evaluation split and the mask."""
    splits = load_splits(args.data_root, args.dataset, val_size=0, normalize=args.normalize_inputs)
    template = build_model(args.model, splits.input_shape, splits.num_classes)
    states = []
    for path in _checkpoints(args):
        model = load_model_weights(build_model(args.model, splits.input_shape, splits.num_classes), path)
        states.append(model.state_dict())
    mask = load_mask(args.mask) if args.mask else None
    return template, states, splits.test if args.split == "test" else splits.train, mask


def _run(name: str, compute) -> int:
    try:
        result = compute()
    except (CheckpointError, DataError, SurfaceFileError, ValueError) as error:
        print(f"lossviz {name}: error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    def compute() -> dict:
        template, (state_a, state_b), split, mask = _inputs(args)
        curve = linear_path(template, state_a, state_b, split.x, split.y, points=args.points, n_examples=args.examples,
                            seed=args.seed, mask=mask, batch_size=args.batch_size, device=args.device,
                            method=args.method, out=args.out, progress=not args.no_progress,
                            meta={"model": args.model, "dataset": args.dataset, "split": args.split,
                                  "checkpoint_a": str(args.A), "checkpoint_b": str(args.B)})
        barrier = curve.barrier()
        if args.html:
            names = f"{Path(args.A).name} → {Path(args.B).name}"
            write_html(path_curves_figure({names: curve.to_dict()}, threshold=args.threshold,
                                          title=f"{args.model}: linear path {names}"), args.html)
        return {"error_barrier": barrier.error, "error_barrier_se": barrier.error_se, "error_peak_alpha":
                barrier.error_alpha, "loss_barrier": barrier.loss, "loss_barrier_se": barrier.loss_se,
                "loss_peak_alpha": barrier.loss_alpha, "stable": barrier.stable(args.threshold),
                "stable_threshold": args.threshold, "n_examples": curve.n_examples,
                "endpoints": {"error": [curve.error[0], curve.error[-1]], "loss": [curve.loss[0], curve.loss[-1]]}}

    return _run("interpolate", compute)


def _plane(args: argparse.Namespace) -> int:
    def compute() -> dict:
        template, states, split, mask = _inputs(args)
        names = args.names or [Path(path).name for path in _checkpoints(args)]
        plane = plane_through(*states, names=names, mask=mask)
        result = plane_surface(template, plane, split.x, split.y, grid_points=args.grid, margin=args.margin,
                               n_examples=args.examples, seed=args.seed, batch_size=args.batch_size,
                               device=args.device, method=args.method, out=args.out, progress=not args.no_progress,
                               meta={"model": args.model, "dataset": args.dataset, "split": args.split,
                                     "title": args.title or f"{args.model}: plane through {', '.join(names)}"})
        if args.html:
            write_html(plane_figure(result.surface, {p.name: (p.x, p.y, p.loss) for p in result.points}), args.html)
        return {"points": {p.name: {"x": p.x, "y": p.y, "loss": p.loss, "loss_se": p.loss_se, "accuracy": p.acc}
                           for p in result.points},
                "grid": {"x": [float(result.surface.xs[0]), float(result.surface.xs[-1])],
                         "y": [float(result.surface.ys[0]), float(result.surface.ys[-1])], "points": args.grid}}

    return _run("plane", compute)


def _common(parser: argparse.ArgumentParser, examples: int) -> None:
    parser.add_argument("--model", required=True, help="registered model name, e.g. lenet5, resnet56")
    parser.add_argument("--dataset", required=True, help="prepared dataset name, e.g. fashion_mnist")
    parser.add_argument("--data-root", default="data/prepared", help="prepared data directory")
    parser.add_argument("--split", choices=("test", "train"), default="test")
    parser.add_argument("--normalize-inputs", action="store_true",
                        help="normalize inputs by the dataset's channel statistics (as the model was trained)")
    parser.add_argument("--mask", help="a lottery mask file (mask.pt): applied to every checkpoint")
    parser.add_argument("--examples", type=int, default=examples, help="seeded random examples per point")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples")
    parser.add_argument("--batch-size", type=int, default=None, help="examples per forward (default: all)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--method", choices=METHODS, default="auto")
    parser.add_argument("--out", help="HDF5 surface file (resumed when it exists)")
    parser.add_argument("--html", help="self-contained HTML page to write")
    parser.add_argument("--no-progress", action="store_true")


def register(subparsers: argparse._SubParsersAction) -> None:
    interpolate = subparsers.add_parser(
        "interpolate", help="loss and error along the straight line between two checkpoints, and the barriers",
        description=__doc__.split("\n\n")[0])
    for name in ("A", "B"):
        interpolate.add_argument(name, help=f"checkpoint {name}: a state_dict file (ours or the official .t7)")
    interpolate.add_argument("--points", type=int, default=PATH_POINTS, help="evenly spaced α on [0, 1]")
    interpolate.add_argument("--threshold", type=float, default=STABLE_THRESHOLD,
                             help="error barrier (percentage points) within which the pair is stable")
    _common(interpolate, 2000)
    interpolate.set_defaults(func=_interpolate)

    plane = subparsers.add_parser("plane", help="the loss surface on the plane through three checkpoints",
                                  description=__doc__.split("\n\n")[0])
    for name in ("A", "B", "C"):
        plane.add_argument(name, help=f"checkpoint {name}: a state_dict file of the same architecture as A")
    plane.add_argument("--names", nargs=3, metavar="NAME", help="labels of the three points (default: the file names)")
    plane.add_argument("--grid", type=int, default=11, help="points per axis")
    plane.add_argument("--margin", type=float, default=0.25, help="around the three points, × their larger span")
    plane.add_argument("--title", help="page title")
    _common(plane, 250)
    plane.set_defaults(func=_plane)
