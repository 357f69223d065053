"""The landscape engine: mean loss and accuracy at every grid point θ = θ* + α·δ + β·η.

Owns the walk over a grid: the seeded example subset (the same for every point, `lossviz.inputs`; how it
meets the model and the loss, `lossviz.tasks`), the clip disk, the choice of evaluator (`make_evaluator`:
"naive" and "vmap" in `lossviz.evaluators`, "fast" in `lossviz.fused`), resume through `SurfaceFile`, the
progress bar, and the split of rounds between ranks under torch.distributed. Choosing the number of examples
adaptively (`n_examples="auto"`) is one layer up, in `lossviz.sampling`. With `adaptive=TOL` the walk visits
only the points `lossviz.adaptive.refine` asks for, round by round (each round split between ranks and
resumed like the full walk), and fills the rest by interpolation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lossviz import adaptive as adaptive_grid
from lossviz import distributed
from lossviz.directions import Directions, model_digest, model_tensors, tensors_digest
from lossviz.evaluators import NaiveEvaluator, PointEvaluator, VmapEvaluator
from lossviz.fused import FastEvaluator
from lossviz.inputs import check_model_accepts, draw_examples, examples_at
from lossviz.options import METHODS
from lossviz.runtime import configure_cpu, resolve_device
from lossviz.surface import COMPUTED, NONFINITE, Surface, SurfaceFile, outside_radius
from lossviz.tasks import LossFn, PointResult, Task, as_task

EVALUATORS = {"naive": NaiveEvaluator, "fast": FastEvaluator, "vmap": VmapEvaluator}
# Meta keys that must match for a surface file to be resumed rather than refused.
RESUME_IDENTITY = ("model_hash", "directions_hash", "seed", "n_examples", "mode", "loss", "clip_radius",
                   *adaptive_grid.IDENTITY_KEYS)  # absent (None) on fully evaluated surfaces
# Under torch.distributed, each rank's share of a round doubles until the slowest rank takes half this long:
# a round ends in a collective (milliseconds), and a killed job loses the round in flight besides what rank 0
# has not flushed yet (SurfaceFile's flush interval).
ROUND_SECONDS = 0.2


def grid_points(xs: np.ndarray, ys: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """α and β of every point, flat, in the stored order Z[iy, ix] (the official meshgrid('xy') order)."""
    if ys is None:
        return np.asarray(xs, dtype=np.float64), np.zeros(len(xs))
    alpha, beta = np.meshgrid(xs, ys, indexing="xy")
    return alpha.ravel(), beta.ravel()



def make_evaluator(method: str, model: nn.Module, directions: Directions, inputs: Any,
                   targets: Any, loss_fn: LossFn | None = None,
                   batch_size: int | None = None, device: str | torch.device = "auto",
                   points_per_batch: int | None = None, task: Task | str | None = None) -> PointEvaluator:
    """An evaluator over exactly these examples (no subset is drawn here): inputs a tensor, a tuple or a dict
    of tensors, targets a tensor; `task` (classification by default) with `loss_fn` replacing its loss."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; allowed: {', '.join(METHODS)}")
    device = resolve_device(device)
    if method == "auto":
        method = "vmap" if device.type == "cuda" else "fast"
    extra = {"points_per_batch": points_per_batch} if method == "vmap" and points_per_batch else {}
    return EVALUATORS[method](model, directions, inputs, targets, as_task(task, loss_fn),
                              batch_size or len(targets), device, **extra)


@contextmanager
def point_function(model: nn.Module, inputs: Any, targets: Any, directions: Directions,
                   example_indices: np.ndarray, *, method: str = "auto", loss_fn: LossFn | None = None,
                   batch_size: int | None = None, device: str | torch.device = "auto",
                   task: Task | str | None = None) -> Iterator[adaptive_grid.PointFunction]:
    """The engine's evaluator on these examples (a surface's `example_indices`) as a point function
    (alphas, betas) → (loss, acc, loss_se), e.g. for `lossviz.adaptive.spot_check`; closed on leaving."""
    task = as_task(task, loss_fn)
    examples = examples_at(inputs, targets, np.asarray(example_indices, dtype=np.int64), task)
    evaluator = make_evaluator(method, model, directions, examples.inputs, examples.targets, None, batch_size, device,
                               task=task)
    try:
        yield lambda alphas, betas: adaptive_grid.values_of(evaluator.evaluate_many(alphas, betas))
    finally:
        evaluator.close()


