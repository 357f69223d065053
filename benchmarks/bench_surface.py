"""Benchmark of the landscape engine on the CPU: ratios measured side by side in one run.

    python benchmarks/bench_surface.py [--rounds 5] [--skip-full-grid]

Measures, in interleaved rounds (the cores are shared, so every round measures every contender):
- plain eval-mode inference of the model on the same 250 Fashion-MNIST test examples (points/s);
- `compute_surface` end to end on a small grid (setup, tracing and precomputation included);
- a loop written the official tool's way (lenet5): directions read from the HDF5 direction file and copied
  into the model at every point, then a fresh DataLoader with 2 workers and ToTensor/Normalize over the
  examples (Normalize(0, 1), so its inputs equal ours and its losses can be checked against ours).
- a tiny GPT-2-style language model (transformers, random weights) on 32 sequences of 32 tokens: the engine's
  points/s (task="language_modelling") over plain inference with the same loss on the same batch;
- lenet5's surface from a 1.2M-example map-style Dataset (items made on demand) against the same from 250
  tensors: the subset is drawn once and held on the device, so a point should cost the same (goal: within 10 %).
Then one real 125×125 lenet5 surface, written to an HDF5 file. Models are trained briefly here (Adam, a
few hundred steps, seeded), because trained weights behave differently from random ones (subnormals).
Prints figures, then a JSON line last.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lossviz.data import load_splits
from lossviz.directions import random_directions, save_directions
from lossviz.engine import compute_surface, make_evaluator
from lossviz.fused import FastPathFallback
from lossviz.models import build_model
from lossviz.runtime import configure_cpu
from lossviz.tasks import language_modelling, select_examples

N_EXAMPLES = 250


def train_briefly(name: str, train_x: torch.Tensor, train_y: torch.Tensor, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(name)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(train_y), (64,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(train_x[batch]), train_y[batch]).backward()
        optimizer.step()
    return model.eval()


def plain_rate(model, x, y, points: int) -> float:
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(points):
            F.cross_entropy(model(x), y)
    return points / (time.perf_counter() - start)


def engine_rate(model, x, y, directions, side: int, n_examples: int | None = None, **options) -> float:
    grid = np.linspace(-1, 1, side)
    start = time.perf_counter()
    compute_surface(model, x, y, directions, grid, grid, n_examples=n_examples, progress=False, device="cpu",
                    **options)
    return side * side / (time.perf_counter() - start)


class ManyExamples(Dataset):
    """1.2M examples made on demand by cycling through a few real ones (an ImageNet-sized index)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int = 1_200_000):
        self.x, self.y, self.size = x, y, size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int):
        return self.x[index % len(self.x)], self.y[index % len(self.y)]


def tiny_language_model():
    """A 2-layer GPT-2 (width 64, 128-token vocabulary), random weights: no download. None without transformers."""
    try:
        from transformers import GPT2Config, GPT2LMHeadModel
    except ImportError:
        return None
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=128, n_positions=32, n_embd=64, n_layer=2, n_head=2, bos_token_id=0,
                        eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


def plain_lm_rate(model, batch: dict, points: int) -> float:
    task = language_modelling()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(points):
            task.evaluate(model, inputs, batch["labels"])[0].mean()
    return points / (time.perf_counter() - start)


