"""Surfaces to files other tools open: ParaView (`.vtp` polydata, `.vts` structured grid, written by VTK, the
library ParaView is built on), a Blender-readable mesh (`.obj`, via meshio), and LossPlot's CSV. The official
tool's HDF5 is `Surface.save`.

Every export draws the 2-D surface as a height field: x = α, y = β, z = ln(loss) (LossPlot's and the seed
paper's scale; `z_scale="linear"` for the loss itself), with the loss, accuracy and standard error as point
data where the format holds any. Points outside `clip_radius` (None keeps every point) and points without a
value are left out of the mesh formats (their cells dropped) and written as NaN in the CSV, whose rows must
stay a full grid (LossPlot builds its grids by row index).
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lossviz.checkpoints import atomic_write
from lossviz.surface import Surface, outside_radius

MESH_FORMATS = {".vtp": "vtp", ".vts": "vts", ".obj": "obj"}
EXPORT_FORMATS = (*MESH_FORMATS, ".csv")
LOG_FLOOR = 1e-12  # as lossviz.figures: ln(0) drawn at ln(1e-12)
# LossPlot's CSV: exp_id, the hyperparameters, dir1, dir2, log(loss), accuracy ("94.11%"); dir1 outer, dir2 inner.
LOSSPLOT_HEADER_END = ("dir1", "dir2", "log(loss)", "accuracy")


def _height(surface: Surface, z_scale: str, clip_radius: float | None) -> np.ndarray:
    """(ny, nx) z, NaN outside the clip or where the loss is missing."""
    if not surface.is_2d:
        raise ValueError("exports draw 2-D surfaces (ys given); this surface is 1-D")
    if z_scale not in ("log", "linear"):
        raise ValueError(f"z_scale must be 'log' or 'linear', got {z_scale!r}")
    loss = np.asarray(surface.loss, dtype=float)
    z = np.log(np.maximum(loss, LOG_FLOOR)) if z_scale == "log" else loss.copy()
    z[~np.isfinite(loss)] = np.nan
    if clip_radius is not None:
        z[outside_radius(*surface.coordinates(), clip_radius)] = np.nan
    return z


def _vtk_arrays(surface: Surface, z: np.ndarray) -> list:
    from vtkmodules.util.numpy_support import numpy_to_vtk

    arrays = []
    for name, values in (("loss", surface.loss), ("accuracy", surface.acc), ("loss_se", surface.loss_se), ("z", z)):
        array = numpy_to_vtk(np.ascontiguousarray(np.asarray(values, float).ravel()), deep=True)
        array.SetName(name)
        arrays.append(array)
    return arrays


def _vtk_dataset(surface: Surface, suffix: str, z_scale: str, clip_radius: float | None):
    """VTK's polydata (quads over the cells with four values) or structured grid (every grid point, NaN
    where there is no value), x = α, y = β, z as in the module docstring, with the point data."""
    from vtkmodules.util.numpy_support import numpy_to_vtk, numpy_to_vtkIdTypeArray
    from vtkmodules.vtkCommonCore import vtkPoints
    from vtkmodules.vtkCommonDataModel import vtkCellArray, vtkPolyData, vtkStructuredGrid

    z = _height(surface, z_scale, clip_radius)
    alpha, beta = surface.coordinates()
    points = vtkPoints()
    height = np.nan_to_num(z, nan=0.0) if suffix == ".vtp" else z
    points.SetData(numpy_to_vtk(np.ascontiguousarray(np.stack([alpha.ravel(), beta.ravel(), height.ravel()], 1)),
                                deep=True))
    if suffix == ".vts":
        dataset = vtkStructuredGrid()
        dataset.SetDimensions(z.shape[1], z.shape[0], 1)
    else:
        quads = _quads(z)
        cells = vtkCellArray()
        cells.SetData(numpy_to_vtkIdTypeArray(np.arange(0, 4 * len(quads) + 1, 4, dtype=np.int64), deep=True),
                      numpy_to_vtkIdTypeArray(np.ascontiguousarray(quads.ravel().astype(np.int64)), deep=True))
        dataset = vtkPolyData()
        dataset.SetPolys(cells)
    dataset.SetPoints(points)
    for array in _vtk_arrays(surface, z):
        dataset.GetPointData().AddArray(array)
    dataset.GetPointData().SetActiveScalars("z")
    return dataset


def _quads(z: np.ndarray) -> np.ndarray:
    """(m, 4) point numbers (iy * nx + ix, counter-clockwise) of the grid cells whose four corners have a z."""
    ny, nx = z.shape
    index = np.arange(ny * nx).reshape(ny, nx)
    corners = np.stack([index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]], axis=-1).reshape(-1, 4)
    return corners[np.isfinite(z).ravel()[corners].all(axis=1)]


def write_mesh(surface: Surface, path: str | os.PathLike, *, z_scale: str = "log",
               clip_radius: float | None = None) -> Path:
    """`.vtp` (ParaView polydata), `.vts` (ParaView structured grid: every grid point, NaN kept), both written
    by VTK itself, or `.obj` (Blender: File › Import › Wavefront), by meshio. Written whole or not at all."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise ValueError(f"mesh format from the file suffix must be one of {tuple(MESH_FORMATS)}, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial{suffix}")
    try:
        if suffix == ".obj":
            import meshio

            z = _height(surface, z_scale, clip_radius)
            quads = _quads(z)
            used = np.unique(quads)  # OBJ keeps no point data: only the points the faces use
            renumber = np.full(z.size, -1)
            renumber[used] = np.arange(len(used))
            alpha, beta = surface.coordinates()
            points = np.stack([alpha.ravel(), beta.ravel(), z.ravel()], axis=1)[used]
            meshio.write(partial, meshio.Mesh(points, [("quad", renumber[quads])]), file_format="obj")
        else:
            from vtkmodules.vtkIOXML import vtkXMLPolyDataWriter, vtkXMLStructuredGridWriter

            writer = vtkXMLPolyDataWriter() if suffix == ".vtp" else vtkXMLStructuredGridWriter()
            writer.SetFileName(str(partial))
            writer.SetInputData(_vtk_dataset(surface, suffix, z_scale, clip_radius))
            writer.SetDataModeToBinary()
            if not writer.Write():
                raise OSError(f"VTK could not write {path}")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _hyperparameters(surface: Surface) -> dict[str, Any]:
    scalar = (str, int, float, bool, np.integer, np.floating)
    return {k: v for k, v in sorted(surface.meta.items()) if isinstance(v, scalar) and k not in ("title",)}


