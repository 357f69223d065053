"""Evaluation tasks: how a batch of examples meets a model and a loss, and what one grid point's result is.

The lowest layer of the engine: the default per-example loss, the seeded example subset every point of a
surface is evaluated on, and the summary (mean loss, accuracy, standard error) of one point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# A per-example loss: (model outputs, targets) -> one loss per example (reduction="none").
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def cross_entropy_per_example(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy of every example (the engine averages them)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def select_examples(n_available: int, n_examples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset (all examples when n_examples is None or too large)."""
    if n_examples is None or n_examples >= n_available:
        return np.arange(n_available, dtype=np.int64)
    if n_examples < 1:
        raise ValueError(f"n_examples={n_examples} must be at least 1")
    order = torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))
    return np.sort(order[:n_examples].numpy()).astype(np.int64)



@dataclass(frozen=True)
class PointResult:
    loss: float      # mean loss over the examples
    acc: float       # accuracy in percent
    loss_se: float   # standard error of the mean loss: sample std of per-example losses / sqrt(n)


def summarize(losses: torch.Tensor, correct: torch.Tensor) -> PointResult:
    losses = losses.double()
    n = losses.numel()
    se = float(losses.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return PointResult(float(losses.mean()), 100.0 * float(correct.sum()) / n, se)

