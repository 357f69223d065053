"""Plotly figures of loss surfaces and training runs, and the one HTML writer that turns any of them into a
self-contained viewer page (plotly.js inlined, in-page controls, no server, no network).

Figures:
- `surface_figure`: one 3-D surface, natural-log z by default, projected z contours, radius clip, hover
  with (α, β, loss, accuracy, standard error); the seed paper's LossPlot view.
- `compare_figure`: several surfaces side by side with synchronised cameras and a metadata/metrics table.
- `slice_figure` (1-D loss and accuracy on twin axes), `contour_figure` (2-D contour/heatmap with an
  optional trajectory), `epoch_curves_figure` and `remaining_weights_figure` (training runs).

Pages: `write_html(figure, path)` writes one HTML file; pages with 3-D surfaces get controls (ln/linear z,
clip radius, contours, reset camera, keyboard shortcuts) that recompute z in the browser from the raw loss
kept in each trace's `customdata`. `write_gallery(directory)` writes an index of the pages in a folder.

Text that comes from params or files (titles, metadata) is HTML-escaped before it reaches plotly, whose
text renderer understands a subset of HTML, and before it reaches the page.
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from lossviz.metrics import default_clip_radius, surface_metrics
from lossviz.surface import Surface, outside_radius

Z_SCALES = ("log", "linear")
# ln(0) is -inf; a loss that small is zero for any plot, so it is drawn at ln(LOG_FLOOR).
LOG_FLOOR = 1e-12
COLORSCALE = "Viridis"  # perceptually uniform and readable by colour-blind viewers
SURFACE_OPACITY = 0.7  # as LossPlot: the projected contours show through the surface
DEFAULT_CAMERA = {"eye": {"x": 1.45, "y": 1.45, "z": 1.05}, "center": {"x": 0, "y": 0, "z": -0.1},
                  "up": {"x": 0, "y": 0, "z": 1}}
HOVER_2D = ("α=%{x:.3f}<br>β=%{y:.3f}<br>loss=%{customdata[0]:.4g}<br>accuracy=%{customdata[1]:.2f}%"
            "<br>standard error=%{customdata[2]:.3g}<extra></extra>")
# Metadata keys that name a surface in a subplot title, in order, with how each value is shown.
TITLE_KEYS = {
    "name": "{}", "method": "{}", "p_m": "P_m={}", "remaining": "remaining {:.3g}%",
    "batch_size": "batch {}", "test_acc": "test acc {:.2f}%",
}
# Metadata shown first in the comparison table; other scalar keys follow alphabetically.
TABLE_KEYS = ("model", "dataset", "split", "method", "batch_size", "n_examples", "norm", "ignore", "mode",
              "seed", "model_hash")
TABLE_ROW_PX = 22
# Shape metrics (lossviz.metrics.surface_metrics) shown in the comparison table by default.
TABLE_METRICS = ("centre_loss", "min_loss", "depth", "flatness", "convex_fraction", "centre_curvature_min",
                 "centre_curvature_max")


# -- text ---------------------------------------------------------------------------------------------------
def escape(text: Any) -> str:
    """`text` as plain text for plotly and HTML: `<script>` shows as the characters, never runs."""
    return html.escape(str(text), quote=True)


def surface_title(surface: Surface, fallback: str = "surface") -> str:
    """A short plain-text title from the surface's metadata, e.g. 'IMP · P_m=20 · test acc 91.20%'."""
    meta = surface.meta
    if meta.get("title"):
        return str(meta["title"])
    parts = []
    for key, fmt in TITLE_KEYS.items():
        if meta.get(key) is not None:
            try:
                parts.append(fmt.format(meta[key]))
            except (ValueError, TypeError):
                parts.append(f"{key}={meta[key]}")
    return " · ".join(parts) or fallback


# -- z values and the radius clip --------------------------------------------------------------------------
def z_values(loss: np.ndarray, z_scale: str = "log") -> np.ndarray:
    """The plotted z: ln(loss) (LossPlot's scale) or the loss itself. NaN stays NaN."""
    if z_scale not in Z_SCALES:
        raise ValueError(f"z_scale must be one of {Z_SCALES}, got {z_scale!r}")
    loss = np.asarray(loss, dtype=float)
    if z_scale == "linear":
        return loss.copy()
    with np.errstate(invalid="ignore"):
        return np.log(np.maximum(loss, LOG_FLOOR))


