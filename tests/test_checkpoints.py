"""Checkpoint files: the official tool's `.t7` layout round trip, weights-only loading, atomic writes and
the RNG states a resume restores."""

from __future__ import annotations

import collections
import os
import random
import stat

import numpy as np
import pytest
import torch

from lossviz.checkpoints import (
    CheckpointError,
    atomic_save,
    capture_rng_states,
    load_model_weights,
    load_state_dict,
    load_training_state,
    restore_rng_states,
    save_model,
    save_training_state,
)
from lossviz.models import build_model


def trained_looking_resnet56() -> torch.nn.Module:
    """A ResNet-56 whose every tensor, batch-norm statistics included, differs from a fresh one."""
    torch.manual_seed(7)
    model = build_model("resnet56", (3, 32, 32))
    with torch.no_grad():
        for module in model.modules():  # running statistics = one batch's, so eval outputs stay finite
            if isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0
        model.train()(torch.rand(8, 3, 32, 32))
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.mul_(1 + 0.1 * torch.rand_like(tensor)).add_(1e-3 * torch.rand_like(tensor))
            else:
                tensor.fill_(123)  # num_batches_tracked
    return model


def test_official_layout_resnet56_round_trip(tmp_path):
    source = trained_looking_resnet56().eval()
    # The official tool's file: a dict with `state_dict` (DataParallel's `module.` prefixes) and metadata.
    official = {"acc": 93.03, "epoch": 300,
                "state_dict": collections.OrderedDict(
                    ("module." + key, value.clone()) for key, value in source.state_dict().items())}
    path = tmp_path / "model_300.t7"
    torch.save(official, path)

    state = load_state_dict(path)
    assert list(state) == list(source.state_dict())
    torch.manual_seed(0)
    target = load_model_weights(build_model("resnet56", (3, 32, 32)), path).eval()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key
    inputs = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        outputs = target(inputs)
        assert torch.isfinite(outputs).all() and torch.equal(outputs, source(inputs))


def test_bare_state_dict_and_our_own_files_load(tmp_path):
    model = build_model("lenet5", (1, 28, 28))
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    save_model(model, tmp_path / "ours.pt", model="lenet5", acc=0.9)
    for name in ("bare.pt", "ours.pt"):
        state = load_state_dict(tmp_path / name)
        assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    blob = torch.load(tmp_path / "ours.pt", weights_only=True)
    assert blob["model"] == "lenet5" and blob["acc"] == 0.9


class Payload:
    """Anything that is not plain data: unpickling it would mean running the file's code."""


def test_loading_refuses_code(tmp_path):
    path = tmp_path / "evil.t7"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload()}, path)
    with pytest.raises(CheckpointError, match="not a readable weights-only checkpoint"):
        load_state_dict(path)


def test_load_errors_name_the_problem(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        load_state_dict(tmp_path / "missing.pt")
    torch.save({"epoch": 3}, tmp_path / "no_weights.pt")
    with pytest.raises(CheckpointError, match="expected a state_dict"):
        load_state_dict(tmp_path / "no_weights.pt")
    save_model(build_model("lenet5", (1, 28, 28)), tmp_path / "lenet5.pt")
    with pytest.raises(CheckpointError, match=r"unexpected \['conv1.bias'.*wrong shape \['fc1.bias'"):
        load_model_weights(build_model("lenet_300_100", (1, 28, 28)), tmp_path / "lenet5.pt")


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "state.pt"
    atomic_save({"value": torch.ones(3)}, path)
    with pytest.raises(Exception):  # noqa: B017 - pickling a lambda fails inside torch.save
        atomic_save({"value": torch.zeros(3), "bad": lambda: None}, path)
    assert torch.equal(torch.load(path, weights_only=True)["value"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temporary file left behind


def test_atomic_writes_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    previous = os.umask(0o022)
    try:
        written = atomic_save({"value": torch.ones(1)}, tmp_path / "state.pt")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == 0o644  # readable by a web server or a colleague


def test_rng_states_round_trip():
    generator = torch.Generator().manual_seed(5)
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.normal()  # leaves a cached gaussian in numpy's state
    states = capture_rng_states(generator)
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.randperm(10, generator=generator))
    torch.manual_seed(99), np.random.seed(99), random.seed(99), generator.manual_seed(99)
    restore_rng_states(states, generator)
    again = (torch.rand(3), np.random.rand(3), random.random(), torch.randperm(10, generator=generator))
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2] and torch.equal(first[3], again[3])


def test_training_state_survives_weights_only_loading(tmp_path):
    generator = torch.Generator().manual_seed(0)
    model = build_model("lenet5", (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer)
    path = save_training_state(tmp_path / "resume.pt", {
        "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(), "rng": capture_rng_states(generator), "history": [{"a": 1.0}]})
    state = load_training_state(path)
    assert state["history"] == [{"a": 1.0}]
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    assert set(load_state_dict(path)) == set(model.state_dict())  # a model loader reads it too
    torch.save({"state_dict": model.state_dict()}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not a training state"):
        load_training_state(tmp_path / "model.pt")
