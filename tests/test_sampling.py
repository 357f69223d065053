"""lossviz.sampling: the sample-size study's aggregation on synthetic surfaces with known answers, and the
adaptive choice of n (`n_examples="auto"`) through the library, the engine's API and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers_engine import make_examples, make_model, write_prepared_fashion_mnist

from lossviz.cli import main
from lossviz.directions import random_directions
from lossviz.figures import sample_size_figure
from lossviz.sampling import (
    AutoExamples,
    choose_n_examples,
    compare_sample_sizes,
    compute_surface,
    effective_candidates,
    ln_loss_se,
    max_ln_loss_se,
)
from lossviz.surface import Surface

XS = np.linspace(-1, 1, 5)
ALPHA, BETA = np.meshgrid(XS, XS, indexing="xy")  # (ny, nx): Z[iy, ix]
LN_REFERENCE = 0.5 + ALPHA**2 + 0.1 * ALPHA + 2 * BETA**2 + 0.1 * BETA  # min at (0, 0), max at (1, 1)


def synthetic(ln_loss: np.ndarray, loss_se: float | np.ndarray, n: int, directions_hash: str = "d0") -> Surface:
    loss = np.exp(ln_loss)
    return Surface(XS, XS, loss, np.full(loss.shape, 50.0), np.broadcast_to(loss_se, loss.shape).astype(float),
                   np.arange(n), {"n_examples": n, "directions_hash": directions_hash})


def test_compare_sample_sizes_known_answers():
    upside_down = 3 - LN_REFERENCE  # r = −1, its minimum where the reference has its maximum
    surfaces = {
        100: synthetic(LN_REFERENCE, 0.01, 100),
        10: synthetic(LN_REFERENCE + 0.3, 0.2, 10),           # ln(loss) off by 0.3 everywhere
        1: synthetic(upside_down, np.nan, 1),                  # one example: no standard error
    }
    rows = compare_sample_sizes(surfaces, {1: 0.5, 10: 2.0, 100: 40.0}, cpu_seconds={1: 1.0, 10: 2.0, 100: 8.0})

    assert [row["n"] for row in rows] == [1, 10, 100]
    one, ten, reference = rows
    assert reference["pearson_ln_loss"] == pytest.approx(1) and reference["rmse_ln_loss"] == 0
    assert reference["argmin_distance"] == 0 and reference["speedup"] == 1
    assert ten["pearson_ln_loss"] == pytest.approx(1) and ten["rmse_ln_loss"] == pytest.approx(0.3)
    assert ten["argmin_distance"] == 0 and ten["speedup"] == pytest.approx(20)
    assert ten["mean_loss_se"] == pytest.approx(0.2)
    assert ten["mean_ln_loss_se"] == pytest.approx(np.mean(0.2 / np.exp(LN_REFERENCE + 0.3)))
    inside = np.hypot(ALPHA, BETA) <= 1  # the default clip disk: half the span
    assert ten["max_ln_loss_se"] == pytest.approx(np.max(0.2 / np.exp(LN_REFERENCE + 0.3)[inside]))
    assert one["pearson_ln_loss"] == pytest.approx(-1)
    assert one["rmse_ln_loss"] == pytest.approx(np.sqrt(np.mean((3 - 2 * LN_REFERENCE) ** 2)))
    assert one["argmin_distance"] == pytest.approx(math.sqrt(2))
    assert one["mean_loss_se"] is None and one["max_ln_loss_se"] is None and one["speedup"] == pytest.approx(80)
    assert [row["cpu_speedup"] for row in rows] == [8.0, 4.0, 1.0] and ten["cpu_seconds"] == 2.0


def test_compare_sample_sizes_uses_only_computed_points():
    ln = LN_REFERENCE.copy()
    ln[0, 0] = np.nan  # a clipped corner
    se = np.full(ln.shape, 0.1)
    se[0, 0] = np.nan
    rows = compare_sample_sizes({5: synthetic(ln, se, 5), 50: synthetic(LN_REFERENCE, 0.05, 50)}, {5: 1.0, 50: 3.0})
    assert rows[0]["mean_loss_se"] == pytest.approx(0.1) and rows[0]["rmse_ln_loss"] == 0
    assert rows[0]["pearson_ln_loss"] == pytest.approx(1)


def test_compare_sample_sizes_refuses_mismatched_studies():
    base = synthetic(LN_REFERENCE, 0.1, 50)
    with pytest.raises(ValueError, match="other directions"):
        compare_sample_sizes({5: synthetic(LN_REFERENCE, 0.1, 5, "d1"), 50: base}, {5: 1, 50: 2})
    other_grid = Surface(XS * 2, XS, base.loss, base.acc, base.loss_se, np.arange(5), dict(base.meta))
    with pytest.raises(ValueError, match="another grid"):
        compare_sample_sizes({5: other_grid, 50: base}, {5: 1, 50: 2})
    with pytest.raises(ValueError, match="seconds"):
        compare_sample_sizes({5: base, 50: base}, {5: 1})


def test_max_ln_loss_se_looks_inside_the_clip_disk_only():
    se = np.full(LN_REFERENCE.shape, 0.01)
    se[0, 0] = 100.0            # a corner, outside the unit disk
    se[2, 3] = 0.5              # (α, β) = (0.5, 0), inside
    surface = synthetic(LN_REFERENCE, se, 10)
    assert max_ln_loss_se(surface) == pytest.approx(0.5 / math.exp(LN_REFERENCE[2, 3]))
    assert max_ln_loss_se(surface, clip_radius=2.0) == pytest.approx(100 / math.exp(LN_REFERENCE[0, 0]))
    assert np.allclose(ln_loss_se(surface), se / np.exp(LN_REFERENCE))
    se[2, 2] = np.nan           # no standard error at a point inside: the tolerance cannot be met
    assert max_ln_loss_se(synthetic(LN_REFERENCE, se, 10)) == math.inf


def test_sample_size_figure_plots_every_row():
    rows = compare_sample_sizes({10: synthetic(LN_REFERENCE + 0.1, 0.2, 10), 100: synthetic(LN_REFERENCE, 0.05, 100)},
                                {10: 1.0, 100: 8.0})
    figure = sample_size_figure(rows, tolerance=0.05)
    by_name = {trace.name: trace for trace in figure.data}
    assert list(by_name["speed-up (× vs largest n)"].y) == [8.0, 1.0]
    assert list(by_name["Pearson r of ln(loss)"].x) == [10, 100]
    assert figure.layout.xaxis2.type == "log"


# -- the adaptive choice -------------------------------------------------------------------------------------
SHAPE = (1, 16, 16)
CANDIDATES = (2, 5, 10, 25, 60, 150)


@pytest.fixture(scope="module")
def tiny_problem():
    model = make_model("lenet5", SHAPE)
    with torch.no_grad():  # confident outputs: per-example losses that differ, so errors fall with n
        model.fc3.weight.mul_(20)
    inputs, targets = make_examples(150, SHAPE, seed=4)
    return model, inputs, targets, random_directions(model, seed=1)


def choose(problem, tolerance: float):
    model, inputs, targets, directions = problem
    return choose_n_examples(model, inputs, targets, directions, XS, XS, seed=3, progress=False,
                             auto=AutoExamples(tolerance, CANDIDATES, pilot_points=5))


def test_adaptive_choice_is_monotone_in_the_tolerance(tiny_problem):
    tolerances = [10.0, 0.3, 0.2, 0.1, 0.05, 0.02, 1e-4]
    choices = [choose(tiny_problem, tolerance) for tolerance in tolerances]
    chosen = [choice.n_examples for choice in choices]
    assert chosen == sorted(chosen), chosen                      # smaller tolerance → n not smaller
    assert chosen[0] == 2 and chosen[-1] == 150 and len(set(chosen)) >= 4, chosen
    assert not choices[-1].met and choices[0].met
    for tolerance, choice in zip(tolerances, choices, strict=True):
        errors = dict(choice.trials)
        assert choice.max_ln_loss_se == errors[choice.n_examples]
        if choice.met:  # the smallest n that meets it: every smaller candidate tried failed
            assert choice.max_ln_loss_se <= tolerance
            assert all(se > tolerance for n, se in choice.trials if n < choice.n_examples)
    # Larger n, smaller error: the pilot errors fall with n (roughly as 1/√n).
    errors = dict(choices[-1].trials)
    assert errors[150] < errors[25] < errors[2]


def test_candidates_are_capped_at_the_examples_available():
    assert effective_candidates((10, 100, 1000), 250) == [10, 100, 250]
    assert effective_candidates((1000,), 40) == [40]
    with pytest.raises(ValueError, match="increasing"):
        AutoExamples(candidates=(100, 10))
    with pytest.raises(ValueError, match="positive"):
        AutoExamples(tolerance=0)


def test_compute_surface_auto_stores_the_choice(tiny_problem, tmp_path):
    model, inputs, targets, directions = tiny_problem
    auto = AutoExamples(0.1, CANDIDATES, pilot_points=5)
    expected = choose(tiny_problem, 0.1)
    out = tmp_path / "auto.h5"
    surface = compute_surface(model, inputs, targets, directions, XS, XS, n_examples=auto, seed=3, out=out,
                              clip_radius=1.0, progress=False)
    stored = Surface.load(out)
    for loaded in (surface, stored):
        assert loaded.meta["n_examples"] == expected.n_examples == len(loaded.example_indices)
        assert loaded.meta["n_examples_auto"] is True and loaded.meta["auto_tolerance"] == 0.1
        assert loaded.meta["auto_max_ln_loss_se"] == pytest.approx(max_ln_loss_se(stored, 1.0))
    plain = compute_surface(model, inputs, targets, directions, XS, XS, n_examples=expected.n_examples, seed=3,
                            clip_radius=1.0, progress=False)
    np.testing.assert_allclose(stored.loss, plain.loss, equal_nan=True)
    default = compute_surface(model, inputs, targets, directions, XS[:3], None, n_examples="auto", seed=3,
                              progress=False)
    assert default.meta["auto_tolerance"] == 0.05 and default.meta["n_examples"] <= 150
    with pytest.raises(ValueError, match="'many' is not valid"):
        compute_surface(model, inputs, targets, directions, XS, XS, n_examples="many", progress=False)


def test_cli_examples_auto(tmp_path, capsys):
    data_root = write_prepared_fashion_mnist(tmp_path / "prepared", n_test=40)
    checkpoint = tmp_path / "lenet5.t7"
    torch.save({"state_dict": make_model("lenet5").state_dict()}, checkpoint)
    out = tmp_path / "auto.h5"
    base = ["surface", "--model", "lenet5", "--checkpoint", str(checkpoint), "--dataset", "fashion_mnist",
            "--data-root", str(data_root), "--x", "-1:1:5", "--y", "-1:1:5", "--no-progress"]
    assert main([*base, "--examples", "auto", "--auto-tolerance", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    surface = Surface.load(out)
    assert f"auto chose n={surface.meta['n_examples']}" in printed and surface.meta["auto_tolerance"] == 0.5
    with pytest.raises(SystemExit):
        main([*base, "--examples", "lots", "--out", str(tmp_path / "x.h5")])
    assert "expected a positive integer or 'auto'" in capsys.readouterr().err


def test_time_per_point_times_every_n_and_leaves_the_model_alone(tiny_problem):
    from helpers_engine import assert_same_state, state_copy

    from lossviz.sampling import time_per_point

    model, inputs, targets, directions = tiny_problem
    before = state_copy(model)
    seconds = time_per_point(model, inputs, targets, directions, [2, 150], [0.0, 0.5], [0.0, -0.5], rounds=2)
    assert set(seconds) == {2, 150} and all(0 < value < 10 for value in seconds.values())
    assert_same_state(model, before)
    with pytest.raises(ValueError, match="at least one round"):
        time_per_point(model, inputs, targets, directions, [2], [0.0], [0.0], rounds=0)
