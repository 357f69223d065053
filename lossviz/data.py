"""Datasets: the registry of those a user can name, finding their raw files, checking them, preparing them
as tensors, loading them for work.

`DATASETS` holds one `DatasetSpec` per dataset: its shape, classes, normalization, reader and download.
Sources, in order: a directory the user names, a Debian package holding the files (Fashion-MNIST's
`dataset-fashion-mnist`), torchvision's download. Raw files are checked (gzip CRC, IDX structure, and the
SHA-256 of the canonical payload) and a bad file is reported, never used. Prepared data are uint8 image
tensors plus int64 labels, written with torch.save (byte-for-byte reproducible) and read with
`weights_only=True`. Training and evaluation keep the whole dataset in memory as float tensors: no
per-item PIL transforms.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pickle
import shutil
import struct
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# SHA-256 of the decompressed IDX payloads of the canonical Fashion-MNIST release. Debian's package and
# torchvision's mirror compress them differently, so the payload, not the .gz, is what we check.
FASHION_MNIST_FILES = {
    "train_images": ("train-images-idx3-ubyte", 60000,
                     "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"),
    "train_labels": ("train-labels-idx1-ubyte", 60000,
                     "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"),
    "test_images": ("t10k-images-idx3-ubyte", 10000,
                    "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"),
    "test_labels": ("t10k-labels-idx1-ubyte", 10000,
                    "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
}
# MD5s that torchvision publishes for the CIFAR-10 python batches.
CIFAR10_BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}


class DataError(RuntimeError):
    """A dataset could not be found, or a file of it is corrupt."""


@dataclass(frozen=True)
class RawSplit:
    images: torch.Tensor  # uint8, (N, C, H, W)
    labels: torch.Tensor  # int64, (N,)


@dataclass(frozen=True)
class TensorSplit:
    """One split held in memory, ready for the model: float images (N, C, H, W) and int64 labels."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)

    def to(self, device: torch.device | str) -> TensorSplit:
        return TensorSplit(self.x.to(device), self.y.to(device))

    def first(self, count: int) -> TensorSplit:
        return TensorSplit(self.x[:count], self.y[:count])

    def fingerprint(self) -> list[float]:
        """Size, sum of pixels (float64) and sum of labels: cheap, and any change of the data shows."""
        return [len(self), float(self.x.sum(dtype=torch.float64)), float(self.y.sum())]


@dataclass(frozen=True)
class Splits:
    train: TensorSplit
    val: TensorSplit | None
    test: TensorSplit
    dataset: str

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.test.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return get_dataset(self.dataset).num_classes

    def fingerprint(self) -> dict[str, Any]:
        """What a resume file checks to know it was made from these data: each split's `fingerprint()`."""
        return {name: split.fingerprint() if split is not None else None
                for name, split in (("train", self.train), ("val", self.val), ("test", self.test))}


# ---------------------------------------------------------------------------------------------- checks

