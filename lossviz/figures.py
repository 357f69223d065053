"""Every plotly figure lossviz draws: loss surfaces, their comparisons, slices and contours, training runs.

- `surface_figure`: one 3-D surface, natural-log z by default, projected z contours, radius clip, hover
  with (α, β, loss, accuracy, standard error); the seed paper's LossPlot view.
- `compare_figure`: several surfaces side by side with synchronised cameras and a metadata/metrics table.
- `slice_figure` (1-D loss and accuracy on twin axes), `contour_figure` (2-D contour/heatmap with an
  optional trajectory), `epoch_curves_figure`, `remaining_weights_figure` and `lottery_figure` (training
  runs and tickets), `sample_size_figure` (the sample-size study), `verdict_figure` (the batch-size
  study's sharpness-vs-generalization tables).

An adaptive surface (some points interpolated, `lossviz.adaptive`) also gets, in the same scene, a hidden
`scatter3d` trace of its evaluated points (`evaluated_points_trace`), which the page's "evaluated points only"
toggle shows in place of the surface; its hover says which points were interpolated.

Figures carry what the page viewer needs in `layout.meta["lossviz"]`; `lossviz.pages` turns any of them into
a self-contained HTML page. Text that comes from params or files (titles, metadata) is HTML-escaped before it
reaches plotly, whose text renderer understands a subset of HTML.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from lossviz.shape import surface_metrics
from lossviz.surface import Surface, default_clip_radius, outside_radius

Z_SCALES = ("log", "linear")
# ln(0) is -inf; a loss that small is zero for any plot, so it is drawn at ln(LOG_FLOOR).
LOG_FLOOR = 1e-12
COLORSCALE = "Viridis"  # perceptually uniform and readable by colour-blind viewers
SURFACE_OPACITY = 0.7  # as LossPlot: the projected contours show through the surface
DEFAULT_CAMERA = {"eye": {"x": 1.45, "y": 1.45, "z": 1.05}, "center": {"x": 0, "y": 0, "z": -0.1},
                  "up": {"x": 0, "y": 0, "z": 1}}
# Side-by-side scenes are small: the camera stands back so the z axis' tick labels stay inside the scene.
COMPARE_CAMERA = {**DEFAULT_CAMERA, "eye": {"x": 1.85, "y": 1.85, "z": 1.3}}
HOVER_2D = ("α=%{x:.3f}<br>β=%{y:.3f}<br>loss=%{customdata[0]:.4g}<br>accuracy=%{customdata[1]:.2f}%"
            "<br>standard error=%{customdata[2]:.3g}<extra></extra>")
HOVER_2D_NO_ACCURACY = HOVER_2D.replace("<br>accuracy=%{customdata[1]:.2f}%", "")


def has_accuracy(surface: Surface) -> bool:
    """False for a task without accuracy (regression): its accuracy is NaN everywhere, shown nowhere."""
    return bool(np.isfinite(np.asarray(surface.acc, float)).any())


def _hover_2d(surface: Surface) -> str:
    return HOVER_2D if has_accuracy(surface) else HOVER_2D_NO_ACCURACY
# Metadata keys that name a surface in a subplot title, in order, with how each value is shown.
TITLE_KEYS = {
    "name": "{}", "method": "{}", "p_m": "P_m={}", "remaining": "remaining {:.3g}%",
    "batch_size": "batch {}", "test_acc": "test acc {:.2f}%",
}
# Metadata shown first in the comparison table; other scalar keys follow alphabetically.
TABLE_KEYS = ("model", "dataset", "split", "method", "batch_size", "n_examples", "norm", "ignore", "mode",
              "seed", "model_hash")
TABLE_ROW_PX = 22
# Shape metrics (lossviz.shape.surface_metrics) shown in the comparison table by default.
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



# -- the clip disk drawn smooth ------------------------------------------------------------------------------
def _bilinear(xs: np.ndarray, ys: np.ndarray, values: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """`values` (ny, nx, k) interpolated bilinearly at the points (alpha, beta) (each (m,)); NaN where a corner of
    the grid cell holding the point is NaN. What the drawn surface shows between grid points, nothing more."""
    ix = np.clip(np.searchsorted(xs, alpha, side="right") - 1, 0, len(xs) - 2)
    iy = np.clip(np.searchsorted(ys, beta, side="right") - 1, 0, len(ys) - 2)
    tx = np.clip((alpha - xs[ix]) / (xs[ix + 1] - xs[ix]), 0.0, 1.0)[:, None]
    ty = np.clip((beta - ys[iy]) / (ys[iy + 1] - ys[iy]), 0.0, 1.0)[:, None]
    return ((1 - ty) * ((1 - tx) * values[iy, ix] + tx * values[iy, ix + 1])
            + ty * ((1 - tx) * values[iy + 1, ix] + tx * values[iy + 1, ix + 1]))


def disk_mesh(surface: Surface, clip_radius: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The surface clipped to the disk of `clip_radius` around the trained model, drawn with a smooth rim:
    (α, β, point data), each (ny, nx[, 3]). Grid points inside the disk stay as they are; a point outside
    with a neighbour (of 8) inside moves along its ray from the centre onto the circle and takes the values
    interpolated bilinearly from the grid there (NaN if that cell lacks a value); every other outside point
    is NaN. The drawn cells then fill the disk up to an inscribed polygon and never leave it; the rim holds
    only values the grid gives. The viewer script mirrors this (`diskMesh` in assets/viewer.js)."""
    xs, ys = np.asarray(surface.xs, float), np.asarray(surface.ys, float)
    alpha, beta = np.meshgrid(xs, ys)
    data = _point_data(surface)
    distance = np.hypot(alpha, beta)
    inside = distance <= clip_radius
    if inside.all() or len(xs) < 2 or len(ys) < 2:
        return alpha, beta, np.where(inside[..., None], data, np.nan)
    padded = np.pad(inside, 1)
    near = np.zeros_like(inside)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            near |= padded[dy:dy + inside.shape[0], dx:dx + inside.shape[1]]
    rim = near & ~inside
    shown = np.where(inside[..., None], data, np.nan)
    scale = clip_radius / distance[rim]
    alpha, beta = alpha.copy(), beta.copy()
    alpha[rim], beta[rim] = alpha[rim] * scale, beta[rim] * scale
    shown[rim] = _bilinear(xs, ys, data, alpha[rim], beta[rim])
    return alpha, beta, shown


