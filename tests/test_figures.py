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


def _drawn(trace) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A surface trace's 2-D x, y and z (NaN where nothing is drawn)."""
    return tuple(np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
                 for values in (trace.x, trace.y, trace.z))


def test_log_z_is_natural_log_of_the_loss_inside_the_clip():
    surface = bowl_surface(21)
    x, y, z = _drawn(figures.surface_figure(surface).data[0])
    alpha, beta = surface.coordinates()
    inside = np.hypot(alpha, beta) <= 1.0
    np.testing.assert_array_equal(x[inside], alpha[inside])  # grid points inside the disk stay where they are
    np.testing.assert_allclose(z[inside], np.log(surface.loss[inside]), rtol=1e-12)
    linear = _drawn(figures.surface_figure(surface, z_scale="linear").data[0])[2]
    np.testing.assert_allclose(linear[inside], surface.loss[inside])
    rim = np.isfinite(z) & ~inside
    np.testing.assert_allclose(np.exp(z[rim]), linear[rim])


def test_the_clip_disk_is_drawn_smooth_never_outside_and_with_grid_values_only():
    surface = non_square_surface()
    radius = 1.0
    x, y, z = _drawn(figures.surface_figure(surface, clip_radius=radius).data[0])
    alpha, beta = surface.coordinates()
    distance = np.hypot(alpha, beta)
    inside = distance <= radius
    drawn = np.isfinite(z)
    assert drawn[inside].all(), "a grid point inside the disk is missing"
    assert (np.hypot(x, y)[drawn] <= radius + 1e-9).all(), "a drawn point lies outside the disk"
    rim = drawn & ~inside
    assert rim.any()
    np.testing.assert_allclose(np.hypot(x, y)[rim], radius)  # the rim lies on the circle
    # Each rim point moved along its ray, and its loss is the bilinear interpolation of the grid there (the
    # loss of this surface is linear in ix and iy, so bilinear interpolation is exact: 1 + 10 iy + ix).
    np.testing.assert_allclose(np.arctan2(y[rim], x[rim]), np.arctan2(beta[rim], alpha[rim]))
    ix, iy = (x[rim] + 1.5) / 0.5, (y[rim] + 1.0) / 0.5
    np.testing.assert_allclose(np.exp(z[rim]), 1.0 + 10.0 * iy + ix)
    # A point outside with no neighbour inside is not drawn.
    far = ~inside & ~rim
    assert far.any() and not drawn[far].any()


def test_the_rim_never_invents_a_value_where_the_grid_has_none():
    surface = non_square_surface()
    loss = surface.loss.copy()
    alpha, beta = surface.coordinates()
    loss[np.hypot(alpha, beta) > 1.5] = np.nan  # the engine skipped these points
    clipped = Surface(xs=surface.xs, ys=surface.ys, loss=loss, acc=surface.acc, loss_se=surface.loss_se,
                      example_indices=np.arange(3), meta={})
    x, y, z = _drawn(figures.surface_figure(clipped).data[0])
    drawn = np.isfinite(z)
    for iy, ix in zip(*np.nonzero(drawn), strict=True):
        if np.hypot(alpha[iy, ix], beta[iy, ix]) > 1.5:  # a rim point: every grid value around it exists
            cx = np.clip(np.searchsorted(surface.xs, x[iy, ix], "right") - 1, 0, 5)
            cy = np.clip(np.searchsorted(surface.ys, y[iy, ix], "right") - 1, 0, 3)
            assert np.isfinite(loss[cy:cy + 2, cx:cx + 2]).all()


def test_explicit_radius_and_no_clip():
    surface = non_square_surface()
    x, y, everything = _drawn(figures.surface_figure(surface, clip_radius=math.inf).data[0])
    assert np.isfinite(everything).all()
    alpha, beta = surface.coordinates()
    np.testing.assert_array_equal(x, alpha)
    np.testing.assert_array_equal(y, beta)
    x, y, centre_only = _drawn(figures.surface_figure(surface, clip_radius=0.1).data[0])
    assert np.isfinite(centre_only[2, 3]) and x[2, 3] == 0.0
    assert np.isfinite(centre_only).sum() == 9  # the centre and its 8 neighbours moved onto the circle
    assert (np.hypot(x, y)[np.isfinite(centre_only)] <= 0.1 + 1e-12).all()


def test_surface_trace_keeps_the_z_iy_ix_layout_and_hover_data():
    surface = non_square_surface()
    trace = figures.surface_figure(surface, clip_radius=math.inf).data[0]
    assert np.asarray(trace.z).shape == (5, 7) and np.asarray(trace.x).shape == (5, 7)
    assert trace.meta["grid_x"] == list(surface.xs) and trace.meta["grid_y"] == list(surface.ys)
    data = np.asarray(trace.customdata, float)
    assert data.shape == (5, 7, 3)
    np.testing.assert_array_equal(data[..., 0], surface.loss)
    np.testing.assert_array_equal(data[..., 1], surface.acc)
    np.testing.assert_array_equal(data[..., 2], surface.loss_se)
    for word in ("α", "β", "loss", "accuracy", "standard error"):
        assert word in trace.hovertemplate


