"""The IMP level loop (lossviz.lottery) on a tiny LeNet5 and synthetic data: the exact pruning schedule,
level starts at mask ⊙ θ0, pruned weights staying zero, random tickets' per-layer counts, the early-stop
point, late rewinding, and resume after an interruption inside a level."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from helpers_training import SMALL_SHAPE, synthetic_splits

from lossviz.checkpoints import load_state_dict
from lossviz.lottery import (
    IMPConfig,
    LevelResult,
    LotteryCallbacks,
    expected_random_mask,
    level_dir,
    load_mask,
    load_results,
    run_lottery,
)
from lossviz.models import build_model
from lossviz.pruning import full_mask, layer_schedule, masked_state, remaining_fractions
from lossviz.training import TrainConfig, evaluate, train

CONFIG = TrainConfig(epochs=2, batch_size=64, lr=3e-3, early_stopping=True, train_eval_examples=0,
                     progress=False)
IMP = IMPConfig(levels=4, rate=0.3, output_rate=0.15, seed=5)
SPLITS = synthetic_splits(train=192, val=64, test=64)


def make_model() -> torch.nn.Module:
    return build_model("lenet5", SMALL_SHAPE, 10)


def run(out: Path, imp: IMPConfig = IMP, config: TrainConfig = CONFIG, **kwargs):
    torch.manual_seed(0)  # θ0 is the first model built
    return run_lottery(make_model, SPLITS, config, imp, out, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One full run, with the start weights each level was handed (captured by the level_start hook)."""
    out = tmp_path_factory.mktemp("imp")
    starts = {}

    def level_start(kind, level, model, mask):
        starts[(kind, level)] = ({k: v.detach().clone() for k, v in model.state_dict().items()},
                                 {k: v.clone() for k, v in mask.items()})

    results = run(out, callbacks=LotteryCallbacks(level_start=level_start))
    return out, results, starts


def test_remaining_fraction_follows_the_exact_per_layer_schedule(finished):
    out, results, _ = finished
    sizes = {name: keep.numel() for name, keep in full_mask(make_model()).items()}
    schedule = layer_schedule(sizes, IMP.rate, IMP.levels - 1, IMP.output_rate)
    fractions = remaining_fractions(sizes, IMP.rate, IMP.levels - 1, IMP.output_rate)
    # rounding matters here: conv1 has 150 weights, 150 → 105 → 73 (not 73.5) → 51 …
    assert [counts["conv1.weight"] for counts in schedule] == [150, 105, 73, 51]
    for kind in ("winning", "random"):
        for level, result in enumerate(results[kind]):
            mask = load_mask(level_dir(out, kind, level) / "mask.pt")
            assert {name: int(keep.sum()) for name, keep in mask.items()} == schedule[level]
            assert result.layer_alive == schedule[level]
            assert result.remaining == fractions[level]
            assert result.alive == sum(schedule[level].values())


def test_each_level_starts_from_mask_times_theta0(finished):
    out, results, starts = finished
    theta0 = load_state_dict(out / "theta0.pt")
    torch.manual_seed(0)
    assert all(torch.equal(theta0[k], v) for k, v in make_model().state_dict().items())  # θ0 saved as built
    assert ("random", 0) not in starts  # the dense random ticket is the dense winning run, not redone
    assert len(starts) == 2 * IMP.levels - 1
    for (kind, level), (state, mask) in starts.items():
        assert torch.equal(mask["fc1.weight"], load_mask(level_dir(out, kind, level) / "mask.pt")["fc1.weight"])
        expected = masked_state(theta0, mask)
        for name, value in state.items():
            assert torch.equal(value, expected[name]), (kind, level, name)
            if name in mask:  # independent: live entries are θ0's, pruned ones zero
                assert torch.equal(value[mask[name]], theta0[name][mask[name]])
                assert not value[~mask[name]].any()
            else:  # biases: θ0 exactly
                assert torch.equal(value, theta0[name])


def test_pruned_weights_stay_zero_after_training(finished):
    out, results, _ = finished
    theta0 = load_state_dict(out / "theta0.pt")
    for kind in ("winning", "random"):
        for level in range(1, IMP.levels):
            weights = load_state_dict(level_dir(out, kind, level) / "model.pt")
            mask = load_mask(level_dir(out, kind, level) / "mask.pt")
            for name, keep in mask.items():
                assert not weights[name][~keep].any(), (kind, level, name)
                assert weights[name][keep].ne(0).all()  # live weights trained, none lost
                assert not torch.equal(weights[name][keep], theta0[name][keep])


def test_random_tickets_have_the_winning_per_layer_counts_and_differ_from_it(finished):
    out, results, _ = finished
    for level in range(IMP.levels):
        winning = load_mask(level_dir(out, "winning", level) / "mask.pt")
        random = load_mask(level_dir(out, "random", level) / "mask.pt")
        assert {n: int(m.sum()) for n, m in random.items()} == {n: int(m.sum()) for n, m in winning.items()}
        if level == 0:
            assert all(m.all() for m in random.values()) and results["random"][0].shared_with == "winning"
            continue
        assert any(not torch.equal(random[n], winning[n]) for n in winning)
        expected = expected_random_mask(winning, IMP.seed, level)  # drawn from (seed, level) alone
        assert all(torch.equal(random[n], expected[n]) for n in winning)
    assert [r.remaining for r in results["random"]] == [r.remaining for r in results["winning"]]