def _check_directions(model: nn.Module, directions: Directions, two_d: bool) -> None:
    expected = model_tensors(model, directions.mode)
    for axis in directions.axes():
        if list(axis) != list(expected):
            missing = sorted(set(expected) - set(axis))[:3]
            extra = sorted(set(axis) - set(expected))[:3]
            raise ValueError(f"the directions do not match the model's {directions.mode} tensors "
                             f"(missing {missing}, unexpected {extra})")
        for name, tensor in axis.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(f"direction {name!r} has shape {tuple(tensor.shape)}, the model's tensor "
                                 f"{tuple(expected[name].shape)}")
    if two_d and directions.y is None:
        raise ValueError("a 2-D surface (ys given) needs two directions; these have no y direction")


def compute_surface(model: nn.Module, inputs: Any, targets: Any, directions: Directions,
                    xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray | None = None,
                    n_examples: int | None = 250, seed: int = 0, loss_fn: LossFn | None = None,
                    batch_size: int | None = None, device: str | torch.device = "auto",
                    clip_radius: float | None = None, out: str | Path | None = None, progress: bool = True,
                    method: str = "auto", points_per_batch: int | None = None,
                    meta: dict[str, Any] | None = None,
                    adaptive: float | adaptive_grid.AdaptiveSettings | None = None,
                    task: Task | str | None = None) -> Surface:
    """The loss landscape of `model` on a seeded subset of n_examples of (inputs, targets) over xs × ys.

    The examples (`lossviz.inputs`): tensors; inputs that are a tuple or dict of tensors (fed as positional or
    keyword arguments); or a map-style Dataset, a DataLoader or an iterable dataset with `targets=None`. The
    subset is drawn once by index and held on the device. `task` (`lossviz.tasks`: "classification", the
    default, "regression", "language_modelling" or your own `Task`) says how a batch meets the model, the
    per-example loss and the accuracy (NaN where the task has none); `loss_fn` replaces the task's loss.

    Points are θ* + α·δ + β·η with δ, η = directions.x, .y; arrays are (ny, nx) with Z[iy, ix], or (nx,)
    when `ys` is None. `loss_fn(outputs, targets)` returns per-example losses. Points farther than
    `clip_radius` from the centre are skipped (NaN). With `out`, points are flushed to that HDF5 file as
    they finish and a rerun with the same arguments computes only the missing ones. `meta` adds entries
    (dataset, model name, dir_file...) to the surface's metadata. For `n_examples="auto"` (n chosen from a
    pilot grid's standard errors) call `lossviz.compute_surface`, i.e. `lossviz.sampling.compute_surface`.

    `adaptive` (a tolerance in ln(loss) units, or `lossviz.adaptive.AdaptiveSettings`): evaluate only where
    interpolation would miss the tolerance and fill the other points by interpolation (`Surface.interpolated`
    marks them; the certificate is in meta, `adaptive_*`); 0 evaluates every point. See `lossviz.adaptive`.

    Under torch.distributed (an initialized default group, e.g. `lossviz.distributed.process_group` in a
    torchrun job) every rank calls this with the same arguments: rank 0 alone opens `out` and decides the
    pending points, the ranks compute their shares of each round and send the results to rank 0, which
    records them; every rank returns the whole surface.
    """
    if n_examples is not None and not isinstance(n_examples, int | np.integer):
        raise ValueError(f"n_examples={n_examples!r}: the engine takes a number of examples or None (all); "
                         "'auto' is chosen by lossviz.compute_surface (lossviz.sampling)")
    xs = np.asarray(xs, dtype=np.float64).ravel()
    ys = None if ys is None else np.asarray(ys, dtype=np.float64).ravel()
    if len(xs) == 0 or (ys is not None and len(ys) == 0):
        raise ValueError("xs and ys must hold at least one coordinate each")
    task = as_task(task, loss_fn)
    _check_directions(model, directions, ys is not None)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        configure_cpu()
    settings = adaptive_grid.as_adaptive(adaptive)
    if settings is not None:
        meta = {**(meta or {}), **settings.meta()}
    indices, examples = draw_examples(inputs, targets, n_examples, seed, task)
    check_model_accepts(model, examples.inputs)
    template = _empty_surface(model, directions, xs, ys, indices, seed, task, clip_radius, meta)
    alphas, betas = grid_points(xs, ys)
    clipped = outside_radius(alphas, None if ys is None else betas, clip_radius) if clip_radius is not None \
        else np.zeros(len(alphas), dtype=bool)
    if distributed.world_size() > 1:
        _check_same_on_every_rank(template.meta, examples.tensors(), xs, ys,
                                  (method, torch_device.type, batch_size, points_per_batch))

    sink = _ResultSink(template, out)
    was_training = model.training
    evaluator = None
    try:
        # Rank 0 alone owns the file and decides what is left to compute.
        pending = distributed.from_rank_zero(lambda: sink.pending(clipped))
        if settings is not None:
            points = _AdaptivePoints(lambda: make_evaluator(
                method, model, directions, examples.inputs, examples.targets, None, batch_size,
                torch_device, points_per_batch, task), alphas, betas, sink, progress)
            try:
                refinement = adaptive_grid.refine(xs, ys, points, settings, clipped=clipped)
            finally:
                points.close()
        elif len(pending):
            evaluator = make_evaluator(method, model, directions, examples.inputs, examples.targets, None,
                                       batch_size, torch_device, points_per_batch, task)
            _walk_grid(evaluator, pending, alphas, betas, sink, total=int((~clipped).sum()), progress=progress)
    finally:
        if evaluator is not None:
            evaluator.close()
        model.train(was_training)
        sink.close()
    if settings is not None:
        return distributed.from_rank_zero(lambda: sink.finished_adaptive(refinement))
    return distributed.from_rank_zero(sink.finished)  # the whole surface, on every rank


