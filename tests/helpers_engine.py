"""Shared helpers for the landscape-engine tests: tiny models with non-trivial BatchNorm statistics,
synthetic examples, a prepared-dataset writer, and the official tool's file layouts written by hand."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import torch
from torch import nn

from lossviz.data import RawSplit, write_prepared
from lossviz.models import build_model


def make_model(name: str, input_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0) -> nn.Module:
    """A registered model with seeded weights and BatchNorm statistics far from their defaults (so that
    folding them is a real test), in eval mode."""
    torch.manual_seed(seed)
    model = build_model(name, input_shape)
    generator = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.copy_(torch.rand(module.running_mean.shape, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(module.bias.shape, generator=generator) * 0.4 - 0.2)
    return model.eval()


def make_examples(n: int, input_shape: tuple[int, int, int] = (1, 28, 28), seed: int = 0
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((n, *input_shape), generator=generator), torch.randint(0, 10, (n,), generator=generator)


def state_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_same_state(model: nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert list(after) == list(before)
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), f"{name} changed"


def write_prepared_fashion_mnist(root: Path, n_test: int = 40, n_train: int = 20, seed: int = 0) -> Path:
    """A tiny prepared Fashion-MNIST under root/fashion_mnist, in the real prepared format."""
    generator = torch.Generator().manual_seed(seed)
    splits = {}
    for split, count in (("train", n_train), ("test", n_test)):
        images = torch.randint(0, 255, (count, 1, 28, 28), generator=generator, dtype=torch.uint8)
        labels = torch.randint(0, 10, (count,), generator=generator)
        splits[split] = RawSplit(images, labels)
    write_prepared(splits, root / "fashion_mnist", {"dataset": "fashion_mnist"})
    return root


def write_official_surface(path: Path, xs: np.ndarray, ys: np.ndarray, flat_values: np.ndarray,
                           key: str = "train_loss") -> None:
    """A surface file as the official tool writes it: arrays allocated (nx, ny), filled in the flat
    meshgrid('xy') order, −1 where not computed, no version attribute."""
    with h5py.File(path, "w") as f:
        f["dir_file"] = "directions.h5"
        f["xcoordinates"] = xs
        f["ycoordinates"] = ys
        f[key] = np.asarray(flat_values, dtype=np.float64).reshape(len(xs), len(ys))
        f[key.replace("loss", "acc")] = np.full((len(xs), len(ys)), 50.0)


RESUME_GRID = (np.linspace(-1, 1, 16), np.linspace(-1, 1, 12))


def slow_surface_job(out: str, delay: float = 0.01) -> None:
    """The computation the kill-and-resume test runs in a child process: a deterministic lenet5 surface
    whose loss function sleeps, so that the run lasts long enough to be killed in the middle. Prints how
    many points it evaluated."""
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
    compute_surface(model, inputs, targets, directions, *RESUME_GRID, n_examples=30, seed=1, loss_fn=slow_loss,
                    out=out, progress=False, device="cpu")
    print(f"evaluated {evaluated}", flush=True)
