"""A regression MLP: per-example mean squared error, and no accuracy (absent from the page and the metrics,
never shown as 0 %). A few training steps first, so the surface has a minimum to look at."""

import sys
from pathlib import Path

import numpy as np
import torch
from _outputs import write_outputs
from torch import nn

import lossviz


def main(out: Path, method: str = "auto") -> dict[str, Path]:
    torch.manual_seed(0)
    x = torch.rand(256, 3) * 4 - 2
    y = torch.sin(x[:, 0]) + 0.5 * x[:, 1] * x[:, 2]  # (N,) targets against the model's (N, 1) output
    model = nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(150):
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x).squeeze(1), y).backward()
        optimizer.step()
    directions = lossviz.random_directions(model, seed=0)
    out.mkdir(parents=True, exist_ok=True)
    surface = lossviz.compute_surface(model.eval(), x, y, directions, np.linspace(-1, 1, 5), np.linspace(-1, 1, 5),
                                      n_examples=128, task="regression", out=out / "regression.h5", progress=False,
                                      method=method, meta={"model": "MLP regression"})
    return write_outputs(surface, out, "regression")


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_output")))