def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_payload(path: Path) -> bytes:
    """The file's bytes, decompressed when it is gzip; gzip's CRC and length check catch truncation."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
        if head == b"\x1f\x8b":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: corrupt or truncated file ({error})") from error


def parse_idx(payload: bytes, source: str = "<bytes>") -> np.ndarray:
    """Parse an IDX file (the MNIST format): magic 0x00 0x00 0x08 ndim, big-endian dims, uint8 data.
    Any mismatch between the header and the length is a corrupt file."""
    if len(payload) < 4 or payload[:3] != b"\x00\x00\x08" or not 1 <= payload[3] <= 4:
        raise DataError(f"{source}: not an unsigned-byte IDX file (bad magic number)")
    ndim = payload[3]
    header = 4 + 4 * ndim
    if len(payload) < header:
        raise DataError(f"{source}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", payload[4:header])
    expected = header + int(np.prod(dims))
    if len(payload) != expected:
        raise DataError(f"{source}: IDX header says {expected} bytes for shape {dims}, file has {len(payload)}"
                        " (truncated or corrupt)")
    return np.frombuffer(payload, dtype=np.uint8, offset=header).reshape(dims)


def _find_idx_file(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem, stem.replace("-idx", ".idx") + ".gz", stem.replace("-idx", ".idx")):
        if (directory / name).is_file():
            return directory / name
    return None


# --------------------------------------------------------------------------------------- Fashion-MNIST

def read_fashion_mnist_dir(directory: str | Path, verify_checksums: bool = True) -> dict[str, RawSplit]:
    """Read the four IDX files (gzip or not) from `directory` and check them.

    With `verify_checksums`, each payload must be the canonical release's (SHA-256); without, only its
    structure is checked (for home-made files in the same format)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    arrays = {}
    for key, (stem, count, sha) in FASHION_MNIST_FILES.items():
        path = _find_idx_file(directory, stem)
        if path is None:
            raise DataError(f"{directory}: missing {stem}.gz")
        payload = _read_payload(path)
        if verify_checksums and sha256_bytes(payload) != sha:
            raise DataError(f"{path}: SHA-256 of its content does not match the Fashion-MNIST release "
                            "(corrupt file, or not Fashion-MNIST; set data.verify_checksums: false "
                            "for your own files in this format)")
        array = parse_idx(payload, str(path))
        if verify_checksums and len(array) != count:
            raise DataError(f"{path}: {len(array)} items, expected {count}")
        arrays[key] = array
    splits = {}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{directory}: {split} images {images.shape} and labels {labels.shape} disagree")
        if labels.max(initial=0) > 9:
            raise DataError(f"{directory}: {split} labels outside 0..9")
        splits[split] = RawSplit(torch.from_numpy(images.copy()).unsqueeze(1),
                                 torch.from_numpy(labels.astype(np.int64)))
    return splits


def _download_fashion_mnist(root: Path) -> Path:
    # torchvision is imported here, not at the top: only this last-resort source needs it, and importing it
    # doubles the start-up time of every stage and of `lossviz params check`.
    from torchvision.datasets import FashionMNIST

    FashionMNIST(str(root), train=True, download=True)
    FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


# -------------------------------------------------------------------------------------------- CIFAR-10

class _CifarUnpickler(pickle.Unpickler):
    """The CIFAR-10 batches are pickles; allow only what they contain (numpy arrays, builtins) so that a
    hostile file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def _cifar_batches_dir(directory: Path) -> Path:
    for candidate in (directory, directory / "cifar-10-batches-py"):
        if (candidate / "test_batch").is_file():
            return candidate
    raise DataError(f"{directory}: no CIFAR-10 python batches (expected data_batch_1..5 and test_batch, "
                    "or a cifar-10-batches-py/ folder holding them)")


def read_cifar10_dir(directory: str | Path, verify_checksums: bool = True) -> dict[str, RawSplit]:
    """Read CIFAR-10 in torchvision's python-pickle batch format (data_batch_1..5, test_batch)."""
    batches_dir = _cifar_batches_dir(Path(directory))
    parts: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for name, md5 in CIFAR10_BATCHES.items():
        path = batches_dir / name
        if not path.is_file():
            raise DataError(f"{batches_dir}: missing {name}")
        raw = path.read_bytes()
        if verify_checksums and hashlib.md5(raw).hexdigest() != md5:
            raise DataError(f"{path}: MD5 does not match the CIFAR-10 release (corrupt, or not CIFAR-10; "
                            "set data.verify_checksums: false for your own files in this format)")
        try:
            batch = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8)
            labels = np.asarray(batch[b"labels"], dtype=np.int64)
        except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as error:
            raise DataError(f"{path}: not a readable CIFAR-10 batch ({error})") from error
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
            raise DataError(f"{path}: data shape {data.shape} with {len(labels)} labels; expected (N, 3072)")
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise DataError(f"{path}: labels outside 0..9")
        parts["test" if name == "test_batch" else "train"].append((data, labels))
    splits = {}
    for split, chunks in parts.items():
        data = np.concatenate([c[0] for c in chunks]).reshape(-1, 3, 32, 32)
        labels = np.concatenate([c[1] for c in chunks])
        splits[split] = RawSplit(torch.from_numpy(data), torch.from_numpy(labels))
    return splits


