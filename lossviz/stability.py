"""Linear mode connectivity, instability analysis and planes through checkpoints.

Owns the maths of Frankle, Dziugaite, Roy & Carbin 2020 ("Linear Mode Connectivity and the Lottery Ticket
Hypothesis") and of Garipov et al. 2018's planes, on top of the landscape engine:

- the linear path θ(α) = (1 − α)·θ_A + α·θ_B between two state dicts of one architecture (`linear_path`):
  the engine's 1-D target direction θ_B − θ_A (`lossviz.directions.target_direction`, "states" mode, so
  BatchNorm running statistics move too and both ends are exactly the two networks) walked by
  `lossviz.engine.compute_surface` on its fixed seeded example subset. A mask, when given, is applied to
  both ends, so pruned weights are zero along the whole path. `PathCurve`: loss and error (percent) with
  their standard errors at every α.
- the barrier of a path (`barrier_height`, `PathCurve.barrier`): the maximum over α minus the mean of the
  two endpoints, for the error (Frankle et al.'s instability) and for the loss. It is never below half the
  endpoints' difference: only two equally good ends can have a zero barrier.
- the plane through three checkpoints (`plane_through`, `plane_surface`): û = (θ_B − θ_A)/‖θ_B − θ_A‖,
  v̂ = the part of θ_C − θ_A orthogonal to û, normalized (Gram–Schmidt); θ_A sits at (0, 0), θ_B at
  (‖θ_B − θ_A‖, 0) and θ_C at (⟨θ_C − θ_A, û⟩, ‖v‖). Every float entry of the state dict is a coordinate,
  so the three networks lie exactly on the plane.
- instability analysis of lottery tickets (`run_instability`, over a `lossviz.lottery` directory): for a
  ticket (kind, level) with mask m and a rewind epoch k, two copies start from m ⊙ θ_k (θ_0 the
  initialization; θ_k the dense network after k epochs of level 0's training, biases included as they
  were), each trains the remaining epochs − k epochs to the end under the mask with its own data-order
  seed (`copy_seed`), and the path between the two gives the barriers. The mask is the one the `lottery`
  run found (with its own rewind point); a sweep over k rewinds that mask to several points.

On disk (`out_dir` of `run_instability`), resumable at every step:

    rewind/epoch_<k>.pt                                θ_k of the dense run (k > 0), {"state_dict": ...}
    <kind>/level_<NN>/k_<k>/pair_<p>/copy_<a|b>/model.pt, result.json   a trained copy (result.json last)
    <kind>/level_<NN>/k_<k>/pair_<p>/path.h5           the path, flushed point by point (engine resume)
    <kind>/level_<NN>/k_<k>/pair_<p>/path.json         `PairResult`: written last, the pair is finished
    planes/<name>.h5, planes/<name>.json               a plane's surface and its three points

No MLflow and no figures here: progress goes through `InstabilityCallbacks`.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lossviz.checkpoints import atomic_save, cpu_state_dict, load_state_dict
from lossviz.data import Splits
from lossviz.directions import Directions, target_direction
from lossviz.engine import compute_surface, make_evaluator
from lossviz.lottery import KINDS, level_dir, level_name, load_mask, write_text_atomic
from lossviz.options import METHODS
from lossviz.pruning import Mask, density, masked_state
from lossviz.surface import Surface
from lossviz.tasks import LossFn, cross_entropy_per_example, select_examples
from lossviz.training import EpochRecord, TrainConfig, train

State = Mapping[str, torch.Tensor]
PATH_POINTS = 25  # Frankle et al. evaluate 30 evenly spaced α; 25 keeps α = 0.5 on the grid
# Frankle et al. call a network stable when its error barrier is within about 2 percentage points.
STABLE_THRESHOLD = 2.0
COPIES = ("a", "b")
PLANE_KINDS = ("copies", "tickets")
# A third point whose distance from the line through the first two is below this fraction of their distances is
# on that line: float32 checkpoints carry rounding of ~1e-7 relative, far below it.
COLLINEAR_TOLERANCE = 1e-5
PAIR_FORMAT = "lossviz.instability.pair/1"


# -- states ---------------------------------------------------------------------------------------------------
def _check_same_layout(state_a: State, state_b: State, names: tuple[str, str] = ("A", "B")) -> None:
    if list(state_a) != list(state_b):
        missing = sorted(set(state_a) ^ set(state_b))[:4]
        raise ValueError(f"checkpoints {names[0]} and {names[1]} have different entries ({missing}); "
                         "they must be state dicts of one architecture")
    for name, tensor in state_a.items():
        if tensor.shape != state_b[name].shape:
            raise ValueError(f"{name}: shape {tuple(tensor.shape)} in {names[0]} but {tuple(state_b[name].shape)} "
                             f"in {names[1]}; they must be state dicts of one architecture")


def apply_mask(state: State, mask: Mask | None) -> dict[str, torch.Tensor]:
    """`state` with the pruned weights zeroed (a copy; without a mask, the entries as they are)."""
    if mask is None:
        return dict(state)
    unknown = sorted(set(mask) - set(state))
    if unknown:
        raise ValueError(f"mask entries {unknown[:4]} are not in the checkpoint")
    return masked_state(dict(state), mask)


def interpolate_states(state_a: State, state_b: State, alpha: float,
                       mask: Mask | None = None) -> dict[str, torch.Tensor]:
    """(1 − α)·θ_A + α·θ_B entry by entry; integer buffers (BatchNorm's step counter) are θ_A's. With a mask
    both ends are masked first, so the pruned weights are zero for every α."""
    a, b = apply_mask(state_a, mask), apply_mask(state_b, mask)
    _check_same_layout(a, b)
    return {name: (1 - alpha) * value + alpha * b[name] if value.is_floating_point() else value.clone()
            for name, value in a.items()}


def model_at(template: nn.Module, state: State) -> nn.Module:
    """A private copy of `template` holding `state` (strict: every entry, no more), in eval mode."""
    model = copy.deepcopy(template)
    model.load_state_dict(dict(state))
    return model.eval()


def _make_parent(out: str | Path | None) -> None:
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)


# -- the path and its barrier --------------------------------------------------------------------------------
def error_standard_error(error_percent: np.ndarray, n_examples: int) -> np.ndarray:
    """The standard error of an error rate (percent) measured on n examples: the sample standard deviation of
    the 0/1 per-example errors over √n, the same estimator as the engine's loss standard error."""
    p = np.asarray(error_percent, dtype=np.float64) / 100
    if n_examples < 2:
        return np.full_like(p, np.nan)
    return 100 * np.sqrt(p * (1 - p) / (n_examples - 1))


def barrier_height(values: Sequence[float] | np.ndarray) -> float:
    """Frankle et al.'s barrier of a curve along α ∈ [0, 1]: its maximum minus the mean of its two endpoints."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or len(values) < 2:
        raise ValueError(f"a barrier needs a curve of at least 2 points, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError("the curve has missing (NaN) points: compute the whole path first")
    return float(values.max() - (values[0] + values[-1]) / 2)


@dataclass(frozen=True)
class Barrier:
    """Barriers of one path. The standard errors combine those of the peak and of the two ends as if they were
    independent (they share examples, so this is an approximation)."""

    error: float         # percentage points
    error_se: float
    error_alpha: float   # the first α where the error peaks
    loss: float
    loss_se: float
    loss_alpha: float    # the first α where the loss peaks

    def stable(self, threshold: float = STABLE_THRESHOLD) -> bool:
        return self.error <= threshold


def _peak_se(se: np.ndarray, peak: int) -> float:
    return float(math.sqrt(se[peak] ** 2 + (se[0] ** 2 + se[-1] ** 2) / 4))


@dataclass(frozen=True)
class PathCurve:
    """Loss and error along α ∈ [0, 1] on one fixed set of examples, with standard errors."""

    alphas: np.ndarray
    loss: np.ndarray
    loss_se: np.ndarray
    error: np.ndarray      # percent
    error_se: np.ndarray   # percent
    n_examples: int

    @classmethod
    def from_surface(cls, surface: Surface) -> PathCurve:
        if surface.is_2d:
            raise ValueError("a path is a 1-D surface (ys is None); this surface is 2-D")
        n = int(surface.meta.get("n_examples", len(surface.example_indices)))
        error = 100 - np.asarray(surface.acc, dtype=np.float64)
        return cls(np.asarray(surface.xs, dtype=np.float64), np.asarray(surface.loss, dtype=np.float64),
                   np.asarray(surface.loss_se, dtype=np.float64), error, error_standard_error(error, n), n)

    def barrier(self) -> Barrier:
        """The barriers; without an accuracy (a regression task: error NaN all along) the error barrier, its SE
        and α are NaN, and such a path is never called stable."""
        loss_peak = int(np.argmax(self.loss))
        if np.isnan(self.error).all():
            error = error_se = error_alpha = math.nan
        else:
            error_peak = int(np.argmax(self.error))
            error, error_se = barrier_height(self.error), _peak_se(self.error_se, error_peak)
            error_alpha = float(self.alphas[error_peak])
        return Barrier(error=error, error_se=error_se, error_alpha=error_alpha,
                       loss=barrier_height(self.loss), loss_se=_peak_se(self.loss_se, loss_peak),
                       loss_alpha=float(self.alphas[loss_peak]))

    def to_dict(self) -> dict[str, Any]:
        return {"alphas": self.alphas.tolist(), "loss": self.loss.tolist(), "loss_se": self.loss_se.tolist(),
                "error": self.error.tolist(), "error_se": self.error_se.tolist(), "n_examples": self.n_examples}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PathCurve:
        arrays = {key: np.asarray(values[key], dtype=np.float64)
                  for key in ("alphas", "loss", "loss_se", "error", "error_se")}
        return cls(**arrays, n_examples=int(values["n_examples"]))


def linear_path(model: nn.Module, state_a: State, state_b: State, inputs: torch.Tensor, targets: torch.Tensor, *,
                points: int = PATH_POINTS, n_examples: int | None = None, seed: int = 0, mask: Mask | None = None,
                loss_fn: LossFn = cross_entropy_per_example, batch_size: int | None = None,
                device: str | torch.device = "auto", method: str = "auto", out: str | Path | None = None,
                progress: bool = True, meta: dict[str, Any] | None = None) -> PathCurve:
    """The loss and error of θ(α) = (1 − α)·θ_A + α·θ_B at `points` evenly spaced α ∈ [0, 1], on the engine's
    seeded subset of `n_examples` of (inputs, targets). `model` gives the architecture (its weights are not
    used or changed). With `out`, the path is flushed to that HDF5 surface file point by point and a rerun
    computes only the missing points."""
    if points < 2:
        raise ValueError(f"points={points} is not valid; allowed: an integer >= 2 (α = 0 and 1 at least)")
    start, end = apply_mask(state_a, mask), apply_mask(state_b, mask)
    _check_same_layout(start, end)
    start_model, end_model = model_at(model, start), model_at(model, end)
    direction = target_direction(start_model, end_model, mode="states")
    _make_parent(out)
    surface = compute_surface(start_model, inputs, targets, direction, np.linspace(0.0, 1.0, points), None,
                              n_examples=n_examples, seed=seed, loss_fn=loss_fn, batch_size=batch_size,
                              device=device, out=out, progress=progress, method=method,
                              meta={"path": "linear", "masked": mask is not None, **(meta or {})})
    return PathCurve.from_surface(surface)


# -- the plane through three checkpoints ----------------------------------------------------------------------
def _flat(state: State, names: Sequence[str]) -> torch.Tensor:
    return torch.cat([state[name].detach().reshape(-1).double().cpu() for name in names])


@dataclass
class Plane:
    """The plane θ_A + x·û + y·v̂ through three checkpoints: `points` maps each one's name to its (x, y)."""

    origin: dict[str, torch.Tensor]   # θ_A (masked), the point (0, 0)
    u: dict[str, torch.Tensor]        # û, unit length over the float entries; zero on integer buffers
    v: dict[str, torch.Tensor]        # v̂, unit length, orthogonal to û
    points: dict[str, tuple[float, float]]

    def state_at(self, x: float, y: float) -> dict[str, torch.Tensor]:
        return {name: value + x * self.u[name].to(value.dtype) + y * self.v[name].to(value.dtype)
                if value.is_floating_point() else value.clone() for name, value in self.origin.items()}

    def directions(self) -> Directions:
        return Directions(self.u, self.v, "states",
                          {"kind": "plane", "points": {name: list(xy) for name, xy in self.points.items()}})

    def grid(self, grid_points: int, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Axes spanning the three points with `margin` × their larger span added on every side."""
        if grid_points < 2 or margin < 0:
            raise ValueError(f"grid_points={grid_points}, margin={margin}: allowed grid_points >= 2, margin >= 0")
        coordinates = np.asarray(list(self.points.values()), dtype=np.float64)
        low, high = coordinates.min(axis=0), coordinates.max(axis=0)
        pad = margin * float((high - low).max())
        return (np.linspace(low[0] - pad, high[0] + pad, grid_points),
                np.linspace(low[1] - pad, high[1] + pad, grid_points))


def plane_through(state_a: State, state_b: State, state_c: State, *, names: Sequence[str] = ("A", "B", "C"),
                  mask: Mask | None = None) -> Plane:
    """Garipov et al.'s plane through three state dicts of one architecture, by Gram–Schmidt (module docstring).
    With a mask, the three are masked first: û and v̂ are then zero on pruned weights, and so is every point
    of the plane."""
    if len(names) != 3 or len(set(names)) != 3:
        raise ValueError(f"names={list(names)}: expected three distinct names")
    a, b, c = (apply_mask(state, mask) for state in (state_a, state_b, state_c))
    _check_same_layout(a, b, (names[0], names[1]))
    _check_same_layout(a, c, (names[0], names[2]))
    floats = [name for name, value in a.items() if value.is_floating_point()]
    origin = _flat(a, floats)
    first, second = _flat(b, floats) - origin, _flat(c, floats) - origin
    u_norm = float(first.norm())
    if u_norm == 0:
        raise ValueError(f"{names[0]} and {names[1]} are the same point: they span no plane")
    u = first / u_norm
    x_c = float(second @ u)
    rest = second - x_c * u
    v_norm = float(rest.norm())
    if v_norm <= COLLINEAR_TOLERANCE * max(u_norm, float(second.norm())):
        raise ValueError(f"{names[0]}, {names[1]} and {names[2]} are on one line: they span no plane")
    v = rest / v_norm

    def unflatten(vector: torch.Tensor) -> dict[str, torch.Tensor]:
        out, offset = {}, 0
        for name, value in a.items():
            if value.is_floating_point():
                out[name] = vector[offset:offset + value.numel()].reshape(value.shape).to(value.dtype)
                offset += value.numel()
            else:
                out[name] = torch.zeros(value.shape)
        return out

    points = {names[0]: (0.0, 0.0), names[1]: (u_norm, 0.0), names[2]: (x_c, v_norm)}
    return Plane({name: value.detach().clone() for name, value in a.items()}, unflatten(u), unflatten(v), points)


@dataclass(frozen=True)
class PlanePoint:
    """One of the three checkpoints on its plane, evaluated there on the surface's examples."""

    name: str
    x: float
    y: float
    loss: float
    loss_se: float
    acc: float  # percent


@dataclass
class PlaneResult:
    plane: Plane
    surface: Surface
    points: list[PlanePoint]


def save_plane_points(points: Sequence[PlanePoint], path: str | Path) -> None:
    """The three points of a plane (name, coordinates, loss, accuracy) as JSON, beside its surface file."""
    write_text_atomic(Path(path), json.dumps([asdict(point) for point in points], indent=2) + "\n")


def load_plane_points(path: str | Path) -> list[PlanePoint]:
    return [PlanePoint(**values) for values in json.loads(Path(path).read_text())]


def plane_surface(model: nn.Module, plane: Plane, inputs: torch.Tensor, targets: torch.Tensor, *,
                  grid_points: int = 15, margin: float = 0.25, n_examples: int | None = None, seed: int = 0,
                  loss_fn: LossFn = cross_entropy_per_example, batch_size: int | None = None,
                  device: str | torch.device = "auto", method: str = "auto", out: str | Path | None = None,
                  progress: bool = True, meta: dict[str, Any] | None = None) -> PlaneResult:
    """The loss surface over `plane` (grid: `Plane.grid`), and the three checkpoints evaluated at their own
    coordinates on the same examples by the same kind of evaluator. `model` gives the architecture."""
    origin_model = model_at(model, plane.origin)
    directions = plane.directions()
    xs, ys = plane.grid(grid_points, margin)
    _make_parent(out)
    surface = compute_surface(origin_model, inputs, targets, directions, xs, ys, n_examples=n_examples, seed=seed,
                              loss_fn=loss_fn, batch_size=batch_size, device=device, out=out, progress=progress,
                              method=method, meta={"plane_points": directions.meta["points"], **(meta or {})})
    index = torch.from_numpy(select_examples(len(targets), n_examples, seed))
    evaluator = make_evaluator(method, origin_model, directions, inputs[index], targets[index], loss_fn,
                               batch_size, device)
    try:
        names = list(plane.points)
        results = evaluator.evaluate_many([plane.points[n][0] for n in names], [plane.points[n][1] for n in names])
    finally:
        evaluator.close()
    points = [PlanePoint(name, *plane.points[name], result.loss, result.loss_se, result.acc)
              for name, result in zip(names, results, strict=True)]
    return PlaneResult(plane, surface, points)


# -- instability analysis of lottery tickets ------------------------------------------------------------------
def copy_seed(seed: int, level: int, rewind_epoch: int, pair: int, copy_name: str) -> int:
    """The training seed (data order) of one copy, fixed by (seed, level, k, pair, copy) and independent of
    the ticket's kind: a winning and a random ticket of one level see the same data orders, so the mask is
    the only difference between them."""
    state = np.random.SeedSequence([seed, level, rewind_epoch, pair, COPIES.index(copy_name)]).generate_state(1)
    return int(state[0] % 2**31)


@dataclass(frozen=True)
class InstabilityConfig:
    """What to analyse. Validated on creation; an error names the field, the value and what is allowed."""

    levels: tuple[int, ...] = (0,)
    kinds: tuple[str, ...] = KINDS
    rewind_epochs: tuple[int, ...] = (0,)   # k: each below the training epochs (copies train epochs − k)
    pairs: int = 1                          # independent pairs of copies per (kind, level, k)
    path_points: int = PATH_POINTS
    n_examples: int | None = 2000           # seeded test examples of every path (None: all)
    seed: int = 0                           # the copies' seeds and the example subset
    method: str = "auto"                    # engine evaluator: auto | naive | fast | vmap
    planes: tuple[str, ...] = PLANE_KINDS   # copies: start + both copies; tickets: winning, random, dense
    plane_grid_points: int = 11
    plane_margin: float = 0.25
    plane_n_examples: int | None = 250

    def __post_init__(self) -> None:
        def require(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; allowed: {allowed}")

        require(len(self.levels) > 0 and all(level >= 0 for level in self.levels)
                and len(set(self.levels)) == len(self.levels), "levels", "distinct integers >= 0")
        require(len(self.kinds) > 0 and set(self.kinds) <= set(KINDS) and len(set(self.kinds)) == len(self.kinds),
                "kinds", f"distinct values of {', '.join(KINDS)}")
        require(len(self.rewind_epochs) > 0 and all(k >= 0 for k in self.rewind_epochs)
                and len(set(self.rewind_epochs)) == len(self.rewind_epochs), "rewind_epochs",
                "distinct integers >= 0 (below the training epochs)")
        require(self.pairs >= 1, "pairs", "an integer >= 1")
        require(self.path_points >= 3, "path_points", "an integer >= 3")
        require(self.n_examples is None or self.n_examples >= 2, "n_examples", "null (all) or an integer >= 2")
        require(self.method in METHODS, "method", ", ".join(METHODS))
        require(set(self.planes) <= set(PLANE_KINDS) and len(set(self.planes)) == len(self.planes), "planes",
                f"distinct values of {', '.join(PLANE_KINDS)}")
        require("tickets" not in self.planes or (0 in self.levels and set(KINDS) <= set(self.kinds)), "planes",
                "'tickets' needs level 0 in levels (the dense network) and both kinds")
        require(self.plane_grid_points >= 2, "plane_grid_points", "an integer >= 2")
        require(self.plane_margin >= 0, "plane_margin", "a number >= 0")
        require(self.plane_n_examples is None or self.plane_n_examples >= 2, "plane_n_examples",
                "null (all) or an integer >= 2")


@dataclass(frozen=True, order=True)
class PairKey:
    """One pair of copies: a ticket (kind, level), a rewind epoch k and the pair's index."""

    kind: str
    level: int
    rewind_epoch: int
    pair: int

    @property
    def name(self) -> str:
        return f"{self.kind}/{level_name(self.level)}/k_{self.rewind_epoch}/pair_{self.pair}"

    def directory(self, out_dir: str | Path) -> Path:
        return Path(out_dir) / self.name


@dataclass
class CopyResult:
    """One trained copy. Accuracies are fractions in [0, 1]; the weights are those of the last epoch."""

    kind: str
    level: int
    rewind_epoch: int
    pair: int
    copy: str
    seed: int
    epochs: int
    iterations: int
    test_acc: float | None
    test_loss: float | None
    seconds: float
    shared_with: str | None = None  # "winning" when the random ticket's mask is the winning one (level 0)
    history: list[dict[str, float]] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, directory: str | Path) -> CopyResult:
        return cls(**json.loads((Path(directory) / "result.json").read_text()))


@dataclass
class PairResult:
    """The path between the two copies of one pair, and its barriers."""

    kind: str
    level: int
    rewind_epoch: int
    pair: int
    remaining: float          # P_m: live fraction of the prunable weights
    seeds: list[int]
    copies_test_acc: list[float | None]
    curve: PathCurve
    barrier: Barrier
    shared_with: str | None = None

    @property
    def key(self) -> PairKey:
        return PairKey(self.kind, self.level, self.rewind_epoch, self.pair)

    def to_json(self) -> str:
        values = {**{k: v for k, v in asdict(self).items() if k not in ("curve", "barrier")},
                  "format": PAIR_FORMAT, "curve": self.curve.to_dict(), "barrier": asdict(self.barrier)}
        return json.dumps(values, indent=2, sort_keys=True) + "\n"

    @classmethod
    def load(cls, directory: str | Path) -> PairResult:
        values = json.loads((Path(directory) / "path.json").read_text())
        if values.pop("format", None) != PAIR_FORMAT:
            raise ValueError(f"{directory}/path.json: not a {PAIR_FORMAT} file; delete it to recompute")
        return cls(**{**values, "curve": PathCurve.from_dict(values["curve"]), "barrier": Barrier(**values["barrier"])})


@dataclass
class InstabilityCallbacks:
    """Hooks for trackers and tests, all optional. `replayed` is True for work found finished on disk or, for
    epochs, restored from a training checkpoint."""

    epoch: Callable[[PairKey, str, EpochRecord, bool], None] | None = None
    copy_end: Callable[[PairKey, str, CopyResult, Path, bool], None] | None = None
    pair_end: Callable[[PairKey, PairResult, Path, bool], None] | None = None


def _data_fingerprint(splits: Splits) -> dict[str, Any]:
    """The data a `lottery` directory records in imp.json: sizes and sums of every split."""
    def data(split) -> list[float] | None:
        return None if split is None else [len(split), float(split.x.sum(dtype=torch.float64)), float(split.y.sum())]

    return {"train": data(splits.train), "val": data(splits.val), "test": data(splits.test)}


class Instability:
    """Instability analysis over one `lottery` directory (`tickets_dir`) into `out_dir`; `run()` does it all.

    `config` is the lottery's training config (the copies train with it, to the end, for epochs − k epochs,
    each with its own seed); it must be the one imp.json records, so that θ_k is that run's."""

    def __init__(self, make_model: Callable[[], nn.Module], splits: Splits, config: TrainConfig,
                 settings: InstabilityConfig, tickets_dir: str | Path, out_dir: str | Path, *,
                 checkpoint_dir: str | Path | None = None, callbacks: InstabilityCallbacks | None = None,
                 progress: bool = True):
        self.make_model, self.splits, self.config, self.settings = make_model, splits, config, settings
        self.tickets_dir, self.out_dir = Path(tickets_dir), Path(out_dir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.callbacks = callbacks or InstabilityCallbacks()
        self.progress = progress
        if splits.test is None:
            raise ValueError("instability analysis evaluates paths on the test split: give splits with test")
        too_late = [k for k in settings.rewind_epochs if k >= config.epochs]
        if too_late:
            raise ValueError(f"rewind_epochs {too_late} are not valid; allowed: 0 … {config.epochs - 1} "
                             f"(below the training epochs, {config.epochs}: the copies train epochs − k epochs)")
        self.identity = self._check_tickets()
        self.template = make_model()
        self._rewind: dict[int, dict[str, torch.Tensor]] = {}

    # -- inputs ---------------------------------------------------------------------------------------------
    def _check_tickets(self) -> dict[str, Any]:
        identity_path = self.tickets_dir / "imp.json"
        if not identity_path.is_file():
            raise ValueError(f"{self.tickets_dir}: no imp.json; not a lottery directory (run the lottery first)")
        identity = json.loads(identity_path.read_text())
        missing = [str(level_dir(self.tickets_dir, kind, level)) for kind in self.settings.kinds
                   for level in self.settings.levels
                   if not (level_dir(self.tickets_dir, kind, level) / "mask.pt").is_file()]
        if missing:
            raise ValueError(f"{self.tickets_dir} lacks the tickets {', '.join(missing[:4])}: levels must exist "
                             f"in the lottery run (levels 0 … {identity['imp']['levels'] - 1})")
        ours = {key: value for key, value in asdict(self.config).items() if key != "progress"}
        differs = sorted(key for key in ours if json.loads(json.dumps(ours[key])) != identity["train"].get(key))
        if differs:
            raise ValueError(f"the training config differs from the lottery run's in {', '.join(differs)}: the "
                             "copies must train as the tickets did (and θ_k must be that run's)")
        if json.loads(json.dumps(_data_fingerprint(self.splits))) != identity["data"]:
            raise ValueError("the data differ from the lottery run's (sizes or sums of the splits): load the "
                             "splits as the lottery did (val_size, seed, normalize, max_train_examples)")
        return identity

    def rewind_state(self, k: int) -> dict[str, torch.Tensor]:
        """θ_k: θ0 for k = 0, the lottery's rewind.pt when it rewound to epoch k, else the dense network after k
        epochs of level 0's training (computed once for every k needed, saved in rewind/)."""
        if k not in self._rewind:
            if k == 0:
                self._rewind[k] = load_state_dict(self.tickets_dir / "theta0.pt")
            elif k == self.identity["imp"]["rewind_epoch"] and (self.tickets_dir / "rewind.pt").is_file():
                self._rewind[k] = load_state_dict(self.tickets_dir / "rewind.pt")
            else:
                path = self.out_dir / "rewind" / f"epoch_{k}.pt"
                if not path.is_file():
                    self._dense_trajectory()
                self._rewind[k] = load_state_dict(path)
        return self._rewind[k]

    def _dense_trajectory(self) -> None:
        """The dense run from θ0 with level 0's config and seed, saving θ_k after each epoch k that is asked for.
        Without early stopping and patience the weights after epoch k are those of the lottery's level 0 (the
        scheduler acts between epochs, early stopping only restores weights at the end)."""
        wanted = sorted(k for k in self.settings.rewind_epochs if k > 0)
        model = model_at(self.template, load_state_dict(self.tickets_dir / "theta0.pt"))
        config = replace(self.config, epochs=wanted[-1], early_stopping=False, patience=None)

        def keep(record: EpochRecord, replayed: bool) -> None:
            if record.epoch in wanted:
                atomic_save({"state_dict": cpu_state_dict(model), "what": "rewind", "epoch": record.epoch,
                             "iteration": record.iteration}, self.out_dir / "rewind" / f"epoch_{record.epoch}.pt")

        train(model, self.splits, config, callbacks=[keep])

    def mask(self, kind: str, level: int) -> Mask:
        return load_mask(level_dir(self.tickets_dir, kind, level) / "mask.pt")

    def start_state(self, key: PairKey) -> dict[str, torch.Tensor]:
        """m ⊙ θ_k: where both copies of a pair start."""
        return masked_state(self.rewind_state(key.rewind_epoch), self.mask(key.kind, key.level))

    def copy_config(self, key: PairKey, copy_name: str) -> TrainConfig:
        return replace(self.config, epochs=self.config.epochs - key.rewind_epoch, early_stopping=False,
                       patience=None, seed=copy_seed(self.settings.seed, key.level, key.rewind_epoch, key.pair,
                                                     copy_name))

    def keys(self) -> list[PairKey]:
        kinds = [kind for kind in KINDS if kind in self.settings.kinds]  # winning first: random may share it
        return [PairKey(kind, level, k, pair) for kind in kinds for level in sorted(self.settings.levels)
                for k in sorted(self.settings.rewind_epochs) for pair in range(self.settings.pairs)]

    # -- one pair -------------------------------------------------------------------------------------------
    def finished(self, key: PairKey) -> bool:
        return (key.directory(self.out_dir) / "path.json").is_file()

    def _shared_source(self, key: PairKey) -> PairKey | None:
        """The winning pair a random pair is identical to: same mask (level 0), same start, same seeds."""
        if key.kind != "random" or "winning" not in self.settings.kinds:
            return None
        winning, random = self.mask("winning", key.level), self.mask(key.kind, key.level)
        if set(winning) != set(random) or not all(torch.equal(winning[n], random[n]) for n in winning):
            return None
        return replace(key, kind="winning")

    def train_copy(self, key: PairKey, copy_name: str) -> CopyResult:
        directory = key.directory(self.out_dir) / f"copy_{copy_name}"
        if (directory / "result.json").is_file():
            result = CopyResult.load(directory)
            self._replay_copy(key, copy_name, result, directory)
            return result
        config = self.copy_config(key, copy_name)
        mask = self.mask(key.kind, key.level)
        model = model_at(self.template, self.start_state(key)).train()
        callbacks = []
        if self.callbacks.epoch:
            epoch_callback = self.callbacks.epoch
            callbacks.append(lambda record, replayed: epoch_callback(key, copy_name, record, replayed))
        checkpoint = (self.checkpoint_dir / f"{key.name.replace('/', '-')}-{copy_name}.pt"
                      if self.checkpoint_dir else None)
        trained = train(model, self.splits, config, masks=mask, callbacks=callbacks, checkpoint_path=checkpoint)
        final = trained.final
        result = CopyResult(kind=key.kind, level=key.level, rewind_epoch=key.rewind_epoch, pair=key.pair,
                            copy=copy_name, seed=config.seed, epochs=trained.stopped_epoch,
                            iterations=trained.iterations, test_acc=final.test_acc, test_loss=final.test_loss,
                            seconds=trained.seconds,
                            history=[{"epoch": record.epoch, **record.metrics()} for record in trained.history])
        atomic_save({"state_dict": cpu_state_dict(model), "kind": key.kind, "level": key.level,
                     "rewind_epoch": key.rewind_epoch, "pair": key.pair, "copy": copy_name, "seed": config.seed},
                    directory / "model.pt")
        write_text_atomic(directory / "result.json", result.to_json())  # last: the copy is finished
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        if self.callbacks.copy_end:
            self.callbacks.copy_end(key, copy_name, result, directory, False)
        return result

    def _replay_copy(self, key: PairKey, copy_name: str, result: CopyResult, directory: Path) -> None:
        if self.callbacks.epoch:
            for record in result.history:
                self.callbacks.epoch(key, copy_name, EpochRecord(**record), True)
        if self.callbacks.copy_end:
            self.callbacks.copy_end(key, copy_name, result, directory, True)

    def copy_state(self, key: PairKey, copy_name: str) -> dict[str, torch.Tensor]:
        return load_state_dict(key.directory(self.out_dir) / f"copy_{copy_name}" / "model.pt")

    def run_pair(self, key: PairKey) -> PairResult:
        directory = key.directory(self.out_dir)
        if self.finished(key):
            result = PairResult.load(directory)
            for copy_name in COPIES:
                self._replay_copy(key, copy_name, CopyResult.load(directory / f"copy_{copy_name}"),
                                  directory / f"copy_{copy_name}")
            self._emit_pair(key, result, directory, True)
            return result
        source = self._shared_source(key)
        if source is not None and self.finished(source):
            return self._share(key, source)
        copies = [self.train_copy(key, copy_name) for copy_name in COPIES]
        mask = self.mask(key.kind, key.level)
        curve = linear_path(self.template, self.copy_state(key, "a"), self.copy_state(key, "b"), self.splits.test.x,
                            self.splits.test.y, points=self.settings.path_points, n_examples=self.settings.n_examples,
                            seed=self.settings.seed, mask=mask, device=self.config.device,
                            method=self.settings.method, out=directory / "path.h5", progress=self.progress,
                            meta={"kind": key.kind, "level": key.level, "rewind_epoch": key.rewind_epoch,
                                  "pair": key.pair})
        result = PairResult(kind=key.kind, level=key.level, rewind_epoch=key.rewind_epoch, pair=key.pair,
                            remaining=density(mask)["total"], seeds=[c.seed for c in copies],
                            copies_test_acc=[c.test_acc for c in copies], curve=curve, barrier=curve.barrier())
        write_text_atomic(directory / "path.json", result.to_json())  # last: the pair is finished
        self._emit_pair(key, result, directory, False)
        return result

    def _share(self, key: PairKey, source: PairKey) -> PairResult:
        """A random pair identical to a finished winning one: its files copied, marked shared."""
        directory, origin = key.directory(self.out_dir), source.directory(self.out_dir)
        staging = directory.with_name(f".{directory.name}.staging")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(origin, staging)
        for copy_name in COPIES:
            copied = replace(CopyResult.load(origin / f"copy_{copy_name}"), kind=key.kind, shared_with=source.kind)
            write_text_atomic(staging / f"copy_{copy_name}" / "result.json", copied.to_json())
        result = replace(PairResult.load(origin), kind=key.kind, shared_with=source.kind)
        write_text_atomic(staging / "path.json", result.to_json())
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)
        for copy_name in COPIES:
            self._replay_copy(key, copy_name, CopyResult.load(directory / f"copy_{copy_name}"),
                              directory / f"copy_{copy_name}")
        self._emit_pair(key, result, directory, False)
        return result

    def _emit_pair(self, key: PairKey, result: PairResult, directory: Path, replayed: bool) -> None:
        if self.callbacks.pair_end:
            self.callbacks.pair_end(key, result, directory, replayed)

    def run(self) -> list[PairResult]:
        keys = self.keys()
        results = []
        bar = tqdm(keys, desc="instability", unit="pair", disable=not self.progress)
        for key in bar:
            bar.set_postfix_str(key.name, refresh=False)
            results.append(self.run_pair(key))
        bar.close()
        return results

    # -- planes ---------------------------------------------------------------------------------------------
    def plane_specs(self) -> dict[str, tuple[list[tuple[str, State]], Mask | None]]:
        """The planes the settings ask for, by name: three (name, state) points and the mask they share.
        copies: a ticket's start m ⊙ θ_k and its two copies (pair 0; a shared random ticket is skipped);
        tickets: per level > 0 and k, the winning, the random and the dense network's copy A (pair 0)."""
        specs: dict[str, tuple[list[tuple[str, State]], Mask | None]] = {}
        for key in self.keys():
            if key.pair != 0:
                continue
            if "copies" in self.settings.planes and self._shared_source(key) is None:
                specs[f"copies_{key.kind}_{level_name(key.level)}_k_{key.rewind_epoch}"] = (
                    [("start", self.start_state(key)), ("copy A", self.copy_state(key, "a")),
                     ("copy B", self.copy_state(key, "b"))], self.mask(key.kind, key.level))
            if "tickets" in self.settings.planes and key.kind == "winning" and key.level > 0:
                specs[f"tickets_{level_name(key.level)}_k_{key.rewind_epoch}"] = (
                    [("winning", self.copy_state(key, "a")),
                     ("random", self.copy_state(replace(key, kind="random"), "a")),
                     ("dense", self.copy_state(replace(key, level=0), "a"))], None)
        return specs

    def planes(self) -> dict[str, PlaneResult]:
        """Every plane of `plane_specs`: its surface flushed point by point to planes/<name>.h5 (resumable), its
        three points to planes/<name>.json."""
        results = {}
        specs = self.plane_specs()
        for name, (points, mask) in tqdm(specs.items(), desc="planes", unit="plane", disable=not self.progress):
            plane = plane_through(*(state for _, state in points), names=[label for label, _ in points], mask=mask)
            results[name] = plane_surface(
                self.template, plane, self.splits.test.x, self.splits.test.y,
                grid_points=self.settings.plane_grid_points, margin=self.settings.plane_margin,
                n_examples=self.settings.plane_n_examples, seed=self.settings.seed, device=self.config.device,
                method=self.settings.method, out=self.out_dir / "planes" / f"{name}.h5", progress=self.progress,
                meta={"title": name, "plane": name})
            save_plane_points(results[name].points, self.out_dir / "planes" / f"{name}.json")
        return results


def run_instability(make_model: Callable[[], nn.Module], splits: Splits, config: TrainConfig,
                    settings: InstabilityConfig, tickets_dir: str | Path, out_dir: str | Path, *,
                    checkpoint_dir: str | Path | None = None, callbacks: InstabilityCallbacks | None = None,
                    progress: bool = True) -> list[PairResult]:
    """Run (or resume) the instability analysis of the tickets in `tickets_dir` into `out_dir` (layout: module
    docstring). Returns one `PairResult` per (kind, level, k, pair)."""
    return Instability(make_model, splits, config, settings, tickets_dir, out_dir, checkpoint_dir=checkpoint_dir,
                       callbacks=callbacks, progress=progress).run()


# -- summaries ------------------------------------------------------------------------------------------------
def _spread(values: list[float], own: list[float]) -> float:
    """The standard error of a mean over pairs: their spread when there are several, else the one pair's own."""
    if len(values) > 1:
        return float(np.std(values, ddof=1) / math.sqrt(len(values)))
    return float(own[0])


def summarize_barriers(results: Iterable[PairResult], threshold: float = STABLE_THRESHOLD) -> dict[str, Any]:
    """Per kind, level and k: the mean error and loss barriers over the pairs with standard errors (the spread
    over pairs when there are several, else the path's own), P_m, the copies' mean test accuracy, and whether
    the ticket is stable (mean error barrier within `threshold` percentage points)."""
    groups: dict[tuple[str, int, int], list[PairResult]] = {}
    for result in results:
        groups.setdefault((result.kind, result.level, result.rewind_epoch), []).append(result)
    summary: dict[str, Any] = {}
    for (kind, level, k), pairs in sorted(groups.items()):
        errors, losses = [p.barrier.error for p in pairs], [p.barrier.loss for p in pairs]
        accuracies = [acc for p in pairs for acc in p.copies_test_acc if acc is not None]
        entry = {"remaining": pairs[0].remaining, "pairs": len(pairs),
                 "error_barrier": float(np.mean(errors)),
                 "error_barrier_se": _spread(errors, [p.barrier.error_se for p in pairs]),
                 "loss_barrier": float(np.mean(losses)),
                 "loss_barrier_se": _spread(losses, [p.barrier.loss_se for p in pairs]),
                 "copies_test_acc": float(np.mean(accuracies)) if accuracies else None,
                 "stable": bool(np.mean(errors) <= threshold)}
        summary.setdefault(kind, {}).setdefault(level_name(level), {"remaining": pairs[0].remaining})[f"k_{k}"] = entry
    return summary


def load_pair_results(out_dir: str | Path) -> list[PairResult]:
    """Every finished pair under `out_dir`, in the order `Instability.run` returns them (winning first)."""
    found = [PairResult.load(path.parent) for path in Path(out_dir).glob("*/level_*/k_*/pair_*/path.json")]
    return sorted(found, key=lambda r: (KINDS.index(r.kind), r.level, r.rewind_epoch, r.pair))

