"""Directions against independent slow computations: norms per filter, biasbn, masks, the official
random stream and file layout, target and PCA directions."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch
from helpers_engine import make_model

from lossviz.directions import (
    Directions,
    load_directions,
    pca_directions,
    project_checkpoints,
    random_directions,
    save_directions,
    target_direction,
)


def _filter_norms_slow(tensor: torch.Tensor) -> list[float]:
    """One filter at a time, in float64: independent of the vectorized code under test."""
    array = tensor.detach().double().numpy()
    return [float(np.sqrt(np.sum(array[i] ** 2))) for i in range(len(array))]


@pytest.mark.parametrize("name", ["fashion_cnn", "lenet5"])
def test_filter_norms_equal_weight_filter_norms_and_biasbn_is_zero(name):
    model = make_model(name)
    directions = random_directions(model, seed=3)
    for axis in directions.axes():
        for param_name, param in model.named_parameters():
            d = axis[param_name]
            if param.dim() <= 1:
                assert not d.any(), f"{param_name} should be zero under biasbn"
            else:
                assert np.allclose(_filter_norms_slow(d), _filter_norms_slow(param.detach()), rtol=1e-5)
    assert not torch.equal(directions.x["conv1.weight" if name == "lenet5" else "layer1.0.weight"],
                           directions.y["conv1.weight" if name == "lenet5" else "layer1.0.weight"])


def test_other_norms_and_ignore_none():
    model = make_model("lenet5")
    w = model.conv2.weight.detach()
    layer = random_directions(model, seed=1, norm="layer").x["conv2.weight"]
    assert torch.isclose(layer.norm(), w.norm(), rtol=1e-5)
    dlayer = random_directions(model, seed=1, norm="dlayer").x["conv2.weight"]
    assert torch.isclose(dlayer.norm(), torch.tensor(1.0), rtol=1e-5)
    dfilter = random_directions(model, seed=1, norm="dfilter").x["conv2.weight"]
    assert np.allclose(_filter_norms_slow(dfilter), 1.0, rtol=1e-5)
    raw = random_directions(model, seed=1, norm="none").x["conv2.weight"]
    weight = random_directions(model, seed=1, norm="weight").x["conv2.weight"]
    assert torch.allclose(weight, raw * w)
    kept = random_directions(model, seed=1, ignore="none").x
    assert torch.equal(kept["conv2.bias"], model.conv2.bias.detach())  # the official tool's d = w


def test_draws_match_the_official_random_stream():
    """norm='none' directions are exactly torch.manual_seed(seed) + one randn per parameter, x then y."""
    model = make_model("lenet5")
    directions = random_directions(model, seed=123, norm="none", ignore="none")
    torch.manual_seed(123)
    official_x = [torch.randn(p.shape) for p in model.parameters()]
    official_y = [torch.randn(p.shape) for p in model.parameters()]
    for (name, p), ox, oy in zip(model.named_parameters(), official_x, official_y, strict=True):
        if p.dim() > 1:
            assert torch.equal(directions.x[name], ox)
            assert torch.equal(directions.y[name], oy)


def test_mask_zeroes_pruned_coordinates_and_keeps_surviving_filter_norms():
    model = make_model("lenet5")
    generator = torch.Generator().manual_seed(0)
    mask = {name: (torch.rand(p.shape, generator=generator) > 0.6).float()
            for name, p in model.named_parameters() if p.dim() > 1}
    mask["conv2.weight"][0] = 0  # a whole pruned filter stays zero, not NaN
    with torch.no_grad():
        for name, m in mask.items():
            model.get_parameter(name).mul_(m)
    directions = random_directions(model, seed=2, mask=mask)
    for name, m in mask.items():
        for axis in directions.axes():
            assert not axis[name][m == 0].any()
            assert torch.isfinite(axis[name]).all()
            assert np.allclose(_filter_norms_slow(axis[name]),
                               _filter_norms_slow(model.get_parameter(name).detach()), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="not weights tensors"):
        random_directions(model, mask={"nope.weight": torch.ones(1)})


def test_states_mode_covers_running_statistics():
    model = make_model("fashion_cnn")
    directions = random_directions(model, seed=0, mode="states", ignore="none")
    assert list(directions.x) == list(model.state_dict())
    assert torch.equal(directions.x["layer1.1.running_var"], model.layer1[1].running_var)
    assert not directions.x["layer1.1.num_batches_tracked"].any()
    with pytest.raises(ValueError, match="norm='bogus' is not valid; allowed: filter"):
        random_directions(model, norm="bogus")


def test_target_direction_interpolates_between_models():
    a, b = make_model("lenet5", seed=0), make_model("lenet5", seed=1)
    direction = target_direction(a, b)
    for name, p in a.named_parameters():
        assert torch.allclose(p.detach() + direction.x[name], b.get_parameter(name).detach(), atol=1e-6)
    assert direction.y is None and direction.meta["kind"] == "target"


def test_pca_directions_and_projection_recover_a_planar_trajectory():
    final = make_model("lenet_300_100", seed=0)
    base = {n: p.detach().clone() for n, p in final.named_parameters()}
    generator = torch.Generator().manual_seed(5)
    u = {n: torch.randn(p.shape, generator=generator) for n, p in base.items() if p.dim() > 1}
    v = {n: torch.randn(p.shape, generator=generator) for n, p in base.items() if p.dim() > 1}
    coords = [(3.0, 1.0), (2.0, -0.5), (1.0, 0.4), (0.5, -0.2), (0.0, 0.0)]
    checkpoints = []
    for cx, cy in coords:
        model = make_model("lenet_300_100", seed=0)
        with torch.no_grad():
            for n in u:
                model.get_parameter(n).add_(cx * u[n] + cy * v[n])
        checkpoints.append(model)
    directions = pca_directions(checkpoints)
    dx = torch.cat([t.reshape(-1) for t in directions.x.values()]).double()
    dy = torch.cat([t.reshape(-1) for t in directions.y.values()]).double()
    assert abs(float(dx.norm()) - 1) < 1e-5 and abs(float(dy.norm()) - 1) < 1e-5
    assert abs(float(dx @ dy)) < 1e-5
    assert sum(directions.meta["explained_variance_ratio"]) == pytest.approx(1.0, abs=1e-6)
    # Independent check with numpy: the same explained variance.
    matrix = np.stack([np.concatenate([(c.get_parameter(n).detach() - base[n]).reshape(-1).double().numpy()
                                       for n in base if base[n].dim() > 1]) for c in checkpoints])
    singular = np.linalg.svd(matrix - matrix.mean(0), compute_uv=False)
    assert np.allclose(directions.meta["singular_values"], singular[:2], rtol=1e-4)
    # The plane contains the trajectory: least-squares projection reconstructs each offset exactly.
    projected = project_checkpoints(directions, final, checkpoints, method="lstsq")
    for (px, py), checkpoint in zip(projected, checkpoints, strict=True):
        offset = torch.cat([(checkpoint.get_parameter(n).detach() - base[n]).reshape(-1)
                            for n in base]).double()
        assert torch.allclose(px * dx + py * dy, offset, atol=1e-4)
    assert np.allclose(project_checkpoints(directions, final, checkpoints, method="cos"), projected, atol=1e-4)


def test_direction_file_official_layout_round_trip(tmp_path):
    model = make_model("fashion_cnn")
    directions = random_directions(model, seed=4)
    path = tmp_path / "dirs.h5"
    save_directions(directions, path)
    params = list(model.parameters())
    with h5py.File(path, "r") as f:
        assert set(f) >= {"xdirection", "ydirection"}
        assert sorted(f["xdirection"], key=int) == [str(i) for i in range(len(params))]
        for i, p in enumerate(params):
            assert f["xdirection"][str(i)].shape == tuple(p.shape)
    loaded = Directions.load(path)
    assert loaded.mode == "weights" and loaded.meta["seed"] == 4
    for axis, original in zip(loaded.axes(), directions.axes(), strict=True):
        assert all(torch.equal(axis[n], original[n]) for n in original)


def test_reads_official_direction_files_by_model_order(tmp_path):
    model = make_model("lenet5")
    path = tmp_path / "official.h5"
    generator = torch.Generator().manual_seed(0)
    arrays = [torch.randn(p.shape, generator=generator).numpy() for p in model.parameters()]
    with h5py.File(path, "w") as f:  # exactly what the official h5_util.write_list produces
        group = f.create_group("xdirection")
        for i, array in enumerate(arrays):
            group.create_dataset(str(i), data=array)
    with pytest.raises(ValueError, match="pass the model"):
        load_directions(path)
    loaded = load_directions(path, model)
    assert loaded.y is None and loaded.mode == "weights"
    assert np.array_equal(loaded.x["fc3.weight"].numpy(), arrays[-2])
    with pytest.raises(ValueError, match="not a direction file of this model"):
        load_directions(path, make_model("fashion_cnn"))
    with h5py.File(path, "a") as f:
        f.attrs["version"] = 99
        f.attrs["names"] = "[]"
    with pytest.raises(ValueError, match="version 99 is not supported"):
        load_directions(path, model)
