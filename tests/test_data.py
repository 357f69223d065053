import dataclasses
import gzip
import hashlib
import pickle
import shutil

import numpy as np
import pytest
import torch

from lossviz import data as data_mod
from lossviz.data import (
    DATASETS,
    DEBIAN_FASHION_MNIST_DIR,
    DataError,
    Splits,
    TensorSplit,
    get_dataset,
    load_prepared,
    load_splits,
    read_cifar10_dir,
    read_dataset,
    read_fashion_mnist_dir,
    write_prepared,
)
from tests.conftest import write_fashion_mnist_like, write_idx


def test_debian_package_files_are_found_and_verified(tmp_path):
    """The real Debian package (installed by the test set-up): canonical checksums and counts."""
    assert DEBIAN_FASHION_MNIST_DIR.is_dir(), "run scripts/system-deps.sh data (dataset-fashion-mnist)"
    splits, source = read_dataset("fashion_mnist", None, tmp_path, allow_download=False)
    assert source.name == "debian"
    assert splits["train"].images.shape == (60000, 1, 28, 28)
    assert splits["test"].images.shape == (10000, 1, 28, 28)
    assert splits["train"].images.dtype == torch.uint8
    assert torch.bincount(splits["test"].labels).tolist() == [1000] * 10


def test_user_directory_is_tried_first(fmnist_dir, tmp_path):
    splits, source = read_dataset("fashion_mnist", str(fmnist_dir), tmp_path, allow_download=False,
                                  verify_checksums=False)
    assert source.name == "directory"
    assert splits["train"].images.shape == (120, 1, 28, 28)
    assert splits["test"].labels.shape == (40,)


def test_uncompressed_idx_files_are_read(tmp_path):
    directory = write_fashion_mnist_like(tmp_path / "raw", compress=False)
    splits = read_fashion_mnist_dir(directory, verify_checksums=False)
    assert splits["train"].images.shape == (120, 1, 28, 28)


def test_home_made_files_fail_the_canonical_checksum(fmnist_dir, tmp_path):
    with pytest.raises(DataError, match="SHA-256"):
        read_dataset("fashion_mnist", str(fmnist_dir), tmp_path, allow_download=False)


def test_truncated_gzip_is_reported_not_used(fmnist_dir, tmp_path):
    path = fmnist_dir / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="corrupt or truncated"):
        read_dataset("fashion_mnist", str(fmnist_dir), tmp_path, allow_download=False,
                     verify_checksums=False)


def test_corrupted_copy_of_the_real_release_is_caught(tmp_path):
    """One flipped pixel in an otherwise valid file: only the checksum can see it, and it does; the
    stage must not fall back to another source silently."""
    directory = tmp_path / "copy"
    shutil.copytree(DEBIAN_FASHION_MNIST_DIR, directory)
    path = directory / "t10k-images-idx3-ubyte.gz"
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[5000] ^= 0xFF
    path.write_bytes(gzip.compress(bytes(payload)))
    with pytest.raises(DataError, match="SHA-256"):
        read_dataset("fashion_mnist", str(directory), tmp_path, allow_download=False)