def _empty_surface(model: nn.Module, directions: Directions, xs: np.ndarray, ys: np.ndarray | None,
                   indices: np.ndarray, seed: int, task: Task, clip_radius: float | None,
                   meta: dict[str, Any] | None) -> Surface:
    """The surface before any point is computed: its grid, examples and the metadata that identifies it."""
    surface_meta = {
        "seed": seed, "n_examples": len(indices), "mode": directions.mode,
        "norm": directions.meta.get("norm"), "ignore": directions.meta.get("ignore"),
        "direction_kind": directions.meta.get("kind"), "direction_seed": directions.meta.get("seed"),
        "model_hash": model_digest(model), "directions_hash": directions.digest(),
        "loss": task.loss_name, "task": task.name, "params": directions.meta.get("params", "all"),
        "clip_radius": clip_radius,
        "split": "test", **(meta or {}),
    }
    shape = (len(xs),) if ys is None else (len(ys), len(xs))
    empty = np.full(shape, np.nan)
    return Surface(xs, ys, empty, empty.copy(), empty.copy(), indices, surface_meta)


class _ResultSink:
    """Where rank 0 puts finished points: the resumable HDF5 file when there is one, else memory."""

    def __init__(self, template: Surface, out: str | Path | None):
        self.template, self.out = template, out
        self.store: SurfaceFile | None = None
        self.nonfinite = 0  # points whose loss or accuracy came out NaN/±inf (without a file: left NaN)

    def pending(self, clipped: np.ndarray) -> np.ndarray:
        if self.out is None:
            return np.flatnonzero(~clipped)
        self.store = SurfaceFile.open_or_create(self.out, self.template, RESUME_IDENTITY)
        return self.store.pending()

    def record(self, flat: int, result: PointResult) -> None:
        if self.store is not None:
            self.store.record(flat, result.loss, result.acc, result.loss_se)
        elif np.isfinite(result.loss) and not np.isinf(result.acc):  # NaN accuracy: the task has none
            for name in ("loss", "acc", "loss_se"):
                getattr(self.template, name).flat[flat] = getattr(result, name)
        else:
            self.nonfinite += 1

    def close(self) -> None:
        if self.store is not None:
            self.store.close()

    def finished(self) -> Surface:
        if self.out is not None:
            return Surface.load(self.out)
        self.template.meta["complete"] = True
        if self.nonfinite:
            self.template.meta["nonfinite_points"] = self.nonfinite
        return self.template

    # -- adaptive surfaces: points asked for by flat index, the interpolated rest written at the end ----------
    def missing(self, flats: np.ndarray) -> np.ndarray:
        """Those of `flats` the file does not hold yet (all of them without a file)."""
        if self.store is None:
            return flats
        done = self.store.status.flat[flats]
        return flats[(done != COMPUTED) & (done != NONFINITE)]

    def values(self, flats: np.ndarray) -> adaptive_grid.PointValues:
        source = self.store if self.store is not None else self.template
        return tuple(np.asarray(getattr(source, name), dtype=np.float64).flat[flats].copy()
                     for name in ("loss", "acc", "loss_se"))

    def finished_adaptive(self, refinement: adaptive_grid.Refinement) -> Surface:
        """The surface with its interpolated points and certificate; with a file, written to it atomically
        (a kill while writing leaves the resumable file as it was)."""
        surface = self.finished()
        surface.loss, surface.acc, surface.loss_se = refinement.loss, refinement.acc, refinement.loss_se
        surface.interpolated = refinement.interpolated if refinement.interpolated.any() else None
        surface.meta.update(refinement.certificate.meta())
        if self.out is not None:
            partial = Path(f"{self.out}.partial")
            surface.save(partial)
            os.replace(partial, self.out)
            surface = Surface.load(self.out)
        return surface