# -- adaptive surfaces: which points were evaluated ----------------------------------------------------------
EVALUATED_POINTS = "evaluated points"  # the `meta` of the trace, by which the page script finds it


def _is_adaptive(surface: Surface) -> bool:
    return surface.is_2d and surface.interpolated is not None and bool(np.any(surface.interpolated))


def evaluated_points_trace(surface: Surface, *, z_scale: str, clip_radius: float, scene: str) -> go.Scatter3d:
    """The evaluated points of an adaptive surface as markers (hidden: the page's "evaluated points only"
    toggle shows them in place of the surface). customdata holds [loss, accuracy, standard error] per point,
    from which the page recomputes z as it does for surfaces."""
    alpha, beta = surface.coordinates()
    keep = ~np.asarray(surface.interpolated, bool) & np.isfinite(np.asarray(surface.loss, float))
    z = clipped_z(surface, z_scale, clip_radius)[keep]
    return go.Scatter3d(
        x=alpha[keep].tolist(), y=beta[keep].tolist(), z=np.where(np.isfinite(z), z, None).tolist(),
        customdata=_point_data(surface)[keep].tolist(), mode="markers", visible=False, showlegend=False,
        marker={"size": 2, "color": "#1d2230"}, name=EVALUATED_POINTS, meta=EVALUATED_POINTS, scene=scene,
        hovertemplate=_hover_2d(surface).replace("<extra>", "<br>evaluated<extra>"))


def _z_title(z_scale: str) -> str:
    return "ln(loss)" if z_scale == "log" else "loss"


# -- 3-D surfaces ------------------------------------------------------------------------------------------
def _surface_trace(surface: Surface, *, z_scale: str, clip_radius: float, contours: bool, opacity: float,
                   colorscale: str, scene: str, showscale: bool, name: str) -> go.Surface:
    # Plain lists, not numpy arrays: plotly.py would ship those base64-encoded, and the page script reads
    # them. x and y are 2-D (the clip disk's rim moved onto the circle, `disk_mesh`); customdata holds
    # [loss, accuracy, standard error] per point as drawn (the rim's interpolated), and meta the grid and the
    # rim points' own values, from which the page redraws for another radius.
    alpha, beta, shown = disk_mesh(surface, clip_radius)
    raw = _point_data(surface)
    rim = (alpha != surface.coordinates()[0]) | (beta != surface.coordinates()[1])
    hover = np.where(rim[..., None], shown, raw)
    trace = go.Surface(
        x=alpha.tolist(), y=beta.tolist(), z=_finite_or_none(z_values(shown[..., 0], z_scale)),
        customdata=hover.tolist(), hovertemplate=_hover_2d(surface), name=escape(name),
        colorscale=colorscale, opacity=opacity, showscale=showscale, scene=scene,
        colorbar={"title": {"text": _z_title(z_scale)}, "len": 0.6, "tickformat": ".3~g"},
        contours={"z": {"show": contours, "usecolormap": True, "project": {"z": True},
                        "highlightcolor": "#ffffff"}},
        lighting={"ambient": 0.75, "diffuse": 0.6, "specular": 0.15},
        meta={"grid_x": np.asarray(surface.xs, float).tolist(), "grid_y": np.asarray(surface.ys, float).tolist(),
              "rim": [[int(iy), int(ix), *raw[iy, ix].tolist()] for iy, ix in zip(*np.nonzero(rim), strict=True)]},
    )
    if _is_adaptive(surface):  # the hover says which points were interpolated (a 4th customdata entry)
        labels = np.where(surface.interpolated, "interpolated", "evaluated")[..., None]
        trace.update(customdata=np.concatenate([hover.astype(object), labels], axis=-1).tolist(),
                     hovertemplate=_hover_2d(surface).replace("<extra>", "<br>%{customdata[3]}<extra>"))
    return trace


def _finite_or_none(values: np.ndarray) -> list:
    """Nested lists with None (JSON null: a gap plotly leaves undrawn) for NaN."""
    values = np.asarray(values, dtype=float)
    return np.where(np.isfinite(values), values, None).tolist()


def axes_aspect(xs: np.ndarray, ys: np.ndarray, z: float = 0.75) -> dict[str, float]:
    """Axes drawn to scale: α and β in the same units, the larger span drawn as 1 (clamped to 1:10)."""
    x_span, y_span = float(np.ptp(xs)), float(np.ptp(ys))
    ratio = min(max(y_span / x_span, 0.1), 10.0) if x_span > 0 and y_span > 0 else 1.0
    return {"x": min(1.0, 1 / ratio), "y": min(1.0, ratio), "z": z}


def _scene_layout(z_scale: str, surface: Surface | None = None) -> dict:
    aspect = axes_aspect(surface.xs, surface.ys) if surface is not None else {"x": 1, "y": 1, "z": 0.75}
    return {
        "xaxis": {"title": {"text": "α"}}, "yaxis": {"title": {"text": "β"}},
        "zaxis": {"title": {"text": _z_title(z_scale)}, "tickformat": ".3~g"},
        "aspectmode": "manual", "aspectratio": aspect,
        "camera": DEFAULT_CAMERA,
    }


def _viewer_meta(kind: str, title: str, **settings: Any) -> dict:
    """What the page script needs, kept in `layout.meta` so the figure alone carries it."""
    return {"lossviz": {"kind": kind, "title": title, "default_camera": DEFAULT_CAMERA, **settings}}


