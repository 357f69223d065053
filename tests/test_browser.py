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
from lossviz.pages import write_gallery, write_html
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
        "compare": figures.compare_figure(compared, [XSS] + [f"ticket {i}" for i in range(1, 8)], title=XSS),
        "slice": figures.slice_figure(one_d, log=True),
        "contour": figures.contour_figure(bowl_surface(31), style="filled", title=XSS,
                                        trajectory=[[0.9, 0.7], [0.5, 0.3], [0.1, 0.05], [0.0, 0.0]]),
        "curves": figures.remaining_weights_figure({XSS: ([1.0, 0.8, 0.64], [90, 91, 90.5]),
                                                  "random": ([1.0, 0.8, 0.64], [90, 88, 85])}, title=XSS),
    }
    paths = {kind: write_html(figure, folder / f"{kind}.html") for kind, figure in drawn.items()}
    paths["gallery"] = write_gallery(folder)
    return paths


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


@pytest.mark.parametrize("kind", ["surface", "compare", "slice", "contour", "curves", "gallery"])
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
    alpha, beta = np.meshgrid(trace["x"], trace["y"])
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
