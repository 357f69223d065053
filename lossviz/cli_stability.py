"""`lossviz interpolate` and `lossviz plane`: linear mode connectivity and planes through checkpoints.

    lossviz interpolate A.pt B.pt --model lenet5 --dataset fashion_mnist --examples 2000 --html path.html
    lossviz plane A.pt B.pt C.pt --model lenet5 --dataset fashion_mnist --grid 21 --html plane.html

Any checkpoints of one architecture (ours or the official .t7 layout). `--mask` applies a lottery mask to every
checkpoint, so pruned weights stay zero along the path and on the plane. `interpolate` prints the error and loss
barriers (Frankle et al. 2020) as JSON; `plane` prints the three points' coordinates and losses. `--out` keeps the
surface file and resumes it when it holds the same computation.

torch, the data and the figures are imported by the handlers, after the arguments are parsed: `--help` and
the other subcommands do not pay for them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from lossviz.cli import check_input_file, check_output_file, is_user_error, nonnegative_float, positive_int
from lossviz.options import METHODS

if TYPE_CHECKING:
    from torch import nn

    from lossviz.data import TensorSplit
    from lossviz.pruning import Mask

# lossviz.stability's PATH_POINTS and STABLE_THRESHOLD, which imports torch (tests check they agree)
PATH_POINTS = 25
STABLE_THRESHOLD = 2.0


def _checkpoints(args: argparse.Namespace) -> list[str]:
    return [getattr(args, name) for name in ("A", "B", "C") if hasattr(args, name)]


def _inputs(args: argparse.Namespace) -> tuple[nn.Module, list[dict], TensorSplit, Mask | None]:
    """The architecture, each checkpoint's state (checked against it), the evaluation split and the mask."""
    from lossviz.checkpoints import load_model_weights
    from lossviz.data import load_splits
    from lossviz.lottery import load_mask
    from lossviz.models import build_model

    splits = load_splits(args.data_root, args.dataset, val_size=0, normalize=args.normalize_inputs)
    template = build_model(args.model, splits.input_shape, splits.num_classes)
    states = []
    for path in _checkpoints(args):
        model = load_model_weights(build_model(args.model, splits.input_shape, splits.num_classes), path)
        states.append(model.state_dict())
    mask = load_mask(args.mask) if args.mask else None
    return template, states, splits.test if args.split == "test" else splits.train, mask


def _check_files(args: argparse.Namespace) -> None:
    """Inputs exist and outputs can be written, before anything is loaded or computed."""
    for path in _checkpoints(args):
        check_input_file(path, "checkpoint")
    if args.mask:
        check_input_file(args.mask, "--mask")
    if args.out:
        check_output_file(args.out, "--out")
    if args.html:
        check_output_file(args.html, "--html", create_parents=True)


def _run(name: str, args: argparse.Namespace, compute) -> int:
    try:
        _check_files(args)
        result = compute()
    except Exception as error:
        if getattr(args, "debug", False) or not is_user_error(error):
            raise
        print(f"lossviz {name}: error: {error}", file=sys.stderr)
        return 2
    from lossviz.cli_surface import json_safe

    print(json.dumps(json_safe(result), indent=2, sort_keys=True, allow_nan=False))
    return 0


def _interpolate(args: argparse.Namespace) -> int:
    def compute() -> dict:
        from lossviz.figures import path_curves_figure
        from lossviz.pages import write_html
        from lossviz.stability import linear_path

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

    return _run("interpolate", args, compute)


def _plane(args: argparse.Namespace) -> int:
    def compute() -> dict:
        from lossviz.figures import plane_figure
        from lossviz.pages import write_html
        from lossviz.stability import plane_surface, plane_through

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

    return _run("plane", args, compute)


def _common(parser: argparse.ArgumentParser, examples: int) -> None:
    parser.add_argument("--model", required=True, help="registered model name, e.g. lenet5, resnet56")
    parser.add_argument("--dataset", required=True, help="prepared dataset name, e.g. fashion_mnist")
    parser.add_argument("--data-root", default="data/prepared", help="prepared data directory")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="the examples to evaluate on")
    parser.add_argument("--normalize-inputs", action="store_true",
                        help="normalize inputs by the dataset's channel statistics (as the model was trained)")
    parser.add_argument("--mask", help="a lottery mask file (mask.pt): applied to every checkpoint")
    parser.add_argument("--examples", type=positive_int, default=examples, help="seeded random examples per point")
    parser.add_argument("--seed", type=int, default=0, help="seed of the examples")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="examples per forward (default: all)")
    parser.add_argument("--device", default="auto", help="'auto' (CUDA when present, else CPU), 'cpu', 'cuda' or "
                                                         "'cuda:N'")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="evaluator: naive, fast (fused CPU kernels) or vmap (GPUs); auto: vmap on CUDA, else fast")
    parser.add_argument("--out", help="HDF5 surface file (resumed when it exists)")
    parser.add_argument("--html", help="self-contained HTML page to write")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    interpolate = subparsers.add_parser(
        "interpolate", help="loss and error along the straight line between two checkpoints, and the barriers",
        description="Evaluate loss and error along the straight line between two checkpoints and print the error "
                    "and loss barriers (linear mode connectivity) as JSON.\n\n" + __doc__.split("\n\n")[1])
    for name in ("A", "B"):
        interpolate.add_argument(name, help=f"checkpoint {name}: a state_dict file (ours or the official .t7)")
    interpolate.add_argument("--points", type=positive_int, default=PATH_POINTS, help="evenly spaced α on [0, 1]")
    interpolate.add_argument("--threshold", type=nonnegative_float, default=STABLE_THRESHOLD,
                             help="error barrier (percentage points) within which the pair is stable")
    _common(interpolate, 2000)
    interpolate.set_defaults(func=_interpolate)

    plane = subparsers.add_parser("plane", help="the loss surface on the plane through three checkpoints",
                                  description="Compute the loss surface on the plane through three checkpoints and "
                                              "print the three points' coordinates and losses as JSON.\n\n"
                                              + __doc__.split("\n\n")[1])
    for name in ("A", "B", "C"):
        plane.add_argument(name, help=f"checkpoint {name}: a state_dict file of the same architecture as A")
    plane.add_argument("--names", nargs=3, metavar="NAME", help="labels of the three points (default: the file names)")
    plane.add_argument("--grid", type=positive_int, default=11, help="points per axis")
    plane.add_argument("--margin", type=nonnegative_float, default=0.25,
                       help="around the three points, × their larger span")
    plane.add_argument("--title", help="page title")
    _common(plane, 250)
    plane.set_defaults(func=_plane)