def surface_figure(surface: Surface, *, title: str | None = None, z_scale: str = "log",
                   clip_radius: float | None = None, contours: bool = True, opacity: float = SURFACE_OPACITY,
                   colorscale: str = COLORSCALE, height: int = 720, metrics: Mapping[str, Any] | None = None,
                   views: bool = True) -> go.Figure:
    """A 3-D loss surface, axes to scale, the clip disk drawn smooth (`disk_mesh`). `clip_radius` None clips at
    `default_clip_radius`; `math.inf` keeps every point. The page shows `metrics` (default `shape_metrics`)
    and the surface's metadata below it, and with `views` Li et al.'s static views (`views_figure`)."""
    title = surface_title(surface) if title is None else title
    radius = default_clip_radius(surface) if clip_radius is None else clip_radius
    figure = go.Figure(_surface_trace(surface, z_scale=z_scale, clip_radius=radius, contours=contours,
                                      opacity=opacity, colorscale=colorscale, scene="scene", showscale=True,
                                      name=title))
    if _is_adaptive(surface):
        figure.add_trace(evaluated_points_trace(surface, z_scale=z_scale, clip_radius=radius, scene="scene"))
    metrics = shape_metrics(surface) if metrics is None else dict(metrics)
    figure.update_layout(
        title={"text": escape(title)}, height=height, scene=_scene_layout(z_scale, surface),
        margin={"l": 0, "r": 0, "t": 50, "b": 0},
        meta=_viewer_meta("surface", title, z_scale=z_scale, contours=contours, shared_z=False,
                          clip_radius=min(radius, corner_radius(surface)), max_radius=corner_radius(surface),
                          tables=page_tables([title], [surface], [metrics]),
                          views=views_figure([surface], [title]).to_plotly_json() if views else None),
    )
    return figure


def _metric_text(value: Any) -> str:
    if isinstance(value, float | np.floating):
        return f"{value:.4g}"
    return str(value)


Row = tuple[str, list[str]]  # a table row: its label, then one cell per surface