def corner_radius(surface: Surface) -> float:
    """The distance from the centre (α = β = 0, the trained model) to the farthest grid corner: a clip at
    this radius keeps every point."""
    return float(np.hypot(np.abs(surface.xs).max(), np.abs(surface.ys).max()))


def clipped_z(surface: Surface, z_scale: str = "log", clip_radius: float | None = None) -> np.ndarray:
    """The plotted (ny, nx) z: `z_values` of the loss, NaN farther than the clip radius from the trained
    model (None: `default_clip_radius`), by the same rule the engine uses to skip points."""
    if not surface.is_2d:
        raise ValueError("a 1-D surface has no z: use slice_figure")
    radius = default_clip_radius(surface) if clip_radius is None else clip_radius
    z = z_values(surface.loss, z_scale)
    z[outside_radius(*surface.coordinates(), radius)] = np.nan
    return z


def _point_data(surface: Surface) -> np.ndarray:
    """(ny, nx, 3) [loss, accuracy, standard error] per point: the hover text, and the raw loss the page's
    controls recompute z from."""
    return np.stack([np.asarray(surface.loss, float), np.asarray(surface.acc, float),
                     np.asarray(surface.loss_se, float)], axis=-1)


def _z_title(z_scale: str) -> str:
    return "ln(loss)" if z_scale == "log" else "loss"


# -- 3-D surfaces ------------------------------------------------------------------------------------------
def _surface_trace(surface: Surface, *, z_scale: str, clip_radius: float, contours: bool, opacity: float,
                   colorscale: str, scene: str, showscale: bool, name: str) -> go.Surface:
    # Plain lists, not numpy arrays: plotly.py would ship those base64-encoded, and the page script reads
    # x, y and customdata to recompute z.
    return go.Surface(
        x=np.asarray(surface.xs, float).tolist(), y=np.asarray(surface.ys, float).tolist(),
        z=clipped_z(surface, z_scale, clip_radius).tolist(),
        customdata=_point_data(surface).tolist(), hovertemplate=HOVER_2D, name=escape(name),
        colorscale=colorscale, opacity=opacity, showscale=showscale, scene=scene,
        colorbar={"title": {"text": _z_title(z_scale)}, "len": 0.6},
        contours={"z": {"show": contours, "usecolormap": True, "project": {"z": True},
                        "highlightcolor": "#ffffff"}},
        lighting={"ambient": 0.75, "diffuse": 0.6, "specular": 0.15},
    )


def _scene_layout(z_scale: str) -> dict:
    return {
        "xaxis": {"title": {"text": "α"}}, "yaxis": {"title": {"text": "β"}},
        "zaxis": {"title": {"text": _z_title(z_scale)}},
        "aspectmode": "manual", "aspectratio": {"x": 1, "y": 1, "z": 0.75},
        "camera": DEFAULT_CAMERA,
    }


def _viewer_meta(kind: str, title: str, **settings: Any) -> dict:
    """What the page script needs, kept in `layout.meta` so the figure alone carries it."""
    return {"lossviz": {"kind": kind, "title": title, "default_camera": DEFAULT_CAMERA, **settings}}


def surface_figure(surface: Surface, *, title: str | None = None, z_scale: str = "log",
                   clip_radius: float | None = None, contours: bool = True, opacity: float = SURFACE_OPACITY,
                   colorscale: str = COLORSCALE, height: int = 720) -> go.Figure:
    """A 3-D loss surface. `clip_radius` None clips at `default_clip_radius`; `math.inf` keeps every point."""
    title = surface_title(surface) if title is None else title
    radius = default_clip_radius(surface) if clip_radius is None else clip_radius
    figure = go.Figure(_surface_trace(surface, z_scale=z_scale, clip_radius=radius, contours=contours,
                                      opacity=opacity, colorscale=colorscale, scene="scene", showscale=True,
                                      name=title))
    figure.update_layout(
        title={"text": escape(title)}, height=height, scene=_scene_layout(z_scale),
        margin={"l": 0, "r": 0, "t": 50, "b": 0},
        meta=_viewer_meta("surface", title, z_scale=z_scale, contours=contours, shared_z=False,
                          clip_radius=min(radius, corner_radius(surface)), max_radius=corner_radius(surface)),
    )
    return figure


