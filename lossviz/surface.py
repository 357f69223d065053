"""The `Surface`: a computed loss landscape (1-D or 2-D) with everything needed to trust and redo it,
and its files: HDF5 (the official loss-landscape layout plus our datasets), the incremental writer that
makes computations resumable, and LossPlot CSV export.

Arrays follow the official loss-landscape tool's layout fixed for non-square grids: 2-D arrays are
(ny, nx) with Z[iy, ix]; 1-D surfaces have `ys is None` and arrays of shape (nx,).

HDF5 layout (format version 1; version 2 for a surface with interpolated points):
  attrs   format="lossviz-surface", version=1 or 2, split, meta (JSON)
  dir_file             string dataset, the direction file ("" when the directions were not saved)
  xcoordinates (nx,)   ycoordinates (ny,) (2-D only)                       float64
  {split}_loss, {split}_acc, {split}_loss_se   (ny, nx) or (nx,)           float64
  point_status         same shape, uint8: 0 pending, 1 computed, 2 clipped (never computed),
                       3 interpolated (an adaptive surface's filled point: `lossviz.adaptive`)
  example_indices      (n_examples,) int64
In `{split}_loss`/`{split}_acc` pending points hold −1 (the official tool's "not computed yet", which it
recomputes) and clipped points NaN (which it leaves alone). In memory both are NaN. Interpolated points hold
their interpolated values, so other tools read the full grid; `Surface.interpolated` marks them in memory.

Versions: a file is written with the lowest version that describes it: 2 only when it holds interpolated points
(status 3), so a lossviz that knows version 1 alone refuses such a file instead of reading its interpolated
points as gaps, and reads every other file as before.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SURFACE_FORMAT = "lossviz-surface"
SURFACE_FORMAT_VERSION = 1
INTERPOLATED_FORMAT_VERSION = 2  # files holding interpolated points (point_status 3)
READABLE_VERSIONS = (SURFACE_FORMAT_VERSION, INTERPOLATED_FORMAT_VERSION)
PENDING, COMPUTED, CLIPPED, INTERPOLATED = 0, 1, 2, 3
OFFICIAL_PENDING = -1.0


class SurfaceFileError(ValueError):
    """A surface file cannot be read, or does not match the computation asked for."""


@dataclass
class Surface:
    xs: np.ndarray                 # (nx,) α coordinates
    ys: np.ndarray | None          # (ny,) β coordinates, None for a 1-D slice
    loss: np.ndarray               # (ny, nx) or (nx,): mean loss over the examples; NaN = not computed/clipped
    acc: np.ndarray                # same shape: accuracy in percent
    loss_se: np.ndarray            # same shape: standard error of the mean loss over the examples
    example_indices: np.ndarray    # (n_examples,) indices into the evaluation split, same for every point
    meta: dict[str, Any] = field(default_factory=dict)  # seed, norm, ignore, mode, n_examples, model_hash,
    #                                                     dataset, split, model name, ...
    interpolated: np.ndarray | None = None  # same shape, bool: points filled by interpolation (adaptive
    #                                         surfaces, `lossviz.adaptive`); None when every value was evaluated

    @property
    def is_2d(self) -> bool:
        return self.ys is not None

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.ys), len(self.xs)) if self.is_2d else (len(self.xs),)

    def coordinates(self) -> tuple[np.ndarray, np.ndarray | None]:
        """α and β of every grid point, arrays of `shape` (β is None for 1-D)."""
        if not self.is_2d:
            return np.asarray(self.xs, dtype=np.float64), None
        alpha, beta = np.meshgrid(self.xs, self.ys, indexing="xy")  # (ny, nx): Z[iy, ix]
        return alpha, beta

    def save(self, path: str | Path) -> None:
        """Write the whole surface (see the module docstring for the layout)."""
        status = np.where(np.isnan(self.loss), PENDING, COMPUTED).astype(np.uint8)
        clipped = self.meta.get("clip_radius")
        if clipped is not None:
            status[outside_radius(*self.coordinates(), clipped)] = CLIPPED
        if self.interpolated is not None:
            status[np.asarray(self.interpolated, bool) & (status == COMPUTED)] = INTERPOLATED
        with SurfaceFile.create(path, self, interpolated=bool((status == INTERPOLATED).any())) as handle:
            handle.status[...] = status
            handle.loss[...] = self.loss
            handle.acc[...] = self.acc
            handle.loss_se[...] = self.loss_se
            handle.flush()

    @classmethod
    def load(cls, path: str | Path) -> Surface:
        """Read a surface written by lossviz or by the official loss-landscape tool."""
        return read_surface(path)

    def to_csv(self, path: str | Path, exp_id: str = "0", hyperparameters: dict[str, Any] | None = None,
               append: bool = False) -> None:
        """LossPlot's rows: exp_id, <hyperparameters…>, dir1, dir2, log(loss), accuracy; one row per grid
        point, sorted by y then x (LossPlot builds its grid from that order). A header names the columns.
        `append=True` adds rows for another experiment to an existing file (no second header)."""
        if not self.is_2d:
            raise ValueError("LossPlot shows 2-D surfaces only; this surface is 1-D")
        hyperparameters = hyperparameters or {}
        alpha, beta = self.coordinates()
        with np.errstate(divide="ignore", invalid="ignore"):
            log_loss = np.log(self.loss)
        write_header = not (append and Path(path).exists())
        with open(path, "a" if append else "w", newline="") as handle:
            writer = csv.writer(handle)
            if write_header:
                writer.writerow(["exp_id", *hyperparameters, "dir1", "dir2", "log_loss", "accuracy"])
            for iy in range(len(self.ys)):
                for ix in range(len(self.xs)):
                    writer.writerow([exp_id, *hyperparameters.values(), repr(float(alpha[iy, ix])),
                                     repr(float(beta[iy, ix])), repr(float(log_loss[iy, ix])),
                                     repr(float(self.acc[iy, ix]))])


def outside_radius(alpha: np.ndarray, beta: np.ndarray | None, radius: float) -> np.ndarray:
    """Points farther than `radius` from the centre (|α| for 1-D)."""
    distance = np.abs(alpha) if beta is None else np.hypot(alpha, beta)
    return distance > radius


# -- the clip disk: one rule for the engine, the metrics and the figures ------------------------------------
def half_span_radius(xs: np.ndarray, ys: np.ndarray | None) -> float:
    """LossPlot's and the seed paper's clip: half the larger axis span of the grid."""
    spans = [np.ptp(np.asarray(xs, float))] + ([np.ptp(np.asarray(ys, float))] if ys is not None else [])
    return float(max(spans)) / 2


def default_clip_radius(surface: Surface) -> float:
    """LossPlot's clip for this surface's grid (`half_span_radius`)."""
    return half_span_radius(surface.xs, surface.ys)


def clip_radius_of(surface: Surface, clip_radius: float | None = None) -> float:
    """The disk a check or a metric looks inside: the given radius, else the surface's own (the one its
    points were computed with), else LossPlot's."""
    if clip_radius is not None:
        return float(clip_radius)
    return float(surface.meta.get("clip_radius") or default_clip_radius(surface))


