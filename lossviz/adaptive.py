"""Adaptive surfaces: the target grid evaluated only where interpolation would be poor, every other point filled
by interpolation, with an error certificate.

Owns the refinement (`refine`, on any point function; `refine_function` for (α, β) → values functions such as
an analytic surface), its settings (`AdaptiveSettings`: the tolerance rule below), the certificate it issues
(`Certificate`), and two checks of a finished surface: the spot check that evaluates filled points for real
(`spot_check`) and the agreement with a fully evaluated grid where the grids share points
(`common_points_agreement`). The engine
(`lossviz.engine.compute_surface(..., adaptive=TOL)`) is one point function: it brings the evaluator, the
resumable file and the split between torchrun ranks.

The refinement works in ln(loss), on cells of grid indices (interpolating in the grid's coordinates, so uneven
axes are fine):
1. Evaluate a coarse lattice of the target grid (`coarse_points` per axis); its cells are rectangles of target
   points whose corners are evaluated.
2. Test each cell: evaluate its check points (edge midpoints and centre: the corners of its four children) and
   compare their ln(loss) with the bilinear interpolation of the cell's corners. The largest difference, d, is
   measured; the cell's estimated error is e = SAFETY × d.
3. e within the cell's tolerance: accept the cell. Its children's remaining points are filled by bilinear
   interpolation of the children's corners (all evaluated), each point with estimated error e. Otherwise split
   the cell into its children and test those in the next round (one batch of points per round, which the
   engine splits between ranks). A cell with no point left to fill ends there (so does a cell wholly outside
   the clip disk, which is never evaluated); a cell with a non-finite value is never interpolated, so it is
   refined down to evaluated points.
4. Stop when no cell is left: every drawn point is evaluated or filled (the target grid).

A cell across the clip disk's edge has corners or check points outside it: those are evaluated too, as support
points (they are not drawn, and the file stores them as clipped), because the disk's edge is an edge of the
picture, not of the function: without them every cell along the edge would be refined down to single points,
and that ring would cost more than the rest of the disk. Only cells that could fill points from them ask for
them, and the certificate counts them (`support`).

The estimate is conservative on smooth surfaces: d is measured on the parent cell, at twice the spacing of the
children whose points are filled, and bilinear interpolation's error shrinks with the square of the spacing (on
a quadratic 4 times less on an even split, and at least 2 times less on an odd one, whose check point is off
the middle: a side of 3 points split into 1 and 2 is the worst case), so e = 2d is 4 to 8 times the true error
there. The factor covers surfaces that are rough at the grid's own scale, where the error of a filled point can
exceed the error measured one scale up: 1.25 times on resnet20_noshort in benchmarks/bench_adaptive.py, where
e = d let a filled point miss a 0.05 tolerance by 18 %. A feature narrower than the check points' spacing on the
coarse lattice can be missed entirely (no sampling sees between its samples): `coarse_points` sets that spacing.

Tolerance rule. The tolerance is in ln(loss) units: 0.05 keeps a filled loss within about ±5 % of what
evaluating the point would give (on the same examples). It is never tighter than the points' own sampling
error makes meaningful: a cell's tolerance is max(tolerance, se_fraction × the smallest standard error of
ln(loss) among its evaluated points). An interpolation error e independent of a sampling error se adds to it
in quadrature, sqrt(se² + e²), so e ≤ se/4 (the default) raises the error a point already has by at most 3 %.
Tolerance 0 asks for the exact grid: every point is evaluated (the floor only ever loosens a positive
tolerance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lossviz.surface import Surface, outside_radius
from lossviz.tasks import PointResult

DEFAULT_SE_FRACTION = 0.25
DEFAULT_COARSE_POINTS = 9
SAFETY = 2.0  # estimated error = SAFETY × the error measured at a cell's check points (module docstring)
# ln(0) is -inf; a loss this small is zero for any picture (the figures draw it at the same floor).
LOG_FLOOR = 1e-12

# (loss, accuracy in percent, standard error of the loss), one value per point.
PointValues = tuple[np.ndarray, np.ndarray, np.ndarray]
# Flat indices of the target grid (Z[iy, ix] order) → their values.
FlatEvaluate = Callable[[np.ndarray], PointValues]
# (alphas, betas) → their values: an analytic surface, or a model through an evaluator.
PointFunction = Callable[[np.ndarray, np.ndarray], PointValues]

Cell = tuple[int, int, int, int]  # (y0, y1, x0, x1): inclusive index ranges, corners evaluated


@dataclass(frozen=True)
class AdaptiveSettings:
    """Settings of an adaptive surface (see the module docstring for the rule).

    tolerance      largest accepted estimated interpolation error, in ln(loss); 0 evaluates every point
    se_fraction    a cell's tolerance is at least this fraction of its smallest standard error of ln(loss)
    coarse_points  points per axis of the first lattice (capped at the target's); its check points, at half
                   its spacing, are the finest features the refinement is sure to look at
    """

    tolerance: float
    se_fraction: float = DEFAULT_SE_FRACTION
    coarse_points: int = DEFAULT_COARSE_POINTS

    def __post_init__(self) -> None:
        for name in ("tolerance", "se_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
                raise ValueError(f"adaptive {name}={value!r} is not valid; expected a finite number ≥ 0 "
                                 "(ln(loss) units for the tolerance, 0 = evaluate every point)")
        if isinstance(self.coarse_points, bool) or int(self.coarse_points) != self.coarse_points \
                or self.coarse_points < 2:
            raise ValueError(f"adaptive coarse_points={self.coarse_points!r} is not valid; expected an integer ≥ 2")
        object.__setattr__(self, "tolerance", float(self.tolerance))
        object.__setattr__(self, "se_fraction", float(self.se_fraction))
        object.__setattr__(self, "coarse_points", int(self.coarse_points))

    def meta(self) -> dict[str, Any]:
        """The surface metadata that identifies an adaptive computation (a resumed file must match them)."""
        return {"adaptive_tolerance": self.tolerance, "adaptive_se_fraction": self.se_fraction,
                "adaptive_coarse_points": self.coarse_points}


IDENTITY_KEYS = ("adaptive_tolerance", "adaptive_se_fraction", "adaptive_coarse_points")


def as_adaptive(value: float | AdaptiveSettings | None) -> AdaptiveSettings | None:
    """None (off) and AdaptiveSettings pass through; a number is a tolerance with the default settings."""
    if value is None or isinstance(value, AdaptiveSettings):
        return value
    if isinstance(value, int | float | np.floating | np.integer) and not isinstance(value, bool):
        return AdaptiveSettings(float(value))
    raise ValueError(f"adaptive={value!r} is not valid; expected None (off), a tolerance in ln(loss) units "
                     "(a number ≥ 0) or lossviz.adaptive.AdaptiveSettings(...)")


@dataclass(frozen=True)
class Certificate:
    """What an adaptive surface guarantees, as far as its check points can tell."""

    tolerance: float                # requested, ln(loss)
    se_fraction: float
    max_error: float                # largest estimated interpolation error of a filled point, ln(loss); 0 if none
    max_error_alpha: float | None   # where it was measured (a check point of the cell it was measured on)
    max_error_beta: float | None
    max_cell_tolerance: float       # loosest tolerance a cell was accepted at (above `tolerance` where the
    #                                 standard-error floor raised it); 0 when no cell was accepted
    evaluated: int                  # drawn points evaluated
    interpolated: int               # drawn points filled by interpolation
    support: int                    # points outside the clip disk evaluated as interpolation support
    drawn: int                      # points of the picture: the grid less the clipped points
    grid_points: int
    rounds: int                     # batches of evaluations (the first is the coarse lattice)

    @property
    def evaluations(self) -> int:
        """Every point evaluated: the drawn ones and the support points."""
        return self.evaluated + self.support

    @property
    def evaluated_fraction(self) -> float:
        """Evaluations per drawn point (1 for a fully evaluated surface)."""
        return self.evaluations / self.drawn if self.drawn else math.nan

    def meta(self) -> dict[str, Any]:
        return {"adaptive_max_error": self.max_error, "adaptive_max_error_alpha": self.max_error_alpha,
                "adaptive_max_error_beta": self.max_error_beta,
                "adaptive_max_cell_tolerance": self.max_cell_tolerance, "adaptive_evaluated": self.evaluated,
                "adaptive_interpolated": self.interpolated, "adaptive_support": self.support,
                "adaptive_drawn": self.drawn,
                "adaptive_grid_points": self.grid_points, "adaptive_rounds": self.rounds}

    def summary(self) -> str:
        where = "" if self.max_error_alpha is None else f" at α={self.max_error_alpha:.3g}" + (
            "" if self.max_error_beta is None else f", β={self.max_error_beta:.3g}")
        raised = "" if self.max_cell_tolerance <= self.tolerance else \
            f" (raised to {self.max_cell_tolerance:.3g} where the points' standard errors are larger)"
        support = f" and {self.support} support points outside the clip disk" if self.support else ""
        return (f"evaluated {self.evaluated} of {self.drawn} drawn points{support} ({self.evaluations} evaluations, "
                f"{100 * self.evaluated_fraction:.1f} % of the drawn points), {self.interpolated} interpolated; "
                f"largest estimated interpolation error "
                f"{self.max_error:.3g} ln(loss){where}; tolerance {self.tolerance:g}{raised}")


def certificate_of(surface: Surface) -> Certificate | None:
    """The certificate stored in an adaptive surface's metadata (None for a fully evaluated surface)."""
    meta = surface.meta
    if "adaptive_max_error" not in meta:
        return None
    return Certificate(
        tolerance=meta["adaptive_tolerance"], se_fraction=meta["adaptive_se_fraction"],
        max_error=meta["adaptive_max_error"], max_error_alpha=meta["adaptive_max_error_alpha"],
        max_error_beta=meta["adaptive_max_error_beta"], max_cell_tolerance=meta["adaptive_max_cell_tolerance"],
        evaluated=meta["adaptive_evaluated"], interpolated=meta["adaptive_interpolated"],
        support=meta["adaptive_support"], drawn=meta["adaptive_drawn"], grid_points=meta["adaptive_grid_points"],
        rounds=meta["adaptive_rounds"])


@dataclass
class Refinement:
    """An adaptive surface's values on the target grid (shape (ny, nx), or (nx,) in 1-D; NaN where clipped)."""

    loss: np.ndarray
    acc: np.ndarray
    loss_se: np.ndarray
    evaluated: np.ndarray         # bool
    interpolated: np.ndarray      # bool
    estimated_error: np.ndarray   # the estimated interpolation error of each filled point, NaN elsewhere
    certificate: Certificate


def values_of(results: Sequence[PointResult]) -> PointValues:
    """An evaluator's results as the arrays a point function returns."""
    return (np.array([r.loss for r in results], dtype=np.float64), np.array([r.acc for r in results], dtype=np.float64),
            np.array([r.loss_se for r in results], dtype=np.float64))


def _ln(loss: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.log(np.maximum(loss, LOG_FLOOR))


def _splits(low: int, high: int) -> list[int]:
    """A cell side's split points: its ends, and its integer midpoint when it has a point inside."""
    if high - low >= 2:
        return [low, (low + high) // 2, high]
    return [low, high] if high > low else [low]


def _pairs(points: list[int]) -> list[tuple[int, int]]:
    return list(zip(points[:-1], points[1:], strict=True)) if len(points) > 1 else [(points[0], points[0])]


def coarse_indices(n: int, points: int) -> list[int]:
    """The coarse lattice on an axis of n points: `points` indices spread evenly, both ends included."""
    return [int(i) for i in np.unique(np.round(np.linspace(0, n - 1, min(points, n))).astype(int))]


class _Refiner:
    """The state of one refinement: values known so far, in (ny, nx) arrays (ny = 1 for a 1-D surface)."""

    def __init__(self, xs: np.ndarray, ys: np.ndarray | None, evaluate: FlatEvaluate, settings: AdaptiveSettings,
                 clipped: np.ndarray | None):
        self.xs = xs
        self.ys = np.zeros(1) if ys is None else ys
        self.one_d = ys is None
        self.shape = (len(self.ys), len(xs))
        self.evaluate = evaluate
        self.settings = settings
        self.clipped = np.zeros(self.shape, bool) if clipped is None else \
            np.asarray(clipped, bool).reshape(self.shape)
        self.loss, self.acc, self.se, self.ln_loss = (np.full(self.shape, np.nan) for _ in range(4))
        self.known = np.zeros(self.shape, bool)
        self.rounds = 0

    # -- evaluation ------------------------------------------------------------------------------------
    def fetch(self, points: set[tuple[int, int]]) -> None:
        """Evaluate those of `points` not known yet, in one batch (one round)."""
        wanted = sorted(p for p in points if not self.known[p])
        if not wanted:
            return
        flats = np.array([iy * self.shape[1] + ix for iy, ix in wanted], dtype=np.int64)
        values = [np.asarray(v, dtype=np.float64).ravel() for v in self.evaluate(flats)]
        if len(values) != 3 or any(len(v) != len(flats) for v in values):
            raise ValueError(f"the point function returned {[len(v) for v in values]} values for {len(flats)} "
                             "points; expected (loss, acc, loss_se), one of each per point")
        rows, columns = flats // self.shape[1], flats % self.shape[1]
        self.loss[rows, columns], self.acc[rows, columns], self.se[rows, columns] = values
        self.ln_loss[rows, columns] = _ln(values[0])
        self.known[rows, columns] = True
        self.rounds += 1

    # -- cells -----------------------------------------------------------------------------------------
    @staticmethod
    def corners(cell: Cell) -> set[tuple[int, int]]:
        y0, y1, x0, x1 = cell
        return {(y0, x0), (y0, x1), (y1, x0), (y1, x1)}

    def check_points(self, cell: Cell) -> set[tuple[int, int]]:
        y0, y1, x0, x1 = cell
        return {(y, x) for y in _splits(y0, y1) for x in _splits(x0, x1)} - self.corners(cell)

    def inside(self, cells: list[Cell], points_of: Callable[[Cell], set[tuple[int, int]]]) -> set[tuple[int, int]]:
        return {p for cell in cells for p in points_of(cell) if not self.clipped[p]}

    def needs_support(self, cell: Cell) -> bool:
        """Whether a cell across the clip disk's edge should have its corners and check points outside the disk
        evaluated: a positive tolerance; a side of at least 5 points (a smaller cell would fill about as many
        points as its support costs); points left to fill; and no check point inside the disk already showing an
        error beyond the tolerance (such a cell is refined whatever its support says)."""
        y0, y1, x0, x1 = cell
        stencil = self.corners(cell) | self.check_points(cell)
        if self.settings.tolerance <= 0 or max(y1 - y0, x1 - x0) < 4 or not any(self.clipped[p] for p in stencil):
            return False
        return bool(self.open_points(cell).any()) and self.inside_error(cell) <= self.cell_tolerance(cell)

    def inside_error(self, cell: Cell) -> float:
        """`error` over the check points whose interpolation needs no unknown corner (an edge midpoint needs its
        edge's two corners only); 0 when there is none."""
        y0, y1, x0, x1 = cell
        worst = 0.0
        for iy, ix in self.check_points(cell):
            tx = (self.xs[ix] - self.xs[x0]) / (self.xs[x1] - self.xs[x0]) if x1 > x0 else 0.0
            ty = (self.ys[iy] - self.ys[y0]) / (self.ys[y1] - self.ys[y0]) if y1 > y0 else 0.0
            weights = {(y0, x0): (1 - tx) * (1 - ty), (y0, x1): tx * (1 - ty), (y1, x0): (1 - tx) * ty,
                       (y1, x1): tx * ty}
            needed = [corner for corner, weight in weights.items() if weight != 0] + [(iy, ix)]
            if all(self.known[p] and math.isfinite(self.ln_loss[p]) for p in needed):
                estimate = sum(weight * self.ln_loss[corner] for corner, weight in weights.items() if weight != 0)
                worst = max(worst, SAFETY * abs(float(self.ln_loss[iy, ix]) - estimate))
        return worst

    @staticmethod
    def children(cell: Cell) -> list[Cell]:
        y0, y1, x0, x1 = cell
        return [(a, b, c, d) for a, b in _pairs(_splits(y0, y1)) for c, d in _pairs(_splits(x0, x1))]

    def open_points(self, cell: Cell) -> np.ndarray:
        """Mask of the cell's points still without a value (not evaluated, not clipped)."""
        y0, y1, x0, x1 = cell
        return ~self.known[y0:y1 + 1, x0:x1 + 1] & ~self.clipped[y0:y1 + 1, x0:x1 + 1]

    def interpolate(self, cell: Cell, iy: np.ndarray, ix: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of `values` (an (ny, nx) array) from the cell's corners at points (iy, ix),
        in the grid's coordinates (so non-uniform axes interpolate correctly too)."""
        y0, y1, x0, x1 = cell
        tx = (self.xs[ix] - self.xs[x0]) / (self.xs[x1] - self.xs[x0]) if x1 > x0 else np.zeros(len(ix))
        ty = (self.ys[iy] - self.ys[y0]) / (self.ys[y1] - self.ys[y0]) if y1 > y0 else np.zeros(len(iy))
        return ((1 - tx) * (1 - ty) * values[y0, x0] + tx * (1 - ty) * values[y0, x1]
                + (1 - tx) * ty * values[y1, x0] + tx * ty * values[y1, x1])

    def error(self, cell: Cell) -> tuple[float, tuple[int, int] | None]:
        """The cell's estimated interpolation error (SAFETY × the largest |ln loss − bilinear| over its check
        points) and the check point where it is; inf when a corner or check point is not finite."""
        points = sorted(self.check_points(cell))
        if any(not self.known[p] or not math.isfinite(self.ln_loss[p]) for p in self.corners(cell)):
            return math.inf, None
        iy, ix = np.array([p[0] for p in points]), np.array([p[1] for p in points])
        gaps = np.abs(self.ln_loss[iy, ix] - self.interpolate(cell, iy, ix, self.ln_loss))
        if not np.isfinite(gaps).all():
            return math.inf, None
        worst = int(np.argmax(gaps))
        return SAFETY * float(gaps[worst]), points[worst]

    def cell_tolerance(self, cell: Cell) -> float:
        """max(tolerance, se_fraction × the smallest standard error of ln(loss) of the cell's evaluated points)."""
        points = self.corners(cell) | self.check_points(cell)
        with np.errstate(divide="ignore", invalid="ignore"):
            ln_se = [self.se[p] / self.loss[p] for p in points if self.known[p]]
        finite = [value for value in ln_se if math.isfinite(value) and value >= 0]
        floor = self.settings.se_fraction * min(finite) if finite else 0.0
        return max(self.settings.tolerance, floor)

    # -- the refinement ------------------------------------------------------------------------------------
    def run(self) -> Refinement:
        ny, nx = self.shape
        coarse_y = [0] if self.one_d else coarse_indices(ny, self.settings.coarse_points)
        coarse_x = coarse_indices(nx, self.settings.coarse_points)
        active = [(a, b, c, d) for a, b in _pairs(coarse_y) for c, d in _pairs(coarse_x)]
        active = [cell for cell in active if self.open_points(cell).any()]  # not wholly outside the clip disk
        self.fetch(self.inside(active, self.corners))
        accepted: list[tuple[Cell, float, tuple[int, int] | None, float]] = []
        while active:
            self.fetch(self.inside(active, self.check_points))
            # Support points outside the disk, then, for the cells across its edge that can use them.
            supported = [cell for cell in active if self.needs_support(cell)]
            self.fetch({p for cell in supported for p in self.corners(cell) | self.check_points(cell)})
            following = []
            for cell in active:
                if not self.open_points(cell).any():
                    continue  # every point of the cell is evaluated (or clipped): nothing to fill
                error, where = self.error(cell)
                tolerance = self.cell_tolerance(cell)
                if self.settings.tolerance > 0 and error <= tolerance:
                    accepted.append((cell, error, where, tolerance))
                else:
                    following.extend(child for child in self.children(cell) if self.open_points(child).any())
            active = following
        return self.fill(accepted)

    def fill(self, accepted: list[tuple[Cell, float, tuple[int, int] | None, float]]) -> Refinement:
        """Fill the open points of accepted cells from their children's corners; smaller children last, so a
        point on the border of cells of different sizes takes the finer cell's value."""
        with np.errstate(divide="ignore", invalid="ignore"):
            ln_se = self.se / self.loss
        filled_ln, filled_acc, filled_ln_se = (np.full(self.shape, np.nan) for _ in range(3))
        owner = np.full(self.shape, -1)  # index in `accepted` of the cell whose estimate a filled point carries
        leaves = [(child, number) for number, (cell, *_) in enumerate(accepted) for child in self.children(cell)]
        leaves.sort(key=lambda leaf: -(leaf[0][1] - leaf[0][0] + 1) * (leaf[0][3] - leaf[0][2] + 1))
        for child, number in leaves:
            dy, dx = np.nonzero(self.open_points(child))
            iy, ix = dy + child[0], dx + child[2]
            filled_ln[iy, ix] = self.interpolate(child, iy, ix, self.ln_loss)
            filled_acc[iy, ix] = self.interpolate(child, iy, ix, self.acc)
            filled_ln_se[iy, ix] = self.interpolate(child, iy, ix, ln_se)
            owner[iy, ix] = number
        interpolated = ~self.known & ~self.clipped
        if (owner[interpolated] < 0).any():
            raise RuntimeError("adaptive refinement left a drawn point neither evaluated nor interpolated")
        loss, acc, se = self.loss.copy(), self.acc.copy(), self.se.copy()
        for values in (loss, acc, se):
            values[self.clipped] = np.nan  # support points are not part of the picture
        loss[interpolated] = np.exp(filled_ln[interpolated])
        acc[interpolated] = filled_acc[interpolated]
        se[interpolated] = filled_ln_se[interpolated] * loss[interpolated]
        estimated = np.full(self.shape, np.nan)
        errors = np.array([error for _, error, _, _ in accepted])
        estimated[interpolated] = errors[owner[interpolated]] if len(errors) else np.nan
        owners = sorted(set(owner[interpolated].tolist()))
        worst = max(owners, key=lambda number: accepted[number][1]) if owners else None
        alpha = beta = None
        if worst is not None and accepted[worst][2] is not None:
            iy, ix = accepted[worst][2]
            alpha, beta = float(self.xs[ix]), None if self.one_d else float(self.ys[iy])
        certificate = Certificate(
            tolerance=self.settings.tolerance, se_fraction=self.settings.se_fraction,
            max_error=float(accepted[worst][1]) if worst is not None else 0.0, max_error_alpha=alpha,
            max_error_beta=beta, max_cell_tolerance=max((accepted[n][3] for n in owners), default=0.0),
            evaluated=int((self.known & ~self.clipped).sum()), interpolated=int(interpolated.sum()),
            support=int((self.known & self.clipped).sum()), drawn=int((~self.clipped).sum()),
            grid_points=int(self.clipped.size), rounds=self.rounds)
        shape = (self.shape[1],) if self.one_d else self.shape
        return Refinement(loss.reshape(shape), acc.reshape(shape), se.reshape(shape),
                          (self.known & ~self.clipped).reshape(shape), interpolated.reshape(shape),
                          estimated.reshape(shape), certificate)


def refine(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray | None, evaluate: FlatEvaluate,
           settings: AdaptiveSettings | float, *, clipped: np.ndarray | None = None) -> Refinement:
    """An adaptive surface on the grid xs × ys (ys None: 1-D) from `evaluate`, which takes flat indices of
    the grid (Z[iy, ix] order) and returns their (loss, acc, loss_se). `clipped` (flat or grid-shaped bool)
    marks points never evaluated nor drawn. Each point is asked for at most once, in rounds of batches, in
    an order that depends only on the values returned: the same values give the same calls, so a resumed
    computation that answers from its file makes the same decisions."""
    settings = as_adaptive(settings)
    if settings is None:
        raise ValueError("refine needs settings: a tolerance ≥ 0 or AdaptiveSettings(...)")
    xs = np.asarray(xs, dtype=np.float64).ravel()
    ys = None if ys is None else np.asarray(ys, dtype=np.float64).ravel()
    if len(xs) == 0 or (ys is not None and len(ys) == 0):
        raise ValueError("xs and ys must hold at least one coordinate each")
    return _Refiner(xs, ys, evaluate, settings, clipped).run()


def grid_alpha_beta(xs: np.ndarray, ys: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """α and β of every grid point, flat, in Z[iy, ix] order (β = 0 in 1-D)."""
    if ys is None:
        return np.asarray(xs, dtype=np.float64), np.zeros(len(xs))
    alpha, beta = np.meshgrid(xs, ys, indexing="xy")
    return alpha.ravel(), beta.ravel()


def refine_function(xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray | None,
                    function: PointFunction, settings: AdaptiveSettings | float, *,
                    clip_radius: float | None = None) -> Refinement:
    """`refine` on a function of (alphas, betas) → (loss, acc, loss_se), e.g. an analytic surface; points
    farther than `clip_radius` from the centre are clipped."""
    xs = np.asarray(xs, dtype=np.float64).ravel()
    ys = None if ys is None else np.asarray(ys, dtype=np.float64).ravel()
    alphas, betas = grid_alpha_beta(xs, ys)
    clipped = None if clip_radius is None else outside_radius(alphas, None if ys is None else betas, clip_radius)
    return refine(xs, ys, lambda flats: function(alphas[flats], betas[flats]), settings, clipped=clipped)


def spot_check(surface: Surface, function: PointFunction, count: int, seed: int = 0) -> dict[str, Any]:
    """Evaluate `count` interpolated points of an adaptive surface (a seeded random choice) with `function`
    and compare: the real interpolation error, measured, beside the certified one. Keys: points, indices
    (flat, Z[iy, ix] order), max_abs_ln_loss_error, mean_abs_ln_loss_error, certified_max_error,
    within_certificate."""
    if surface.interpolated is None or not surface.interpolated.any():
        raise ValueError("spot_check needs a surface with interpolated points (an adaptive surface)")
    if count < 1:
        raise ValueError(f"count={count!r} is not valid; expected at least 1 point")
    candidates = np.flatnonzero(np.asarray(surface.interpolated).ravel())
    chosen = np.sort(np.random.default_rng(seed).choice(candidates, size=min(count, len(candidates)), replace=False))
    alphas, betas = grid_alpha_beta(surface.xs, surface.ys)
    loss, _, _ = function(alphas[chosen], betas[chosen])
    errors = np.abs(_ln(np.asarray(loss, np.float64)) - _ln(np.asarray(surface.loss, np.float64).ravel()[chosen]))
    certificate = certificate_of(surface)
    certified = certificate.max_error if certificate is not None else math.nan
    return {"points": int(len(chosen)), "indices": chosen.tolist(), "max_abs_ln_loss_error": float(errors.max()),
            "mean_abs_ln_loss_error": float(errors.mean()), "certified_max_error": certified,
            "within_certificate": bool(errors.max() <= certified)}


def _shared(axis: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Indices into `axis` and `other` of the coordinates they share (to a billionth of the span)."""
    span = max(float(np.ptp(axis)), float(np.ptp(other)), 1.0)
    close = np.isclose(axis[:, None], other[None, :], rtol=0, atol=1e-9 * span)
    mine, theirs = np.nonzero(close)
    return mine, theirs


def common_points_agreement(surface: Surface, reference: Surface) -> dict[str, Any]:
    """An adaptive surface against a fully evaluated one at the grid points both have (equal α and β, drawn
    in both): how many, how many of them the adaptive surface interpolated, the largest |Δ ln(loss)| and the
    Pearson r of ln(loss) over them (None with fewer than 3 points)."""
    if surface.is_2d != reference.is_2d:
        raise ValueError("common_points_agreement compares two 2-D or two 1-D surfaces")
    mine_x, their_x = _shared(np.asarray(surface.xs, float), np.asarray(reference.xs, float))
    if surface.is_2d:
        mine_y, their_y = _shared(np.asarray(surface.ys, float), np.asarray(reference.ys, float))
        mine = np.ix_(mine_y, mine_x)
        theirs = np.ix_(their_y, their_x)
    else:
        mine, theirs = mine_x, their_x
    ours, reference_loss = np.asarray(surface.loss, float)[mine], np.asarray(reference.loss, float)[theirs]
    flags = np.zeros(np.shape(surface.loss), bool) if surface.interpolated is None else np.asarray(surface.interpolated)
    both = np.isfinite(ours) & np.isfinite(reference_loss)
    gaps = _ln(ours[both]) - _ln(reference_loss[both])
    pearson = None
    if both.sum() >= 3 and np.std(_ln(ours[both])) > 0 and np.std(_ln(reference_loss[both])) > 0:
        pearson = float(np.corrcoef(_ln(ours[both]), _ln(reference_loss[both]))[0, 1])
    return {"common_points": int(both.sum()), "common_interpolated": int(flags[mine][both].sum()),
            "max_abs_ln_loss_diff": float(np.abs(gaps).max()) if gaps.size else None, "pearson_ln_loss": pearson}