def configuration_rows(surfaces: Sequence[Surface]) -> list[Row]:
    """How each surface was made: grid, ranges, the chosen metadata first, then the other scalar metadata."""
    rows: list[Row] = [
        ("grid (ny × nx)", [" × ".join(map(str, s.shape)) for s in surfaces]),
        ("α range", [f"[{s.xs.min():.3g}, {s.xs.max():.3g}]" for s in surfaces]),
        ("β range", [f"[{s.ys.min():.3g}, {s.ys.max():.3g}]" if s.ys is not None else "" for s in surfaces]),
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
    return rows


def metric_rows(metrics: Sequence[Mapping[str, Any]]) -> list[Row]:
    """One row per metric key (in first-seen order), one cell per surface."""
    keys = dict.fromkeys(key for mapping in metrics for key in mapping)
    return [(key, [_metric_text(m.get(key, "")) for m in metrics]) for key in keys]


def page_tables(titles: Sequence[str], surfaces: Sequence[Surface], metrics: Sequence[Mapping[str, Any]]) -> list[dict]:
    """The tables a page shows under its figure, as plain data (`lossviz.pages` renders and escapes them):
    the shape metrics open, the configuration folded away."""
    columns = [str(t) for t in titles]
    return [{"title": "shape metrics", "columns": columns, "rows": metric_rows(metrics), "open": True},
            {"title": "configuration", "columns": columns, "rows": configuration_rows(surfaces), "open": False}]


def shape_metrics(surface: Surface) -> dict[str, Any]:
    """The `lossviz.shape.surface_metrics` shown in the comparison table (`TABLE_METRICS`)."""
    computed = surface_metrics(surface)
    return {key: computed[key] for key in TABLE_METRICS if key in computed}


def compare_figure(surfaces: Sequence[Surface], titles: Sequence[str] | None = None, *, shared_z: bool = True,
                   z_scale: str = "log", clip_radius: float | None = None, contours: bool = True,
                   metrics: Sequence[Mapping[str, Any]] | None = None, columns: int | None = None,
                   opacity: float = SURFACE_OPACITY, colorscale: str = COLORSCALE,
                   title: str = "Loss surfaces", views: bool = True) -> go.Figure:
    """Surfaces side by side (cameras kept in sync by the page) above a table of their shape metrics; their
    configuration (metadata) goes to the page, folded away. `shared_z` (default) gives every scene the same
    z range and colour scale, with one colorbar; the page has a switch for independent scales. `metrics`, one
    mapping per surface, defaults to `shape_metrics`. One `clip_radius` applies to every surface (the page's
    slider moves them together); None takes the largest of their default radii, LossPlot's clip for surfaces
    on one grid. With `views`, the page also shows Li et al.'s static views of every surface (`views_figure`)."""
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
    rows = metric_rows(metrics)
    # Heights in pixels, so the table shows every row without scrolling whatever the number of scenes.
    scene_px, table_px, gap_px = 430, 50 + TABLE_ROW_PX * (len(rows) + 1), 50
    height = scene_px * scene_rows + table_px + gap_px * scene_rows + 80
    figure = make_subplots(
        rows=scene_rows + 1, cols=columns, specs=specs, subplot_titles=[escape(t) for t in titles],
        row_heights=[scene_px] * scene_rows + [table_px], vertical_spacing=gap_px / height,
        horizontal_spacing=0.02,
    )
    radius = max(default_clip_radius(s) for s in surfaces) if clip_radius is None else clip_radius
    max_radius = max(corner_radius(s) for s in surfaces)
    for i, (surface, name) in enumerate(zip(surfaces, titles, strict=True)):
        scene = "scene" if i == 0 else f"scene{i + 1}"
        trace = _surface_trace(surface, z_scale=z_scale, clip_radius=radius, contours=contours,
                               opacity=opacity, colorscale=colorscale, scene=scene,
                               showscale=shared_z and i == 0, name=name)
        figure.add_trace(trace, row=i // columns + 1, col=i % columns + 1)
        if _is_adaptive(surface):
            figure.add_trace(evaluated_points_trace(surface, z_scale=z_scale, clip_radius=radius, scene=scene),
                             row=i // columns + 1, col=i % columns + 1)
        figure.layout[scene].update(_scene_layout(z_scale, surface), camera=COMPARE_CAMERA)
        # Small scenes: fewer, smaller z ticks, or the labels pile up on the axis seen edge-on.
        figure.layout[scene].zaxis.update(nticks=5, tickfont={"size": 10})
    if shared_z:
        _share_z_range(figure)
    # One colorbar for the shared scale, beside the scenes (in the right margin, so it hides no scene).
    top, bottom = figure.layout.scene.domain.y[1], figure.layout[f"scene{len(surfaces)}" if len(surfaces) > 1
                                                                 else "scene"].domain.y[0]
    for trace in figure.data:
        if trace.type == "surface":
            trace.colorbar.update(x=1.0, xanchor="left", y=top, yanchor="top", len=top - bottom, lenmode="fraction",
                                  thickness=14, tickfont={"size": 12})
    figure.add_trace(go.Table(
        header={"values": ["shape metric", *[escape(t) for t in titles]], "align": "left",
                "fill": {"color": "#e8ecf4"}, "font": {"size": 12}},
        cells={"values": [[escape(label) for label, _ in rows],
                          *[[escape(values[i]) for _, values in rows] for i in range(len(surfaces))]],
               "align": "left", "font": {"size": 11}, "height": TABLE_ROW_PX},
    ), row=scene_rows + 1, col=1)
    figure.update_layout(
        title={"text": escape(title)}, height=height, margin={"l": 10, "r": 90, "t": 70, "b": 10},
        showlegend=False,
        meta=_viewer_meta("compare", title, z_scale=z_scale, contours=contours, shared_z=shared_z,
                          clip_radius=min(radius, max_radius), max_radius=max_radius, default_camera=COMPARE_CAMERA,
                          tables=page_tables(titles, surfaces, metrics)[1:],
                          views=views_figure(surfaces, titles, columns=columns).to_plotly_json() if views else None),
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


# -- Li et al.'s static views: contours with labelled levels and 1-D slices -----------------------------------
VIEW_COLOURS = ("#1f4e9c", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b7950b")


def _contour_trace(surface: Surface, *, style: str, z_scale: str, clip_radius: float, levels: int | dict,
                   showscale: bool = True, full_hover: bool = True) -> go.Contour | go.Heatmap:
    """One 2-D view from above (contour lines with labelled levels, filled contours or a heatmap). Without
    `full_hover` the hover shows z only (no per-point data: a lighter page)."""
    hover = {"customdata": _point_data(surface).tolist(), "hovertemplate": _hover_2d(surface)} if full_hover else {
        "hovertemplate": f"α=%{{x:.3f}}<br>β=%{{y:.3f}}<br>{_z_title(z_scale)}=%{{z:.4g}}<extra></extra>"}
    common = {"x": np.asarray(surface.xs, float).tolist(), "y": np.asarray(surface.ys, float).tolist(),
              "z": _finite_or_none(clipped_z(surface, z_scale, clip_radius)), **hover, "colorscale": COLORSCALE,
              "name": "loss", "showscale": showscale, "colorbar": {"title": {"text": _z_title(z_scale)}}}
    if style == "heatmap":
        return go.Heatmap(**common)
    contours = {"coloring": "lines" if style == "contour" else "fill", "showlabels": style == "contour",
                "labelfont": {"size": 10}}
    spacing = {"ncontours": levels} if isinstance(levels, int) else {"autocontour": False}
    if isinstance(levels, dict):
        contours.update(levels)
    return go.Contour(**common, **spacing, contours=contours,
                      line={"width": 1.5 if style == "contour" else 0.5})


def _centre_slices(surface: Surface) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The 1-D slices through the grid point nearest the trained model: along α (β ≈ 0) and along β (α ≈ 0),
    each (coordinates, loss, accuracy)."""
    iy, ix = int(np.abs(surface.ys).argmin()), int(np.abs(surface.xs).argmin())
    loss, acc = np.asarray(surface.loss, float), np.asarray(surface.acc, float)
    return {"α": (np.asarray(surface.xs, float), loss[iy], acc[iy]),
            "β": (np.asarray(surface.ys, float), loss[:, ix], acc[:, ix])}


def views_figure(surfaces: Sequence[Surface], titles: Sequence[str], *, z_scale: str = "log",
                 columns: int | None = None, levels: int = 20) -> go.Figure:
    """Li et al.'s static views of 2-D surfaces, unclipped as in their plots: for each surface a contour plot
    of ln(loss) with labelled levels (one set of levels for all), a filled contour plot beside it when there is
    one surface, and below, the 1-D slices through the trained model along α and along β: loss (solid, left
    axis) and accuracy (dashed, right axis), one colour per surface."""
    surfaces, titles = list(surfaces), [str(t) for t in titles]
    single = len(surfaces) == 1
    panels = [(s, t, "contour") for s, t in zip(surfaces, titles, strict=True)]
    if single:
        panels.append((surfaces[0], f"{titles[0]}: filled", "filled"))
    columns = 2 if single else (columns or min(len(surfaces), 4))
    contour_rows = math.ceil(len(panels) / columns)
    specs = [[{} if r * columns + c < len(panels) else None for c in range(columns)] for r in range(contour_rows)]
    specs.append([{"secondary_y": True, "colspan": max(columns // 2, 1)}] + [None] * (max(columns // 2, 1) - 1)
                 + [{"secondary_y": True, "colspan": columns - max(columns // 2, 1)}]
                 + [None] * (columns - max(columns // 2, 1) - 1) if columns > 1
                 else [{"secondary_y": True}])
    if columns == 1:
        specs.append([{"secondary_y": True}])
    slice_rows = 1 if columns > 1 else 2
    titles_all = [escape(t) for _, t, _ in panels] + [""] * (contour_rows * columns - len(panels))
    titles_all = [t for t, spec in zip(titles_all, [c for row in specs[:contour_rows] for c in row], strict=True)
                  if spec is not None]
    titles_all += ["1-D slice along α (β = 0)", "1-D slice along β (α = 0)"]
    contour_px, slice_px = 380, 340
    height = contour_px * contour_rows + slice_px * slice_rows + 140
    figure = make_subplots(rows=contour_rows + slice_rows, cols=columns, specs=specs, subplot_titles=titles_all,
                           row_heights=[contour_px] * contour_rows + [slice_px] * slice_rows,
                           vertical_spacing=90 / height, horizontal_spacing=0.1)
    finite = np.concatenate([clipped_z(s, z_scale, math.inf).ravel() for s in surfaces])
    finite = finite[np.isfinite(finite)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    shared_levels = {"start": low, "end": high, "size": (high - low) / levels or 1.0}
    for index, (surface, _, style) in enumerate(panels):
        row, col = index // columns + 1, index % columns + 1
        figure.add_trace(_contour_trace(surface, style=style, z_scale=z_scale, clip_radius=math.inf,
                                        levels=shared_levels, showscale=False, full_hover=False), row=row, col=col)
        axis = figure.get_subplot(row, col)
        figure.update_yaxes(scaleanchor=axis.xaxis.plotly_name.replace("axis", ""), scaleratio=1,
                            title_text="β", row=row, col=col)
        figure.update_xaxes(title_text="α", constrain="domain", row=row, col=col)
    slice_cells = [(contour_rows + 1, 1), (contour_rows + 1, max(columns // 2, 1) + 1)] if columns > 1 \
        else [(contour_rows + 1, 1), (contour_rows + 2, 1)]
    for index, (surface, name) in enumerate(zip(surfaces, titles, strict=True)):
        colour = VIEW_COLOURS[index % len(VIEW_COLOURS)]
        for (row, col), (axis_name, (coordinates, loss, acc)) in zip(slice_cells, _centre_slices(surface).items(),
                                                                     strict=True):
            figure.add_trace(go.Scatter(
                x=coordinates.tolist(), y=_finite_or_none(loss), mode="lines", name=escape(name),
                legendgroup=escape(name), showlegend=axis_name == "α", line={"color": colour},
                hovertemplate=f"{axis_name}=%{{x:.3f}}<br>loss=%{{y:.4g}}<extra>{escape(name)}</extra>"),
                row=row, col=col, secondary_y=False)
            figure.update_xaxes(title_text=axis_name, row=row, col=col)
            figure.update_yaxes(title_text="loss (solid)", secondary_y=False, row=row, col=col)
            if has_accuracy(surface):
                figure.add_trace(go.Scatter(
                    x=coordinates.tolist(), y=_finite_or_none(acc), mode="lines", name=f"{escape(name)}: accuracy",
                    legendgroup=escape(name), showlegend=False, line={"color": colour, "dash": "dash"},
                    hovertemplate=f"{axis_name}=%{{x:.3f}}<br>accuracy=%{{y:.2f}}%<extra>{escape(name)}</extra>"),
                    row=row, col=col, secondary_y=True)
                figure.update_yaxes(title_text="accuracy % (dashed)", secondary_y=True, row=row, col=col)
    figure.update_layout(
        title={"text": "Static views (Li et al.): ln(loss) contours with labelled levels, 1-D slices"},
        height=height, margin={"l": 50, "r": 50, "t": 80, "b": 40},
        legend={"orientation": "h", "y": -0.04, "yanchor": "top"}, hovermode="closest",
        meta=_viewer_meta("views", "static views"))
    return figure


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
    if has_accuracy(surface):
        figure.add_trace(go.Scatter(
            x=surface.xs, y=surface.acc, name="accuracy", mode="lines+markers",
            line={"color": "#c0392b", "dash": "dash"},
            hovertemplate="α=%{x:.3f}<br>accuracy=%{y:.2f}%<extra></extra>"), secondary_y=True)
    figure.update_xaxes(title_text="α")
    figure.update_yaxes(title_text="loss", type="log" if log else "linear", secondary_y=False)
    if has_accuracy(surface):
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
    figure = go.Figure(_contour_trace(surface, style=style, z_scale=z_scale, levels=levels,
                                      clip_radius=math.inf if clip_radius is None else clip_radius))
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


def lottery_figure(results: Mapping[str, Sequence[Any]], *, title: str = "Lottery tickets") -> go.Figure:
    """The seed paper's Figure 5 on one plotly figure, from `lossviz.lottery.load_results` (kind → its
    `LevelResult`s): test accuracy and the early-stop iteration against
    the fraction of weights remaining for every kind (log x, dense to sparse), and each kind's per-level
    test-accuracy curves by epoch (one colour per level, shared by the kinds)."""
    kinds = list(results)
    label = {"winning": "winning (IMP)", "random": "random ticket"}
    accuracy = remaining_weights_figure({label.get(k, k): ([r.remaining for r in results[k]],
                                                           [100 * r.test_acc for r in results[k]]) for k in kinds})
    stops = remaining_weights_figure({label.get(k, k): ([r.remaining for r in results[k]],
                                                        [r.early_stop_iteration for r in results[k]]) for k in kinds},
                                     metric="early-stop iteration")
    levels = sorted({r.level for k in kinds for r in results[k]})
    colours = dict(zip(levels, sample_colorscale("Viridis", [i / max(len(levels) - 1, 1) for i in range(len(levels))]),
                       strict=True))
    columns = max(len(kinds), 2)
    figure = make_subplots(
        rows=2, cols=columns, vertical_spacing=0.14,
        subplot_titles=["test accuracy at the early-stop point", "early-stop iteration",
                        *[f"{label.get(k, k)}: test accuracy by epoch" for k in kinds]])
    for col, source in ((1, accuracy), (2, stops)):
        for trace in source.data:
            trace.update(legendgroup=trace.name, showlegend=col == 1)
            figure.add_trace(trace, row=1, col=col)
        figure.update_xaxes(type="log", autorange="reversed", title_text="weights remaining (%)", row=1, col=col)
    figure.update_yaxes(title_text="test accuracy (%)", row=1, col=1)
    figure.update_yaxes(title_text="iteration", row=1, col=2)
    for col, kind in enumerate(kinds, start=1):
        curves = epoch_curves_figure({f"level {r.level} (P_m {100 * r.remaining:.1f}%)":
                                      ([h["epoch"] for h in r.history], [100 * h["test_acc"] for h in r.history])
                                      for r in results[kind]})
        for result, trace in zip(results[kind], curves.data, strict=True):
            trace.update(line={"color": colours[result.level]}, marker={"color": colours[result.level]},
                         legendgroup=f"level {result.level}", showlegend=col == 1)
            figure.add_trace(trace, row=2, col=col)
        figure.update_xaxes(title_text="epoch", row=2, col=col)
        figure.update_yaxes(title_text="test accuracy (%)", row=2, col=col)
    figure.update_layout(title={"text": escape(title)}, height=900,
                         meta={"lossviz": {"kind": "curves", "title": title}})
    return figure


# -- the sample-size study ------------------------------------------------------------------------------
def _log_ticks(values: Sequence[Any], suffix: str = "") -> dict:
    """Readable ticks for a log axis over `values`: 1, 2, 5 × powers of ten (plotly's own log ticks over a
    short range read "2, 8, 3, 1, 6")."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]
    if not finite:
        return {}
    low, high = min(finite), max(finite)
    ticks = [m * 10.0 ** e for e in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1)
             for m in (1, 2, 5)]
    ticks = [t for t in ticks if low / 2.5 <= t <= high * 2.5]
    return {"tickvals": ticks, "ticktext": [f"{t:g}{suffix}" for t in ticks]}


def sample_size_figure(rows: Sequence[Mapping[str, Any]], *, title: str = "Fidelity and speed-up vs number of "
                       "examples", tolerance: float | None = None) -> go.Figure:
    """Top: Pearson correlation of ln(loss) with the largest-n surface, and the speed-ups (log axis, right).
    Bottom: RMSE of ln(loss) against it (not drawn at the reference n itself, where it is 0 by definition and
    a log axis has no place for it), and the mean and worst per-point standard error of ln(loss), with the
    adaptive tolerance as a line when given. x: the number of examples, log scale."""
    ns = [row["n"] for row in rows]
    reference = max(ns) if ns else None

    def series(key: str, *, skip_reference: bool = False) -> list[float | None]:
        return [None if skip_reference and row["n"] == reference else row.get(key) for row in rows]

    figure = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                           specs=[[{"secondary_y": True}], [{"secondary_y": False}]],
                           subplot_titles=("shape fidelity and cost", "errors in ln(loss)"))

    def line(colour: str, dash: str = "solid", symbol: str = "circle") -> dict:
        return {"mode": "lines+markers", "line": {"color": colour, "dash": dash, "width": 2},
                "marker": {"size": 8, "symbol": symbol, "color": colour}}

    figure.add_trace(go.Scatter(x=ns, y=series("pearson_ln_loss"), name="Pearson r of ln(loss)",
                                **line("#1f4e9c")), row=1, col=1, secondary_y=False)
    speedups = [("speedup", "speed-up (× vs largest n)", "#c0392b", "dot", "square"),
                ("cpu_speedup", "speed-up in CPU time", "#2e8b57", "dash", "diamond"),
                ("point_speedup", "speed-up per point (best round)", "#8e44ad", "dashdot", "triangle-up")]
    drawn = []
    for key, name, colour, dash, symbol in speedups:
        if any(row.get(key) is not None for row in rows):  # none without timings (the versioned page)
            drawn += series(key)
            figure.add_trace(go.Scatter(x=ns, y=series(key), name=name, **line(colour, dash, symbol)),
                             row=1, col=1, secondary_y=True)
    figure.add_trace(go.Scatter(x=ns, y=series("rmse_ln_loss", skip_reference=True), name="RMSE of ln(loss)",
                                **line("#d35400")), row=2, col=1)
    figure.add_trace(go.Scatter(x=ns, y=series("mean_ln_loss_se"), name="mean SE of ln(loss)",
                                **line("#16a085", "dash", "diamond")), row=2, col=1)
    figure.add_trace(go.Scatter(x=ns, y=series("max_ln_loss_se"), name="worst SE of ln(loss) in the disk",
                                **line("#7f8c8d", "dot", "square")), row=2, col=1)
    if tolerance is not None:
        figure.add_hline(y=tolerance, line_dash="dash", line_color="grey", row=2, col=1,
                         annotation_text=f"auto tolerance {tolerance:g}")
    figure.update_xaxes(type="log", title_text="number of evaluation examples n", row=2, col=1, **_log_ticks(ns))
    figure.update_xaxes(type="log", row=1, col=1, **_log_ticks(ns))
    figure.update_yaxes(title_text="Pearson r", row=1, col=1, secondary_y=False)
    if drawn:
        figure.update_yaxes(title_text="speed-up", type="log", row=1, col=1, secondary_y=True,
                            **_log_ticks(drawn, "×"))
    errors = series("rmse_ln_loss", skip_reference=True) + series("mean_ln_loss_se") + series("max_ln_loss_se")
    figure.update_yaxes(title_text="ln(loss) units", type="log", row=2, col=1,
                        **_log_ticks(errors + ([tolerance] if tolerance else [])))
    figure.update_layout(title={"text": title}, height=760, hovermode="x unified",
                         meta={"lossviz": {"kind": "sample_size", "title": title}})
    return figure


# -- the batch-size study's verdict ------------------------------------------------------------------------
def _spearman_text(cell: Mapping[str, float]) -> str:
    rho, p = cell["spearman"], cell["p_value"]
    return "undefined (a constant side)" if math.isnan(rho) else f"{rho:+.2f} (p = {p:.3f})"


def verdict_figure(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
                   correlations: Mapping[str, Mapping[str, Mapping[str, float]]], directions: Mapping[str, str],
                   targets: Sequence[str], *, title: str, row_label: str = "batch size") -> go.Figure:
    """Does sharpness predict generalization, as two tables: `rows` (one per trained model) in `columns`;
    then each measure of `correlations[measure][target]` ({"spearman", "p_value"}), which way it is sharper
    (`directions[measure]`) and its Spearman ρ (exact permutation p) with each of `targets`."""
    first, second = len(rows) + 1, len(correlations) + 1  # table lines, headers included
    figure = make_subplots(rows=2, cols=1, specs=[[{"type": "table"}], [{"type": "table"}]],
                           row_heights=[first + 1.5, second + 1.5], vertical_spacing=0.08,
                           subplot_titles=[f"per {row_label}",
                                           f"Spearman ρ (exact permutation p) across {row_label}s"])
    figure.add_trace(go.Table(header={"values": list(columns), "fill": {"color": "#e8ecf4"}},
                              cells={"values": [[_metric_text(row[key]) for row in rows] for key in columns]}),
                     row=1, col=1)
    measures = list(correlations)
    figure.add_trace(go.Table(
        header={"values": ["measure", "which way", *[f"vs {target}" for target in targets]],
                "fill": {"color": "#e8ecf4"}},
        cells={"values": [measures, [directions[m] for m in measures],
                          *[[_spearman_text(correlations[m][t]) for m in measures] for t in targets]]}),
        row=2, col=1)
    figure.update_layout(title={"text": escape(title)}, height=150 + 25 * (first + second + 3),
                         margin={"l": 10, "r": 10, "t": 80, "b": 10}, meta=_viewer_meta("verdict", title))
    return figure


# -- linear mode connectivity and planes through checkpoints (lossviz.stability) -----------------------------
PATH_COLOURS = ("#1f4e9c", "#c0392b", "#2e8b57", "#8e44ad", "#d35400", "#16a085", "#7f8c8d", "#b7950b")


def _rgba(hex_colour: str, alpha: float) -> str:
    red, green, blue = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({red}, {green}, {blue}, {alpha})"


def _band_traces(xs: Sequence[float], values: Sequence[float], se: Sequence[float], *, name: str, colour: str,
                 show_legend: bool, hover: str) -> list[go.Scatter]:
    """A line with a ± one-standard-error band around it (the band is one closed polygon, not in the legend)."""
    xs, values, se = (np.asarray(a, dtype=float) for a in (xs, values, se))
    se = np.nan_to_num(se)
    band = go.Scatter(x=np.concatenate([xs, xs[::-1]]).tolist(),
                      y=np.concatenate([values + se, (values - se)[::-1]]).tolist(), fill="toself",
                      fillcolor=_rgba(colour, 0.18), line={"width": 0}, hoverinfo="skip", showlegend=False,
                      legendgroup=escape(name), name=escape(name))
    line = go.Scatter(x=xs.tolist(), y=values.tolist(), mode="lines+markers", name=escape(name),
                      legendgroup=escape(name), showlegend=show_legend, line={"color": colour},
                      marker={"size": 4, "color": colour}, customdata=se.tolist(), hovertemplate=hover)
    return [band, line]


def path_curves_figure(curves: Mapping[str, Mapping[str, Sequence[float]]], *,
                       title: str = "Linear paths between trained copies",
                       threshold: float | None = None) -> go.Figure:
    """Error (percent, left) and loss (right) along θ(α) = (1 − α)·θ_A + α·θ_B, α ∈ [0, 1], one line per path
    with a ± one-standard-error band; `curves[name]` holds alphas, error, error_se, loss, loss_se (as
    `lossviz.stability.PathCurve.to_dict()`). With `threshold` (percentage points), a dashed line marks the
    mean of each path's endpoints plus the threshold: a path whose error crosses it is unstable."""
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.09,
                           subplot_titles=("test error along the path", "test loss along the path"))
    for index, (name, curve) in enumerate(curves.items()):
        colour = PATH_COLOURS[index % len(PATH_COLOURS)]
        for col, key, unit in ((1, "error", "%"), (2, "loss", "")):
            hover = f"α=%{{x:.3f}}<br>{key}=%{{y:.4g}}{unit} ± %{{customdata:.2g}}<extra>{escape(name)}</extra>"
            for trace in _band_traces(curve["alphas"], curve[key], curve[f"{key}_se"], name=name, colour=colour,
                                      show_legend=col == 1, hover=hover):
                figure.add_trace(trace, row=1, col=col)
        if threshold is not None:
            error = np.asarray(curve["error"], dtype=float)
            figure.add_trace(go.Scatter(
                x=[0, 1], y=[(error[0] + error[-1]) / 2 + threshold] * 2, mode="lines", showlegend=False,
                line={"color": colour, "dash": "dot", "width": 1}, legendgroup=escape(name),
                hovertemplate=f"endpoints' mean + {threshold:g} points<extra>{escape(name)}</extra>"), row=1, col=1)
    figure.update_xaxes(title_text="α (0: copy A, 1: copy B)", range=[0, 1])
    figure.update_yaxes(title_text="test error (%)", row=1, col=1)
    figure.update_yaxes(title_text="test loss", row=1, col=2)
    figure.update_layout(title={"text": escape(title)}, height=560, hovermode="closest",
                         meta=_viewer_meta("paths", title))
    return figure


def barrier_figure(series: Mapping[str, Mapping[str, Sequence[float]]], *, threshold: float | None = None,
                   title: str = "Instability: error barrier vs weights remaining") -> go.Figure:
    """Frankle et al.'s instability plot: the error barrier (percentage points, left) and the loss barrier
    (right) against the weights remaining (log axis, dense to sparse), one line per series, e.g. IMP and random
    tickets at each rewind epoch k; `series[name]` holds remaining (fractions), error, error_se, loss,
    loss_se. Error bars: one standard error. `threshold` draws the stability threshold on the error panel."""
    figure = make_subplots(rows=1, cols=2, horizontal_spacing=0.09,
                           subplot_titles=("error barrier (instability)", "loss barrier"))
    for index, (name, values) in enumerate(series.items()):
        colour = PATH_COLOURS[index % len(PATH_COLOURS)]
        dash = "dash" if "random" in name else "solid"
        percent = [100 * fraction for fraction in values["remaining"]]
        for col, key, unit in ((1, "error", " points"), (2, "loss", "")):
            figure.add_trace(go.Scatter(
                x=percent, y=list(values[key]), name=escape(name), legendgroup=escape(name), showlegend=col == 1,
                mode="lines+markers", line={"color": colour, "dash": dash}, marker={"size": 7, "color": colour},
                error_y={"type": "data", "array": list(values[f"{key}_se"]), "visible": True, "thickness": 1},
                hovertemplate=f"%{{x:.3g}}% remaining<br>{key} barrier=%{{y:.3g}}{unit}<extra>{escape(name)}</extra>"),
                row=1, col=col)
    if threshold is not None:
        figure.add_hline(y=threshold, line_dash="dash", line_color="grey", row=1, col=1,
                         annotation_text=f"stable below {threshold:g} points")
    figure.update_xaxes(type="log", autorange="reversed", title_text="weights remaining (%)")
    figure.update_yaxes(title_text="error barrier (percentage points)", row=1, col=1)
    figure.update_yaxes(title_text="loss barrier", row=1, col=2)
    figure.update_layout(title={"text": escape(title)}, height=560, hovermode="closest",
                         meta=_viewer_meta("barriers", title))
    return figure


def _marker_trace(points: Mapping[str, tuple[float, float, float]], z_scale: str, scene: str) -> go.Scatter3d:
    """Checkpoints marked on a plane; each one's loss is its customdata row, as for the adaptive surfaces'
    evaluated points, so the viewer can recompute z (meta "marked points")."""
    names = list(points)
    xs, ys, losses = ([points[name][i] for name in names] for i in range(3))
    return go.Scatter3d(
        x=xs, y=ys, z=z_values(np.asarray(losses, dtype=float), z_scale).tolist(), mode="markers+text",
        text=[escape(name) for name in names], textposition="top center", name="checkpoints", scene=scene,
        marker={"size": 6, "color": "#d62728", "symbol": "diamond", "line": {"color": "#ffffff", "width": 1}},
        customdata=[[loss] for loss in losses], meta="marked points",
        hovertemplate="%{text}<br>x=%{x:.3f}<br>y=%{y:.3f}<br>loss=%{customdata[0]:.4g}<extra></extra>")


def plane_figure(surface: Surface, points: Mapping[str, tuple[float, float, float]], *, title: str | None = None,
                 z_scale: str = "log") -> go.Figure:
    """The loss surface over a plane through three checkpoints (`lossviz.stability.plane_surface`), unclipped and
    with x and y to scale, the checkpoints marked where they lie: `points[name] = (x, y, loss)` in the plane's
    coordinates. The markers sit at the z of `z_scale`; the page's ln/linear switch redraws the surface only."""
    figure = surface_figure(surface, title=title, z_scale=z_scale, clip_radius=math.inf)
    figure.add_trace(_marker_trace(points, z_scale, "scene"))
    figure.layout.scene.update(aspectratio=axes_aspect(surface.xs, surface.ys), xaxis_title_text="x (along û)",
                               yaxis_title_text="y (along v̂)")
    figure.update_layout(showlegend=False)
    return figure


def planes_figure(planes: Sequence[tuple[Surface, Mapping[str, tuple[float, float, float]]]],
                  titles: Sequence[str], *, title: str = "Planes through three checkpoints",
                  z_scale: str = "log", columns: int | None = None) -> go.Figure:
    """Several planes side by side (`compare_figure`, unclipped, cameras in sync, axes to scale), each with its
    three checkpoints marked, above a table of every point's coordinates and loss."""
    surfaces = [surface for surface, _ in planes]
    metrics = [{f"{name}: (x, y)": f"({x:.3g}, {y:.3g})" for name, (x, y, _) in points.items()}
               | {f"{name}: loss": loss for name, (_, _, loss) in points.items()} for _, points in planes]
    figure = compare_figure(surfaces, titles, z_scale=z_scale, clip_radius=math.inf, metrics=metrics,
                            columns=columns, title=title)
    for index, (surface, points) in enumerate(planes):
        scene = "scene" if index == 0 else f"scene{index + 1}"
        figure.add_trace(_marker_trace(points, z_scale, scene))
        figure.layout[scene].update(aspectratio=axes_aspect(surface.xs, surface.ys), xaxis_title_text="x (along û)",
                                    yaxis_title_text="y (along v̂)")
    return figure


# -- curvature maps (lossviz.curvature) ---------------------------------------------------------------------
def curvature_map_figure(curvature: Any, *, surface: Surface | None = None, title: str | None = None) -> go.Figure:
    """Li et al.'s convexity maps as heatmaps over the plot plane: λ_max, λ_min (diverging around 0: red where
    the Hessian has a negative eigenvalue) and |λ_min/λ_max|, after the surface's ln(loss) when `surface` is
    given. `curvature` is a `lossviz.curvature.CurvatureMap` (read by its attributes xs, ys, min_eigenvalue,
    max_eigenvalue, ratio, so drawing does not import the curvature code); 2-D maps only."""
    if curvature.ys is None:
        raise ValueError("curvature_map_figure draws 2-D curvature maps (ys given); this map is 1-D")
    title = title or "Hessian eigenvalues over the plane"
    panels = ([("ln(loss)", clipped_z(surface, "log", math.inf), surface.xs, surface.ys, COLORSCALE, None)]
              if surface is not None else [])
    finite = np.abs(curvature.min_eigenvalue[np.isfinite(curvature.min_eigenvalue)])
    span = max(float(finite.max()) if finite.size else 0.0, 1e-12)  # λ_min's colour scale is symmetric about 0
    panels += [("λ_max", curvature.max_eigenvalue, curvature.xs, curvature.ys, COLORSCALE, None),
               ("λ_min", curvature.min_eigenvalue, curvature.xs, curvature.ys, "RdBu", (-span, span)),
               ("|λ_min / λ_max|", curvature.ratio, curvature.xs, curvature.ys, COLORSCALE, None)]
    figure = make_subplots(rows=1, cols=len(panels), subplot_titles=[name for name, *_ in panels],
                           horizontal_spacing=0.06)
    for column, (name, values, xs, ys, colours, limits) in enumerate(panels, start=1):
        figure.add_trace(go.Heatmap(
            x=xs, y=ys, z=values, colorscale=colours, name=name, zmin=limits[0] if limits else None,
            zmax=limits[1] if limits else None, colorbar={"len": 0.8, "x": column / len(panels) - 0.02,
                                                          "thickness": 10},
            hovertemplate=f"α=%{{x:.3f}}<br>β=%{{y:.3f}}<br>{name}=%{{z:.4g}}<extra></extra>"), row=1, col=column)
        figure.update_xaxes(title_text="α", row=1, col=column)
        figure.update_yaxes(title_text="β", scaleanchor=f"x{column if column > 1 else ''}", row=1, col=column)
    figure.update_layout(title={"text": escape(title)}, height=420, width=360 * len(panels),
                         meta=_viewer_meta("curvature", title))
    return figure
