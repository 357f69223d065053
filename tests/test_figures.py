"""The figures and pages (lossviz.figures, lossviz.pages), checked as data: z values, clipping, layout, escaping and
self-containment. What the pages do in a browser is in test_browser.py."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from helpers_browser import bowl_surface

from lossviz import figures, pages
from lossviz.surface import Surface

XSS = "<script>window.__pwned = true</script>"


def non_square_surface() -> Surface:
    """7 α values by 5 β values, each array entry encoding its own (iy, ix) so layout mistakes show."""
    xs, ys = np.linspace(-1.5, 1.5, 7), np.linspace(-1.0, 1.0, 5)
    iy, ix = np.mgrid[0:5, 0:7]
    loss = 1.0 + 10.0 * iy + ix  # distinct, positive
    return Surface(xs=xs, ys=ys, loss=loss, acc=50.0 + ix, loss_se=0.01 * (1 + iy), example_indices=np.arange(3),
                   meta={"model": "tiny"})


def test_log_z_is_natural_log_of_the_loss_inside_the_clip():
    surface = bowl_surface(21)
    trace = figures.surface_figure(surface).data[0]
    z = np.asarray(trace.z, float)
    kept = np.isfinite(z)
    assert kept.sum() > 0.7 * z.size
    np.testing.assert_allclose(z[kept], np.log(surface.loss[kept]), rtol=1e-12)
    linear = np.asarray(figures.surface_figure(surface, z_scale="linear").data[0].z, float)
    np.testing.assert_allclose(linear[kept], surface.loss[kept])


def test_points_outside_the_default_radius_are_nan_and_the_rest_are_kept():
    surface = non_square_surface()
    z = np.asarray(figures.surface_figure(surface).data[0].z, float)
    radius = max(3.0, 2.0) / 2  # half the larger span, LossPlot's default
    for iy, beta in enumerate(surface.ys):
        for ix, alpha in enumerate(surface.xs):
            outside = math.hypot(alpha, beta) > radius
            assert np.isnan(z[iy, ix]) == outside, (iy, ix)


def test_explicit_radius_and_no_clip():
    surface = non_square_surface()
    everything = np.asarray(figures.surface_figure(surface, clip_radius=math.inf).data[0].z, float)
    assert np.isfinite(everything).all()
    centre_only = np.asarray(figures.surface_figure(surface, clip_radius=0.1).data[0].z, float)
    assert np.isfinite(centre_only).sum() == 1 and np.isfinite(centre_only[2, 3])


def test_surface_trace_keeps_the_z_iy_ix_layout_and_hover_data():
    surface = non_square_surface()
    trace = figures.surface_figure(surface, clip_radius=math.inf).data[0]
    assert np.asarray(trace.z).shape == (5, 7) and len(trace.x) == 7 and len(trace.y) == 5
    data = np.asarray(trace.customdata, float)
    assert data.shape == (5, 7, 3)
    np.testing.assert_array_equal(data[..., 0], surface.loss)
    np.testing.assert_array_equal(data[..., 1], surface.acc)
    np.testing.assert_array_equal(data[..., 2], surface.loss_se)
    for word in ("α", "β", "loss", "accuracy", "standard error"):
        assert word in trace.hovertemplate


def test_surface_contours_opacity_and_axes():
    figure = figures.surface_figure(bowl_surface(11))
    trace = figure.data[0]
    assert trace.contours.z.show is True and trace.contours.z.usecolormap is True
    assert trace.contours.z.project.z is True
    assert trace.opacity == pytest.approx(0.7)
    assert figure.layout.scene.zaxis.title.text == "ln(loss)"
    assert figures.surface_figure(bowl_surface(11), contours=False).data[0].contours.z.show is False
    settings = figure.layout.meta["lossviz"]
    assert settings["z_scale"] == "log" and settings["clip_radius"] == pytest.approx(1.0)
    assert settings["max_radius"] == pytest.approx(math.sqrt(2))


def test_zero_loss_is_floored_not_minus_infinity():
    z = figures.z_values(np.array([0.0, 1.0, np.nan]))
    assert z[0] == pytest.approx(math.log(figures.LOG_FLOOR)) and z[1] == 0.0 and np.isnan(z[2])
    with pytest.raises(ValueError, match="z_scale"):
        figures.z_values(np.ones(2), "log10")


def test_compare_figure_has_eight_scenes_titles_and_a_table():
    surfaces = [bowl_surface(9, seed=i, method="IMP", p_m=20, test_acc=90.0 - i) for i in range(8)]
    figure = figures.compare_figure(surfaces, metrics=[{"depth": float(i)} for i in range(8)])
    scenes = {trace.scene for trace in figure.data if trace.type == "surface"}
    assert scenes == {"scene"} | {f"scene{i}" for i in range(2, 9)}
    titles = [a.text for a in figure.layout.annotations]
    assert titles[0] == "IMP · P_m=20 · test acc 90.00%"
    table = next(trace for trace in figure.data if trace.type == "table")
    labels = list(table.cells.values[0])
    assert "model" in labels and "n_examples" in labels and "depth" in labels
    assert table.cells.values[1][labels.index("depth")] == "0"
    assert figure.layout.meta["lossviz"]["kind"] == "compare"


def test_compare_shared_z_gives_every_scene_the_same_range():
    surfaces = [bowl_surface(9), Surface(**{**bowl_surface(9).__dict__, "loss": 3 * bowl_surface(9).loss})]
    figure = figures.compare_figure(surfaces, ["a", "b"], shared_z=True)
    traces = [t for t in figure.data if t.type == "surface"]
    assert traces[0].cmin == traces[1].cmin and traces[0].cmax == traces[1].cmax
    assert tuple(figure.layout.scene.zaxis.range) == tuple(figure.layout.scene2.zaxis.range)
    assert traces[0].cmax == pytest.approx(np.nanmax(np.asarray(traces[1].z, float)))
    unshared = figures.compare_figure(surfaces, ["a", "b"])
    assert all(t.cmin is None for t in unshared.data if t.type == "surface")


def test_compare_rejects_mismatched_titles_and_1d():
    with pytest.raises(ValueError, match="titles"):
        figures.compare_figure([bowl_surface(5)], ["a", "b"])
    one_d = Surface(xs=np.linspace(-1, 1, 5), ys=None, loss=np.ones(5), acc=np.ones(5), loss_se=np.zeros(5),
                    example_indices=np.arange(2))
    with pytest.raises(ValueError, match="2-D"):
        figures.compare_figure([one_d])


def test_slice_figure_twin_axes_and_log_option():
    xs = np.linspace(-1, 1, 11)
    one_d = Surface(xs=xs, ys=None, loss=1 + xs**2, acc=90 - xs**2, loss_se=0.01 + 0 * xs,
                    example_indices=np.arange(2))
    figure = figures.slice_figure(one_d, log=True)
    loss, accuracy = figure.data
    assert loss.yaxis == "y" and accuracy.yaxis == "y2"
    assert figure.layout.yaxis.type == "log" and figure.layout.yaxis2.overlaying == "y"
    np.testing.assert_array_equal(loss.error_y.array, one_d.loss_se)
    assert figures.slice_figure(one_d).layout.yaxis.type == "linear"
    with pytest.raises(ValueError, match="1-D"):
        figures.slice_figure(bowl_surface(5))


@pytest.mark.parametrize("style", figures.CONTOUR_STYLES)
def test_contour_figure_styles_and_trajectory(style):
    surface = bowl_surface(11)
    path = np.array([[0.8, 0.6], [0.4, 0.3], [0.0, 0.0]])
    figure = figures.contour_figure(surface, style=style, trajectory=path)
    main, line, end = figure.data
    assert main.type == ("heatmap" if style == "heatmap" else "contour")
    np.testing.assert_allclose(np.asarray(main.z, float), np.log(surface.loss))  # unclipped by default
    np.testing.assert_array_equal(line.x, path[:, 0])
    assert tuple(end.x) == (0.0,) and figure.layout.yaxis.scaleanchor == "x"
    with pytest.raises(ValueError, match="trajectory"):
        figures.contour_figure(surface, trajectory=np.zeros((3, 3)))


def test_training_curve_figures():
    runs = {"lr 0.1": ([1, 2, 3], [80, 85, 88]), "lr 0.01": ([1, 2, 3], [70, 75, 79])}
    epochs = figures.epoch_curves_figure(runs, metric="test accuracy (%)")
    assert [t.name for t in epochs.data] == ["lr 0.1", "lr 0.01"]
    tickets = figures.remaining_weights_figure({"winning": ([1.0, 0.8, 0.64], [90, 91, 90.5]),
                                              "random": ([1.0, 0.8, 0.64], [90, 88, 85])})
    assert list(tickets.data[0].x) == [100.0, 80.0, 64.0]
    assert tickets.layout.xaxis.type == "log" and tickets.layout.xaxis.autorange == "reversed"


def test_text_from_params_is_escaped_in_figures_and_pages(tmp_path):
    surface = bowl_surface(7, title=XSS, model=XSS)
    figure = figures.compare_figure([surface, bowl_surface(7)], [XSS, "b"], title=XSS)
    assert figure.layout.annotations[0].text == "&lt;script&gt;window.__pwned = true&lt;/script&gt;"
    table = next(trace for trace in figure.data if trace.type == "table")
    assert "<script>" not in str(table.header.values) + str(table.cells.values)
    page = pages.write_html(figures.surface_figure(surface), tmp_path / "x.html").read_text()
    assert XSS not in page
    assert "<title>&lt;script&gt;window.__pwned = true&lt;/script&gt;</title>" in page
    # Inside the figure's JSON no '<' survives, so no text can close the <script> element holding it.
    figure_json = re.search(r'id="lossviz-figure">(.*?)</script>', page, re.S).group(1)
    assert "<" not in figure_json and "\\u003cscript" in figure_json


def test_page_is_self_contained(tmp_path):
    page = pages.write_html(figures.surface_figure(bowl_surface(7)), tmp_path / "s.html").read_text()
    assert "plotly.js v" in page  # the library itself is inlined
    tags = re.findall(r"<(?:script|link|img|iframe|source|embed)\b[^>]*>", page, re.I)
    assert all(not re.search(r"\b(src|href)\s*=", tag, re.I) for tag in tags), tags
    assert not re.search(r"<link\b", page, re.I) and "@import" not in page
    assert 'id="clip-radius"' in page and "<kbd>L</kbd>" in page  # controls and their shortcuts
    flat = pages.write_html(figures.epoch_curves_figure({"a": ([1], [2])}), tmp_path / "c.html").read_text()
    assert 'id="clip-radius"' not in flat  # 2-D figures keep plotly's own toolbar only


def test_gallery_lists_every_figure_with_kind_and_title(tmp_path):
    pages.write_html(figures.surface_figure(bowl_surface(7), title="bowl"), tmp_path / "a.html")
    pages.write_html(figures.contour_figure(bowl_surface(7), title=XSS), tmp_path / "sub dir" / "b.html")
    (tmp_path / "other.html").write_text("<html><head><title>someone else's</title></head></html>")
    index = pages.write_gallery(tmp_path)
    assert index == tmp_path / "index.html"
    text = index.read_text()
    assert 'href="a.html"' in text and 'href="sub%20dir/b.html"' in text and 'href="other.html"' in text
    assert "<td>surface</td><td>bowl</td>" in text and "<td>html</td><td>someone else&#x27;s</td>" in text
    assert XSS not in text and "&lt;script&gt;" in text
    assert 'href="index.html"' not in pages.write_gallery(tmp_path).read_text()  # never lists itself


def test_compare_table_shows_the_shape_metrics_by_default():
    surfaces = [bowl_surface(11), bowl_surface(11, seed=1)]
    table = next(t for t in figures.compare_figure(surfaces, ["a", "b"]).data if t.type == "table")
    labels = list(table.cells.values[0])
    assert {"centre_loss", "depth", "flatness"} <= set(labels)
    from lossviz.shape import surface_metrics

    assert table.cells.values[1][labels.index("depth")] == f"{surface_metrics(surfaces[0])['depth']:.4g}"


def test_cli_plot_compare_and_gallery(tmp_path, capsys):
    from lossviz.cli import main

    bowl_surface(9, method="IMP").save(tmp_path / "a.h5")
    bowl_surface(9, seed=1).save(tmp_path / "b.h5")
    assert main(["plot", str(tmp_path / "a.h5"), "-o", str(tmp_path / "figures" / "a.html")]) == 0
    assert main(["plot", str(tmp_path / "a.h5"), "--kind", "heatmap", "--title", XSS,
                 "-o", str(tmp_path / "figures" / "a-map.html")]) == 0
    assert main(["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--shared-z", "--titles", "x", "y",
                 "-o", str(tmp_path / "figures" / "ab.html")]) == 0
    assert main(["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--titles", "x",
                 "-o", str(tmp_path / "bad.html")]) == 2
    assert "1 titles for 2 files" in capsys.readouterr().err
    assert main(["gallery", str(tmp_path / "figures")]) == 0
    index = (tmp_path / "figures" / "index.html").read_text()
    assert "<td>surface</td><td>IMP</td>" in index and "<td>compare</td>" in index
    assert "<td>contour</td><td>&lt;script&gt;" in index
