"""Helpers for the training tests: small synthetic datasets, and a training script that a test runs in a
subprocess (and kills) to check resume. Run as `python tests/helpers_training.py OUT CHECKPOINT EPOCHS`."""

from __future__ import annotations

import json
import sys

import torch

from lossviz.data import Splits, TensorSplit
from lossviz.models import build_model
from lossviz.runtime import seed_everything
from lossviz.training import TrainConfig, train

SMALL_SHAPE = (1, 16, 16)


def synthetic_split(count: int, shape=SMALL_SHAPE, classes: int = 10, seed: int = 0,
                    random_labels: bool = False) -> TensorSplit:
    """Images = a fixed template per class + noise (learnable), or noise with random labels (only
    memorizable, so validation loss rises once the model overfits)."""
    generator = torch.Generator().manual_seed(seed)
    templates = torch.rand((classes, *shape), generator=torch.Generator().manual_seed(1234))
    labels = torch.randint(0, classes, (count,), generator=generator)
    noise = torch.rand((count, *shape), generator=generator)
    images = noise if random_labels else 0.6 * templates[labels] + 0.4 * noise
    return TensorSplit(images, labels)


def synthetic_splits(train: int = 256, val: int = 64, test: int = 64, shape=SMALL_SHAPE,
                     random_labels: bool = False) -> Splits:
    return Splits(synthetic_split(train, shape, seed=1, random_labels=random_labels),
                  synthetic_split(val, shape, seed=2, random_labels=random_labels) if val else None,
                  synthetic_split(test, shape, seed=3, random_labels=random_labels) if test else None,
                  "fashion_mnist")


# A config that touches every piece of resumable state: dropout (global RNG), batch norm, Adam moments,
# the plateau scheduler and the early-stopping best weights.
RESUME_CONFIG = dict(batch_size=32, lr=3e-3, lr_plateau=True, plateau_patience=1, early_stopping=True,
                     progress=False)


def run_resumable(out_path: str, checkpoint_path: str, epochs: int) -> None:
    """Train fashion_cnn on synthetic data with a resume checkpoint; write the final weights and history."""
    seed_everything(0)
    model = build_model("fashion_cnn", SMALL_SHAPE, 10)
    result = train(model, synthetic_splits(train=384), TrainConfig(epochs=epochs, **RESUME_CONFIG),
                   checkpoint_path=checkpoint_path,
                   callbacks=[lambda record, replayed: print(f"epoch {record.epoch} done", flush=True)])
    history = [{k: v for k, v in record.metrics().items() if k != "seconds"} for record in result.history]
    torch.save({"state_dict": model.state_dict(), "history": history,
                "resumed_from_epoch": result.resumed_from_epoch}, out_path)
    print(json.dumps({"resumed_from_epoch": result.resumed_from_epoch}), flush=True)


if __name__ == "__main__":
    run_resumable(sys.argv[1], sys.argv[2], int(sys.argv[3]))
