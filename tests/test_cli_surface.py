"""`lossviz surface` and `lossviz metrics` end to end on a tiny prepared dataset, including the official
tool's `.t7` checkpoint layout and clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers_engine import make_model, write_prepared_fashion_mnist

from lossviz.cli import main
from lossviz.surface import Surface


@pytest.fixture()
def data_root(tmp_path):
    return write_prepared_fashion_mnist(tmp_path / "prepared")


def _official_t7(path, model):
    """The official tool's checkpoint: a dict with the DataParallel-prefixed state_dict and extras."""
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state, "acc": 93.4, "epoch": 300}, path)


def test_surface_then_metrics_in_a_real_process(tmp_path, data_root):
    checkpoint = tmp_path / "lenet5.t7"
    _official_t7(checkpoint, make_model("lenet5"))
    out = tmp_path / "surface.h5"
    command = [sys.executable, "-m", "lossviz.cli", "surface", "--model", "lenet5", "--checkpoint",
               str(checkpoint), "--dataset", "fashion_mnist", "--data-root", str(data_root), "--x", "-1:1:5",
               "--y", "-1:1:3", "--examples", "16", "--seed", "2", "--out", str(out),
               "--dir-file", str(tmp_path / "dirs.h5")]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ}, timeout=300)
    assert result.returncode == 0, result.stderr
    surface = Surface.load(out)
    assert surface.shape == (3, 5) and np.isfinite(surface.loss).all()
    assert len(surface.example_indices) == 16 and surface.meta["model"] == "lenet5"
    assert "pt/s" in result.stderr  # the progress bar
    metrics = subprocess.run([sys.executable, "-m", "lossviz.cli", "metrics", str(out)], capture_output=True,
                             text=True, timeout=300)
    assert metrics.returncode == 0, metrics.stderr
    values = json.loads(metrics.stdout)
    assert values["centre_loss"] == pytest.approx(surface.loss[1, 2])
    assert 0 <= values["convex_fraction"] <= 1 and values["complete"] is True


def test_official_resnet56_t7_layout(tmp_path, data_root, capsys):
    checkpoint = tmp_path / "model_300.t7"
    _official_t7(checkpoint, make_model("resnet56"))
    out = tmp_path / "r56.h5"
    code = main(["surface", "--model", "resnet56", "--checkpoint", str(checkpoint), "--dataset",
                 "fashion_mnist", "--data-root", str(data_root), "--x", "-1:1:2", "--examples", "2",
                 "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    surface = Surface.load(out)
    assert surface.shape == (2,) and np.isfinite(surface.loss).all()


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--x", "-1:1", "--x '-1:1' is not valid; expected MIN:MAX:NUM"),
    ("--y", "a:b:c", "--y 'a:b:c' is not valid; expected MIN:MAX:NUM"),
    ("--x", "1:-1:5", "with MIN < MAX"),
    ("--examples", "0", "--examples 0 is not valid"),
])
def test_bad_input_names_the_flag(tmp_path, data_root, capsys, flag, value, message):
    checkpoint = tmp_path / "m.t7"
    _official_t7(checkpoint, make_model("lenet5"))
    args = ["surface", "--model", "lenet5", "--checkpoint", str(checkpoint), "--dataset", "fashion_mnist",
            "--data-root", str(data_root), "--out", str(tmp_path / "o.h5"), flag, value]
    assert main(args) == 2
    assert message in capsys.readouterr().err


def test_missing_checkpoint_and_metrics_file_are_clear(tmp_path, data_root, capsys):
    assert main(["surface", "--model", "lenet5", "--checkpoint", str(tmp_path / "none.t7"), "--dataset",
                 "fashion_mnist", "--data-root", str(data_root), "--out", str(tmp_path / "o.h5")]) == 2
    assert "no such checkpoint file" in capsys.readouterr().err
    assert main(["metrics", str(tmp_path / "none.h5")]) == 2
    assert "no such file" in capsys.readouterr().err