def test_non_square_grids_are_drawn_to_scale():
    figure = figures.surface_figure(non_square_surface())  # α spans 3, β spans 2
    ratio = figure.layout.scene.aspectratio
    assert ratio.x == pytest.approx(1.0) and ratio.y == pytest.approx(2 / 3)
    compared = figures.compare_figure([non_square_surface(), bowl_surface(5)], ["a", "b"])
    assert compared.layout.scene.aspectratio.y == pytest.approx(2 / 3)
    assert compared.layout.scene2.aspectratio.y == pytest.approx(1.0)


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
    assert labels == ["depth"]  # the shape metrics first, in the figure
    assert table.cells.values[1][labels.index("depth")] == "0"
    settings = figure.layout.meta["lossviz"]
    assert settings["kind"] == "compare"
    configuration = settings["tables"][0]  # the configuration goes to the page, folded away
    assert configuration["title"] == "configuration" and configuration["open"] is False
    config_labels = [label for label, _ in configuration["rows"]]
    assert "model" in config_labels and "n_examples" in config_labels and "grid (ny × nx)" in config_labels
    views = settings["views"]  # Li et al.'s static views: a labelled contour per surface, 1-D slices
    contours = [t for t in views["data"] if t["type"] == "contour"]
    assert len(contours) == 8 and all(t["contours"]["showlabels"] for t in contours)
    assert {t["contours"]["size"] for t in contours} == {contours[0]["contours"]["size"]}  # one set of levels


def test_compare_shared_z_gives_every_scene_the_same_range():
    surfaces = [bowl_surface(9), Surface(**{**bowl_surface(9).__dict__, "loss": 3 * bowl_surface(9).loss})]
    figure = figures.compare_figure(surfaces, ["a", "b"])  # shared by default
    traces = [t for t in figure.data if t.type == "surface"]
    assert traces[0].cmin == traces[1].cmin and traces[0].cmax == traces[1].cmax
    assert tuple(figure.layout.scene.zaxis.range) == tuple(figure.layout.scene2.zaxis.range)
    assert traces[0].cmax == pytest.approx(np.nanmax(_drawn(traces[1])[2]))
    assert [t.showscale for t in traces] == [True, False]  # one colorbar, beside the scenes
    assert traces[0].colorbar.x >= 1.0 and traces[0].colorbar.tickformat
    unshared = figures.compare_figure(surfaces, ["a", "b"], shared_z=False)
    assert all(t.cmin is None and not t.showscale for t in unshared.data if t.type == "surface")


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


def test_fidelity_figure_has_readable_log_ticks_no_rmse_at_the_reference_and_distinct_lines():
    rows = [{"n": n, "pearson_ln_loss": 0.9 + n / 1e4, "rmse_ln_loss": 0.0 if n == 1000 else 10 / n,
             "speedup": 0.9 * 1000 / n, "cpu_speedup": 0.8 * 1000 / n, "point_speedup": 1.1 * 1000 / n,
             "mean_ln_loss_se": 1 / n, "max_ln_loss_se": 2 / n} for n in (10, 50, 250, 1000)]
    figure = figures.sample_size_figure(rows, tolerance=0.05)
    by_name = {trace.name: trace for trace in figure.data}
    assert list(by_name["RMSE of ln(loss)"].y)[-1] is None  # 0 by definition at the reference n: not drawn
    assert list(by_name["RMSE of ln(loss)"].y)[:3] == [1.0, 0.2, 0.04]
    speed = figure.layout.yaxis2
    assert speed.type == "log" and list(speed.ticktext) == [f"{v:g}×" for v in speed.tickvals]
    mantissas = {round(v / 10 ** math.floor(math.log10(v)), 9) for v in speed.tickvals}
    assert mantissas <= {1, 2, 5}  # 1, 2, 5 × powers of ten, nothing like 1.125839
    speed_lines = [t for t in figure.data if "speed-up" in t.name]
    assert len(speed_lines) == 3
    assert len({(t.line.color, t.line.dash, t.marker.symbol) for t in speed_lines}) == 3