def _loss_keys(f: h5py.File, path: str | Path) -> tuple[str, str]:
    for split in ("test", "train"):
        if f"{split}_loss" in f:
            return split, f"{split}_loss"
    raise SurfaceFileError(f"{path}: no test_loss or train_loss dataset: not a surface file")


def read_surface(path: str | Path) -> Surface:
    """Read our files (version checked) and the official tool's (no version attribute, no loss_se)."""
    with h5py.File(path, "r") as f:
        version = f.attrs.get("version")
        ours = f.attrs.get("format") == SURFACE_FORMAT
        if ours and int(version) not in READABLE_VERSIONS:
            raise SurfaceFileError(f"{path}: surface file version {version} is not supported; this lossviz "
                                   f"reads version {SURFACE_FORMAT_VERSION} (and {INTERPOLATED_FORMAT_VERSION} for "
                                   "adaptive surfaces with interpolated points): upgrade lossviz or recompute")
        if "xcoordinates" not in f:
            raise SurfaceFileError(f"{path}: no xcoordinates dataset: not a surface file")
        split, loss_key = _loss_keys(f, path)
        xs = np.asarray(f["xcoordinates"], dtype=np.float64)
        ys = np.asarray(f["ycoordinates"], dtype=np.float64) if "ycoordinates" in f else None
        shape = (len(xs),) if ys is None else (len(ys), len(xs))
        # The official tool allocates (nx, ny) but fills it in meshgrid('xy') order, so its flat order
        # is already Z[iy, ix]: reshaping the flat data is right for its square and non-square files.
        loss = np.asarray(f[loss_key], dtype=np.float64).reshape(shape)
        acc_key = f"{split}_acc"
        acc = np.asarray(f[acc_key], dtype=np.float64).reshape(shape) if acc_key in f \
            else np.full(shape, np.nan)
        if "point_status" in f:
            status = np.asarray(f["point_status"]).reshape(shape)
        else:  # the official tool's convention: −1 until computed
            status = np.where(loss == OFFICIAL_PENDING, PENDING, COMPUTED)
        se_key = f"{split}_loss_se"
        loss_se = np.asarray(f[se_key], dtype=np.float64).reshape(shape) if se_key in f \
            else np.full(shape, np.nan)
        indices = np.asarray(f["example_indices"], dtype=np.int64) if "example_indices" in f \
            else np.zeros(0, dtype=np.int64)
        meta = json.loads(f.attrs["meta"]) if ours else {"source": "official loss-landscape file"}
        if "dir_file" in f:
            raw = f["dir_file"][()]
            meta.setdefault("dir_file", raw.decode() if isinstance(raw, bytes) else str(raw))
    meta["split"] = split
    for array in (loss, acc, loss_se):
        array[(status != COMPUTED) & (status != INTERPOLATED)] = np.nan
    meta["complete"] = bool((status != PENDING).all())
    interpolated = status == INTERPOLATED
    return Surface(xs, ys, loss, acc, loss_se, indices, meta, interpolated if interpolated.any() else None)


