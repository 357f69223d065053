"""Helpers for the adaptive-surface tests: the analytic bowl-plus-ridge surface, and the computation the
kill-and-resume test runs in a child process."""

from __future__ import annotations

import numpy as np
import torch
from helpers_engine import make_examples, make_model

# The ridge: a Gaussian crest of height RIDGE_HEIGHT (ln-loss units) and width RIDGE_WIDTH along the line
# β = RIDGE_SLOPE·α + RIDGE_OFFSET, on a bowl whose curvature the coarse lattice resolves easily.
RIDGE_HEIGHT, RIDGE_WIDTH, RIDGE_SLOPE, RIDGE_OFFSET = 2.0, 0.04, 0.5, 0.2


def ridge_distance(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Distance from (α, β) to the ridge's line."""
    return np.abs(beta - RIDGE_SLOPE * alpha - RIDGE_OFFSET) / np.hypot(1.0, RIDGE_SLOPE)


def bowl_and_ridge_ln_loss(alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    bowl = 0.5 * alpha**2 + beta**2 - 1.0
    return bowl + RIDGE_HEIGHT * np.exp(-ridge_distance(alpha, beta) ** 2 / (2 * RIDGE_WIDTH**2))


def bowl_and_ridge(alpha: np.ndarray, beta: np.ndarray, relative_se: float = 0.0):
    """(loss, accuracy, standard error) of the analytic surface; the standard error is `relative_se` × loss,
    i.e. a standard error of ln(loss) of `relative_se` everywhere."""
    loss = np.exp(bowl_and_ridge_ln_loss(np.asarray(alpha, float), np.asarray(beta, float)))
    return loss, 100.0 / (1.0 + loss), relative_se * loss


ADAPTIVE_GRID = (np.linspace(-1, 1, 33), np.linspace(-1, 1, 29))
ADAPTIVE_TOLERANCE = 0.02


def slow_adaptive_job(out: str, delay: float = 0.01) -> None:
    """A deterministic adaptive lenet5 surface whose loss function sleeps, so that the run lasts long enough to
    be killed in the middle. Prints how many points it evaluated."""
    import time

    from lossviz.directions import random_directions
    from lossviz.engine import compute_surface
    from lossviz.tasks import cross_entropy_per_example

    evaluated = 0

    def slow_loss(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        nonlocal evaluated
        evaluated += 1
        time.sleep(delay)
        return cross_entropy_per_example(outputs, targets)

    slow_loss.__name__ = "cross_entropy_per_example"
    model = make_model("lenet5")
    inputs, targets = make_examples(60)
    directions = random_directions(model, seed=0)
    compute_surface(model, inputs, targets, directions, *ADAPTIVE_GRID, n_examples=30, seed=1, loss_fn=slow_loss,
                    out=out, progress=False, device="cpu", clip_radius=1.0, adaptive=ADAPTIVE_TOLERANCE)
    print(f"evaluated {evaluated}", flush=True)
