"""A frozen-backbone fine-tune: only the parameters with requires_grad (the new head) move along the
directions; the backbone is never perturbed, and the surface file records params="trainable"."""

import sys
from pathlib import Path

import numpy as np
import torch
from _outputs import write_outputs
from torch import nn

import lossviz


def main(out: Path, method: str = "auto") -> dict[str, Path]:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
    head = nn.Linear(8 * 16, 10)
    model = nn.Sequential(backbone, head)
    backbone.requires_grad_(False)  # "pretrained", frozen
    images, labels = torch.rand(128, 1, 28, 28), torch.randint(0, 10, (128,))
    model.eval()  # the backbone's BatchNorm statistics stay as they are
    optimizer = torch.optim.SGD(head.parameters(), lr=0.5)
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    directions = lossviz.random_directions(model, seed=0, params="trainable")
    out.mkdir(parents=True, exist_ok=True)
    surface = lossviz.compute_surface(model, images, labels, directions, np.linspace(-1, 1, 5), np.linspace(-1, 1, 5),
                                      n_examples=64, out=out / "frozen_backbone.h5", progress=False,
                                      method=method, meta={"model": "frozen backbone + head"})
    return write_outputs(surface, out, "frozen_backbone")


if __name__ == "__main__":
    print(main(Path(sys.argv[1] if len(sys.argv) > 1 else "example_output")))
