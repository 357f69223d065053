"""Surface files: round trips, the official layout (square and non-square, Z[iy, ix]), files written by
the official tool, version refusal, resume refusal, LossPlot CSV."""

from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
from helpers_engine import write_official_surface

from lossviz.surface import (
    CLIPPED,
    COMPUTED,
    PENDING,
    SURFACE_FORMAT_VERSION,
    Surface,
    SurfaceFile,
    SurfaceFileError,
)


def _surface(nx: int, ny: int | None, clip_radius: float | None = None) -> Surface:
    xs = np.linspace(-1, 1, nx)
    ys = None if ny is None else np.linspace(-0.5, 1.5, ny)
    shape = (nx,) if ny is None else (ny, nx)
    alpha, beta = (xs, None) if ny is None else np.meshgrid(xs, ys, indexing="xy")
    loss = 1 + alpha**2 + (0 if beta is None else 3 * beta)  # distinct along each axis
    meta = {"seed": 3, "n_examples": 4, "model_hash": "abc", "clip_radius": clip_radius}
    surface = Surface(xs, ys, loss.astype(float), np.full(shape, 80.0), np.full(shape, 0.01),
                      np.array([1, 5, 7, 9]), meta)
    if clip_radius is not None:
        outside = np.hypot(alpha, beta) > clip_radius
        for array in (surface.loss, surface.acc, surface.loss_se):
            array[outside] = np.nan
    return surface


@pytest.mark.parametrize(("nx", "ny"), [(4, 4), (5, 3), (3, 6)])
def test_round_trip_and_official_layout(tmp_path, nx, ny):
    surface = _surface(nx, ny)
    path = tmp_path / "s.h5"
    surface.save(path)
    with h5py.File(path, "r") as f:
        assert f.attrs["version"] == SURFACE_FORMAT_VERSION
        assert f["test_loss"].shape == (ny, nx) and f["test_acc"].shape == (ny, nx)
        assert f["xcoordinates"].shape == (nx,) and f["ycoordinates"].shape == (ny,)
        assert "dir_file" in f and f["example_indices"].shape == (4,)
        stored = np.asarray(f["test_loss"])
        xs, ys = np.asarray(f["xcoordinates"]), np.asarray(f["ycoordinates"])
        for iy in range(ny):  # Z[iy, ix] = loss at (x[ix], y[iy]), checked against the formula
            for ix in range(nx):
                assert stored[iy, ix] == pytest.approx(1 + xs[ix] ** 2 + 3 * ys[iy])
        # The official tool's reader ravels in meshgrid('xy') order: the same flat order.
        gx, gy = np.meshgrid(xs, ys)
        assert np.allclose(stored.ravel(), 1 + gx.ravel() ** 2 + 3 * gy.ravel())
    loaded = Surface.load(path)
    for field in ("xs", "ys", "loss", "acc", "loss_se", "example_indices"):
        assert np.array_equal(getattr(loaded, field), getattr(surface, field)), field
    assert loaded.meta["seed"] == 3 and loaded.meta["complete"]


def test_one_d_and_clipped_round_trip(tmp_path):
    one_d = _surface(7, None)
    one_d.save(tmp_path / "a.h5")
    loaded = Surface.load(tmp_path / "a.h5")
    assert loaded.ys is None and np.array_equal(loaded.loss, one_d.loss)
    clipped = _surface(7, 7, clip_radius=0.8)
    clipped.save(tmp_path / "b.h5")
    with h5py.File(tmp_path / "b.h5", "r") as f:
        status = np.asarray(f["point_status"])
        loss = np.asarray(f["test_loss"])
    assert set(np.unique(status)) == {COMPUTED, CLIPPED}
    assert np.isnan(loss[status == CLIPPED]).all()  # NaN, which the official tool never recomputes
    assert np.array_equal(Surface.load(tmp_path / "b.h5").loss, clipped.loss, equal_nan=True)


def test_reads_official_files_square_and_non_square(tmp_path):
    xs, ys = np.linspace(-1, 1, 5), np.linspace(0, 1, 3)
    gx, gy = np.meshgrid(xs, ys)
    flat = (10 * gx + gy).ravel()  # what the official tool computes in its ravel order
    flat[4] = -1  # not computed yet
    write_official_surface(tmp_path / "official.h5", xs, ys, flat)
    surface = Surface.load(tmp_path / "official.h5")
    assert surface.shape == (3, 5) and surface.meta["split"] == "train"
    assert surface.loss[2, 1] == pytest.approx(10 * xs[1] + ys[2])
    assert np.isnan(surface.loss.flat[4]) and not surface.meta["complete"]
    assert np.isnan(surface.loss_se).all() and len(surface.example_indices) == 0
    assert surface.meta["dir_file"] == "directions.h5"


def test_unknown_version_and_non_surface_files_are_refused(tmp_path):
    path = tmp_path / "s.h5"
    _surface(3, 3).save(path)
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 7
    with pytest.raises(SurfaceFileError, match="version 7 is not supported; this lossviz reads version 1"):
        Surface.load(path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["x"] = 1
    with pytest.raises(SurfaceFileError, match="not a surface file"):
        Surface.load(tmp_path / "other.h5")


def test_resume_refuses_a_different_computation(tmp_path):
    template = _surface(3, 3)
    path = tmp_path / "s.h5"
    with SurfaceFile.create(path, template) as handle:
        assert len(handle.pending()) == 9
        handle.record(4, 1.5, 90.0, 0.1)
    with SurfaceFile.open_or_create(path, template, ("seed",)) as handle:
        assert list(handle.pending()) == [0, 1, 2, 3, 5, 6, 7, 8]
        assert handle.status.flat[4] == COMPUTED and handle.status.flat[0] == PENDING
    other = _surface(3, 3)
    other.meta["seed"] = 4
    with pytest.raises(SurfaceFileError, match=r"different computation \(seed \(3 in the file, 4 now\)"):
        SurfaceFile.open_or_create(path, other, ("seed",))


def test_lossplot_csv_rows(tmp_path):
    surface = _surface(3, 2)
    path = tmp_path / "s.csv"
    surface.to_csv(path, exp_id="7", hyperparameters={"batch_size": 64})
    surface.to_csv(path, exp_id="8", hyperparameters={"batch_size": 128}, append=True)
    rows = list(csv.reader(open(path)))
    assert rows[0] == ["exp_id", "batch_size", "dir1", "dir2", "log_loss", "accuracy"]
    assert len(rows) == 1 + 2 * 6
    first = rows[1:7]
    assert [float(r[3]) for r in first] == [-0.5, -0.5, -0.5, 1.5, 1.5, 1.5]  # sorted by y, then x
    assert [float(r[2]) for r in first[:3]] == [-1.0, 0.0, 1.0]
    assert float(first[4][4]) == pytest.approx(np.log(surface.loss[1, 1]))
    assert rows[7][0] == "8" and rows[7][1] == "128"