def test_idx_header_and_length_must_agree(tmp_path):
    path = write_idx(tmp_path / "x-idx3-ubyte", np.zeros((3, 28, 28), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(DataError, match="truncated or corrupt"):
        data_mod.parse_idx(path.read_bytes(), str(path))
    with pytest.raises(DataError, match="magic"):
        data_mod.parse_idx(b"PK\x03\x04garbage", "zip")


def without_debian_package(monkeypatch, tmp_path, **changes) -> None:
    """Fashion-MNIST's registry entry as on a machine without the Debian package (plus `changes`)."""
    spec = dataclasses.replace(DATASETS["fashion_mnist"], debian_dir=tmp_path / "absent", **changes)
    monkeypatch.setitem(DATASETS, "fashion_mnist", spec)


def test_no_source_lists_what_was_tried(monkeypatch, tmp_path):
    without_debian_package(monkeypatch, tmp_path)
    with pytest.raises(DataError) as info:
        read_dataset("fashion_mnist", str(tmp_path / "nowhere"), tmp_path, allow_download=False)
    message = str(info.value)
    assert "tried:" in message
    assert "nowhere" in message and "data.fashion_mnist_dir" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_failed_download_is_listed_with_its_error(monkeypatch, tmp_path):
    def offline(root):
        raise OSError("network is unreachable")

    without_debian_package(monkeypatch, tmp_path, download=offline)
    with pytest.raises(DataError, match="torchvision's download.*network is unreachable"):
        read_dataset("fashion_mnist", None, tmp_path, allow_download=True)


def test_cifar10_python_batches(cifar_dir):
    splits = read_cifar10_dir(cifar_dir, verify_checksums=False)
    assert splits["train"].images.shape == (100, 3, 32, 32)
    assert splits["test"].images.shape == (20, 3, 32, 32)
    # The first image's first row of red pixels is the first 32 bytes of the first batch's data.
    with open(cifar_dir / "cifar-10-batches-py" / "data_batch_1", "rb") as handle:
        first = pickle.load(handle, encoding="bytes")
    assert splits["train"].images[0, 0, 0].tolist() == first[b"data"][0, :32].tolist()
    assert splits["train"].labels[:20].tolist() == first[b"labels"]
    # The parent folder or the batches folder itself both work.
    assert len(read_cifar10_dir(cifar_dir / "cifar-10-batches-py", verify_checksums=False)["test"].labels) == 20


def test_cifar10_checksums_and_hostile_pickles(cifar_dir):
    with pytest.raises(DataError, match="MD5"):
        read_cifar10_dir(cifar_dir, verify_checksums=True)

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    (cifar_dir / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Exploit()}))
    with pytest.raises(DataError, match="refusing to load builtins.print"):
        read_cifar10_dir(cifar_dir, verify_checksums=False)


def test_prepared_files_are_reproducible_and_checked(fmnist_dir, tmp_path):
    splits = read_fashion_mnist_dir(fmnist_dir, verify_checksums=False)
    first = write_prepared(splits, tmp_path / "a" / "fashion_mnist", {"dataset": "fashion_mnist"})
    second = write_prepared(splits, tmp_path / "b" / "fashion_mnist", {"dataset": "fashion_mnist"})
    assert first == second  # byte-identical outputs: DVC sees no change on a rerun
    loaded = load_prepared(tmp_path / "a" / "fashion_mnist", "train")
    assert torch.equal(loaded.images, splits["train"].images)
    path = tmp_path / "a" / "fashion_mnist" / "train.pt"
    blob = bytearray(path.read_bytes())
    blob[-30] ^= 1
    path.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="does not match its manifest"):
        load_prepared(tmp_path / "a" / "fashion_mnist", "train")
    manifest = first["files"]["train.pt"]
    assert manifest["examples"] == 120
    assert manifest["sha256"] == hashlib.sha256((tmp_path / "b/fashion_mnist/train.pt").read_bytes()).hexdigest()


def test_validation_split_is_seeded_and_disjoint(fmnist_dir, tmp_path):
    write_prepared(read_fashion_mnist_dir(fmnist_dir, verify_checksums=False),
                   tmp_path / "fashion_mnist", {})
    a = load_splits(tmp_path, "fashion_mnist", val_size=20, seed=3)
    b = load_splits(tmp_path, "fashion_mnist", val_size=20, seed=3)
    c = load_splits(tmp_path, "fashion_mnist", val_size=20, seed=4)
    assert len(a.train) == 100 and len(a.val) == 20 and len(a.test) == 40
    assert torch.equal(a.val.x, b.val.x) and not torch.equal(a.val.x, c.val.x)
    assert a.train.x.dtype == torch.float32 and float(a.train.x.max()) <= 1.0
    rows = {tuple(r.flatten().tolist()[:50]) + (i,) for i, r in enumerate(a.val.x)}
    assert len(rows) == 20
    full = load_splits(tmp_path, "fashion_mnist", val_size=0)
    # train ∪ val is the whole training set, each example once
    assert sorted(torch.cat([a.train.y, a.val.y]).tolist()) == sorted(full.train.y.tolist())
    with pytest.raises(ValueError, match="val_size"):
        load_splits(tmp_path, "fashion_mnist", val_size=120)


# ------------------------------------------------------------------------------------------ registry

