"""Magnitude pruning, random masks and densities, checked against independent computations."""

import pytest
import torch

from lossviz.models import build_model
from lossviz.pruning import (
    apply_mask,
    density,
    full_mask,
    layer_schedule,
    magnitude_prune,
    masked_state,
    prunable_names,
    random_mask_like,
    remaining_fractions,
)


def weights_of(model):
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_prunable_weights_exclude_biases_and_batchnorm():
    model = build_model("fashion_cnn")
    names = prunable_names(model)
    assert names == ["layer1.0.weight", "layer2.0.weight", "fc1.weight", "fc2.weight", "fc3.weight"]
    assert not any("bias" in n or ".1." in n for n in names)  # layerN.1 is BatchNorm


def test_per_layer_pruning_removes_exactly_round_p_n_alive_smallest():
    torch.manual_seed(0)
    model = build_model("lenet5")
    weights = weights_of(model)
    mask = full_mask(model)
    new = magnitude_prune(weights, mask, rate=0.2)
    for name, keep in new.items():
        n = weights[name].numel()
        assert int(keep.sum()) == n - round(0.2 * n)
        # Independent check: every pruned |w| is <= every kept |w|.
        magnitudes = weights[name].abs()
        assert magnitudes[~keep].max() <= magnitudes[keep].min()


def test_pruning_only_looks_at_live_weights_and_ties_are_deterministic():
    weights = {"a.weight": torch.tensor([[0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0]])}
    mask = {"a.weight": torch.tensor([[False, False, True, True, True, True, True, True, True, True]])}
    new = magnitude_prune(weights, mask, rate=0.25)  # round(0.25 * 8) = 2 of the live ones
    assert new["a.weight"].tolist() == [[False, False, False, False, True, True, True, True, True, True]]
    assert torch.equal(magnitude_prune(weights, mask, 0.25)["a.weight"], new["a.weight"])


def test_output_layer_rate_and_global_scope():
    torch.manual_seed(1)
    model = build_model("lenet_300_100")
    weights = weights_of(model)
    mask = magnitude_prune(weights, full_mask(model), rate=0.2, output_rate=0.1)
    assert int(mask["fc3.weight"].sum()) == 1000 - 100
    assert int(mask["fc1.weight"].sum()) == 235200 - round(0.2 * 235200)
    pooled = magnitude_prune(weights, full_mask(model), rate=0.2, scope="global")
    total = sum(w.numel() for n, w in weights.items() if n in pooled)
    assert sum(int(k.sum()) for k in pooled.values()) == total - round(0.2 * total)
    kept = torch.cat([weights[n].abs()[k] for n, k in pooled.items()])
    dropped = torch.cat([weights[n].abs()[~k] for n, k in pooled.items()])
    assert dropped.max() <= kept.min()
    with pytest.raises(ValueError, match="scope"):
        magnitude_prune(weights, full_mask(model), 0.2, scope="neuron")
    with pytest.raises(ValueError, match="rate=1.5"):
        magnitude_prune(weights, full_mask(model), 1.5)


def test_remaining_fraction_follows_the_exact_schedule():
    """Frankle & Carbin's LeNet-300-100 schedule (20% hidden, 10% output), rounding included."""
    model = build_model("lenet_300_100")
    sizes = {name: p.numel() for name, p in model.named_parameters() if p.dim() > 1}
    expected_counts = layer_schedule(sizes, 0.2, 18, output_rate=0.1)
    mask = full_mask(model)
    torch.manual_seed(2)
    for level in range(1, 19):
        weights = {n: torch.randn_like(p) for n, p in model.named_parameters()}
        mask = magnitude_prune(weights, mask, 0.2, output_rate=0.1)
        assert {n: int(k.sum()) for n, k in mask.items()} == expected_counts[level]
    published = [100, 80.0, 64.1, 51.3, 41.1, 32.9, 26.3, 21.1, 16.9, 13.5, 10.8, 8.7, 7.0, 5.6, 4.5, 3.6,
                 2.9, 2.3, 1.9]
    ours = [100 * f for f in remaining_fractions(sizes, 0.2, 18, output_rate=0.1)]
    assert [round(f, 1) for f in ours] == published
    assert density(mask)["total"] == pytest.approx(ours[-1] / 100)


def test_ten_percent_per_layer_reaches_the_papers_three_percent():
    sizes = {"a": 10_000, "b": 50_000}
    fractions = remaining_fractions(sizes, 0.1, 34)
    assert fractions[-1] == pytest.approx(0.9**34, rel=1e-3)
    assert round(100 * fractions[-1], 2) == 2.78


def test_random_mask_keeps_per_layer_live_counts():
    torch.manual_seed(3)
    model = build_model("lenet5")
    mask = magnitude_prune(weights_of(model), full_mask(model), 0.5)
    rand = random_mask_like(mask, torch.Generator().manual_seed(0))
    assert {n: int(k.sum()) for n, k in rand.items()} == {n: int(k.sum()) for n, k in mask.items()}
    assert any(not torch.equal(rand[n], mask[n]) for n in mask)
    again = random_mask_like(mask, torch.Generator().manual_seed(0))
    assert all(torch.equal(again[n], rand[n]) for n in mask)


def test_masked_state_rewinds_weights_and_keeps_biases():
    torch.manual_seed(4)
    model = build_model("fashion_cnn")
    theta0 = {k: v.clone() for k, v in model.state_dict().items()}
    mask = magnitude_prune(weights_of(model), full_mask(model), 0.3)
    start = masked_state(theta0, mask)
    for name, value in start.items():
        if name in mask:
            assert torch.equal(value, theta0[name] * mask[name])
        else:
            assert torch.equal(value, theta0[name])  # biases, BN parameters and buffers
    apply_mask(model, mask)
    assert all(torch.equal(model.state_dict()[n], start[n]) for n in mask)
    report = density(mask)
    assert report["layers"]["fc1.weight"] == pytest.approx(int(mask["fc1.weight"].sum()) / mask["fc1.weight"].numel())


def test_mask_mismatch_is_an_error():
    model = build_model("lenet5")
    with pytest.raises(KeyError, match="does not have"):
        magnitude_prune(weights_of(model), {"nope.weight": torch.ones(3, dtype=torch.bool)}, 0.1)