class _AdaptivePoints:
    """The engine as `lossviz.adaptive.refine`'s point function: flat indices → (loss, acc, loss_se). Rank 0
    decides which of them the file lacks; the ranks compute those like the full walk (`_walk_grid`'s rounds,
    split between ranks, recorded by rank 0); every rank gets rank 0's values, so every rank takes the same
    refinement decisions. The evaluator is built on the first point to compute (none on a finished file)."""

    def __init__(self, build_evaluator, alphas: np.ndarray, betas: np.ndarray, sink: _ResultSink,
                 progress: bool):
        self.build_evaluator, self.alphas, self.betas, self.sink = build_evaluator, alphas, betas, sink
        self.evaluator: PointEvaluator | None = None
        self.bar = tqdm(unit="pt", disable=not progress or distributed.rank() != 0, desc="adaptive surface",
                        smoothing=0.1)

    def __call__(self, flats: np.ndarray) -> adaptive_grid.PointValues:
        missing = distributed.from_rank_zero(lambda: self.sink.missing(flats))
        self.bar.total = (self.bar.total or 0) + len(flats)
        self.bar.update(len(flats) - len(missing))
        if len(missing):
            if self.evaluator is None:
                self.evaluator = self.build_evaluator()
            _walk_rounds(self.evaluator, missing, self.alphas, self.betas, self.sink, self.bar)
        return distributed.from_rank_zero(lambda: self.sink.values(flats))

    def close(self) -> None:
        self.bar.close()
        if self.evaluator is not None:
            self.evaluator.close()


def _walk_grid(evaluator: PointEvaluator, pending: np.ndarray, alphas: np.ndarray, betas: np.ndarray,
               sink: _ResultSink, *, total: int, progress: bool) -> None:
    """Evaluate the pending points in rounds that every rank walks in lockstep (the same sequence on every
    rank); each rank computes its share of a round and rank 0 records them all."""
    with tqdm(total=total, initial=total - len(pending), unit="pt", disable=not progress or distributed.rank() != 0,
              desc="surface", smoothing=0.1) as bar:
        _walk_rounds(evaluator, pending, alphas, betas, sink, bar)


def _walk_rounds(evaluator: PointEvaluator, pending: np.ndarray, alphas: np.ndarray, betas: np.ndarray,
                 sink: _ResultSink, bar: tqdm) -> None:
    """`_walk_grid`'s rounds, reporting to `bar`."""
    rank, world = distributed.rank(), distributed.world_size()
    share = getattr(evaluator, "points_per_batch", 1)  # points per rank per round
    position = 0
    while position < len(pending):
        batch = pending[position:position + share * world]
        position += len(batch)
        mine = np.array_split(batch, world)[rank]
        started = time.perf_counter()
        results = evaluator.evaluate_many(alphas[mine], betas[mine]) if len(mine) else []
        gathered = distributed.all_gather((mine, results, time.perf_counter() - started))
        if rank == 0:
            for flats, rank_results, _ in gathered:
                for flat, result in zip(flats, rank_results, strict=True):
                    sink.record(int(flat), result)
        # Every rank sees the same timings, so every rank takes the same decision.
        if world > 1 and max(seconds for *_, seconds in gathered) < ROUND_SECONDS / 2:
            share *= 2
        bar.update(len(batch))


def _check_same_on_every_rank(meta: dict[str, Any], examples: list[torch.Tensor], xs: np.ndarray,
                              ys: np.ndarray | None, settings: tuple[Any, ...]) -> None:
    """Ranks that loaded different checkpoints, directions or data would silently mix surfaces, and ranks
    with different settings would walk the grid out of step: refuse, on every rank alike (all see the same
    gathered fingerprints)."""
    grid = [torch.from_numpy(xs)] + ([] if ys is None else [torch.from_numpy(ys)])
    fingerprint = (meta["model_hash"], meta["directions_hash"], tensors_digest([*examples, *grid]),
                   meta["loss"], meta["clip_radius"], settings)
    fingerprints = distributed.all_gather(fingerprint)
    differing = [r for r, other in enumerate(fingerprints) if other != fingerprints[0]]
    if differing:
        raise distributed.on_every_rank(ValueError(
            f"ranks {differing} hold a different model, directions, examples, grid or settings (method, "
            "device type, batch size) than rank 0; every rank must load the same checkpoint, directions and "
            "data with the same arguments"))
