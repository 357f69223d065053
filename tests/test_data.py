import gzip
import hashlib
import pickle
import shutil

import numpy as np
import pytest
import torch

from lossviz import data as data_mod
from lossviz.data import (
    DEBIAN_FASHION_MNIST_DIR,
    DataError,
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


def test_no_source_lists_what_was_tried(monkeypatch, tmp_path):
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")
    with pytest.raises(DataError) as info:
        read_dataset("fashion_mnist", str(tmp_path / "nowhere"), tmp_path, allow_download=False)
    message = str(info.value)
    assert "tried:" in message
    assert "nowhere" in message and "data.fashion_mnist_dir" in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_failed_download_is_listed_with_its_error(monkeypatch, tmp_path):
    monkeypatch.setattr(data_mod, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "absent")

    def offline(root):
        raise OSError("network is unreachable")

    monkeypatch.setattr(data_mod, "_download_fashion_mnist", offline)
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
