"""lossviz: fast, faithful loss-landscape surfaces and the experiments around them.

The library has no MLflow, Optuna or DVC inside: a notebook user calls it directly:

    import lossviz
    directions = lossviz.random_directions(model, seed=0)
    surface = lossviz.compute_surface(model, inputs, targets, directions, xs, ys)

The public names below are imported on first use, so `import lossviz` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name → the module that owns it.
_PUBLIC = {
    "Surface": "lossviz.surface",
    "SurfaceFileError": "lossviz.surface",
    "compute_surface": "lossviz.sampling",
    "select_examples": "lossviz.tasks",
    "cross_entropy_per_example": "lossviz.tasks",
    "Task": "lossviz.tasks",
    "classification": "lossviz.tasks",
    "regression": "lossviz.tasks",
    "language_modelling": "lossviz.tasks",
    "restrict_directions": "lossviz.directions",
    "Directions": "lossviz.directions",
    "random_directions": "lossviz.directions",
    "target_direction": "lossviz.directions",
    "pca_directions": "lossviz.directions",
    "project_checkpoints": "lossviz.directions",
    "save_directions": "lossviz.directions",
    "load_directions": "lossviz.directions",
    "surface_metrics": "lossviz.shape",
    "hessian_metrics": "lossviz.curvature",
    "hessian_directions": "lossviz.curvature",
    "curvature_map": "lossviz.curvature",
    "run_lottery": "lossviz.lottery",
    "IMPConfig": "lossviz.lottery",
    "LevelResult": "lossviz.lottery",
    "LotteryCallbacks": "lossviz.lottery",
    "load_results": "lossviz.lottery",
    "lottery_figure": "lossviz.figures",
    "correlation_table": "lossviz.sharpness",
    "generalization_gap": "lossviz.sharpness",
    "spearman_p_value": "lossviz.stats",
    "verdict": "lossviz.sharpness",
    "AutoExamples": "lossviz.sampling",
    "choose_n_examples": "lossviz.sampling",
    "compare_sample_sizes": "lossviz.sampling",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'lossviz' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
