"""What every example writes beside its surface file: shape metrics (JSON) and a page (HTML, offline)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lossviz import figures, pages
from lossviz.shape import surface_metrics
from lossviz.surface import Surface


def write_outputs(surface: Surface, out: Path, name: str) -> dict[str, Path]:
    """`name`.json (shape metrics; the centre's accuracy only where the task has one) and `name`.html."""
    metrics = surface_metrics(surface)
    centre = np.unravel_index(np.argmin(np.hypot(*surface.coordinates())), np.shape(surface.loss))
    accuracy = float(np.asarray(surface.acc)[centre])
    if math.isfinite(accuracy):  # a regression has none: absent, never 0 %
        metrics["centre_accuracy"] = accuracy
    metrics_path = out / f"{name}.json"
    metrics_path.write_text(json.dumps({k: v if not isinstance(v, float) or math.isfinite(v) else None
                                        for k, v in metrics.items()}, indent=2, sort_keys=True))
    title = figures.surface_title(surface, name)
    figure = (figures.contour_figure(surface, title=title) if surface.is_2d
              else figures.slice_figure(surface, title=title))
    page = pages.write_html(figure, out / f"{name}.html", title=title, plotly_js="shared")
    return {"surface": out / f"{name}.h5", "metrics": metrics_path, "page": page}
