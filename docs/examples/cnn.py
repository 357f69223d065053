"""Your CNN in about ten lines: a loss surface, its shape metrics and a page (python docs/examples/cnn.py OUT)."""

import sys
from pathlib import Path

import numpy as np
import torch
from _outputs import write_outputs
from torch import nn

import lossviz


def main(out: Path, method: str = "auto") -> dict[str, Path]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 13 * 13, 10))
    images, labels = torch.rand(64, 1, 28, 28), torch.randint(0, 10, (64,))  # your test set here
    directions = lossviz.random_directions(model, seed=0)  # filter-normalized, as in every published figure
    out.mkdir(parents=True, exist_ok=True)
    surface = lossviz.compute_surface(model, images, labels, directions, np.linspace(-1, 1, 5), np.linspace(-1, 1, 5),
                                      n_examples=32, out=out / "cnn.h5", progress=False, method=method)
    return write_outputs(surface, out, "cnn")


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_output")))
