"""The viewer pages in a real headless Chromium: they load offline without errors, draw the 3-D scene, and
their controls (log toggle, clip slider, synchronised cameras) change what is plotted. One browser serves
the whole module."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pytest
from helpers_browser import CHROMIUM_MISSING, Browser, CdpError, bowl_surface, network_urls, png_pixels

from lossviz import figures
from lossviz.pages import PLOTLY_JS, write_gallery, write_html, write_report_page
from lossviz.surface import Surface

XSS = "<script>window.__pwned = true</script>"
READY = "document.getElementById('plot') && document.getElementById('plot').dataset.ready === '1'"
Z_OF_FIRST_TRACE = "document.getElementById('plot').data[0].z"


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        pytest.fail(CHROMIUM_MISSING)
    with Browser(width=1280, height=900) as running:
        yield running


@pytest.fixture(scope="module")
def pages(tmp_path_factory):
    """One page of every kind, written once for the module."""
    folder = tmp_path_factory.mktemp("pages")
    xs = np.linspace(-1, 1, 25)
    one_d = Surface(xs=xs, ys=None, loss=0.3 + xs**2, acc=90 - 20 * xs**2, loss_se=0.02 + 0 * xs,
                    example_indices=np.arange(4), meta={"title": XSS})
    compared = [bowl_surface(15, seed=i, method="IMP", p_m=20, test_acc=90.0 - i) for i in range(8)]
    drawn = {
        "surface": figures.surface_figure(bowl_surface(31, model=XSS), title=XSS),
        "non_square": figures.surface_figure(non_square_surface(), title="non-square", clip_radius=1.0),
        "compare": figures.compare_figure(compared, [XSS] + [f"ticket {i}" for i in range(1, 8)], title=XSS),
        "slice": figures.slice_figure(one_d, log=True),
        "contour": figures.contour_figure(bowl_surface(31), style="filled", title=XSS,
                                        trajectory=[[0.9, 0.7], [0.5, 0.3], [0.1, 0.05], [0.0, 0.0]]),
        "curves": figures.remaining_weights_figure({XSS: ([1.0, 0.8, 0.64], [90, 91, 90.5]),
                                                  "random": ([1.0, 0.8, 0.64], [90, 88, 85])}, title=XSS),
    }
    paths = {kind: write_html(figure, folder / f"{kind}.html") for kind, figure in drawn.items()}
    # A run's report folder: plotly.js once beside the pages, a link back to the index.
    paths["shared"] = write_report_page(figures.compare_figure(compared[:2], ["a", "b"], title=XSS),
                                        folder / "report" / "shared.html")
    paths["gallery"] = write_gallery(folder, summary=[("claim", "paper", "here", "partly", XSS)],
                                     warnings=[f"not comparable: {XSS}"])
    return paths


def non_square_surface() -> Surface:
    """α over [-1.5, 1.5] (13 points), β over [-0.5, 0.5] (5 points): a grid three times wider than tall."""
    xs, ys = np.linspace(-1.5, 1.5, 13), np.linspace(-0.5, 0.5, 5)
    a, b = np.meshgrid(xs, ys)
    return Surface(xs=xs, ys=ys, loss=0.2 + a**2 + 3 * b**2, acc=90 - 10 * a**2, loss_se=0.01 + 0 * a,
                   example_indices=np.arange(3), meta={"model": "tiny"})


@pytest.fixture(scope="module")
def surface_page(browser, pages):
    page = browser.new_page()
    page.goto(pages["surface"].as_uri(), ready=READY)
    yield page
    page.close()


@pytest.fixture(scope="module")
def compare_page(browser, pages):
    page = browser.new_page()
    page.goto(pages["compare"].as_uri(), ready=READY)
    yield page
    page.close()


def _kept(z) -> np.ndarray:
    """A plotted z (nested lists with null gaps) as floats with NaN gaps."""
    return np.array([[np.nan if v is None else v for v in row] for row in z], dtype=float)


@pytest.mark.parametrize("kind", ["surface", "compare", "slice", "contour", "curves", "shared", "gallery"])
def test_page_loads_offline_without_errors_or_script_injection(browser, pages, kind):
    page = browser.new_page()
    try:
        page.goto(pages[kind].as_uri(), ready=None if kind == "gallery" else READY)
        assert page.errors == []
        assert network_urls(page.requests) == [], "the page asked the network for something"
        assert page.evaluate("window.__pwned") is None, "a <script> title ran"
        shown = page.evaluate("document.body.innerText")
        assert "<script>window.__pwned = true</script>" in shown or kind == "slice"  # as text
    finally:
        page.close()


def _scene_box(page, scene: str = "scene") -> dict:
    """Where a 3-D scene lies on the page, in CSS pixels."""
    return page.evaluate(
        "(() => { const plot = document.getElementById('plot'), r = plot.getBoundingClientRect();"
        f" const d = plot._fullLayout.{scene}.domain, s = plot._fullLayout._size;"
        " return {x: r.x + s.l + d.x[0] * s.w, y: r.y + s.t + (1 - d.y[1]) * s.h,"
        " width: (d.x[1] - d.x[0]) * s.w, height: (d.y[1] - d.y[0]) * s.h}; })()")


def test_3d_scene_is_drawn(surface_page):
    box = _scene_box(surface_page)
    pixels = png_pixels(surface_page.screenshot(box))
    assert pixels.std() > 20, "the 3-D scene looks blank"
    # Viridis colours the surface: a good share of pixels are neither background grey-blue nor white.
    saturation = pixels.max(axis=2) - pixels.min(axis=2)
    assert (saturation > 80).mean() > 0.03


def test_hover_shows_alpha_beta_loss_accuracy_and_standard_error(surface_page):
    surface = bowl_surface(31)  # the page's surface
    box = _scene_box(surface_page)
    label = ""
    for dy in (0, 30, -30, 60):  # the point under the mouse depends on the camera: try a few
        surface_page.send("Input.dispatchMouseEvent", type="mouseMoved", x=box["x"] + box["width"] / 2,
                          y=box["y"] + box["height"] / 2 + dy)
        try:
            label = surface_page.wait_for("Array.from(document.querySelectorAll('.hovertext'))"
                                          ".map(e => e.textContent).join('')", timeout=3)
            break
        except CdpError:
            continue
    found = re.fullmatch(r"α=(\S+)β=(\S+)loss=(\S+)accuracy=(\S+)%standard error=(\S+)", label)
    assert found, f"hover label {label!r}"
    alpha, beta, loss, accuracy, error = map(float, found.groups())
    ix, iy = np.abs(surface.xs - alpha).argmin(), np.abs(surface.ys - beta).argmin()
    assert loss == pytest.approx(surface.loss[iy, ix], rel=1e-3)
    assert accuracy == pytest.approx(surface.acc[iy, ix], abs=0.006)
    assert error == pytest.approx(surface.loss_se[iy, ix], rel=1e-2)


def test_log_toggle_switches_between_ln_loss_and_loss(surface_page):
    log_z = _kept(surface_page.evaluate(Z_OF_FIRST_TRACE))
    surface_page.press("l")
    surface_page.wait_for("document.getElementById('plot').dataset.zScale === 'linear'")
    linear_z = _kept(surface_page.evaluate(Z_OF_FIRST_TRACE))
    kept = np.isfinite(log_z)
    np.testing.assert_array_equal(kept, np.isfinite(linear_z))
    np.testing.assert_allclose(linear_z[kept], np.exp(log_z[kept]), rtol=1e-9)
    assert surface_page.evaluate("document.getElementById('plot').layout.scene.zaxis.title.text") == "loss"
    surface_page.evaluate("document.getElementById('toggle-z').click()")
    surface_page.wait_for("document.getElementById('plot').dataset.zScale === 'log'")
    np.testing.assert_allclose(_kept(surface_page.evaluate(Z_OF_FIRST_TRACE))[kept], log_z[kept])


def test_clip_slider_hides_points_and_a_shows_them_all(surface_page):
    before = np.isfinite(_kept(surface_page.evaluate(Z_OF_FIRST_TRACE))).sum()
    radius = surface_page.evaluate(  # as a user dragging the slider: the value snaps to its step
        "(() => { const s = document.getElementById('clip-radius'); s.value = 0.5;"
        " s.dispatchEvent(new Event('input')); return s.value; })()")
    surface_page.wait_for(f"document.getElementById('plot').dataset.clipRadius === '{radius}'")
    trace = surface_page.evaluate("(() => { const t = document.getElementById('plot').data[0];"
                                  " return {x: t.x, y: t.y, z: t.z}; })()")
    z = _kept(trace["z"])
    alpha, beta = _kept(trace["x"]), _kept(trace["y"])
    assert 0 < np.isfinite(z).sum() < before
    assert np.all(np.hypot(alpha, beta)[np.isfinite(z)] <= float(radius) + 1e-9)
    surface_page.press("a")
    surface_page.wait_for(f"Number(document.getElementById('plot').dataset.clipRadius) > {math.sqrt(2) - 1e-6}")
    assert np.isfinite(_kept(surface_page.evaluate(Z_OF_FIRST_TRACE))).all()


def test_contours_toggle(surface_page):
    shown = "document.getElementById('plot').data[0].contours.z.show"
    assert surface_page.evaluate(shown) is True
    surface_page.press("c")
    surface_page.wait_for(f"{shown} === false")
    surface_page.press("c")
    surface_page.wait_for(f"{shown} === true")


CAMERAS = ("(() => { const l = document.getElementById('plot')._fullLayout;"
           " return Object.keys(l).filter(k => /^scene\\d*$/.test(k)).sort()"
           ".map(k => l[k].camera.eye); })()")


def test_rotating_one_scene_rotates_all_and_reset_restores(compare_page):
    before = compare_page.evaluate(CAMERAS)
    assert len(before) == 8
    box = _scene_box(compare_page)
    centre = (box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    compare_page.drag(centre, (centre[0] + 120, centre[1] + 30))
    compare_page.wait_for(f"JSON.stringify({CAMERAS}[0]) !== JSON.stringify({json.dumps(before[0])})")
    compare_page.wait_for(f"new Set({CAMERAS}.map(e => JSON.stringify(e))).size === 1", timeout=10)
    after = compare_page.evaluate(CAMERAS)
    assert after[0] != before[0] and all(eye == after[0] for eye in after)
    compare_page.press("r")
    compare_page.wait_for(f"JSON.stringify({CAMERAS}) === JSON.stringify({json.dumps(before)})", timeout=10)


def test_page_renders_inside_a_sandboxed_iframe_like_mlflow(browser, pages, tmp_path):
    """MLflow shows HTML artifacts in <iframe sandbox="allow-scripts"> from a blob: URL (an opaque origin:
    no storage, no access to the parent)."""
    html = pages["surface"].read_text(encoding="utf-8")
    host = tmp_path / "host.html"
    html_literal = json.dumps(html).replace("</", "<\\/")  # a JS string that cannot end the <script>
    host.write_text(
        "<!DOCTYPE html><html><body style='margin:0'><iframe id='f' sandbox='allow-scripts' "
        "style='width:1200px;height:800px;border:0'></iframe><script>"
        f"const html = {html_literal};"
        "document.getElementById('f').src = URL.createObjectURL(new Blob([html], {type: 'text/html'}));"
        "</script></body></html>", encoding="utf-8")
    page = browser.new_page()
    try:
        page.goto(host.as_uri())
        variance = 0.0
        for _ in range(100):  # the framed page cannot be inspected from outside: watch its pixels
            pixels = png_pixels(page.screenshot({"x": 300, "y": 150, "width": 600, "height": 500}))
            variance = pixels.std()
            if variance > 20:
                break
            page.evaluate("new Promise(r => setTimeout(r, 200))")
        assert variance > 20, "nothing drawn inside the sandboxed iframe"
        assert page.errors == [] and network_urls(page.requests) == []
    finally:
        page.close()


# -- comparison pages: one z scale, one colorbar, a switch for independent scales ------------------------------
RANGES = ("(() => { const p = document.getElementById('plot'), l = p._fullLayout;"
          " return Object.keys(l).filter(k => /^scene\\d*$/.test(k)).sort()"
          ".map(k => l[k].zaxis.range.map(v => Math.round(v * 1e9) / 1e9)); })()")
COLOUR_RANGES = ("document.getElementById('plot').data.filter(t => t.type === 'surface')"
                 ".map(t => [t.cmin, t.cmax, t.showscale])")


def test_comparison_shares_one_z_scale_with_one_readable_colorbar_and_a_switch(compare_page):
    assert compare_page.evaluate("document.getElementById('plot').dataset.sharedZ") == "1"
    ranges = compare_page.evaluate(RANGES)
    assert len(ranges) == 8 and all(r == ranges[0] for r in ranges)
    colours = compare_page.evaluate(COLOUR_RANGES)
    assert len({(low, high) for low, high, _ in colours}) == 1 and [on for *_, on in colours].count(True) == 1
    # The colorbar is drawn, inside the page, its tick labels whole and not overlapping.
    boxes = compare_page.evaluate(
        "[...document.querySelectorAll('.colorbar .cbaxis text, .colorbar text.ytick')]"
        ".map(e => { const r = e.getBoundingClientRect(); return [r.left, r.top, r.right, r.bottom, e.textContent]; })")
    assert len(document_colorbars(compare_page)) == 1
    assert len(boxes) >= 3, boxes
    width = compare_page.evaluate("document.documentElement.clientWidth")
    assert all(0 <= left and right <= width for left, _, right, _, _ in boxes), boxes
    tops = sorted((top, bottom) for _, top, _, bottom, _ in boxes)
    assert all(b[0] >= a[1] - 1 for a, b in zip(tops, tops[1:], strict=False)), "tick labels overlap"
    compare_page.press("z")  # independent scales: each scene its own range, no colorbar
    compare_page.wait_for("document.getElementById('plot').dataset.sharedZ === '0'")
    assert len({tuple(r) for r in compare_page.evaluate(RANGES)}) > 1
    assert not any(on for *_, on in compare_page.evaluate(COLOUR_RANGES))
    assert document_colorbars(compare_page) == []
    compare_page.evaluate("document.getElementById('shared-z').click()")
    compare_page.wait_for("document.getElementById('plot').dataset.sharedZ === '1'")
    assert compare_page.evaluate(RANGES) == ranges
    # Shape metrics come first (in the figure), the configuration folded away, and the static views drawn.
    assert compare_page.evaluate("document.querySelector('details summary').textContent") == "configuration"
    assert compare_page.evaluate("document.querySelector('details').open") is False
    compare_page.evaluate("document.getElementById('views').scrollIntoView()")  # drawn when it comes near
    compare_page.wait_for("document.getElementById('views').dataset.ready === '1'", timeout=60)
    assert compare_page.evaluate("document.getElementById('views').data.filter(t => t.type === 'contour').length") == 8
    assert compare_page.evaluate("document.querySelectorAll('#views .contourlabels text').length") > 8
    compare_page.evaluate("window.scrollTo(0, 0)")


def document_colorbars(page) -> list:
    return page.evaluate("[...document.querySelectorAll('#plot .colorbar')].map(e => e.getBoundingClientRect().width)")


def test_non_square_grid_is_drawn_to_scale(browser, pages):
    page = browser.new_page()
    try:
        page.goto(pages["non_square"].as_uri(), ready=READY)
        ratio = page.evaluate("document.getElementById('plot')._fullLayout.scene.aspectratio")
        assert ratio["x"] == pytest.approx(1.0) and ratio["y"] == pytest.approx(1 / 3)
        assert page.errors == []
    finally:
        page.close()


def test_the_rim_is_smooth_in_the_browser_and_mirrors_python(browser, pages):
    """At the page's radius and after the slider moves: every drawn vertex lies in the disk, every grid point
    inside it is drawn where it is, the rest of the rim lies on the circle, as lossviz.figures.disk_mesh says."""
    page = browser.new_page()
    try:
        page.goto(pages["non_square"].as_uri(), ready=READY)
        surface = non_square_surface()
        for radius in (1.0, 0.7):
            page.evaluate("(() => { const s = document.getElementById('clip-radius');"
                          f" s.value = {radius}; s.dispatchEvent(new Event('input')); }})()")
            page.wait_for(f"Math.abs(Number(document.getElementById('plot').dataset.clipRadius) - {radius}) < 1e-2")
            shown = float(page.evaluate("document.getElementById('plot').dataset.clipRadius"))
            trace = page.evaluate("(() => { const t = document.getElementById('plot').data[0];"
                                  " return {x: t.x, y: t.y, z: t.z}; })()")
            x, y, z = (_kept(trace[key]) for key in ("x", "y", "z"))
            alpha, beta = surface.coordinates()
            inside = np.hypot(alpha, beta) <= shown
            drawn = np.isfinite(z)
            assert drawn[inside].all() and np.array_equal(x[inside], alpha[inside])
            assert (np.hypot(x, y)[drawn] <= shown + 1e-9).all(), "a vertex outside the disk"
            np.testing.assert_allclose(np.hypot(x, y)[drawn & ~inside], shown)
            want_x, want_y, want = figures.disk_mesh(surface, shown)
            np.testing.assert_array_equal(drawn, np.isfinite(want[..., 0]))
            np.testing.assert_allclose(x, want_x, atol=1e-12)
            np.testing.assert_allclose(z[drawn], np.log(want[..., 0][drawn]), rtol=1e-9)
        assert page.errors == []
    finally:
        page.close()


def test_report_page_shares_plotly_js_and_links_back(browser, pages):
    shared = pages["shared"]
    assert (shared.parent / PLOTLY_JS).is_file()
    assert shared.stat().st_size < 1_000_000 < (shared.parent / PLOTLY_JS).stat().st_size
    page = browser.new_page()
    try:
        page.goto(shared.as_uri(), ready=READY)
        assert page.evaluate("document.getElementById('back').getAttribute('href')") == "../index.html"
        assert any(url.endswith("/" + PLOTLY_JS) for url in page.requests) and network_urls(page.requests) == []
    finally:
        page.close()
