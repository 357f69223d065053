"""Exports other tools open (lossviz.exports: ParaView, Blender, LossPlot's CSV) and static images
(lossviz.pages.write_image, kaleido in the machine's Chromium), read back with the real readers: VTK for
.vtp/.vts, meshio for .obj, Pillow for PNG."""

from __future__ import annotations

import csv
import io
import math
import shutil

import numpy as np
import pytest
from helpers_browser import CHROMIUM_MISSING, bowl_surface, png_pixels

from lossviz import exports, figures, pages
from lossviz.surface import Surface


def _chromium() -> None:
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        pytest.fail(CHROMIUM_MISSING)


def non_square() -> Surface:
    xs, ys = np.linspace(-1.5, 1.5, 7), np.linspace(-1.0, 1.0, 5)
    iy, ix = np.mgrid[0:5, 0:7]
    return Surface(xs=xs, ys=ys, loss=1.0 + 10.0 * iy + ix, acc=50.0 + ix, loss_se=0.01 * (1 + iy),
                   example_indices=np.arange(3), meta={"model": "tiny", "batch_size": 128})


def _vtk_read(path):
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkIOXML import vtkXMLPolyDataReader, vtkXMLStructuredGridReader

    reader = vtkXMLPolyDataReader() if path.suffix == ".vtp" else vtkXMLStructuredGridReader()
    reader.SetFileName(str(path))
    reader.Update()
    data = reader.GetOutput()
    arrays = {name: vtk_to_numpy(data.GetPointData().GetArray(name)) for name in ("loss", "accuracy", "loss_se", "z")}
    return data, vtk_to_numpy(data.GetPoints().GetData()), arrays


def test_vtp_opens_in_vtk_and_holds_the_surface_values(tmp_path):
    surface = non_square()
    path = exports.write_mesh(surface, tmp_path / "s.vtp", clip_radius=1.2)
    data, points, arrays = _vtk_read(path)
    alpha, beta = surface.coordinates()
    assert data.GetNumberOfPoints() == surface.loss.size
    np.testing.assert_allclose(points[:, 0], alpha.ravel())
    np.testing.assert_allclose(points[:, 1], beta.ravel())
    np.testing.assert_allclose(arrays["loss"], surface.loss.ravel())
    np.testing.assert_allclose(arrays["accuracy"], surface.acc.ravel())
    np.testing.assert_allclose(arrays["loss_se"], surface.loss_se.ravel())
    inside = np.hypot(alpha, beta).ravel() <= 1.2
    np.testing.assert_allclose(points[inside, 2], np.log(surface.loss.ravel()[inside]))
    # Quads only over cells whose four corners lie inside the clip.
    kept = inside.reshape(5, 7)
    expected = (kept[:-1, :-1] & kept[:-1, 1:] & kept[1:, :-1] & kept[1:, 1:]).sum()
    assert data.GetNumberOfCells() == expected > 0
    assert not list(tmp_path.glob(".*"))  # no partial file left behind


def test_vts_is_the_whole_structured_grid(tmp_path):
    surface = non_square()
    data, points, arrays = _vtk_read(exports.write_mesh(surface, tmp_path / "s.vts", z_scale="linear"))
    dimensions = [0, 0, 0]
    data.GetDimensions(dimensions)
    assert dimensions == [7, 5, 1]
    np.testing.assert_allclose(points[:, 2], surface.loss.ravel())
    np.testing.assert_allclose(arrays["z"], surface.loss.ravel())


def test_obj_opens_in_meshio_with_the_kept_points(tmp_path):
    import meshio

    surface = non_square()
    mesh = meshio.read(exports.write_mesh(surface, tmp_path / "s.obj"))
    assert len(mesh.points) == surface.loss.size and mesh.cells[0].data.shape == (4 * 6, 4)
    assert sorted(np.round(mesh.points[:, 2], 6)) == sorted(np.round(np.log(surface.loss.ravel()), 6))


def test_lossplot_csv_row_layout(tmp_path):
    first, second = non_square(), non_square()
    second.meta["batch_size"] = 4096
    path = exports.write_lossplot_csv([first, second], tmp_path / "l.csv")
    rows = list(csv.reader(io.StringIO(path.read_text())))
    assert rows[0] == ["exp_id", "batch_size", "model", "dir1", "dir2", "log(loss)", "accuracy"]
    body = rows[1:]
    assert len(body) == 2 * 35
    assert [row[0] for row in body] == ["0"] * 35 + ["1"] * 35
    assert {row[1] for row in body[35:]} == {"4096"}
    # dir1 (α) is the outer loop, dir2 (β) the inner one, as LossPlot's own files.
    expected = [(a, b) for a in first.xs for b in first.ys]
    np.testing.assert_allclose([(float(r[3]), float(r[4])) for r in body[:35]], expected)
    ix, iy = 2, 3
    row = body[ix * 5 + iy]
    assert float(row[5]) == pytest.approx(math.log(first.loss[iy, ix]))
    assert row[6] == f"{first.acc[iy, ix]:.2f}%"
    with pytest.raises(ValueError, match="suffix"):
        exports.export_surface(first, tmp_path / "x.ply")


def test_png_export_is_a_real_image_of_the_asked_size(tmp_path):
    _chromium()
    path = pages.write_image(figures.surface_figure(bowl_surface(15), views=False), tmp_path / "s.png",
                             width=500, height=360)
    pixels = png_pixels(path.read_bytes())
    assert pixels.shape == (360, 500, 3)
    assert pixels.std() > 20, "the image looks blank"
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 80).mean() > 0.02  # the Viridis surface is drawn
    with pytest.raises(ValueError, match="png"):
        pages.write_image(figures.surface_figure(bowl_surface(5)), tmp_path / "s.gif")


def test_cli_export_writes_each_format(tmp_path, capsys):
    from lossviz.cli import main

    non_square().save(tmp_path / "a.h5")
    for suffix in (".vtp", ".vts", ".obj", ".csv"):
        assert main(["export", str(tmp_path / "a.h5"), "-o", str(tmp_path / f"a{suffix}")]) == 0
        assert (tmp_path / f"a{suffix}").stat().st_size > 0
    assert main(["export", str(tmp_path / "a.h5"), "-o", str(tmp_path / "a.ply")]) != 0
    assert ".vtp" in capsys.readouterr().err
