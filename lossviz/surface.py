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
                       3 interpolated (an adaptive surface's filled point: `lossviz.adaptive`),
                       4 non-finite (computed, but the loss or accuracy came out NaN or ±inf)
  point_crc32          same shape, uint32: CRC32 of each point's status and values as flushed
  example_indices      (n_examples,) int64
  attrs header_crc32   CRC32 of the coordinates, example indices, direction file and meta
In `{split}_loss`/`{split}_acc` pending points hold −1 (the official tool's "not computed yet", which it
recomputes) and clipped points NaN (which it leaves alone). In memory both are NaN. Interpolated points hold
their interpolated values, so other tools read the full grid; `Surface.interpolated` marks them in memory.

Integrity: a file appears under its name only once its header, directions reference, example indices and
checksums are complete (written under a temporary name beside it, then renamed), so a kill at any moment leaves
either no file or a resumable one. One process at a time writes a file (a lock file beside it while open).
Each point's checksum is written after its values and before its status, so a kill between the writes leaves
the point pending (recomputed) and a flipped byte in a finished point, its status or the header is reported
on load and on resume. Files without checksums (the official tool's, older lossviz's) load unchecked.

Versions: a file is written with the lowest version that describes it: 2 only when it holds interpolated points
(status 3), so a lossviz that knows version 1 alone refuses such a file instead of reading its interpolated
points as gaps, and reads every other file as before.
"""

from __future__ import annotations

import csv
import fcntl
import json
import math
import os
import re
import secrets
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

SURFACE_FORMAT = "lossviz-surface"
SURFACE_FORMAT_VERSION = 1
INTERPOLATED_FORMAT_VERSION = 2  # files holding interpolated points (point_status 3)
READABLE_VERSIONS = (SURFACE_FORMAT_VERSION, INTERPOLATED_FORMAT_VERSION)
PENDING, COMPUTED, CLIPPED, INTERPOLATED, NONFINITE = 0, 1, 2, 3, 4
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
        """Write the whole surface (see the module docstring for the layout), atomically."""
        status = np.where(np.isnan(self.loss), PENDING, COMPUTED).astype(np.uint8)
        status[np.isinf(self.loss)] = NONFINITE
        clipped = self.meta.get("clip_radius")
        if clipped is not None:
            status[outside_radius(*self.coordinates(), clipped)] = CLIPPED
        if self.interpolated is not None:
            status[np.asarray(self.interpolated, bool) & (status == COMPUTED)] = INTERPOLATED
        stored = [np.where(status == PENDING, OFFICIAL_PENDING, np.asarray(values, dtype=np.float64))
                  for values in (self.loss, self.acc, self.loss_se)]
        lock = _WriteLock(path)
        try:
            _write_new(path, self, status, tuple(stored), bool((status == INTERPOLATED).any()))
        finally:
            lock.release()

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


def _open_hdf5(path: str | Path, mode: str) -> h5py.File:
    """h5py.File with the errors a user can act on, naming the file."""
    path = Path(path)
    try:
        return h5py.File(path, mode)
    except BlockingIOError:  # HDF5's own file lock: a writer has it open
        raise SurfaceFileError(f"{path} is open for writing in another process; wait for it to finish or use "
                               "another file") from None
    except FileNotFoundError:
        raise SurfaceFileError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise SurfaceFileError(f"{path} is a directory; expected an HDF5 surface file (.h5)") from None
    except PermissionError:
        raise SurfaceFileError(f"{path}: permission denied ({'reading' if mode == 'r' else 'writing'})") from None
    except OSError as error:  # HDF5 reports a truncated, empty or non-HDF5 file as a bare OSError
        if not path.exists():
            raise SurfaceFileError(f"{path}: no such file") from None
        size = path.stat().st_size
        raise SurfaceFileError(f"{path} ({size} bytes) is not a readable HDF5 file (empty, truncated or another "
                               f"format: {error}); expected a surface file written by lossviz or the official "
                               "loss-landscape tool") from None


def _header_checksum(xs: np.ndarray, ys: np.ndarray | None, indices: np.ndarray, dir_file: str, meta: str) -> int:
    crc = zlib.crc32(np.ascontiguousarray(xs, dtype="<f8").tobytes())
    if ys is not None:
        crc = zlib.crc32(np.ascontiguousarray(ys, dtype="<f8").tobytes(), crc)
    crc = zlib.crc32(np.ascontiguousarray(indices, dtype="<i8").tobytes(), crc)
    return zlib.crc32(f"{dir_file}\0{meta}".encode(), crc)


def point_checksums(status: np.ndarray, loss: np.ndarray, acc: np.ndarray, loss_se: np.ndarray,
                     flats: np.ndarray | None = None) -> np.ndarray:
    """CRC32 of each point's (status, loss, acc, loss_se) bytes, as `point_crc32` stores them; of the points
    `flats` (default: all). A tool (or test) that edits a file's values on purpose stores these anew."""
    records = np.empty(status.size, dtype=[("status", "u1"), ("loss", "<f8"), ("acc", "<f8"), ("loss_se", "<f8")])
    for name, values in (("status", status), ("loss", loss), ("acc", acc), ("loss_se", loss_se)):
        records[name] = np.asarray(values).ravel()
    chosen = records if flats is None else records[flats]
    raw = chosen.tobytes()
    size = records.dtype.itemsize
    return np.fromiter((zlib.crc32(raw[i:i + size]) for i in range(0, len(raw), size)), dtype=np.uint32,
                       count=len(chosen))


def _check_integrity(f: h5py.File, path: str | Path, status: np.ndarray, loss: np.ndarray, acc: np.ndarray,
                     loss_se: np.ndarray) -> None:
    """Compare the stored checksums (when the file has them) with the data: the header's, and each finished
    point's (pending points are recomputed whatever they hold)."""
    stored_header = f.attrs.get("header_crc32")
    if stored_header is not None:
        raw = f["dir_file"][()] if "dir_file" in f else b""
        header = _header_checksum(np.asarray(f["xcoordinates"]), np.asarray(f["ycoordinates"]) if "ycoordinates" in f
                                  else None, np.asarray(f["example_indices"]) if "example_indices" in f
                                  else np.zeros(0, np.int64), raw.decode() if isinstance(raw, bytes) else str(raw),
                                  str(f.attrs.get("meta", "")))
        if header != int(stored_header):
            raise SurfaceFileError(f"{path} is corrupted: its coordinates, example indices or metadata do not match "
                                   "their checksum; delete it and compute the surface again")
    if "point_crc32" not in f:
        return
    stored = np.asarray(f["point_crc32"], dtype=np.uint32).ravel()
    finished = np.flatnonzero(status.ravel() != PENDING)
    bad = finished[point_checksums(status, loss, acc, loss_se, finished) != stored[finished]]
    if len(bad):
        where = ", ".join(str(np.unravel_index(flat, status.shape)) for flat in bad[:3])
        raise SurfaceFileError(f"{path} is corrupted: {len(bad)} point(s) do not match their checksum (index "
                               f"{where}{', ...' if len(bad) > 3 else ''}); delete it and compute the surface again")


def read_surface(path: str | Path) -> Surface:
    """Read our files (version and checksums checked) and the official tool's (no version attribute, no
    loss_se). Every problem is a SurfaceFileError naming the file."""
    with _open_hdf5(path, "r") as f:
        try:
            return _read_surface(f, path)
        except SurfaceFileError:
            raise
        except (OSError, KeyError, ValueError, TypeError) as error:  # damaged structure or foreign datasets
            raise SurfaceFileError(f"{path}: not a readable surface file ({type(error).__name__}: {error})") from None


def _read_surface(f: h5py.File, path: str | Path) -> Surface:
    version = f.attrs.get("version")
    ours = f.attrs.get("format") == SURFACE_FORMAT
    if ours and int(version) not in READABLE_VERSIONS:
        raise SurfaceFileError(f"{path}: surface file version {version} is not supported; this lossviz "
                               f"reads version {SURFACE_FORMAT_VERSION} (and {INTERPOLATED_FORMAT_VERSION} for "
                               "adaptive surfaces with interpolated points): upgrade lossviz or recompute")
    if "xcoordinates" not in f:
        raise SurfaceFileError(f"{path}: no xcoordinates dataset: not a surface file")
    split, loss_key = _loss_keys(f, path)
    xs = np.asarray(f["xcoordinates"], dtype=np.float64).ravel()
    ys = np.asarray(f["ycoordinates"], dtype=np.float64).ravel() if "ycoordinates" in f else None
    shape = (len(xs),) if ys is None else (len(ys), len(xs))

    def grid_array(key: str, dtype: type) -> np.ndarray:
        # The official tool allocates (nx, ny) but fills it in meshgrid('xy') order, so its flat order
        # is already Z[iy, ix]: reshaping the flat data is right for its square and non-square files.
        values = np.asarray(f[key], dtype=dtype)
        if values.size != int(np.prod(shape)):
            raise SurfaceFileError(f"{path}: dataset {key} holds {values.size} values, the grid of xcoordinates "
                                   f"({len(xs)}){'' if ys is None else f' × ycoordinates ({len(ys)})'} has "
                                   f"{int(np.prod(shape))}")
        return values.reshape(shape)

    loss = grid_array(loss_key, np.float64)
    acc_key = f"{split}_acc"
    acc = grid_array(acc_key, np.float64) if acc_key in f else np.full(shape, np.nan)
    if "point_status" in f:
        status = grid_array("point_status", np.uint8)
    else:  # the official tool's convention: −1 until computed
        status = np.where(loss == OFFICIAL_PENDING, PENDING, COMPUTED).astype(np.uint8)
    se_key = f"{split}_loss_se"
    loss_se = grid_array(se_key, np.float64) if se_key in f else np.full(shape, np.nan)
    _check_integrity(f, path, status, loss, acc, loss_se)
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
    nonfinite = int((status == NONFINITE).sum())
    if nonfinite:
        meta["nonfinite_points"] = nonfinite
    interpolated = status == INTERPOLATED
    return Surface(xs, ys, loss, acc, loss_se, indices, meta, interpolated if interpolated.any() else None)


class _WriteLock:
    """One writer per surface file: an exclusive flock on a lock file beside it (`.NAME.lock`), removed on
    release. Taken without waiting: a second process is told at once instead of mixing its points in."""

    def __init__(self, path: str | Path):
        path = Path(path)
        self.lock_path = path.with_name(f".{path.name}.lock")
        if not path.parent.is_dir():
            raise SurfaceFileError(f"{path}: directory {path.parent} does not exist")
        for _ in range(10):  # retried only when another process removed the lock file as we opened it
            try:
                self.fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise SurfaceFileError(f"{path}: cannot write in {path.parent} ({error.strerror})") from None
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(self.fd)
                raise SurfaceFileError(f"{path} is being written by another process (it holds {self.lock_path}); "
                                       "wait for it to finish or choose another output file") from None
            try:
                if os.stat(self.lock_path).st_ino == os.fstat(self.fd).st_ino:
                    return
            except FileNotFoundError:
                pass
            os.close(self.fd)
        raise SurfaceFileError(f"{path}: could not take its lock {self.lock_path}")

    def release(self) -> None:
        if self.fd >= 0:
            self.lock_path.unlink(missing_ok=True)  # while still held: no other process holds a removed lock
            os.close(self.fd)
            self.fd = -1


def _os_reason(error: BaseException) -> str:
    """The operating system's words for a failed write ("No space left on device"), also out of HDF5's long
    messages, which carry them inside ("... errno = 28, error message = 'No space left on device', ...")."""
    if getattr(error, "strerror", None):
        return error.strerror
    found = re.search(r"error message = '([^']*)'", str(error))
    return found.group(1) if found else str(error)


def _write_error(path: str | Path, error: BaseException) -> SurfaceFileError:
    return SurfaceFileError(f"{path}: writing failed ({_os_reason(error)}); nothing unfinished was kept under "
                            "this name")


def _write_new(path: str | Path, template: Surface, status: np.ndarray, values: tuple[np.ndarray, ...] | None,
               interpolated: bool) -> None:
    """Write a complete surface file under a temporary name beside `path`, then rename it to `path`: `path`
    is either absent, the old file, or the whole new one. `values`: (loss, acc, loss_se) as stored, or None
    for a new computation (pending points hold −1, clipped ones NaN)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.partial"):  # a killed writer's (the caller holds the lock)
        stale.unlink(missing_ok=True)
    # A fresh name created by HDF5 itself ("x": fails if it exists), so the file gets the umask's permissions.
    staging = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.partial")
    split = template.meta.get("split", "test")
    if values is None:
        pending_value = np.where(status == CLIPPED, np.nan, OFFICIAL_PENDING)
        values = (pending_value, pending_value, pending_value)
    meta = json.dumps(template.meta, sort_keys=True)
    dir_file = str(template.meta.get("dir_file", ""))
    xs = np.asarray(template.xs, dtype=np.float64)
    ys = None if not template.is_2d else np.asarray(template.ys, dtype=np.float64)
    indices = np.asarray(template.example_indices, dtype=np.int64)
    try:
        with h5py.File(staging, "x") as handle:
            handle.attrs["format"] = SURFACE_FORMAT
            handle.attrs["version"] = INTERPOLATED_FORMAT_VERSION if interpolated else SURFACE_FORMAT_VERSION
            handle.attrs["split"] = split
            handle.attrs["meta"] = meta
            handle.attrs["header_crc32"] = _header_checksum(xs, ys, indices, dir_file, meta)
            handle["dir_file"] = dir_file
            handle["xcoordinates"] = xs
            if ys is not None:
                handle["ycoordinates"] = ys
            # Contiguous, preallocated datasets: later writes touch raw data only, never the file's metadata,
            # so a process killed mid-write cannot corrupt the file's structure.
            for key, data in zip((f"{split}_loss", f"{split}_acc", f"{split}_loss_se"), values, strict=True):
                handle.create_dataset(key, data=np.asarray(data, dtype=np.float64))
            handle.create_dataset("point_status", data=status)
            handle.create_dataset("point_crc32", data=point_checksums(status, *values).reshape(status.shape))
            handle.create_dataset("example_indices", data=indices)
        with open(staging, "rb") as written:  # on disk before it takes the name
            os.fsync(written.fileno())
        os.replace(staging, path)
    except BaseException as error:
        Path(staging).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise _write_error(path, error) from None
        raise


def _initial_status(template: Surface) -> np.ndarray:
    status = np.full(template.shape, PENDING, dtype=np.uint8)
    if template.meta.get("clip_radius") is not None:
        status[outside_radius(*template.coordinates(), template.meta["clip_radius"])] = CLIPPED
    return status


class SurfaceFile:
    """A surface file filled point by point. Values are kept in memory and written to the file at most
    every `flush_interval` seconds (and on close), so a killed run loses at most that much work and the
    next run with the same arguments picks up the rest. Holds the file's write lock until closed."""

    def __init__(self, handle: h5py.File, split: str, flush_interval: float = 0.5, lock: _WriteLock | None = None):
        self.file = handle
        self.path = Path(handle.filename)
        self.split = split
        self.flush_interval = flush_interval
        self.lock = lock
        self._datasets = {name: handle[key] for name, key in (
            ("loss", f"{split}_loss"), ("acc", f"{split}_acc"), ("loss_se", f"{split}_loss_se"),
            ("status", "point_status"))}
        self.loss = np.asarray(self._datasets["loss"][...], dtype=np.float64)
        self.acc = np.asarray(self._datasets["acc"][...], dtype=np.float64)
        self.loss_se = np.asarray(self._datasets["loss_se"][...], dtype=np.float64)
        self.status = np.asarray(self._datasets["status"][...], dtype=np.uint8)
        if "point_crc32" not in handle:  # resuming a file written before checksums: add them
            handle.create_dataset("point_crc32", data=point_checksums(
                self.status, self.loss, self.acc, self.loss_se).reshape(self.status.shape))
        self._checksum_dataset = handle["point_crc32"]
        self._checksums = np.asarray(self._checksum_dataset[...], dtype=np.uint32).ravel()
        self._dirty: set[int] = set()
        self._last_flush = time.monotonic()

    @classmethod
    def create(cls, path: str | Path, template: Surface, flush_interval: float = 0.5,
               interpolated: bool = False) -> SurfaceFile:
        """A new file with every point pending (clipped points marked as such); `interpolated`: the caller
        will mark interpolated points (the file's version says so)."""
        lock = _WriteLock(path)
        try:
            return cls._create_locked(path, template, flush_interval, interpolated, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _create_locked(cls, path: str | Path, template: Surface, flush_interval: float, interpolated: bool,
                       lock: _WriteLock) -> SurfaceFile:
        _write_new(path, template, _initial_status(template), None, interpolated)
        return cls(_open_hdf5(path, "r+"), template.meta.get("split", "test"), flush_interval, lock)

    @classmethod
    def open_or_create(cls, path: str | Path, template: Surface, identity_keys: tuple[str, ...],
                       flush_interval: float = 0.5) -> SurfaceFile:
        """Resume `path` when it holds the same computation (coordinates, examples and the meta keys in
        `identity_keys`), create it when it does not exist, refuse it when it differs."""
        lock = _WriteLock(path)
        try:
            if not Path(path).exists():
                return cls._create_locked(path, template, flush_interval, False, lock)
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
            return cls(_open_hdf5(path, "r+"), template.meta.get("split", "test"), flush_interval, lock)
        except BaseException:
            lock.release()
            raise

    def pending(self) -> np.ndarray:
        """Flat indices (in Z[iy, ix] order) of the points still to compute."""
        return np.flatnonzero(self.status.ravel() == PENDING)

    def record(self, flat_index: int, loss: float, acc: float, loss_se: float) -> None:
        """A computed point; one whose loss or accuracy is NaN or ±inf is stored as non-finite, not computed."""
        self.loss.flat[flat_index] = loss
        self.acc.flat[flat_index] = acc
        self.loss_se.flat[flat_index] = loss_se
        # A NaN accuracy is no accuracy (a regression task), not a failed point.
        self.status.flat[flat_index] = COMPUTED if math.isfinite(loss) and not math.isinf(acc) else NONFINITE
        self._dirty.add(int(flat_index))
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def flush(self) -> None:
        # Values, then checksums, then status: a kill between them leaves the points pending (recomputed),
        # never marked done with values or checksums that do not match.
        try:
            for name in ("loss", "acc", "loss_se"):
                self._datasets[name][...] = getattr(self, name)
            if self._dirty:
                flats = np.fromiter(sorted(self._dirty), dtype=np.int64)
                self._checksums[flats] = point_checksums(self.status, self.loss, self.acc, self.loss_se, flats)
                self._checksum_dataset[...] = self._checksums.reshape(self.status.shape)
            self._datasets["status"][...] = self.status
            self.file.flush()
        except OSError as error:
            self._abandon()
            raise SurfaceFileError(f"{self.path}: writing failed ({_os_reason(error)}); the points flushed before "
                                   "are kept: free space (or fix the cause) and rerun to resume") from None
        self._dirty.clear()
        self._last_flush = time.monotonic()

    def _abandon(self) -> None:
        """After a failed write: close without writing again (HDF5 would retry at close and at exit)."""
        try:
            self.file.close()
        except Exception:  # the write error is the one reported
            pass
        self._release()

    def _release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def close(self) -> None:
        try:
            if self.file.id.valid:
                if self.file.mode == "r+":
                    self.flush()
                self.file.close()
        finally:
            self._release()

    def __enter__(self) -> SurfaceFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
