"""Training throughput: `lossviz.training.train` (in-memory tensors, seeded slicing) against a plain
PyTorch loop over torchvision's FashionMNIST with ToTensor + Normalize and a DataLoader.

Same model, same initial weights, Adam lr 1e-3, batch 256, CPU, the same thread count. Rounds alternate
which loop goes first, so a neighbour's load on shared cores hits both alike; the median round counts.
Prints one line per measurement, then a JSON line: per model `ours` and `plain` samples/s and `ratio`.

    python benchmarks/bench_train.py [--batches 40] [--rounds 5] [--models lenet5 fashion_cnn]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lossviz.data import DATASETS, DEBIAN_FASHION_MNIST_DIR, Splits, read_fashion_mnist_dir, to_float
from lossviz.models import build_model
from lossviz.runtime import configure_cpu
from lossviz.training import TrainConfig, train

BATCH_SIZE = 256


def torchvision_dataset(raw_dir: Path, workdir: Path):
    """torchvision's FashionMNIST read from local files: with download=False it looks for the
    decompressed IDX files under <root>/FashionMNIST/raw/."""
    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    target = workdir / "FashionMNIST" / "raw"
    target.mkdir(parents=True)
    for packed in raw_dir.glob("*-ubyte.gz"):
        with gzip.open(packed) as source, open(target / packed.name.removesuffix(".gz"), "wb") as out:
            shutil.copyfileobj(source, out)
    mean, std = DATASETS["fashion_mnist"].normalization
    return FashionMNIST(str(workdir), train=True, download=False,
                        transform=transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)]))


def fresh_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(name, (1, 28, 28), 10)


def time_ours(name: str, splits: Splits, channels_last: bool = True) -> float:
    """Samples/s of one epoch of our loop over `splits.train` (no evaluation: metrics off, no val/test)."""
    model = fresh_model(name)
    config = TrainConfig(epochs=1, batch_size=BATCH_SIZE, lr=1e-3, train_eval_examples=0, device="cpu",
                         channels_last=channels_last, progress=False)
    started = time.perf_counter()
    train(model, splits, config)
    return len(splits.train) / (time.perf_counter() - started)


def time_plain(name: str, dataset, batches: int) -> float:
    """Samples/s of the textbook loop: DataLoader(shuffle=True) → forward, backward, Adam step."""
    model = fresh_model(name).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)
    seen = 0
    started = time.perf_counter()
    for index, (images, labels) in enumerate(loader):
        if index == batches:
            break
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=40, help="batches of 256 per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["lenet5", "fashion_cnn"])
    args = parser.parse_args()
    configure_cpu()  # both loops run with the same thread count

    raw = read_fashion_mnist_dir(DEBIAN_FASHION_MNIST_DIR)["train"]
    count = args.batches * BATCH_SIZE
    full = to_float(raw, "fashion_mnist", normalize=True)  # ToTensor + Normalize, done once
    splits = Splits(type(full)(full.x[:count], full.y[:count]), None, None, "fashion_mnist")
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        dataset = torchvision_dataset(DEBIAN_FASHION_MNIST_DIR, Path(workdir))
        for name in args.models:
            time_ours(name, Splits(type(full)(full.x[:512], full.y[:512]), None, None, "fashion_mnist"))
            time_plain(name, dataset, 2)  # warm-up: first-call allocations and kernel selection
            rates = {"ours": [], "plain": [], "ours_contiguous": []}
            for round_index in range(args.rounds):
                order = ["ours", "plain", "ours_contiguous"]
                if round_index % 2:
                    order.reverse()
                for loop in order:
                    if loop == "plain":
                        rate = time_plain(name, dataset, args.batches)
                    else:
                        rate = time_ours(name, splits, channels_last=loop == "ours")
                    rates[loop].append(rate)
                    print(f"{name:12s} round {round_index + 1} {loop:16s} {rate:9.0f} samples/s", flush=True)
            medians = {loop: statistics.median(values) for loop, values in rates.items()}
            results[name] = {"ours": round(medians["ours"]), "plain": round(medians["plain"]),
                             "ratio": round(medians["ours"] / medians["plain"], 2),
                             "ours_contiguous": round(medians["ours_contiguous"]),
                             "ratio_contiguous": round(medians["ours_contiguous"] / medians["plain"], 2)}
    print(json.dumps({"samples_per_s": results, "ratio": min(r["ratio"] for r in results.values()),
                      "batch_size": BATCH_SIZE, "samples_per_measurement": count, "rounds": args.rounds,
                      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