def _download_cifar10(root: Path) -> Path:
    from torchvision.datasets import CIFAR10  # imported here for the reason given in _download_fashion_mnist

    CIFAR10(str(root), train=True, download=True)
    return root / "cifar-10-batches-py"


# ------------------------------------------------------------------------------------------ registry

@dataclass(frozen=True)
class DatasetSpec:
    """One dataset a user can name in params: what its examples look like and where its files come from."""

    name: str
    input_shape: tuple[int, int, int]  # channels, height, width
    num_classes: int
    test_size: int  # examples in the official test split (params are checked against it before any stage runs)
    normalization: tuple[tuple[float, ...], tuple[float, ...]]  # per-channel mean and std of the training set
    read_dir: Callable[..., dict[str, RawSplit]]  # (directory, verify_checksums=...) -> {"train", "test"} splits
    download: Callable[[Path], Path]  # download under a root directory; returns the directory read_dir reads
    debian_package: str | None = None  # a Debian package that installs the raw files, tried before a download
    debian_dir: Path | None = None  # where that package puts them


DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in (
    DatasetSpec("fashion_mnist", (1, 28, 28), 10, 10_000, ((0.2860,), (0.3530,)), read_fashion_mnist_dir,
                _download_fashion_mnist, "dataset-fashion-mnist", DEBIAN_FASHION_MNIST_DIR),
    DatasetSpec("cifar10", (3, 32, 32), 10, 10_000, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                read_cifar10_dir, _download_cifar10),
)}


def get_dataset(name: str) -> DatasetSpec:
    """The registered dataset `name`; an unknown name lists the allowed ones."""
    try:
        return DATASETS[name]
    except KeyError:
        raise DataError(f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)}") from None


# ------------------------------------------------------------------------------------------- sources

@dataclass(frozen=True)
class Source:
    name: str
    describe: str
    locate: Callable[[], Path | None]  # None: this source is not present here
    fix: str


def sources_for(dataset: str, user_dir: str | None, download_root: Path, allow_download: bool) -> list[Source]:
    """The places a dataset can come from, in the order they are tried."""
    spec = get_dataset(dataset)
    sources: list[Source] = []
    if user_dir:
        sources.append(Source("directory", f"the directory {user_dir} (data.{dataset}_dir)",
                              lambda: Path(user_dir), f"check data.{dataset}_dir in params.yaml"))
    system_dir = spec.debian_dir
    if spec.debian_package and system_dir is not None:
        sources.append(Source(
            "debian", f"Debian's {spec.debian_package} package ({system_dir})",
            lambda: system_dir if system_dir.is_dir() else None, f"apt-get install {spec.debian_package}"))
    if allow_download:
        sources.append(Source("download", f"torchvision's download into {download_root}",
                              lambda: spec.download(download_root), "connect to the internet"))
    return sources


def read_dataset(dataset: str, user_dir: str | None = None, download_root: str | Path = "data/downloads",
                 allow_download: bool = True, verify_checksums: bool = True) -> tuple[dict[str, RawSplit], Source]:
    """Read `dataset` from the first source that works; otherwise raise one error listing each source
    tried, why it failed and how to fix it. A corrupt file is an error at once, never skipped over."""
    spec = get_dataset(dataset)
    tried = []
    for source in sources_for(dataset, user_dir, Path(download_root), allow_download):
        try:
            location = source.locate()
        except Exception as error:  # a failed download: no network, server error, ...
            tried.append(f"  - {source.describe}: {type(error).__name__}: {error} (fix: {source.fix})")
            continue
        if location is None or not Path(location).exists():
            tried.append(f"  - {source.describe}: not present (fix: {source.fix})")
            continue
        try:
            splits = spec.read_dir(location, verify_checksums=verify_checksums)
        except DataError as error:
            if source.name == "directory" and "missing" not in str(error) and "no such" not in str(error):
                raise  # a corrupt file the user pointed at: report it, never fall back silently
            tried.append(f"  - {source.describe}: {error} (fix: {source.fix})")
            continue
        _check_shape(spec, splits, source)
        return splits, source
    raise DataError(f"could not obtain {dataset}; tried:\n" + "\n".join(tried))