class PilImages(Dataset):
    """The examples as PIL images with a torchvision transform, like the official tool's datasets."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[index], mode="L")), int(self.labels[index])


def official_way_rate(model, images: np.ndarray, labels: np.ndarray, dir_file: Path, points: list[tuple]):
    """The official crunch loop: set_weights from the direction file's datasets (read at every point),
    then eval_loss over a fresh DataLoader with 2 workers. Returns (points/s, losses)."""
    import torchvision.transforms as T

    dataset = PilImages(images, labels, T.Compose([T.ToTensor(), T.Normalize((0.0,), (1.0,))]))
    weights = [p.data.clone() for p in model.parameters()]
    losses = []
    with h5py.File(dir_file, "r") as f:
        dx = [f["xdirection"][str(i)] for i in range(len(weights))]
        dy = [f["ydirection"][str(i)] for i in range(len(weights))]
        start = time.perf_counter()
        for alpha, beta in points:
            step = np.array([alpha, beta])
            changes = [d0 * step[0] + d1 * step[1] for d0, d1 in zip(dx, dy, strict=True)]  # reads the file
            for p, w, d in zip(model.parameters(), weights, changes, strict=True):
                p.data = w + torch.Tensor(d).type(type(w))
            loader = DataLoader(dataset, batch_size=128, shuffle=False, num_workers=2)
            total, total_loss = 0, 0.0
            model.eval()
            with torch.no_grad():
                for inputs, targets in loader:
                    total += len(targets)
                    total_loss += F.cross_entropy(model(inputs), targets).item() * len(targets)
            losses.append(total_loss / total)
        rate = len(points) / (time.perf_counter() - start)
        for p, w in zip(model.parameters(), weights, strict=True):
            p.data = w
    return rate, losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data-root", default="data/prepared")
    parser.add_argument("--skip-full-grid", action="store_true", help="skip the real 125×125 surface")
    args = parser.parse_args()
    configure_cpu()
    splits = load_splits(args.data_root, "fashion_mnist", val_size=0)
    indices = torch.from_numpy(select_examples(len(splits.test), N_EXAMPLES, seed=0))
    x, y = splits.test.x[indices], splits.test.y[indices]
    raw_images = (splits.test.x[indices, 0] * 255).round().to(torch.uint8).numpy()

    models = {"lenet5": train_briefly("lenet5", splits.train.x, splits.train.y, steps=300),
              "fashion_cnn": train_briefly("fashion_cnn", splits.train.x, splits.train.y, steps=100)}
    directions = {name: random_directions(model, seed=0) for name, model in models.items()}
    with torch.no_grad():
        for name, model in models.items():
            accuracy = (model(x).argmax(1) == y).float().mean().item() * 100
            print(f"{name}: trained briefly, {accuracy:.1f}% on the 250 examples; threads {torch.get_num_threads()}")

    workdir = Path(tempfile.mkdtemp(prefix="bench_surface_"))
    dir_file = workdir / "lenet5_directions.h5"
    save_directions(directions["lenet5"], dir_file)
    official_points = [(-0.5, 0.25), (0.0, 0.0), (0.5, -0.25), (1.0, 1.0)]

    language_model = tiny_language_model()
    tokens = torch.randint(1, 128, (32, 32), generator=torch.Generator().manual_seed(0))
    lm_batch = {"input_ids": tokens, "attention_mask": torch.ones_like(tokens), "labels": tokens}
    lm_directions = random_directions(language_model, seed=0) if language_model is not None else None
    many = ManyExamples(x, y)
    rates: dict[str, list[float]] = {k: [] for k in (
        "lenet5_plain", "lenet5_engine", "lenet5_official", "fashion_cnn_plain", "fashion_cnn_engine",
        "lenet5_dataset_engine", *(("gpt_plain", "gpt_engine") if language_model is not None else ()))}
    official_losses: list[float] = []
    for round_index in range(args.rounds):
        rates["lenet5_plain"].append(plain_rate(models["lenet5"], x, y, 100))
        rates["lenet5_engine"].append(engine_rate(models["lenet5"], x, y, directions["lenet5"], 12))
        rate, official_losses = official_way_rate(models["lenet5"], raw_images, y.numpy(), dir_file,
                                                  official_points)
        rates["lenet5_official"].append(rate)
        rates["fashion_cnn_plain"].append(plain_rate(models["fashion_cnn"], x, y, 20))
        rates["fashion_cnn_engine"].append(engine_rate(models["fashion_cnn"], x, y, directions["fashion_cnn"], 6))
        rates["lenet5_dataset_engine"].append(engine_rate(models["lenet5"], many, None, directions["lenet5"], 12,
                                                          n_examples=N_EXAMPLES))
        if language_model is not None:
            rates["gpt_plain"].append(plain_lm_rate(language_model, lm_batch, 20))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FastPathFallback)  # transformers models: the plain forward
                rates["gpt_engine"].append(engine_rate(language_model, lm_batch, None, lm_directions, 6,
                                                       task="language_modelling"))
        print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)

    def ratio(numerator: str, denominator: str) -> float:  # per-round ratios, then their median
        return statistics.median(a / b for a, b in zip(rates[numerator], rates[denominator], strict=True))

    medians = {k: statistics.median(v) for k, v in rates.items()}
    ratios = {"lenet5_engine_over_plain": ratio("lenet5_engine", "lenet5_plain"),
              "fashion_cnn_engine_over_plain": ratio("fashion_cnn_engine", "fashion_cnn_plain"),
              "lenet5_engine_over_official_way": ratio("lenet5_engine", "lenet5_official"),
              "lenet5_dataset_over_tensors": ratio("lenet5_dataset_engine", "lenet5_engine")}
    if language_model is not None:
        ratios["gpt_engine_over_plain"] = ratio("gpt_engine", "gpt_plain")
    # The official-way loop must compute the same surface: check its losses against ours.
    evaluator = make_evaluator("fast", models["lenet5"], directions["lenet5"], x, y, device="cpu")
    ours_losses = [evaluator.evaluate(a, b).loss for a, b in official_points]
    official_max_rel_diff = max(abs(a - b) / abs(b) for a, b in zip(official_losses, ours_losses, strict=True))

    print("points/s (median of rounds): " + ", ".join(f"{k} {v:.1f}" for k, v in medians.items()))
    print(f"lenet5: engine / plain inference = {ratios['lenet5_engine_over_plain']:.2f} (goal ≥ 2.0)")
    print(f"fashion_cnn: engine / plain inference = {ratios['fashion_cnn_engine_over_plain']:.2f} (goal ≥ 1.0)")
    print(f"lenet5: engine / official-way loop = {ratios['lenet5_engine_over_official_way']:.1f} (goal ≥ 20)")
    print(f"official-way losses vs ours: max relative difference {official_max_rel_diff:.1e}")
    print(f"lenet5: engine on a 1.2M-example Dataset / on 250 tensors = {ratios['lenet5_dataset_over_tensors']:.2f} "
          "(goal ≥ 0.9)")
    if language_model is not None:
        print(f"tiny GPT-2 LM: engine / plain inference = {ratios['gpt_engine_over_plain']:.2f} (no fx rewrite "
              "applies: the plain forward, weights written in place)")

    full = {}
    if not args.skip_full_grid:
        grid = np.linspace(-1, 1, 125)
        out = workdir / "lenet5_125x125.h5"
        start = time.perf_counter()
        surface = compute_surface(models["lenet5"], x, y, directions["lenet5"], grid, grid, n_examples=None,
                                  out=out, progress=True, device="cpu")
        seconds = time.perf_counter() - start
        full = {"lenet5_125x125_seconds": seconds, "lenet5_125x125_points_per_s": 125 * 125 / seconds,
                "lenet5_125x125_complete": bool(np.isfinite(surface.loss).all())}
        print(f"125×125 lenet5 surface on 250 examples: {seconds:.1f} s, measured for real (goal ≤ 90 s)")
    print(json.dumps({"threads": torch.get_num_threads(), "rounds": args.rounds,
                      "points_per_s_median": medians, **ratios,
                      "official_way_max_rel_loss_diff": official_max_rel_diff, **full,
                      "weights": "trained briefly (Adam, lenet5 300 steps, fashion_cnn 100 steps, batch 64)"}))


if __name__ == "__main__":
    main()