class SurfaceFile:
    """A surface file filled point by point. Values are kept in memory and written to the file at most
    every `flush_interval` seconds (and on close), so a killed run loses at most that much work and the
    next run with the same arguments picks up the rest."""

    def __init__(self, handle: h5py.File, split: str, flush_interval: float = 0.5):
        self.file = handle
        self.split = split
        self.flush_interval = flush_interval
        self._datasets = {name: handle[key] for name, key in (
            ("loss", f"{split}_loss"), ("acc", f"{split}_acc"), ("loss_se", f"{split}_loss_se"),
            ("status", "point_status"))}
        self.loss = np.asarray(self._datasets["loss"][...], dtype=np.float64)
        self.acc = np.asarray(self._datasets["acc"][...], dtype=np.float64)
        self.loss_se = np.asarray(self._datasets["loss_se"][...], dtype=np.float64)
        self.status = np.asarray(self._datasets["status"][...], dtype=np.uint8)
        self._last_flush = time.monotonic()

    @classmethod
    def create(cls, path: str | Path, template: Surface, flush_interval: float = 0.5,
               interpolated: bool = False) -> SurfaceFile:
        """A new file with every point pending (clipped points marked as such); `interpolated`: the caller
        will mark interpolated points (the file's version says so)."""
        split = template.meta.get("split", "test")
        shape = template.shape
        handle = h5py.File(path, "w")
        handle.attrs["format"] = SURFACE_FORMAT
        handle.attrs["version"] = INTERPOLATED_FORMAT_VERSION if interpolated else SURFACE_FORMAT_VERSION
        handle.attrs["split"] = split
        handle.attrs["meta"] = json.dumps(template.meta, sort_keys=True)
        handle["dir_file"] = str(template.meta.get("dir_file", ""))
        handle["xcoordinates"] = np.asarray(template.xs, dtype=np.float64)
        if template.is_2d:
            handle["ycoordinates"] = np.asarray(template.ys, dtype=np.float64)
        status = np.full(shape, PENDING, dtype=np.uint8)
        if template.meta.get("clip_radius") is not None:
            status[outside_radius(*template.coordinates(), template.meta["clip_radius"])] = CLIPPED
        pending_value = np.where(status == CLIPPED, np.nan, OFFICIAL_PENDING)
        # Contiguous, preallocated datasets: later writes touch raw data only, never the file's metadata,
        # so a process killed mid-write cannot corrupt the file's structure.
        for key in (f"{split}_loss", f"{split}_acc", f"{split}_loss_se"):
            handle.create_dataset(key, data=pending_value)
        handle.create_dataset("point_status", data=status)
        handle.create_dataset("example_indices", data=np.asarray(template.example_indices, dtype=np.int64))
        handle.flush()
        return cls(handle, split, flush_interval)

    @classmethod
    def open_or_create(cls, path: str | Path, template: Surface, identity_keys: tuple[str, ...],
                       flush_interval: float = 0.5) -> SurfaceFile:
        """Resume `path` when it holds the same computation (coordinates, examples and the meta keys in
        `identity_keys`), create it when it does not exist, refuse it when it differs."""
        if not Path(path).exists():
            return cls.create(path, template, flush_interval)
        existing = read_surface(path)
        problems = []
        if existing.shape != template.shape or not np.array_equal(existing.xs, template.xs) or (
                template.is_2d and not np.array_equal(existing.ys, template.ys)):
            problems.append("grid coordinates")
        if not np.array_equal(existing.example_indices, template.example_indices):
            problems.append("example indices")
        for key in identity_keys:
            if existing.meta.get(key) != template.meta.get(key):
                problems.append(f"{key} ({existing.meta.get(key)!r} in the file, {template.meta.get(key)!r} now)")
        if problems:
            raise SurfaceFileError(f"{path} holds a different computation ({'; '.join(problems)}); delete it "
                                   "or choose another output file to start afresh")
        handle = h5py.File(path, "r+")
        return cls(handle, template.meta.get("split", "test"), flush_interval)

    def pending(self) -> np.ndarray:
        """Flat indices (in Z[iy, ix] order) of the points still to compute."""
        return np.flatnonzero(self.status.ravel() == PENDING)

    def record(self, flat_index: int, loss: float, acc: float, loss_se: float) -> None:
        self.loss.flat[flat_index] = loss
        self.acc.flat[flat_index] = acc
        self.loss_se.flat[flat_index] = loss_se
        self.status.flat[flat_index] = COMPUTED
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        # Values before status: a kill between the two leaves points pending, to be recomputed.
        for name in ("loss", "acc", "loss_se", "status"):
            self._datasets[name][...] = getattr(self, name)
        self.file.flush()
        self._last_flush = time.monotonic()

    def close(self) -> None:
        if self.file.id.valid:
            if self.file.mode == "r+":
                self.flush()
            self.file.close()

    def __enter__(self) -> SurfaceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