def _check_shape(spec: DatasetSpec, splits: dict[str, RawSplit], source: Source) -> None:
    """Files in the right format can still hold other images (e.g. a user's 32×32 IDX files): refuse them here
    rather than let a model built for `spec.input_shape` fail later."""
    for split, raw in splits.items():
        shape = tuple(raw.images.shape[1:])
        if shape != spec.input_shape:
            raise DataError(f"{source.describe}: {split} images are {shape} (channels, height, width); "
                            f"{spec.name} images are {spec.input_shape}")


# ------------------------------------------------------------------------------------ prepared tensors

def write_prepared(splits: dict[str, RawSplit], out_dir: str | Path, manifest_extra: dict) -> dict:
    """Write train.pt/test.pt and manifest.json into `out_dir`, atomically: a half-written directory never
    replaces a good one."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        files = {}
        for split, raw in splits.items():
            path = staging / f"{split}.pt"
            torch.save({"images": raw.images.contiguous(), "labels": raw.labels.contiguous()}, path)
            files[path.name] = {"sha256": sha256_file(path), "bytes": path.stat().st_size,
                                "examples": len(raw.labels), "shape": list(raw.images.shape[1:])}
        manifest = {**manifest_extra, "files": files}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def load_prepared(data_dir: str | Path, split: str) -> RawSplit:
    """Load one prepared split, checking it against the manifest."""
    data_dir = Path(data_dir)
    path = data_dir / f"{split}.pt"
    manifest_path = data_dir / "manifest.json"
    if not path.is_file() or not manifest_path.is_file():
        raise DataError(f"{data_dir}: no prepared {split} split; run the `prepare` stage (dvc repro prepare)")
    manifest = json.loads(manifest_path.read_text())
    expected = manifest["files"][path.name]["sha256"]
    if sha256_file(path) != expected:
        raise DataError(f"{path}: does not match its manifest (corrupt); rerun `dvc repro prepare`")
    blob = torch.load(path, weights_only=True)
    return RawSplit(blob["images"], blob["labels"])


def to_float(raw: RawSplit, dataset: str, normalize: bool) -> TensorSplit:
    x = raw.images.float().div_(255.0)
    if normalize:
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in get_dataset(dataset).normalization)
        x = (x - mean) / std
    return TensorSplit(x, raw.labels.long())


def load_splits(data_root: str | Path, dataset: str, val_size: int = 5000, seed: int = 0,
                normalize: bool = False, max_train_examples: int | None = None) -> Splits:
    """The prepared dataset as in-memory float tensors, with a seeded validation split carved out of the
    training set (`val_size` examples; 0 for none), then training on the first `max_train_examples` of the
    rest (None: all of them)."""
    data_dir = Path(data_root) / dataset
    train = to_float(load_prepared(data_dir, "train"), dataset, normalize)
    test = to_float(load_prepared(data_dir, "test"), dataset, normalize)
    return carve_splits(train, test, dataset, val_size, seed, max_train_examples)


def carve_splits(train: TensorSplit, test: TensorSplit, dataset: str, val_size: int = 5000, seed: int = 0,
                 max_train_examples: int | None = None) -> Splits:
    """Splits of data in memory (a prepared dataset's, or a user's): a seeded validation split of `val_size`
    examples carved out of `train`, then training on the first `max_train_examples` of the rest (None: all)."""
    if max_train_examples is not None and max_train_examples < 1:
        raise ValueError(f"max_train_examples={max_train_examples} is not valid; allowed: null (all) or >= 1")
    if not 0 <= val_size < len(train):
        raise ValueError(f"val_size={val_size} must be in [0, {len(train) - 1}] for {dataset}")
    val = None
    if val_size:
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
        val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
        val = TensorSplit(train.x[val_idx], train.y[val_idx])
        train = TensorSplit(train.x[train_idx], train.y[train_idx])
    if max_train_examples is not None:
        train = train.first(max_train_examples)
    return Splits(train, val, test, dataset)
