"""Shared test set-up: offline-safe environment, one CPU thread per test process, synthetic datasets
written in the real on-disk formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("LOSSVIZ_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent


def write_idx(path: Path, array: np.ndarray, compress: bool = True) -> Path:
    """Write `array` (uint8) as an IDX file, the MNIST/Fashion-MNIST format."""
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    if compress:
        path = path.with_name(path.name + ".gz")
        with gzip.GzipFile(path, "wb", mtime=0) as handle:
            handle.write(payload)
    else:
        path.write_bytes(payload)
    return path


def write_fashion_mnist_like(directory: Path, n_train: int = 120, n_test: int = 40, seed: int = 0,
                             compress: bool = True) -> Path:
    """Four IDX files with the Fashion-MNIST names and layout; images carry a class-dependent pattern
    so that tiny models can learn something."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for stem, count in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, size=count).astype(np.uint8)
        images = rng.integers(0, 60, size=(count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 * label: 2 * label + 6, 4:24] = 200
        write_idx(directory / f"{stem}-images-idx3-ubyte", images, compress)
        write_idx(directory / f"{stem}-labels-idx1-ubyte", labels, compress)
    return directory


def write_cifar10_like(directory: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """CIFAR-10 in torchvision's python-pickle layout: cifar-10-batches-py/data_batch_1..5, test_batch,
    each a pickled dict with b'data' (N×3072 uint8), b'labels', b'batch_label', b'filenames'."""
    rng = np.random.default_rng(seed)
    batches = directory / "cifar-10-batches-py"
    batches.mkdir(parents=True, exist_ok=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, size=per_batch)],
            b"data": rng.integers(0, 256, size=(per_batch, 3072)).astype(np.uint8),
            b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)],
        }
        with open(batches / name, "wb") as handle:
            pickle.dump(batch, handle, protocol=2)
    return directory


@pytest.fixture
def fmnist_dir(tmp_path: Path) -> Path:
    return write_fashion_mnist_like(tmp_path / "fmnist_raw")


@pytest.fixture
def cifar_dir(tmp_path: Path) -> Path:
    return write_cifar10_like(tmp_path / "cifar_raw")


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on a free local port for the whole session (tests.helpers_postgres)."""
    from tests.helpers_postgres import postgres_server

    with postgres_server() as server:
        yield server
