"""Your own model and dataset in params.yaml: `train.model: user.example_mlp:mlp` with `model_kwargs`, an `.npz`
dataset in `user/`, run by the real `dvc repro train sample_size` in a temporary project; bad specs refused by
`lossviz params check` naming the key (without importing the user's module), import errors at stage start."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from lossviz.checkpoints import load_checkpoint
from lossviz.params import ParamsError, parse_params
from lossviz.surface import Surface
from pipelines import train as train_stage
from tests.helpers_project import REPO, make_project, stage_env

SPEC = "user.example_mlp:mlp"
NPZ = "user/tiny.npz"  # in user/: a dep of the stages, so an edit reruns them
CLASSES, TRAIN, TEST, SIDE = 4, 300, 80, 8


def write_npz(path: Path) -> None:
    """A small 4-class dataset of 8×8 images whose label shows in the pixels; uint8, as images are stored."""
    generator = np.random.default_rng(0)

    def split(count: int) -> tuple[np.ndarray, np.ndarray]:
        labels = generator.integers(0, CLASSES, count)
        images = labels[:, None, None, None] * 50 + generator.integers(0, 60, (count, 1, SIDE, SIDE))
        return images.astype(np.uint8), labels

    (x_train, y_train), (x_test, y_test) = split(TRAIN), split(TEST)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def user_params(**train) -> dict:
    """The repository's params.yaml (DVC reads every key a stage lists) with tiny settings and the user's model
    and dataset."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(seed=1, device="cpu")
    params["data"].update(datasets=["fashion_mnist"], download=False, val_size=50)
    params["train"].update({"model": SPEC, "model_kwargs": {"width": 16}, "dataset": NPZ, "dataset_kwargs": {},
                            "epochs": 1, "batch_size": 50, "max_train_examples": 200, "train_eval_examples": 100,
                            "lr_plateau": False, "early_stopping": False, "patience": None, **train})
    params["sample_size"].update(model=None, model_kwargs={}, dataset=None, dataset_kwargs={}, checkpoint=None,
                                 n_examples=[10, 50], grid_points=3, auto_candidates=[10, 50], auto_pilot_points=2,
                                 timing_points=0, adaptive_grid_points=0)
    return params


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["dvc", *args], cwd=root, env=stage_env(), capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_dvc_repro_trains_and_measures_the_user_s_model_on_the_user_s_npz(tmp_path):
    stages = make_project(tmp_path, user_params(), ("train", "sample_size"))
    assert "user" in stages["train"]["deps"] and "user" in stages["sample_size"]["deps"]
    write_npz(tmp_path / NPZ)
    run = dvc(tmp_path, "repro", "train", "sample_size")
    assert run.returncode == 0, run.stdout + run.stderr

    summary = yaml.safe_load((tmp_path / "results" / "train.json").read_text())
    # val_size 50 carved out of 300, then max_train_examples 200: 4 steps of 50 in the one epoch
    assert summary["model"] == SPEC and summary["dataset"] == NPZ and summary["iterations"] == 4
    record = load_checkpoint(tmp_path / "models" / "train" / "model.pt")
    assert (record["model"], record["model_kwargs"], record["dataset"]) == (SPEC, {"width": 16}, NPZ)
    assert record["input_shape"] == [1, SIDE, SIDE] and record["num_classes"] == CLASSES
    assert "dataset_kwargs" not in record  # recorded when given only
    assert record["state_dict"]["1.weight"].shape == (16, SIDE * SIDE)  # width 16 reached the factory

    for n in (10, 50):
        surface = Surface.load(tmp_path / "surfaces" / "sample_size" / f"n_{n:05d}.h5")
        assert surface.meta["model"] == SPEC and surface.meta["dataset"] == NPZ and surface.meta["complete"]
        assert surface.shape == (3, 3) and np.isfinite(surface.loss[1, 1]) and len(surface.example_indices) == n
    assert dvc(tmp_path, "status", "--json").stdout.strip() == "{}"

    # the user's code changes: both stages are stale (DVC tracks user/), nothing else would be
    module = tmp_path / "user" / "example_mlp.py"
    module.write_text(module.read_text() + "\n# an edit to the user's model\n")
    stale = yaml.safe_load(dvc(tmp_path, "status", "--json").stdout)
    assert {"train", "sample_size"} <= set(stale), stale


