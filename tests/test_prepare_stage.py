"""The `prepare` stage and the DVC/MLflow foundations, against a real DVC repo and MLflow store."""

import json
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import REPO_ROOT
from tests.helpers_project import make_project, stage_env

DVC = str(Path(sys.executable).with_name("dvc"))


def make_prepare_project(tmp_path: Path, data_params: dict) -> Path:
    """A throw-away git+DVC project with our code, the prepare stage and the given `data` params."""
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params["data"].update(data_params)
    make_project(tmp_path / "project", params, ("prepare",), tiny_data=False)
    return tmp_path / "project"


def dvc_repro(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([DVC, "repro"], cwd=root, capture_output=True, text=True, env=stage_env())


def test_prepare_stage_runs_and_second_repro_is_a_noop(fmnist_dir, tmp_path):
    root = make_prepare_project(tmp_path, {"fashion_mnist_dir": str(fmnist_dir), "verify_checksums": False,
                                   "download": False})
    first = dvc_repro(root)
    assert first.returncode == 0, first.stderr + first.stdout
    manifest = json.loads((root / "data/prepared/fashion_mnist/manifest.json").read_text())
    assert manifest["files"]["train.pt"]["examples"] == 120
    assert "fmnist_raw" in manifest["source"]
    second = dvc_repro(root)
    assert second.returncode == 0
    assert "didn't change" in second.stdout and "Running stage" not in second.stdout


def test_prepare_fails_cleanly_and_writes_nothing(tmp_path):
    root = make_prepare_project(tmp_path, {"fashion_mnist_dir": str(tmp_path / "bad"), "download": False})
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b\x08garbage")
    for stem in ("train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
        (tmp_path / "bad" / f"{stem}.gz").write_bytes(b"")
    result = dvc_repro(root)
    assert result.returncode != 0
    assert "corrupt or truncated" in result.stderr + result.stdout
    assert not (root / "data" / "prepared" / "fashion_mnist").exists()


def test_invalid_params_stop_the_stage_before_any_output(tmp_path, fmnist_dir):
    root = make_prepare_project(tmp_path, {"fashion_mnist_dir": str(fmnist_dir), "val_size": -5})
    result = dvc_repro(root)
    assert result.returncode != 0
    assert "data.val_size" in result.stderr + result.stdout
    assert not (root / "data" / "prepared").exists()