def test_pages_show_metrics_configuration_a_link_back_and_a_real_title(tmp_path):
    surface = bowl_surface(9, method="IMP", model="lenet5")
    page = pages.write_html(figures.surface_figure(surface), tmp_path / "s.html", back="../index.html").read_text()
    assert "<title>IMP</title>" in page and "lossviz figure" not in page
    assert '<a id="back" href="../index.html">' in page
    assert "<h2>shape metrics</h2>" in page and "<summary>configuration</summary>" in page
    assert page.index("<h2>shape metrics</h2>") < page.index("<summary>configuration</summary>")
    assert "<th>model</th><td>lenet5</td>" in page and "<th>depth</th>" in page
    untitled = figures.epoch_curves_figure({"a": ([1], [2])}, title="Accuracy by epoch")
    untitled.layout.meta = None
    assert "<title>Accuracy by epoch</title>" in pages.page_html(untitled)
    with pytest.raises(ValueError, match="plotly_js"):
        pages.page_html(untitled, plotly_js="cdn")


def test_report_pages_share_plotly_js_and_mlflow_copies_are_self_contained(tmp_path):
    first = pages.write_report_page(figures.surface_figure(bowl_surface(7), views=False), tmp_path / "r" / "a.html")
    second = pages.write_report_page(figures.contour_figure(bowl_surface(7)), tmp_path / "r" / "b.html")
    library = tmp_path / "r" / pages.PLOTLY_JS
    assert library.stat().st_size > 3_000_000 and "plotly.js v" in library.read_text()
    for page in (first, second):
        text = page.read_text()
        assert pages.SHARED_PLOTLY_TAG in text and "plotly.js v" not in text and len(text) < 500_000
    modified = library.stat().st_mtime_ns
    pages.write_report_page(figures.contour_figure(bowl_surface(7)), tmp_path / "r" / "c.html")
    assert library.stat().st_mtime_ns == modified  # written once per folder, not per page
    (tmp_path / "r" / "m.json").write_text("{}")
    with pages.self_contained_copies([first, tmp_path / "r" / "m.json"]) as (copy, other):
        text = copy.read_text()
        assert copy.name == "a.html" and "plotly.js v" in text and pages.SHARED_PLOTLY_TAG not in text
        assert 'id="back"' not in text and other.read_text() == "{}"
    assert not copy.exists()


def test_cli_plot_format_and_compare_scales(tmp_path):
    from lossviz.cli import main

    bowl_surface(9).save(tmp_path / "a.h5")
    bowl_surface(9, seed=1, sharpness=3.0).save(tmp_path / "b.h5")
    assert main(["compare", str(tmp_path / "a.h5"), str(tmp_path / "b.h5"), "--independent-z", "--shared-js",
                 "-o", str(tmp_path / "out" / "ab.html")]) == 0
    text = (tmp_path / "out" / "ab.html").read_text()
    assert pages.SHARED_PLOTLY_TAG in text and (tmp_path / "out" / pages.PLOTLY_JS).is_file()
    assert '"shared_z":false' in text.replace(" ", "")
    with pytest.raises(SystemExit):
        main(["compare", str(tmp_path / "a.h5"), "--shared-z", "--independent-z", "-o", str(tmp_path / "x.html")])


def test_report_verdicts_and_the_not_comparable_warning():
    from pipelines import report

    per = {"32": {"batch_size": 32, "test_acc": 0.88, "train_acc": 0.97, "train_loss": 0.1},
           "4000": {"batch_size": 4000, "test_acc": 0.47, "train_acc": 0.49, "train_loss": 1.4}}
    rows = report.batch_claims({"per_batch_size": per,
                                "correlations": {"flatness": {"test_error": {"spearman": 1.0, "p_value": 0.5}}}})
    assert [row[3] for row in rows] == ["confounded", "confounded"]
    assert "4000 not converged" in rows[0][4] and "49.0%" in rows[0][4]
    tables, warnings = report.training_state_of(per)
    assert len(warnings) == 1 and "4000" in warnings[0] and "Not comparable" in warnings[0]
    assert tables[0]["rows"][1] == ("final train accuracy", ["97.0%", "49.0%"])
    converged = {key: {**row, "train_acc": 0.96} for key, row in per.items()}
    assert report.training_state_of(converged)[1] == []
    tied = {"128": {"batch_size": 128, "test_acc": 0.9075}, "1024": {"batch_size": 1024, "test_acc": 0.9075},
            "16": {"batch_size": 16, "test_acc": 0.9059}}
    assert report.best_batch_sizes(tied) == [128, 1024]
    best = report.batch_claims({"per_batch_size": tied, "correlations": {}})[0]
    assert best[3] == "partly" and "128 and 1024 (tied)" in best[4]
    by_n = {str(n): {"pearson_ln_loss": r, "rmse_ln_loss": 0.1, "argmin_distance": 0.0, "speedup": 1.0}
            for n, r in ((10, 0.8), (250, 0.995), (1000, 1.0))}
    claims = {row[0]: row for row in report.sample_size_claims({"by_n": by_n})}
    assert claims["few examples suffice for the shape"][3] == "not reproduced"
    assert "250" in claims["few examples suffice for the shape"][4]
