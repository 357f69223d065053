"""An example of your own model for the pipeline: in params.yaml, `train.model: user.example_mlp:mlp` with
`train.model_kwargs: {width: 64}`. The stage passes `input_shape` and `num_classes` from the data."""

from __future__ import annotations

import math

from torch import nn


def mlp(input_shape: tuple[int, ...], num_classes: int, width: int = 64) -> nn.Module:
    """A one-hidden-layer perceptron for inputs of `input_shape` (e.g. (1, 28, 28) images)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                         nn.Linear(width, num_classes))