def check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lossviz.cli", "params", "check", str(path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def test_params_check_names_the_key_and_the_forms_of_a_bad_spec(tmp_path):
    path = tmp_path / "params.yaml"
    bad = user_params(model="user/example_mlp.py:mlp")
    bad["sample_size"].update(dataset="mydata.csv")
    path.write_text(yaml.safe_dump(bad))
    result = check(path)
    assert result.returncode != 0 and "ok" not in result.stdout
    lines = result.stderr.splitlines()
    model_line = next(line for line in lines if "train.model:" in line)
    assert "'user/example_mlp.py:mlp'" in model_line and "package.module:factory" in model_line
    assert "'lenet5'" in model_line and "user.mymodule:factory" in model_line
    dataset_line = next(line for line in lines if "sample_size.dataset:" in line)
    assert all(form in dataset_line for form in ("'mydata.csv'", "folder:PATH", "PATH.npz", "torchvision:CLASS",
                                                 "package.module:function", "'fashion_mnist'"))

    # a well-formed spec of a module that does not exist passes: the schema imports nothing of the user's
    path.write_text(yaml.safe_dump(user_params(model="user.no_such_module:make")))
    assert check(path).stdout.strip() == "ok"


@pytest.mark.parametrize(("section", "keys", "message"), [
    ("train", {"model": "lenet5", "model_kwargs": {"width": 16}},
     "train.model_kwargs={'width': 16} is given, but model='lenet5' takes none"),
    ("train", {"dataset": "fashion_mnist", "dataset_kwargs": {"root": "x"}},
     "train.dataset_kwargs={'root': 'x'} is given, but dataset='fashion_mnist' takes none"),
    ("sample_size", {"model_kwargs": {"width": 8}},
     "sample_size.model_kwargs={'width': 8} is given, but model is null (train.model_kwargs go with train.model)"),
    ("train", {"dataset": "torchvision:Not A Class"}, "train.dataset: got 'torchvision:Not A Class'; expected"),
    ("sample_size", {"model": "user.example_mlp:"}, "sample_size.model: got 'user.example_mlp:'; expected"),
])
def test_kwargs_without_a_spec_and_malformed_specs_are_refused(section, keys, message):
    raw = user_params()
    raw[section].update(keys)
    with pytest.raises(ParamsError) as info:
        parse_params(raw)
    assert any(line.startswith(message) for line in info.value.errors), info.value.errors


def test_user_specs_are_valid_params_and_need_no_prepared_dataset():
    params = parse_params(user_params())
    assert (params.train.model, params.train.model_kwargs, params.train.dataset) == (SPEC, {"width": 16}, NPZ)
    for dataset in ("folder:images", "torchvision:FashionMNIST", "user.mydata:splits"):
        assert parse_params({"train": {"dataset": dataset}}).train.dataset == dataset


@pytest.mark.parametrize(("train", "message"), [
    ({"model": "user.no_such_module:make", "dataset": "fashion_mnist"},
     "train: train.model 'user.no_such_module:make': module 'user.no_such_module' cannot be imported"),
    ({"model": "user.example_mlp:mlp", "model_kwargs": {"depth": 3}, "dataset": "fashion_mnist"},
     "train: train.model 'user.example_mlp:mlp' with train.model_kwargs {'depth': 3}: "),
    ({"dataset": "user.example_mlp:no_such_function"},
     "train: train.dataset 'user.example_mlp:no_such_function': user.example_mlp has no 'no_such_function'"),
    ({"dataset": "user/missing.npz"}, "train: train.dataset 'user/missing.npz': no such file"),
])
def test_the_train_stage_names_the_key_when_the_user_s_code_fails(tmp_path, monkeypatch, capsys, train, message):
    """Import and call errors surface when the stage starts, on one line naming the key, before any output."""
    make_project(tmp_path, user_params(**train), ("train",), dvc=False)
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    assert train_stage.main() == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "models").exists()
