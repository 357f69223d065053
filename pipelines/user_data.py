"""A user's dataset named in params (`train.dataset`, `sample_size.dataset`: a form of `lossviz.user_specs`, e.g.
`user/mydata.npz` or `user.mydata:splits`) as the stages use data: each split held in memory as tensors, like a
prepared dataset's (`lossviz.data.TensorSplit`), so the train stage's validation carve-out and
`max_train_examples`, the engine, the timings and the MLflow dataset records work alike.

The stages train and measure classifiers: the examples must be (input tensor, integer label) pairs. Dicts of
tensors, token batches and datasets too large for memory are for `lossviz surface` and the Python API
(`lossviz.inputs`). `data.normalize` applies to prepared datasets only: a user's inputs are used as its spec
loads them. Relative paths are taken from the repository (where the stages run); `torchvision:CLASS` reads
from `data/prepared/` unless `dataset_kwargs` gives a `root`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from lossviz.data import TensorSplit
from lossviz.inputs import examples_at
from lossviz.tasks import classification
from lossviz.user_specs import SpecError, user_dataset


def user_split(spec: str, split: str, kwargs: dict[str, Any], data_dir: Path, key: str
               ) -> tuple[TensorSplit, int | None]:
    """The `split` ("train" or "test") of the user's dataset `spec` as tensors, and its number of classes when
    the dataset says (an image folder's classes); errors name the params `key` (e.g. "train.dataset")."""
    data = user_dataset(spec, split, data_dir, kwargs, flag=key, kwargs_flag=f"{key}_kwargs")
    try:
        size = len(data.dataset)
    except TypeError:
        raise SpecError(f"{key} {spec!r}: its {split} split has no length; the stages need a map-style dataset "
                        "(an iterable one: `lossviz surface` with --examples)") from None
    batch = examples_at(data.dataset, None, np.arange(size), classification())
    x, y = batch.inputs, batch.targets
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and y.dim() == 1
            and not y.is_floating_point()):
        raise SpecError(f"{key} {spec!r}: the {split} examples are not (input tensor, integer label) pairs (inputs: "
                        f"{_describe(x)}, targets: {_describe(y)}); the stages train and measure classifiers, other "
                        "data go through `lossviz surface` or the Python API")
    return TensorSplit(x.float() if x.is_floating_point() else x, y.long()), data.num_classes


def number_of_classes(*splits: tuple[TensorSplit, int | None]) -> int:
    """The classes of a user's dataset: as many as its splits say, and at least the largest label + 1."""
    return max(max(count or 0, int(split.y.max()) + 1 if len(split) else 0) for split, count in splits)


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"