def _metric_text(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


def _table_rows(surfaces: Sequence[Surface], metrics: Sequence[Mapping[str, Any]]) -> list[tuple[str, list]]:
    """(label, one value per surface) rows: grid, chosen metadata, the other scalar metadata, metrics."""
    rows: list[tuple[str, list]] = [
        ("grid (ny × nx)", [" × ".join(map(str, s.shape)) for s in surfaces]),
        ("α range", [f"[{s.xs.min():.3g}, {s.xs.max():.3g}]" for s in surfaces]),
        ("β range", [f"[{s.ys.min():.3g}, {s.ys.max():.3g}]" for s in surfaces]),
    ]
    scalar = (str, int, float, bool, np.integer, np.floating)
    keys = {k for s in surfaces for k, v in s.meta.items() if isinstance(v, scalar) and k != "title"}
    ordered = [k for k in TABLE_KEYS if k in keys] + sorted(keys - set(TABLE_KEYS))
    for key in ordered:
        values = [s.meta.get(key, "") for s in surfaces]
        if all(value == "" for value in values):
            continue
        if key == "model_hash":
            values = [str(v)[:12] for v in values]
        rows.append((key, [_metric_text(v) for v in values]))
    for key in dict.fromkeys(k for m in metrics for k in m):
        rows.append((key, [_metric_text(m.get(key, "")) for m in metrics]))
    return rows


def shape_metrics(surface: Surface) -> dict[str, Any]:
    """The `lossviz.metrics.surface_metrics` shown in the comparison table (`TABLE_METRICS`)."""
    computed = surface_metrics(surface)
    return {key: computed[key] for key in TABLE_METRICS if key in computed}


def compare_figure(surfaces: Sequence[Surface], titles: Sequence[str] | None = None, *, shared_z: bool = False,
                   z_scale: str = "log", clip_radius: float | None = None, contours: bool = True,
                   metrics: Sequence[Mapping[str, Any]] | None = None, columns: int | None = None,
                   opacity: float = SURFACE_OPACITY, colorscale: str = COLORSCALE,
                   title: str = "Loss surfaces") -> go.Figure:
    """Surfaces side by side (cameras kept in sync by the page) above a table of their metadata and shape
    metrics. `shared_z` gives every scene the same z range and colour scale. `metrics`, one mapping per
    surface, defaults to `shape_metrics`. One `clip_radius` applies to every surface (the page's slider moves
    them together); None takes the largest of their default radii, LossPlot's clip for surfaces on one grid."""
    surfaces = list(surfaces)
    if not surfaces or not all(s.is_2d for s in surfaces):
        raise ValueError("compare_figure needs one or more 2-D surfaces")
    titles = [surface_title(s, f"surface {i + 1}") for i, s in enumerate(surfaces)] if titles is None \
        else list(titles)
    if len(titles) != len(surfaces):
        raise ValueError(f"{len(titles)} titles for {len(surfaces)} surfaces")
    metrics = [shape_metrics(s) for s in surfaces] if metrics is None else list(metrics)
    columns = columns or min(len(surfaces), 4)
    scene_rows = math.ceil(len(surfaces) / columns)
    specs = [[{"type": "scene"} if r * columns + c < len(surfaces) else None for c in range(columns)]
             for r in range(scene_rows)]
    specs.append([{"type": "table", "colspan": columns}] + [None] * (columns - 1))
    rows = _table_rows(surfaces, metrics)
    # Heights in pixels, so the table shows every row without scrolling whatever the number of scenes.
    scene_px, table_px, gap_px = 430, 70 + TABLE_ROW_PX * len(rows), 50
    height = scene_px * scene_rows + table_px + gap_px * scene_rows + 80
    figure = make_subplots(
        rows=scene_rows + 1, cols=columns, specs=specs, subplot_titles=[escape(t) for t in titles],
        row_heights=[scene_px] * scene_rows + [table_px], vertical_spacing=gap_px / height,
        horizontal_spacing=0.01,
    )
    radius = max(default_clip_radius(s) for s in surfaces) if clip_radius is None else clip_radius
    max_radius = max(corner_radius(s) for s in surfaces)
    for i, (surface, name) in enumerate(zip(surfaces, titles, strict=True)):
        scene = "scene" if i == 0 else f"scene{i + 1}"
        trace = _surface_trace(surface, z_scale=z_scale, clip_radius=radius, contours=contours,
                               opacity=opacity, colorscale=colorscale, scene=scene,
                               showscale=shared_z and i == 0, name=name)
        figure.add_trace(trace, row=i // columns + 1, col=i % columns + 1)
        figure.layout[scene].update(_scene_layout(z_scale))
        # Small scenes: fewer, smaller z ticks, or the labels pile up on the axis seen edge-on.
        figure.layout[scene].zaxis.update(nticks=4, tickfont={"size": 9})
    if shared_z:
        _share_z_range(figure)
    figure.add_trace(go.Table(
        header={"values": ["", *[escape(t) for t in titles]], "align": "left", "fill": {"color": "#e8ecf4"},
                "font": {"size": 12}},
        cells={"values": [[escape(label) for label, _ in rows],
                          *[[escape(values[i]) for _, values in rows] for i in range(len(surfaces))]],
               "align": "left", "font": {"size": 11}, "height": TABLE_ROW_PX},
    ), row=scene_rows + 1, col=1)
    figure.update_layout(
        title={"text": escape(title)}, height=height, margin={"l": 10, "r": 10, "t": 70, "b": 10},
        showlegend=False,
        meta=_viewer_meta("compare", title, z_scale=z_scale, contours=contours, shared_z=shared_z,
                          clip_radius=min(radius, max_radius), max_radius=max_radius),
    )
    return figure


def _share_z_range(figure: go.Figure) -> None:
    """One z range and colour range for every surface trace (the page script redoes this on each change)."""
    traces = [t for t in figure.data if t.type == "surface"]
    finite = np.concatenate([np.asarray(t.z, float).ravel() for t in traces])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return
    low, high = float(finite.min()), float(finite.max())
    for trace in traces:
        trace.update(cmin=low, cmax=high)
        figure.layout[trace.scene].zaxis.range = [low, high]


# -- 1-D and 2-D ------------------------------------------------------------------------------------------
def slice_figure(surface: Surface, *, title: str | None = None, log: bool = False) -> go.Figure:
    """A 1-D surface: loss (± standard error, log axis if `log`) and accuracy on twin y axes."""
    if surface.is_2d:
        raise ValueError("slice_figure takes a 1-D surface (ys is None)")
    title = surface_title(surface) if title is None else title
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Scatter(
        x=surface.xs, y=surface.loss, name="loss", mode="lines+markers", line={"color": "#1f4e9c"},
        error_y={"type": "data", "array": surface.loss_se, "visible": True, "thickness": 1, "width": 0},
        hovertemplate="α=%{x:.3f}<br>loss=%{y:.4g}<extra></extra>"), secondary_y=False)
    figure.add_trace(go.Scatter(
        x=surface.xs, y=surface.acc, name="accuracy", mode="lines+markers",
        line={"color": "#c0392b", "dash": "dash"},
        hovertemplate="α=%{x:.3f}<br>accuracy=%{y:.2f}%<extra></extra>"), secondary_y=True)
    figure.update_xaxes(title_text="α")
    figure.update_yaxes(title_text="loss", type="log" if log else "linear", secondary_y=False)
    figure.update_yaxes(title_text="accuracy (%)", secondary_y=True)
    figure.update_layout(title={"text": escape(title)}, height=520, hovermode="x unified",
                         meta=_viewer_meta("slice", title))
    return figure


CONTOUR_STYLES = ("contour", "filled", "heatmap")


def contour_figure(surface: Surface, *, title: str | None = None, style: str = "contour", z_scale: str = "log",
                   clip_radius: float | None = None, trajectory: np.ndarray | Sequence | None = None,
                   levels: int = 30) -> go.Figure:
    """A 2-D view from above: contour lines, filled contours or a heatmap of ln(loss) (or loss), with an
    optional trajectory, an (n, 2) sequence of (α, β) points such as training checkpoints on a PCA plane.
    `clip_radius` None keeps every point (the 2-D views of the official tool are unclipped)."""
    if style not in CONTOUR_STYLES:
        raise ValueError(f"style must be one of {CONTOUR_STYLES}, got {style!r}")
    title = surface_title(surface) if title is None else title
    z = clipped_z(surface, z_scale, math.inf if clip_radius is None else clip_radius)
    common = {"x": surface.xs, "y": surface.ys, "z": z, "customdata": _point_data(surface),
              "hovertemplate": HOVER_2D, "colorscale": COLORSCALE, "name": "loss",
              "colorbar": {"title": {"text": _z_title(z_scale)}}}
    if style == "heatmap":
        figure = go.Figure(go.Heatmap(**common))
    else:
        figure = go.Figure(go.Contour(**common, ncontours=levels,
                                      contours={"coloring": "lines" if style == "contour" else "fill",
                                                "showlabels": style == "contour"},
                                      line={"width": 1.5 if style == "contour" else 0.5}))
    if trajectory is not None:
        path = np.asarray(trajectory, dtype=float)
        if path.ndim != 2 or path.shape[1] != 2:
            raise ValueError(f"trajectory must be (n, 2) (α, β) points, got shape {path.shape}")
        figure.add_trace(go.Scatter(
            x=path[:, 0], y=path[:, 1], mode="lines+markers", name="trajectory",
            line={"color": "#d62728", "width": 2}, marker={"size": 5, "color": "#d62728"},
            hovertemplate="step %{pointNumber}<br>α=%{x:.3f}<br>β=%{y:.3f}<extra></extra>"))
        figure.add_trace(go.Scatter(x=path[-1:, 0], y=path[-1:, 1], mode="markers", name="end",
                                    marker={"symbol": "star", "size": 14, "color": "#d62728"},
                                    hoverinfo="skip"))
    figure.update_xaxes(title_text="α", constrain="domain")
    figure.update_yaxes(title_text="β", scaleanchor="x", scaleratio=1, constrain="domain")
    figure.update_layout(title={"text": escape(title)}, height=640, legend={"x": 0, "y": -0.12,
                         "orientation": "h"}, meta=_viewer_meta("contour", title))
    return figure


# -- training runs ---------------------------------------------------------------------------------------
Series = tuple[Sequence[float], Sequence[float]]  # (x values, metric values)


def _series_figure(series: Mapping[str, Series], *, title: str, kind: str, x_title: str, y_title: str,
                   x_type: str = "linear", reverse_x: bool = False, log_y: bool = False) -> go.Figure:
    figure = go.Figure()
    for name, (xs, ys) in series.items():
        figure.add_trace(go.Scatter(x=list(xs), y=list(ys), name=escape(name), mode="lines+markers",
                                    marker={"size": 5}))
    figure.update_xaxes(title_text=escape(x_title), type=x_type,
                        autorange="reversed" if reverse_x else True)
    figure.update_yaxes(title_text=escape(y_title), type="log" if log_y else "linear")
    figure.update_layout(title={"text": escape(title)}, height=520, hovermode="x unified",
                         meta=_viewer_meta(kind, title))
    return figure


def epoch_curves_figure(runs: Mapping[str, Series], *, metric: str = "test accuracy (%)",
                        title: str | None = None, log_y: bool = False) -> go.Figure:
    """A metric against epoch for several runs: `runs[name] = (epochs, values)`."""
    return _series_figure(runs, title=title or f"{metric} by epoch", kind="curves", x_title="epoch",
                          y_title=metric, log_y=log_y)


def remaining_weights_figure(tickets: Mapping[str, Series], *, metric: str = "test accuracy (%)",
                             title: str | None = None) -> go.Figure:
    """A metric against the fraction of weights remaining (e.g. winning vs random tickets):
    `tickets[name] = (remaining fractions in (0, 1], values)`. The x axis is logarithmic and runs from
    dense to sparse, as in Frankle & Carbin's plots."""
    as_percent = {name: ([100 * f for f in fractions], values) for name, (fractions, values) in tickets.items()}
    return _series_figure(as_percent, title=title or f"{metric} by weights remaining", kind="curves",
                          x_title="weights remaining (%)", y_title=metric, x_type="log", reverse_x=True)


# -- pages -----------------------------------------------------------------------------------------------
PAGE_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1d2230; background: #fff; }
header { padding: 10px 16px 0; } h1 { font-size: 18px; margin: 0 0 4px; }
#controls { display: flex; flex-wrap: wrap; gap: 14px; align-items: center; padding: 6px 16px;
            background: #f3f5f9; border-bottom: 1px solid #dde2ea; }
#controls label { display: inline-flex; gap: 6px; align-items: center; }
button { font: inherit; padding: 2px 10px; } kbd { border: 1px solid #b8bfcc; border-radius: 3px;
  padding: 0 4px; font-size: 12px; background: #fff; }
#shortcuts { padding: 4px 16px 10px; color: #4a5263; font-size: 13px; }
table.gallery { border-collapse: collapse; margin: 12px 16px; }
table.gallery td, table.gallery th { border-bottom: 1px solid #dde2ea; padding: 4px 12px; text-align: left; }
"""

CONTROLS_HTML = """
<div id="controls">
  <button id="toggle-z" type="button" title="switch ln/linear z (L)">z: <span id="z-scale-name"></span></button>
  <label>clip radius <input id="clip-radius" type="range"> <output id="clip-radius-value"></output></label>
  <label><input id="show-contours" type="checkbox"> projected contours</label>
  <button id="reset-camera" type="button" title="reset camera (R)">reset camera</button>
</div>
"""

SHORTCUTS_HTML = """
<div id="shortcuts">Keyboard: <kbd>L</kbd> ln/linear z · <kbd>[</kbd> <kbd>]</kbd> shrink/grow clip radius ·
<kbd>A</kbd> show all points · <kbd>C</kbd> contours on/off · <kbd>R</kbd> reset camera ·
drag to rotate, scroll to zoom (every scene follows).</div>
"""

# The in-page viewer. It reads its settings from layout.meta.lossviz and recomputes each surface's z from
# the raw loss in customdata[iy][ix][0], so the controls need no server and no second copy of the data.
VIEWER_JS = r"""
(function () {
  "use strict";
  const figure = JSON.parse(document.getElementById("lossviz-figure").textContent);
  const plot = document.getElementById("plot");
  const settings = (figure.layout.meta && figure.layout.meta.lossviz) || {};
  const config = {responsive: true, displaylogo: false, scrollZoom: true};
  const surfaceIndices = figure.data.map((t, i) => (t.type === "surface" ? i : -1)).filter(i => i >= 0);
  const scenes = surfaceIndices.map(i => figure.data[i].scene || "scene");
  const LOG_FLOOR = 1e-12;

  // Mirrors lossviz.plots.clipped_z: ln or linear z, null farther than `radius` from α = β = 0.
  function surfaceZ(trace, scale, radius) {
    return trace.customdata.map((row, iy) => row.map((point, ix) => {
      const loss = point[0];
      if (loss === null || !isFinite(loss) || Math.hypot(trace.x[ix], trace.y[iy]) > radius) return null;
      return scale === "log" ? Math.log(Math.max(loss, LOG_FLOOR)) : loss;
    }));
  }

  function zRange(zs) {
    let low = Infinity, high = -Infinity;
    for (const z of zs) for (const row of z) for (const v of row) {
      if (v !== null) { if (v < low) low = v; if (v > high) high = v; }
    }
    return low <= high ? [low, high] : null;
  }

  function redraw() {
    const zs = surfaceIndices.map(i => surfaceZ(figure.data[i], settings.z_scale, settings.clip_radius));
    const title = settings.z_scale === "log" ? "ln(loss)" : "loss";
    const style = {z: zs, "colorbar.title.text": title, "contours.z.show": settings.contours};
    const axes = {};
    const range = settings.shared_z ? zRange(zs) : null;
    if (range) { style.cmin = zs.map(() => range[0]); style.cmax = zs.map(() => range[1]); }
    for (const scene of scenes) {
      axes[scene + ".zaxis.title.text"] = title;
      axes[scene + ".zaxis.autorange"] = !range;
      if (range) axes[scene + ".zaxis.range"] = range;
    }
    return Plotly.update(plot, style, axes, surfaceIndices).then(showState);
  }

  function showState() {
    document.getElementById("z-scale-name").textContent = settings.z_scale === "log" ? "ln(loss)" : "loss";
    document.getElementById("clip-radius").value = settings.clip_radius;
    document.getElementById("clip-radius-value").textContent = Number(settings.clip_radius).toPrecision(3);
    document.getElementById("show-contours").checked = settings.contours;
    plot.dataset.zScale = settings.z_scale;
    plot.dataset.clipRadius = settings.clip_radius;
  }

  function setRadius(radius) {
    settings.clip_radius = Math.min(Math.max(radius, 0), settings.max_radius);
    return redraw();
  }

  // Keep every scene's camera equal to the one the user moved (LossPlot's synchronised views).
  let syncing = false;
  function syncCameras(event) {
    if (syncing || scenes.length < 2 || !event) return;
    const moved = Object.keys(event).map(k => k.match(/^(scene\d*)\.camera$/)).find(m => m);
    if (!moved) return;
    const camera = event[moved[0]], update = {};
    for (const scene of scenes) if (scene !== moved[1]) update[scene + ".camera"] = camera;
    syncing = true;
    Plotly.relayout(plot, update).finally(() => { syncing = false; });
  }

  function resetCamera() {
    const update = {};
    for (const scene of scenes) update[scene + ".camera"] = settings.default_camera;
    syncing = true;
    return Plotly.relayout(plot, update).finally(() => { syncing = false; });
  }

  function setUpControls() {
    const slider = document.getElementById("clip-radius");
    slider.min = 0;
    slider.max = settings.max_radius;
    slider.step = settings.max_radius / 200;
    slider.addEventListener("input", () => setRadius(Number(slider.value)));
    document.getElementById("toggle-z").addEventListener("click", toggleScale);
    document.getElementById("show-contours").addEventListener("change", event => {
      settings.contours = event.target.checked; redraw();
    });
    document.getElementById("reset-camera").addEventListener("click", resetCamera);
    plot.on("plotly_relayout", syncCameras);
    plot.on("plotly_relayouting", syncCameras);
    document.addEventListener("keydown", event => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      const step = settings.max_radius / 20;
      const actions = {
        l: toggleScale, c: () => { settings.contours = !settings.contours; redraw(); }, r: resetCamera,
        "[": () => setRadius(settings.clip_radius - step), "]": () => setRadius(settings.clip_radius + step),
        a: () => setRadius(settings.max_radius),
      };
      const action = actions[event.key.toLowerCase()];
      if (action) { event.preventDefault(); action(); }
    });
    showState();
  }

  function toggleScale() {
    settings.z_scale = settings.z_scale === "log" ? "linear" : "log";
    return redraw();
  }

  Plotly.newPlot(plot, figure.data, figure.layout, config).then(() => {
    if (surfaceIndices.length) setUpControls();
    plot.dataset.ready = "1";
  });
})();
"""


def _json_for_script(value: Any) -> str:
    """JSON safe inside a <script> element: '<', '>' and '&' escaped so no text can close the element."""
    text = pio.to_json(value, validate=False) if isinstance(value, go.Figure) else json.dumps(value)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _document(title: str, kind: str, body: str, *, heading: bool = True) -> str:
    """The one page shell: every page (figures and gallery) is written through here. Figure pages skip the
    heading: the figure shows its own title."""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<meta name=\"generator\" content=\"lossviz\">\n<meta name=\"lossviz-kind\" content=\"{escape(kind)}\">\n"
        f"<title>{escape(title)}</title>\n<style>{PAGE_CSS}</style>\n</head>\n<body>\n"
        + (f"<header><h1>{escape(title)}</h1></header>\n" if heading else "")
        + f"{body}\n</body>\n</html>\n"
    )


def page_html(figure: go.Figure, *, title: str | None = None) -> str:
    """A self-contained HTML page showing `figure`; 3-D figures get the viewer controls."""
    from plotly.offline import get_plotlyjs

    settings = (figure.layout.meta or {}).get("lossviz", {}) if isinstance(figure.layout.meta, dict) else {}
    title = title if title is not None else settings.get("title") or "lossviz figure"
    has_surfaces = any(trace.type == "surface" for trace in figure.data)
    body = (
        (CONTROLS_HTML if has_surfaces else "")
        + "<div id=\"plot\"></div>\n"
        + (SHORTCUTS_HTML if has_surfaces else "")
        + f"<script>{get_plotlyjs()}</script>\n"
        + f"<script type=\"application/json\" id=\"lossviz-figure\">{_json_for_script(figure)}</script>\n"
        + f"<script>{VIEWER_JS}</script>"
    )
    return _document(title, settings.get("kind", "figure"), body, heading=False)


def write_html(figure: go.Figure, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write `figure` as one self-contained HTML file (plotly.js inlined, no network) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page_html(figure, title=title), encoding="utf-8")
    return path


# -- gallery ---------------------------------------------------------------------------------------------
class _HeadReader(HTMLParser):
    """Reads a page's <title> and lossviz-kind <meta> from its head."""

    def __init__(self) -> None:
        super().__init__()
        self.title, self.kind, self._in_title = "", "", False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if tag == "title":
            self._in_title = True
        elif tag == "meta" and attributes.get("name") == "lossviz-kind":
            self.kind = attributes.get("content") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def page_info(path: Path) -> tuple[str, str]:
    """(kind, title) of an HTML page, from the start of its head (plotly.js comes after it)."""
    with path.open(encoding="utf-8", errors="replace") as handle:
        head = handle.read(64 * 1024)
    reader = _HeadReader()
    reader.feed(head.split("</head>")[0])
    return reader.kind or "html", reader.title.strip()


def write_gallery(directory: str | os.PathLike, out: str | os.PathLike | None = None, *,
                  title: str | None = None, summary: Sequence[Sequence[str]] = ()) -> Path:
    """Write an index page linking every .html file under `directory` (kind, title, size) and return it.
    `summary` rows (claim, the paper's figure, ours) make a table above the links."""
    directory = Path(directory)
    out = Path(out) if out is not None else directory / "index.html"
    rows = []
    for page in sorted(directory.rglob("*.html")):
        if page.resolve() == out.resolve():
            continue
        kind, page_title = page_info(page)
        href = quote(os.path.relpath(page, out.parent).replace(os.sep, "/"))
        rows.append(f"<tr><td><a href=\"{escape(href)}\">{escape(page.relative_to(directory))}</a></td>"
                    f"<td>{escape(kind)}</td><td>{escape(page_title)}</td>"
                    f"<td>{page.stat().st_size / 1e6:.1f} MB</td></tr>")
    claims = "".join(f"<tr>{''.join(f'<td>{escape(cell)}</td>' for cell in row)}</tr>\n" for row in summary)
    body = ("<table class=\"gallery claims\"><thead><tr><th>claim</th><th>the paper</th><th>measured here</th>"
            f"</tr></thead><tbody>\n{claims}</tbody></table>\n" if summary else "")
    body += ("<table class=\"gallery\"><thead><tr><th>figure</th><th>kind</th><th>title</th><th>size</th>"
            "</tr></thead><tbody>\n" + "\n".join(rows) + "\n</tbody></table>"
            + ("" if rows else "<p>No figures here yet.</p>"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(_document(title or f"Figures in {directory.name or directory}", "gallery", body),
                   encoding="utf-8")
    return out