def test_early_stop_point_is_the_minimum_validation_loss(finished):
    _, results, _ = finished
    for result in results["winning"] + results["random"]:
        history = result.history
        best = min(history, key=lambda record: record["val_loss"])
        assert result.early_stop_epoch == best["epoch"]
        assert result.early_stop_iteration == best["iteration"] == best["epoch"] * 3  # 192 / 64 steps
        assert result.test_acc == best["test_acc"]
        assert result.epochs_trained == CONFIG.epochs


def digests(out: Path) -> dict[str, str]:
    return {str(path.relative_to(out)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(out.rglob("*.pt"))}


def comparable(results: dict[str, list[LevelResult]]) -> dict:
    """Results without wall times."""
    plain = json.loads(json.dumps({k: [r.__dict__ for r in v] for k, v in results.items()}))
    for levels in plain.values():
        for result in levels:
            result.pop("seconds")
            for record in result["history"]:
                record.pop("seconds")
    return plain


class Interrupt(Exception):
    pass


def test_interrupted_inside_a_level_resumes_to_the_uninterrupted_result(finished, tmp_path):
    reference, reference_results, _ = finished
    out, checkpoints = tmp_path / "imp", tmp_path / "checkpoints"
    events = []

    def stop_in_level_2(kind, level, record, replayed):
        events.append((kind, level, record.epoch, replayed))
        if (kind, level, record.epoch) == ("winning", 2, 1) and not replayed:
            raise Interrupt  # after epoch 1's training checkpoint is written

    with pytest.raises(Interrupt):
        run(out, checkpoint_dir=checkpoints, callbacks=LotteryCallbacks(epoch=stop_in_level_2))
    assert (checkpoints / "winning-level_02.pt").exists()
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in sorted(out.rglob("*"))
              if path.is_file() and "level_02" not in str(path)}
    assert len([p for p in before if p.name == "result.json"]) == 2  # winning levels 0 and 1

    ends = []
    events.clear()
    results = run(out, checkpoint_dir=checkpoints, callbacks=LotteryCallbacks(
        epoch=stop_in_level_2, level_end=lambda kind, level, result, d, replayed: ends.append((kind, level, replayed))))
    for path, (content, mtime) in before.items():  # finished levels untouched, not rewritten
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime, path
    assert ends[:3] == [("winning", 0, True), ("winning", 1, True), ("winning", 2, False)]
    assert ("winning", 2, 1, True) in events and ("winning", 2, 2, False) in events  # epoch 1 replayed
    assert ("winning", 2, 1, False) not in events
    assert not list(checkpoints.glob("*.pt"))
    assert digests(out) == digests(reference)  # bit-identical to the uninterrupted run
    assert comparable(results) == comparable(reference_results) == comparable(load_results(out))


def test_a_directory_of_another_run_is_refused(finished):
    out, _, _ = finished
    with pytest.raises(ValueError, match="holds another IMP run.*imp"):
        run(out, imp=IMPConfig(levels=4, rate=0.2, output_rate=0.15, seed=5))


def test_late_rewinding_starts_levels_from_the_dense_run_after_epoch_e(tmp_path):
    config = TrainConfig(epochs=3, batch_size=64, lr=3e-3, early_stopping=True, train_eval_examples=0,
                         progress=False)
    imp = IMPConfig(levels=2, rate=0.5, rewind_epoch=1, random_tickets=False)
    starts = {}
    results = run(tmp_path, imp=imp, config=config, callbacks=LotteryCallbacks(
        level_start=lambda kind, level, model, mask: starts.setdefault(level, {
            k: v.detach().clone() for k, v in model.state_dict().items()})))
    theta0 = load_state_dict(tmp_path / "theta0.pt")
    # independently: one epoch of the dense run's training, from θ0
    model = make_model()
    model.load_state_dict(theta0)
    train(model, SPLITS, TrainConfig(epochs=1, batch_size=64, lr=3e-3, train_eval_examples=0, progress=False))
    theta1 = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    assert all(torch.equal(starts[0][k], theta0[k]) for k in theta0)  # level 0: θ0
    mask = load_mask(level_dir(tmp_path, "winning", 1) / "mask.pt")
    expected = masked_state(theta1, mask)
    assert all(torch.equal(starts[1][k], expected[k]) for k in expected)
    assert results["winning"][1].start == "rewind_epoch_1" and results["winning"][0].start == "theta0"
    # and θ_1 is the dense level-0 run's own epoch 1: its validation loss is that epoch's
    val_loss, _ = evaluate(model, SPLITS.val)
    assert val_loss == pytest.approx(results["winning"][0].history[0]["val_loss"], rel=1e-5)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="rate=1.0 is not valid"):
        IMPConfig(rate=1.0)
    with pytest.raises(ValueError, match="scope='tree'"):
        IMPConfig(scope="tree")
    with pytest.raises(ValueError, match="rewind_epoch=5 is not valid; allowed: 0 … epochs"):
        run(Path("/nonexistent"), imp=IMPConfig(levels=2, rewind_epoch=5))