def test_registry_entries_describe_their_data(fmnist_dir, cifar_dir, tmp_path):
    """Each entry's shape and class count are those of what its reader returns (on files in its format),
    and its normalization has one mean and one std per channel."""
    sources = {"fashion_mnist": fmnist_dir, "cifar10": cifar_dir}
    assert set(DATASETS) == set(sources)
    for name, spec in DATASETS.items():
        assert spec.name == name
        splits, source = read_dataset(name, str(sources[name]), tmp_path, allow_download=False,
                                      verify_checksums=False)
        assert source.name == "directory"
        for raw in splits.values():
            assert tuple(raw.images.shape[1:]) == spec.input_shape
            assert 0 <= int(raw.labels.min()) and int(raw.labels.max()) < spec.num_classes
        mean, std = spec.normalization
        assert len(mean) == len(std) == spec.input_shape[0]


def test_only_fashion_mnist_has_a_debian_source(tmp_path):
    names = {name: [s.name for s in data_mod.sources_for(name, None, tmp_path, allow_download=True)]
             for name in DATASETS}
    assert names == {"fashion_mnist": ["debian", "download"], "cifar10": ["download"]}


def test_unknown_dataset_names_the_allowed_ones(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'mnist'; allowed: fashion_mnist, cifar10"):
        read_dataset("mnist", None, tmp_path, allow_download=False)
    with pytest.raises(DataError, match="allowed: fashion_mnist, cifar10"):
        get_dataset("mnist")


def test_images_of_another_shape_are_refused(tmp_path):
    """IDX files that are valid but hold 32×32 images are not Fashion-MNIST, checksums off or not."""
    directory = tmp_path / "raw"
    directory.mkdir()
    for stem, count in (("train", 6), ("t10k", 4)):
        write_idx(directory / f"{stem}-images-idx3-ubyte", np.zeros((count, 32, 32), np.uint8))
        write_idx(directory / f"{stem}-labels-idx1-ubyte", np.zeros(count, np.uint8))
    with pytest.raises(DataError, match=r"train images are \(1, 32, 32\).*fashion_mnist images are \(1, 28, 28\)"):
        read_dataset("fashion_mnist", str(directory), tmp_path, allow_download=False, verify_checksums=False)


def test_normalization_uses_the_registry_statistics():
    raw = data_mod.RawSplit(torch.tensor([[[[0, 255]]], [[[51, 102]]]], dtype=torch.uint8), torch.tensor([0, 1]))
    (mean,), (std,) = DATASETS["fashion_mnist"].normalization
    expected = (torch.tensor([[[[0.0, 1.0]]], [[[0.2, 0.4]]]]) - mean) / std
    assert torch.allclose(data_mod.to_float(raw, "fashion_mnist", normalize=True).x, expected)
    assert torch.equal(data_mod.to_float(raw, "fashion_mnist", normalize=False).x,
                       raw.images.float() / 255)


def test_max_train_examples_keeps_the_first_of_the_training_split(fmnist_dir, tmp_path):
    write_prepared(read_fashion_mnist_dir(fmnist_dir, verify_checksums=False), tmp_path / "fashion_mnist", {})
    whole = load_splits(tmp_path, "fashion_mnist", val_size=20, seed=3)
    cut = load_splits(tmp_path, "fashion_mnist", val_size=20, seed=3, max_train_examples=30)
    assert len(cut.train) == 30 and torch.equal(cut.train.x, whole.train.x[:30])
    assert torch.equal(cut.val.x, whole.val.x) and torch.equal(cut.test.y, whole.test.y)  # only train is cut
    more = load_splits(tmp_path, "fashion_mnist", val_size=20, seed=3, max_train_examples=1000)
    assert torch.equal(more.train.x, whole.train.x)
    with pytest.raises(ValueError, match="max_train_examples=0"):
        load_splits(tmp_path, "fashion_mnist", val_size=20, max_train_examples=0)


def test_data_fingerprint_is_size_and_sums_per_split():
    x = torch.arange(24, dtype=torch.float32).view(2, 1, 3, 4)
    splits = Splits(TensorSplit(x, torch.tensor([3, 4])), None, TensorSplit(x[:1] / 2, torch.tensor([9])),
                    "fashion_mnist")
    assert splits.fingerprint() == {"train": [2, 276.0, 7.0], "val": None, "test": [1, 33.0, 9.0]}
    changed = Splits(TensorSplit(x + torch.eye(4)[0], torch.tensor([3, 4])), None, splits.test, "fashion_mnist")
    assert changed.fingerprint()["train"] != splits.fingerprint()["train"]
