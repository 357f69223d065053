"""The training loop on tiny models and synthetic data: determinism, masks, early stopping, the plateau
schedule, callbacks, resume (in process and across a real SIGKILL)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers_training import SMALL_SHAPE, synthetic_splits

from lossviz.models import build_model
from lossviz.training import EpochRecord, TrainConfig, evaluate, train

HELPER = Path(__file__).with_name("helpers_training.py")
QUICK = dict(batch_size=32, lr=3e-3, progress=False)


def fresh(name: str = "lenet5", seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(name, SMALL_SHAPE, 10)


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


def test_config_errors_name_the_field_and_what_is_allowed():
    with pytest.raises(ValueError, match=r"optimizer='rmsprop' is not valid; allowed: adam, sgd"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match=r"patience=3 is not valid; allowed: null unless early_stopping"):
        TrainConfig(patience=3)
    with pytest.raises(ValueError, match=r"device='tpu' is not valid"):
        TrainConfig(device="tpu")
    splits = synthetic_splits(train=16)
    with pytest.raises(ValueError, match=r"batch_size=17 is not valid; allowed: 1 … 16"):
        train(fresh(), splits, TrainConfig(batch_size=17, progress=False))
    with pytest.raises(ValueError, match="need a validation split"):
        train(fresh(), synthetic_splits(train=16, val=0), TrainConfig(early_stopping=True, batch_size=8))


def test_same_seed_same_weights_and_history_different_seed_differs():
    splits = synthetic_splits(train=128)
    runs = []
    for seed in (0, 0, 1):
        model = fresh("fashion_cnn")  # dropout and batch norm: both must be reproducible
        result = train(model, splits, TrainConfig(epochs=2, seed=seed, **QUICK))
        runs.append((weights(model), [r.metrics() | {"seconds": 0} for r in result.history]))
    assert same_weights(runs[0][0], runs[1][0]) and runs[0][1] == runs[1][1]
    assert not same_weights(runs[0][0], runs[2][0])


def test_history_iterations_metrics_and_callbacks():
    splits = synthetic_splits(train=100, val=40, test=30)
    seen: list[tuple[EpochRecord, bool]] = []
    model = fresh()
    result = train(model, splits, TrainConfig(epochs=3, batch_size=30, lr=3e-3, progress=False),
                   callbacks=[lambda record, replayed: seen.append((record, replayed))])
    assert [(r.epoch, r.iteration) for r, _ in seen] == [(1, 4), (2, 8), (3, 12)]  # ceil(100 / 30) = 4
    assert not any(replayed for _, replayed in seen) and result.history == [r for r, _ in seen]
    assert result.iterations == 12 and result.final == result.history[-1] and result.best_epoch is not None
    last = result.history[-1]
    val_loss, val_acc = evaluate(model, splits.val)
    assert val_loss == pytest.approx(last.val_loss, rel=1e-5) and val_acc == last.val_acc
    assert all(0 <= value <= 1 for value in (last.train_acc, last.val_acc, last.test_acc))
    assert last.metrics().keys() >= {"train_loss", "val_loss", "test_loss", "lr", "iteration"}
    # train metrics off, and no test split: those metrics are absent, not zero
    quiet = train(fresh(), synthetic_splits(train=64, test=0),
                  TrainConfig(epochs=1, train_eval_examples=0, **QUICK)).history[0]
    assert quiet.train_loss is None and quiet.test_acc is None and "train_loss" not in quiet.metrics()


def test_batch_sizes_from_one_to_the_whole_training_set():
    splits = synthetic_splits(train=12, val=8, test=8)
    assert train(fresh(), splits, TrainConfig(epochs=1, batch_size=1, progress=False)).iterations == 12
    whole = train(fresh("fashion_cnn"), splits, TrainConfig(epochs=2, batch_size=12, progress=False))
    assert whole.iterations == 2


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_masked_weights_stay_zero_through_training(optimizer):
    model = fresh("lenet5")
    generator = torch.Generator().manual_seed(3)
    masks = {name: torch.rand(p.shape, generator=generator) < 0.4
             for name, p in model.named_parameters() if name.endswith("weight")}
    before = weights(model)
    config = TrainConfig(epochs=2, optimizer=optimizer, weight_decay=1e-3, batch_size=32, lr=1e-2,
                         progress=False)
    train(model, synthetic_splits(train=128), config, masks=masks)
    parameters = dict(model.named_parameters())
    for name, mask in masks.items():
        assert torch.count_nonzero(parameters[name][~mask]) == 0, name  # pruned: exactly zero
        assert int(torch.count_nonzero(parameters[name])) == int(mask.sum()), name  # density unchanged
        assert not torch.equal(parameters[name][mask], before[name][mask]), name  # live weights trained
    assert not torch.equal(parameters["conv1.bias"], before["conv1.bias"])  # biases never masked


def test_mask_errors_name_the_parameter():
    model = fresh("lenet5")
    splits = synthetic_splits(train=32)
    with pytest.raises(ValueError, match="mask for 'conv9.weight': the model has no such parameter"):
        train(model, splits, TrainConfig(progress=False), masks={"conv9.weight": torch.ones(1, dtype=bool)})
    with pytest.raises(ValueError, match=r"mask for 'fc1.weight': shape \(3,\) does not match"):
        train(model, splits, TrainConfig(progress=False), masks={"fc1.weight": torch.ones(3, dtype=bool)})
    with pytest.raises(ValueError, match="mask for 'fc1.weight': expected a bool tensor, got torch.float32"):
        train(model, splits, TrainConfig(progress=False), masks={"fc1.weight": torch.ones(120, 400)})


OVERFIT = dict(batch_size=16, lr=1e-2, early_stopping=True, progress=False)


def overfit_splits():
    """Random labels: the model can only memorize, so validation loss soon rises."""
    return synthetic_splits(train=64, val=64, test=32, random_labels=True)


def test_early_stopping_restores_the_best_validation_weights():
    model = fresh("lenet_300_100")
    splits = overfit_splits()
    snapshots = []
    result = train(model, splits, TrainConfig(epochs=6, **OVERFIT),
                   callbacks=[lambda record, replayed: snapshots.append(weights(model))])
    val_losses = [record.val_loss for record in result.history]
    best = val_losses.index(min(val_losses)) + 1
    assert result.best_epoch == best < result.stopped_epoch == 6  # the run went on past its best epoch
    assert result.best_iteration == best * 4  # 64 examples / batch 16
    assert result.final == result.history[best - 1]
    assert same_weights(weights(model), snapshots[best - 1])
    assert not same_weights(weights(model), snapshots[-1])
    assert evaluate(model, splits.val)[0] == pytest.approx(min(val_losses), rel=1e-6)


def test_patience_ends_training_after_that_many_epochs_without_improvement():
    result = train(fresh("lenet_300_100"), overfit_splits(), TrainConfig(epochs=30, patience=2, **OVERFIT))
    assert result.stopped_early and result.stopped_epoch == result.best_epoch + 2 < 30
    assert len(result.history) == result.stopped_epoch


def test_plateau_schedule_divides_the_learning_rate_by_ten():
    result = train(fresh("lenet_300_100"), overfit_splits(),
                   TrainConfig(epochs=6, lr_plateau=True, plateau_patience=0, **OVERFIT))
    rates = [record.lr for record in result.history]
    assert rates[0] == 1e-2 and min(rates) < 1e-2
    steps = zip(rates[:-1], rates[1:], strict=True)
    assert all(later in (earlier, pytest.approx(earlier * 0.1)) for earlier, later in steps)


class Interrupt(Exception):
    pass


def test_resume_in_process_replays_history_and_matches_an_uninterrupted_run(tmp_path):
    splits = synthetic_splits(train=96)
    config = TrainConfig(epochs=4, lr_plateau=True, plateau_patience=1, early_stopping=True, **QUICK)
    reference = fresh("fashion_cnn")
    expected = train(reference, splits, config)

    def stop_after_two(record, replayed):
        if record.epoch == 2:
            raise Interrupt

    checkpoint = tmp_path / "resume.pt"
    with pytest.raises(Interrupt):
        train(fresh("fashion_cnn"), splits, config, checkpoint_path=checkpoint, callbacks=[stop_after_two])
    seen = []
    model = fresh("fashion_cnn", seed=123)  # the checkpoint, not the init, decides the weights
    result = train(model, splits, config, checkpoint_path=checkpoint,
                   callbacks=[lambda record, replayed: seen.append((record.epoch, replayed))])
    assert seen == [(1, True), (2, True), (3, False), (4, False)]
    assert result.resumed_from_epoch == 2 and result.best_epoch == expected.best_epoch
    assert same_weights(weights(model), weights(reference))
    # a finished checkpoint returns at once with the same result
    again = fresh("fashion_cnn")
    finished = train(again, splits, config, checkpoint_path=checkpoint)
    assert finished.resumed_from_epoch == 4 and same_weights(weights(again), weights(reference))
    with pytest.raises(ValueError, match=r"belongs to a different run \(differs in config: lr\)"):
        train(fresh("fashion_cnn"), splits, TrainConfig(**{**vars(config), "lr": 0.5}),
              checkpoint_path=checkpoint)


def _run_helper(out: Path, checkpoint: Path, epochs: int) -> subprocess.Popen:
    env = {**os.environ, "LOSSVIZ_THREADS": "1", "PYTHONPATH": str(HELPER.parent)}
    return subprocess.Popen([sys.executable, str(HELPER), str(out), str(checkpoint), str(epochs)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_training_resumes_bit_identical(tmp_path):
    epochs = 6
    uninterrupted = _run_helper(tmp_path / "reference.pt", tmp_path / "reference-resume.pt", epochs)
    checkpoint = tmp_path / "resume.pt"
    victim = _run_helper(tmp_path / "victim.pt", checkpoint, epochs)
    deadline = time.monotonic() + 120
    while not checkpoint.exists():  # the first epoch is written: kill in the middle of the next one
        assert victim.poll() is None, victim.communicate()
        assert time.monotonic() < deadline, "no checkpoint after 120 s"
        time.sleep(0.02)
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    killed_output, _ = victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    assert f"epoch {epochs} done" not in killed_output and not (tmp_path / "victim.pt").exists()

    resumed = _run_helper(tmp_path / "victim.pt", checkpoint, epochs)
    resumed_output, resumed_errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_errors
    resumed_from = json.loads(resumed_output.strip().splitlines()[-1])["resumed_from_epoch"]
    assert 1 <= resumed_from < epochs
    _, errors = uninterrupted.communicate(timeout=300)
    assert uninterrupted.returncode == 0, errors

    reference = torch.load(tmp_path / "reference.pt", weights_only=True)
    after_kill = torch.load(tmp_path / "victim.pt", weights_only=True)
    assert same_weights(after_kill["state_dict"], reference["state_dict"])
    assert after_kill["history"] == reference["history"]
