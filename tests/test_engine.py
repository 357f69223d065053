"""The engine: every evaluation path equals the naive per-point loop; examples, clipping, standard
errors, the model left untouched, and a real kill-and-resume."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_engine import (
    RESUME_GRID,
    assert_same_state,
    make_examples,
    make_model,
    state_copy,
)

from lossviz.directions import random_directions, target_direction
from lossviz.engine import compute_surface, make_evaluator
from lossviz.fused import FastEvaluator, tiled_max_pool2d
from lossviz.surface import COMPUTED, PENDING, Surface
from lossviz.tasks import select_examples

TESTS_DIR = Path(__file__).resolve().parent
POINTS = [(0.0, 0.0), (0.37, -0.81), (1.0, 1.0), (-0.6, 0.25)]


def _independent_loss(pristine, directions, inputs, targets, alpha, beta):
    """A fresh copy of the (unperturbed) model loaded with θ* + α·δ + β·η through load_state_dict: no
    engine code."""
    clone = copy.deepcopy(pristine).eval()
    state = clone.state_dict()
    for name in directions.x:
        if state[name].is_floating_point():
            state[name] = state[name] + alpha * directions.x[name] + beta * directions.y[name]
    clone.load_state_dict(state)
    with torch.no_grad():
        losses = F.cross_entropy(clone(inputs), targets, reduction="none").double()
    return float(losses.mean()), float(losses.std() / np.sqrt(len(losses)))


CASES = {
    "fashion_cnn (BN)": dict(name="fashion_cnn", shape=(1, 28, 28), options={}),
    "fashion_cnn states, ignore none (BN stats move)": dict(
        name="fashion_cnn", shape=(1, 28, 28), options={"mode": "states", "ignore": "none"}),
    "lenet5 (no BN)": dict(name="lenet5", shape=(1, 28, 28), options={}),
    "lenet5 with bias directions": dict(name="lenet5", shape=(1, 28, 28), options={"ignore": "none"}),
    "resnet20 (tiny inputs)": dict(name="resnet20", shape=(3, 8, 8), options={}),
    "lenet_300_100 (flatten before the first layer)": dict(name="lenet_300_100", shape=(1, 28, 28), options={}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_path_matches_the_naive_loop(case):
    spec = CASES[case]
    model = make_model(spec["name"], spec["shape"])
    inputs, targets = make_examples(24, spec["shape"])
    directions = random_directions(model, seed=7, **spec["options"])
    pristine = copy.deepcopy(model)  # the naive evaluator writes into `model` itself
    evaluators = {method: make_evaluator(method, model, directions, inputs, targets, batch_size=10, device="cpu")
                  for method in ("naive", "fast", "vmap")}
    try:
        for alpha, beta in POINTS:
            results = {method: e.evaluate(alpha, beta) for method, e in evaluators.items()}
            reference = results["naive"]
            slow_loss, slow_se = _independent_loss(pristine, directions, inputs, targets, alpha, beta)
            assert reference.loss == pytest.approx(slow_loss, rel=1e-6)
            assert reference.loss_se == pytest.approx(slow_se, rel=1e-5)
            for method, result in results.items():
                assert result.loss == pytest.approx(reference.loss, rel=1e-5), method
                assert result.acc == reference.acc, method
                assert result.loss_se == pytest.approx(reference.loss_se, rel=1e-4), method
    finally:
        for evaluator in evaluators.values():
            evaluator.close()


def test_fast_path_applies_its_rewrites():
    model = make_model("fashion_cnn")
    inputs, targets = make_examples(8)
    evaluator = FastEvaluator(model, random_directions(model), inputs, targets,
                              lambda o, t: F.cross_entropy(o, t, reduction="none"), 8, torch.device("cpu"))
    text = " | ".join(evaluator.optimizations)
    assert "folded 2 BatchNorm" in text and "first layer precomputed" in text and "max-pools" in text
    graph_targets = [str(node.target) for node in evaluator.module.graph.nodes]
    assert not any("layer1.1" == t or "drop" == t for t in graph_targets)  # BN and dropout gone


def test_masked_model_matches_naive_and_stays_pruned():
    model = make_model("lenet5")
    generator = torch.Generator().manual_seed(1)
    mask = {n: (torch.rand(p.shape, generator=generator) > 0.5).float()
            for n, p in model.named_parameters() if p.dim() > 1}
    with torch.no_grad():
        for name, m in mask.items():
            model.get_parameter(name).mul_(m)
    inputs, targets = make_examples(20)
    directions = random_directions(model, seed=3, mask=mask)
    xs, ys = np.linspace(-1, 1, 3), np.linspace(-0.5, 0.5, 2)
    surfaces = {method: compute_surface(model, inputs, targets, directions, xs, ys, n_examples=None,
                                        method=method, progress=False, device="cpu")
                for method in ("naive", "fast")}
    assert np.allclose(surfaces["fast"].loss, surfaces["naive"].loss, rtol=1e-5)
    naive_evaluator = make_evaluator("naive", model, directions, inputs, targets, device="cpu")
    naive_evaluator.evaluate(0.5, 0.5)
    for name, m in mask.items():  # pruned weights are still zero at a perturbed point
        assert not model.get_parameter(name).detach()[m == 0].any()
    naive_evaluator.close()


@pytest.mark.parametrize("method", ["naive", "fast", "vmap"])
def test_model_is_left_exactly_as_it_was(method):
    model = make_model("fashion_cnn")
    model.train()
    before = state_copy(model)
    inputs, targets = make_examples(10)
    compute_surface(model, inputs, targets, random_directions(model), [-1, 0, 1], [0, 1], n_examples=5,
                    method=method, progress=False, device="cpu")
    assert model.training
    assert_same_state(model, before)


def test_examples_are_one_seeded_subset_and_one_d_surfaces_work():
    assert np.array_equal(select_examples(100, 10, 3), select_examples(100, 10, 3))
    assert not np.array_equal(select_examples(100, 10, 3), select_examples(100, 10, 4))
    chosen = select_examples(50, 10, 3)
    assert len(set(chosen)) == 10 and np.all(np.diff(chosen) > 0)
    model_a, model_b = make_model("lenet5", seed=0), make_model("lenet5", seed=1)
    inputs, targets = make_examples(50)
    surface = compute_surface(model_a, inputs, targets, target_direction(model_a, model_b), [0.0, 0.5, 1.0],
                              n_examples=10, seed=3, progress=False, device="cpu")
    assert surface.shape == (3,) and not surface.is_2d
    assert np.array_equal(surface.example_indices, chosen)
    index = torch.from_numpy(chosen)
    with torch.no_grad():  # α = 1 of the target direction is model_b itself
        expected = F.cross_entropy(model_b(inputs[index]), targets[index]).item()
    assert surface.loss[2] == pytest.approx(expected, rel=1e-5)


def test_clip_radius_skips_points_and_grid_order_is_z_iy_ix():
    model = make_model("lenet5")
    inputs, targets = make_examples(12)
    directions = random_directions(model, seed=0)
    xs, ys = np.linspace(-1, 1, 5), np.linspace(-1, 1, 3)
    surface = compute_surface(model, inputs, targets, directions, xs, ys, n_examples=None, clip_radius=1.0,
                              progress=False, device="cpu")
    alpha, beta = surface.coordinates()
    outside = np.hypot(alpha, beta) > 1.0
    assert np.isnan(surface.loss[outside]).all() and np.isfinite(surface.loss[~outside]).all()
    naive = make_evaluator("naive", model, directions, inputs, targets, device="cpu")
    assert surface.loss[2, 2] == pytest.approx(naive.evaluate(xs[2], ys[2]).loss, rel=1e-5)  # Z[iy, ix]
    assert surface.loss[2, 2] != pytest.approx(naive.evaluate(ys[2], xs[2]).loss, rel=1e-5)
    naive.close()


def test_bad_inputs_are_refused_clearly():
    model = make_model("lenet5")
    inputs, targets = make_examples(5)
    one_d = target_direction(model, make_model("lenet5", seed=1))
    with pytest.raises(ValueError, match="needs two directions"):
        compute_surface(model, inputs, targets, one_d, [0, 1], [0, 1], progress=False)
    with pytest.raises(ValueError, match="do not match the model"):
        compute_surface(make_model("lenet_300_100"), inputs, targets, one_d, [0, 1], progress=False)
    with pytest.raises(ValueError, match="one loss per example"):
        compute_surface(model, inputs, targets, one_d, [0, 1], loss_fn=F.cross_entropy, progress=False)


def test_tiled_max_pool_is_bit_identical():
    x = torch.randn(3, 4, 11, 13)
    for size in (2, 3):
        assert torch.equal(tiled_max_pool2d(x, size), F.max_pool2d(x, size))


def _run_job(out: Path) -> subprocess.Popen:
    code = f"import helpers_engine; helpers_engine.slow_surface_job({str(out)!r})"
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "LOSSVIZ_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _status_counts(path: Path) -> tuple[int, int]:
    with h5py.File(path, "r", locking=False) as f:
        status = np.asarray(f["point_status"])
    return int((status == COMPUTED).sum()), int((status == PENDING).sum())


def test_sigkill_then_rerun_computes_only_missing_points_and_ends_identical(tmp_path):
    killed, fresh = tmp_path / "killed.h5", tmp_path / "fresh.h5"
    total = len(RESUME_GRID[0]) * len(RESUME_GRID[1])
    job = _run_job(killed)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if killed.exists():
            try:
                done, _ = _status_counts(killed)
            except OSError:  # caught the file mid-creation
                continue
            if done >= 20:
                break
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL
    done, pending = _status_counts(killed)
    assert 20 <= done < total and pending == total - done
    with h5py.File(killed, "r", locking=False) as f:  # the official convention for unfinished points
        assert (np.asarray(f["test_loss"])[np.asarray(f["point_status"]) == PENDING] == -1).all()

    resumed = _run_job(killed)
    output, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors
    assert f"evaluated {pending}" in output

    complete = _run_job(fresh)
    output, errors = complete.communicate(timeout=300)
    assert complete.returncode == 0, errors
    assert f"evaluated {total}" in output
    a, b = Surface.load(killed), Surface.load(fresh)
    for field in ("loss", "acc", "loss_se"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field
    assert a.meta == b.meta and a.meta["complete"]


def test_engine_registry_has_exactly_the_method_names_params_offer():
    from lossviz.engine import EVALUATORS
    from lossviz.options import EVALUATION_METHODS, METHODS

    assert tuple(EVALUATORS) == EVALUATION_METHODS
    assert set(METHODS) == {"auto", *EVALUATORS}