def write_lossplot_csv(surfaces: Mapping[str, Surface] | list[Surface], path: str | os.PathLike, *,
                       hyperparameters: list[str] | None = None) -> Path:
    """LossPlot's CSV (bainro/lossplot): one row per grid point, `exp_id, <hyperparameters…>, dir1, dir2,
    log(loss), accuracy`, rows grouped by experiment, dir1 (α) the outer loop and dir2 (β) the inner one, the
    accuracy as a percentage ("94.11%"). `surfaces` in order (a mapping's keys are ignored: exp_id counts
    from 0). `hyperparameters`: metadata keys to write as columns (default: the scalar keys all surfaces have)."""
    surfaces = list(surfaces.values()) if isinstance(surfaces, Mapping) else list(surfaces)
    if not surfaces:
        raise ValueError("write_lossplot_csv needs one or more surfaces")
    if hyperparameters is None:
        shared = set.intersection(*(set(_hyperparameters(s)) for s in surfaces))
        hyperparameters = sorted(shared)
    rows: list[list[str]] = [["exp_id", *hyperparameters, *LOSSPLOT_HEADER_END]]
    for exp_id, surface in enumerate(surfaces):
        z = _height(surface, "log", None)
        meta = [str(surface.meta.get(key, "")) for key in hyperparameters]
        acc = np.asarray(surface.acc, float)
        for ix, alpha in enumerate(surface.xs):
            for iy, beta in enumerate(surface.ys):
                accuracy = f"{acc[iy, ix]:.2f}%" if math.isfinite(acc[iy, ix]) else "NaN"
                value = repr(float(z[iy, ix])) if math.isfinite(z[iy, ix]) else "NaN"
                rows.append([str(exp_id), *meta, repr(float(alpha)), repr(float(beta)), value, accuracy])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(stream) -> None:
        import io

        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerows(rows)
        stream.write(text.getvalue().encode("utf-8"))

    atomic_write(path, write)
    return path


def export_surface(surface: Surface, path: str | os.PathLike, *, z_scale: str = "log",
                   clip_radius: float | None = None) -> Path:
    """One surface to the format its file suffix names (`EXPORT_FORMATS`)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".csv":
        return write_lossplot_csv([surface], path)
    if suffix in MESH_FORMATS:
        return write_mesh(surface, path, z_scale=z_scale, clip_radius=clip_radius)
    raise ValueError(f"export format from the file suffix must be one of {EXPORT_FORMATS}, got {Path(path).name!r}")
