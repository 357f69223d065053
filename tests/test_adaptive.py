"""Adaptive surfaces: on an analytic bowl with a sharp ridge the refinement concentrates on the ridge and its
certificate bounds the true error; tolerance 0 is the full grid bit for bit; a killed run resumes to the same
file; interpolated flags survive a save and a load in the official layout; the standard-error floor; the CLI,
the metrics, the figure and (under torchrun) the ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers_adaptive import (
    RIDGE_WIDTH,
    bowl_and_ridge,
    bowl_and_ridge_ln_loss,
    ridge_distance,
)
from helpers_browser import CHROMIUM_MISSING, Browser
from helpers_engine import make_examples, make_model, write_prepared_fashion_mnist

from lossviz.adaptive import (
    AdaptiveSettings,
    as_adaptive,
    certificate_of,
    common_points_agreement,
    grid_alpha_beta,
    refine_function,
    spot_check,
)
from lossviz.cli import main
from lossviz.directions import random_directions
from lossviz.engine import compute_surface, point_function
from lossviz.figures import EVALUATED_POINTS, compare_figure, surface_figure
from lossviz.pages import write_html
from lossviz.shape import surface_metrics
from lossviz.surface import (
    CLIPPED,
    COMPUTED,
    INTERPOLATED,
    INTERPOLATED_FORMAT_VERSION,
    PENDING,
    SURFACE_FORMAT_VERSION,
    Surface,
    SurfaceFileError,
)

TESTS_DIR = Path(__file__).resolve().parent
AXIS = np.linspace(-1, 1, 97)


def _ridge_refinement(tolerance: float = 0.05, **settings):
    return refine_function(AXIS, AXIS, bowl_and_ridge, AdaptiveSettings(tolerance, **settings), clip_radius=1.0)


def test_refinement_concentrates_on_the_ridge_and_the_certificate_bounds_the_true_error():
    refinement = _ridge_refinement(0.05)
    certificate = refinement.certificate
    alpha, beta = np.meshgrid(AXIS, AXIS)
    drawn = np.hypot(alpha, beta) <= 1.0
    true_ln = bowl_and_ridge_ln_loss(alpha, beta)
    errors = np.abs(np.log(refinement.loss) - true_ln)
    filled = refinement.interpolated
    assert filled.sum() == certificate.interpolated > drawn.sum() / 2  # most of the picture is interpolated
    assert (refinement.evaluated | filled)[drawn].all() and not (refinement.evaluated | filled)[~drawn].any()
    assert np.isnan(refinement.loss[~drawn]).all()
    # Evaluated points are exact; filled ones within the certificate, which is within the tolerance.
    assert np.allclose(np.log(refinement.loss[refinement.evaluated]), true_ln[refinement.evaluated], atol=1e-12)
    assert errors[filled].max() <= certificate.max_error <= 0.05
    assert np.all(errors[filled] <= refinement.estimated_error[filled])  # point by point, too
    # Where: the evaluated points crowd along the ridge, and the smooth bowl is mostly interpolated.
    near = drawn & (ridge_distance(alpha, beta) < 3 * RIDGE_WIDTH)
    far = drawn & (ridge_distance(alpha, beta) > 6 * RIDGE_WIDTH)
    near_density, far_density = refinement.evaluated[near].mean(), refinement.evaluated[far].mean()
    assert near_density > 0.8 and far_density < 0.12 and near_density > 8 * far_density
    assert certificate.evaluated == refinement.evaluated.sum() and certificate.drawn == drawn.sum()
    assert 0 < certificate.support < 0.05 * certificate.drawn  # the disk's edge costs a few support points
    # The worst estimate is reported where it was measured: a check point of the cell whose filled points carry it.
    assert np.nanmax(refinement.estimated_error) == certificate.max_error
    carrying = refinement.estimated_error == certificate.max_error
    distance = np.hypot(alpha[carrying] - certificate.max_error_alpha, beta[carrying] - certificate.max_error_beta)
    assert distance.min() <= 2 / 8 * np.sqrt(2)  # within one coarse cell


def test_a_smooth_bowl_needs_few_points_and_a_tighter_tolerance_needs_more():
    def bowl(alphas, betas):
        loss = np.exp(0.5 * alphas**2 + betas**2 - 1.0)
        return loss, np.full(len(alphas), 90.0), 0.0 * loss

    loose = refine_function(AXIS, AXIS, bowl, 0.05)
    tight = refine_function(AXIS, AXIS, bowl, 0.002)
    assert loose.certificate.evaluated_fraction < 0.07 < tight.certificate.evaluated_fraction
    alpha, beta = np.meshgrid(AXIS, AXIS)
    true_ln = 0.5 * alpha**2 + beta**2 - 1.0
    errors = {}
    for refinement, tolerance in ((loose, 0.05), (tight, 0.002)):
        errors[tolerance] = np.abs(np.log(refinement.loss) - true_ln).max()
        assert refinement.certificate.max_error <= tolerance
    # Bilinear error shrinks as the spacing squared: the error measured at twice the spacing of the filled cells
    # is 4 times the true error on a quadratic (96 intervals: the accepted cells of 12 split in 6 and 6), and at
    # least twice it where a side of 3 splits in 1 and 2 (the tight tolerance's cells): the check point is then
    # a third of the way, where the quadratic's error is 2h², against h² in the middle of the side of 2. The
    # estimate is SAFETY = 2 times the measured error.
    assert errors[0.05] == pytest.approx(loose.certificate.max_error / 8, rel=1e-6)
    assert errors[0.002] == pytest.approx(tight.certificate.max_error / 4, rel=1e-6)


def test_standard_error_floor_loosens_the_tolerance_to_a_fraction_of_the_points_noise():
    noisy = refine_function(AXIS, AXIS, lambda a, b: bowl_and_ridge(a, b, relative_se=0.2), 0.005)
    exact = refine_function(AXIS, AXIS, lambda a, b: bowl_and_ridge(a, b, relative_se=0.0), 0.005)
    # se(ln loss) = 0.2 everywhere: cells are accepted up to 0.25 × 0.2 = 0.05, not 0.005.
    assert noisy.certificate.max_cell_tolerance == pytest.approx(0.05)
    assert 0.005 < noisy.certificate.max_error <= 0.05
    assert noisy.certificate.evaluations < exact.certificate.evaluations
    no_floor = refine_function(AXIS, AXIS, lambda a, b: bowl_and_ridge(a, b, relative_se=0.2),
                               AdaptiveSettings(0.005, se_fraction=0.0))
    assert no_floor.certificate.evaluations == exact.certificate.evaluations
    # Interpolated standard errors keep se(ln loss) where the evaluated points have it.
    assert np.allclose((noisy.loss_se / noisy.loss)[noisy.interpolated], 0.2)


def test_one_d_and_non_uniform_axes():
    xs = np.linspace(-1, 1, 201)
    line = refine_function(xs, None, lambda a, b: bowl_and_ridge(a, 0 * a), 0.01)
    assert line.loss.shape == (201,) and line.certificate.max_error_beta is None
    true_ln = bowl_and_ridge_ln_loss(xs, 0 * xs)
    assert np.abs(np.log(line.loss) - true_ln).max() <= line.certificate.max_error <= 0.01
    assert line.certificate.evaluated_fraction < 0.5
    # Interpolation in the grid's coordinates, not its indices: on an axis denser near 0, a bilinear ln(loss)
    # is accepted on the coarse lattice and filled exactly.
    uneven = np.sign(np.linspace(-1, 1, 41)) * np.linspace(-1, 1, 41) ** 2

    def bilinear(alphas, betas):
        loss = np.exp(0.3 + 0.5 * alphas - 0.2 * betas + 0.7 * alphas * betas)
        return loss, np.full(len(alphas), 90.0), 0.0 * loss

    surface = refine_function(uneven, uneven, bilinear, 1e-9)
    alpha, beta = np.meshgrid(uneven, uneven)
    assert surface.certificate.max_error < 1e-9 and surface.certificate.evaluations == 17 * 17
    assert np.allclose(np.log(surface.loss), 0.3 + 0.5 * alpha - 0.2 * beta + 0.7 * alpha * beta, atol=1e-12)


def test_settings_are_validated_with_the_field_named():
    with pytest.raises(ValueError, match=r"adaptive tolerance=-0.1 is not valid; expected a finite number ≥ 0"):
        AdaptiveSettings(-0.1)
    with pytest.raises(ValueError, match="adaptive coarse_points=1 is not valid"):
        AdaptiveSettings(0.1, coarse_points=1)
    with pytest.raises(ValueError, match="adaptive=True is not valid"):
        as_adaptive(True)
    assert as_adaptive(None) is None and as_adaptive(0.05) == AdaptiveSettings(0.05)


# -- on the engine -------------------------------------------------------------------------------------------
def _confident_model():
    """A lenet5 whose outputs are confident, so the loss varies over the plane (a random one is flat)."""
    model = make_model("lenet5")
    with torch.no_grad():
        model.fc3.weight.mul_(10)
    return model


@pytest.fixture(scope="module")
def engine_case():
    model = _confident_model()
    inputs, targets = make_examples(40)
    return model, inputs, targets, random_directions(model, seed=2)


def test_tolerance_zero_equals_the_full_grid_bit_for_bit(engine_case):
    model, inputs, targets, directions = engine_case
    xs, ys = np.linspace(-1, 1, 13), np.linspace(-0.8, 0.8, 9)
    options = dict(n_examples=30, seed=1, progress=False, device="cpu", clip_radius=0.9)
    full = compute_surface(model, inputs, targets, directions, xs, ys, **options)
    exact = compute_surface(model, inputs, targets, directions, xs, ys, adaptive=0, **options)
    for name in ("loss", "acc", "loss_se"):
        assert np.array_equal(getattr(exact, name), getattr(full, name), equal_nan=True), name
    assert exact.interpolated is None
    certificate = certificate_of(exact)
    assert certificate.evaluated == certificate.drawn == int(np.isfinite(full.loss).sum())
    assert certificate.support == certificate.interpolated == 0 and certificate.max_error == 0


def test_engine_surface_within_its_certificate_against_the_fully_evaluated_one(engine_case, tmp_path):
    model, inputs, targets, directions = engine_case
    xs = np.linspace(-1, 1, 33)
    options = dict(n_examples=40, seed=1, progress=False, device="cpu", clip_radius=1.0)
    full = compute_surface(model, inputs, targets, directions, xs, xs, **options)
    adaptive = compute_surface(model, inputs, targets, directions, xs, xs, adaptive=0.02, out=tmp_path / "a.h5",
                               **options)
    certificate = certificate_of(adaptive)
    filled = adaptive.interpolated
    assert filled is not None and filled.sum() == certificate.interpolated > 0
    assert certificate.evaluations < 0.6 * certificate.drawn
    errors = np.abs(np.log(adaptive.loss) - np.log(full.loss))
    assert errors[filled].max() <= certificate.max_error <= 0.02
    evaluated = np.isfinite(full.loss) & ~filled
    assert np.array_equal(adaptive.loss[evaluated], full.loss[evaluated])  # evaluated points: the same numbers
    assert np.isnan(adaptive.loss[np.isnan(full.loss)]).all()  # the clip disk holds
    # The spot check evaluates filled points for real (the naive evaluator: no engine shortcut): the same verdict.
    with point_function(model, inputs, targets, directions, adaptive.example_indices, method="naive",
                        device="cpu") as evaluate:
        check = spot_check(adaptive, evaluate, count=25, seed=0)
    assert check["points"] == 25 and check["within_certificate"]
    assert check["max_abs_ln_loss_error"] == pytest.approx(
        errors[filled][np.isin(np.flatnonzero(filled), check["indices"])].max(), rel=1e-4)
    # Against a coarser fully evaluated grid, at the points both grids have (every third point of this one).
    coarse = compute_surface(model, inputs, targets, directions, xs[::3], xs[::3], **options)
    agreement = common_points_agreement(adaptive, coarse)
    assert agreement["common_points"] == int(np.isfinite(coarse.loss).sum())
    assert agreement["common_interpolated"] == int(filled[::3, ::3].sum()) > 0
    assert agreement["max_abs_ln_loss_diff"] == pytest.approx(errors[::3, ::3][filled[::3, ::3]].max())
    assert agreement["pearson_ln_loss"] > 0.999


def test_flags_survive_save_and_load_in_the_official_layout(tmp_path):
    refinement = _ridge_refinement(0.05)
    alpha, beta = np.meshgrid(AXIS, AXIS)
    surface = Surface(AXIS, AXIS, refinement.loss, refinement.acc, refinement.loss_se, np.arange(3),
                      {"clip_radius": 1.0, "title": "ridge"}, refinement.interpolated)
    surface.save(tmp_path / "adaptive.h5")
    with h5py.File(tmp_path / "adaptive.h5", "r") as f:
        assert f.attrs["version"] == INTERPOLATED_FORMAT_VERSION
        status = np.asarray(f["point_status"])
        stored = np.asarray(f["test_loss"])
    assert np.array_equal(status == INTERPOLATED, refinement.interpolated)
    assert np.array_equal(status == COMPUTED, refinement.evaluated)
    assert np.array_equal(status == CLIPPED, np.hypot(alpha, beta) > 1.0) and not (status == PENDING).any()
    # What another tool reads: every drawn point has its value (no −1, no gap), the disk's outside NaN.
    drawn = status != CLIPPED
    assert np.isfinite(stored[drawn]).all() and (stored[drawn] > 0).all() and np.isnan(stored[~drawn]).all()
    loaded = Surface.load(tmp_path / "adaptive.h5")
    assert np.array_equal(loaded.interpolated, refinement.interpolated)
    for name in ("loss", "acc", "loss_se"):
        assert np.array_equal(getattr(loaded, name), getattr(surface, name), equal_nan=True), name
    assert loaded.meta["complete"]
    # A surface with nothing interpolated stays version 1, readable by lossviz that predates version 2.
    Surface(AXIS, AXIS, refinement.loss, refinement.acc, refinement.loss_se, np.arange(3), {}).save(tmp_path / "f.h5")
    with h5py.File(tmp_path / "f.h5", "r") as f:
        assert f.attrs["version"] == SURFACE_FORMAT_VERSION
    assert Surface.load(tmp_path / "f.h5").interpolated is None


def test_metrics_say_which_inputs_were_interpolated(tmp_path):
    refinement = _ridge_refinement(0.05)
    adaptive = Surface(AXIS, AXIS, refinement.loss, refinement.acc, refinement.loss_se, np.arange(3),
                       {"clip_radius": 1.0}, refinement.interpolated)
    full = Surface(AXIS, AXIS, refinement.loss.copy(), refinement.acc, refinement.loss_se, np.arange(3),
                   {"clip_radius": 1.0})
    metrics, plain = surface_metrics(adaptive), surface_metrics(full)
    drawn = np.isfinite(refinement.loss)
    assert metrics["interpolated_fraction"] == pytest.approx(refinement.interpolated[drawn].mean())
    assert 0 < metrics["convex_stencils_interpolated"] <= 1
    centre = (48, 48)
    stencil = refinement.interpolated[47:50, 47:50]
    assert refinement.evaluated[centre] or refinement.interpolated[centre]
    assert metrics["centre_stencil_interpolated"] == pytest.approx(stencil.mean())
    assert plain["interpolated_fraction"] == plain["centre_stencil_interpolated"] == 0.0
    assert plain["convex_stencils_interpolated"] == 0.0
    assert metrics["depth"] == plain["depth"]  # the same values, only the flags differ


def test_figure_carries_the_evaluated_points_for_the_page_toggle():
    refinement = _ridge_refinement(0.05)
    adaptive = Surface(AXIS, AXIS, refinement.loss, refinement.acc, refinement.loss_se, np.arange(3),
                       {"clip_radius": 1.0}, refinement.interpolated)
    figure = surface_figure(adaptive)
    assert [t.type for t in figure.data] == ["surface", "scatter3d"]
    markers = figure.data[1]
    assert markers.meta == EVALUATED_POINTS and markers.visible is False
    assert len(markers.x) == refinement.evaluated.sum()
    alpha, beta = grid_alpha_beta(AXIS, AXIS)
    evaluated = refinement.evaluated.ravel()
    assert sorted(zip(markers.x, markers.y, strict=True)) == sorted(zip(alpha[evaluated], beta[evaluated], strict=True))
    assert np.allclose(np.array(markers.customdata)[:, 0], refinement.loss.ravel()[evaluated])
    assert "%{customdata[3]}" in figure.data[0].hovertemplate
    labels = np.array([[point[3] for point in row] for row in figure.data[0].customdata])
    assert np.array_equal(labels == "interpolated", refinement.interpolated)
    assert np.array_equal(labels == "evaluated", refinement.evaluated | np.isnan(refinement.loss))
    plain = surface_figure(Surface(AXIS, AXIS, refinement.loss, refinement.acc, refinement.loss_se, np.arange(3), {}))
    assert [t.type for t in plain.data] == ["surface"] and len(plain.data[0].customdata[0][0]) == 3


def test_page_toggle_shows_the_evaluated_points_only_and_back(tmp_path):
    """In a real Chromium: the toggle (and its key, E) swaps the adaptive surface for its evaluated points, whose
    z follows the ln/linear switch; a fully evaluated surface beside it stays drawn."""
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        pytest.fail(CHROMIUM_MISSING)
    refinement = _ridge_refinement(0.05)
    adaptive = Surface(AXIS, AXIS, refinement.loss, refinement.acc, refinement.loss_se, np.arange(3),
                       {"clip_radius": 1.0}, refinement.interpolated)
    full = Surface(AXIS, AXIS, refinement.loss.copy(), refinement.acc, refinement.loss_se, np.arange(3), {})
    page_path = write_html(compare_figure([full, adaptive], ["every point", "adaptive"]), tmp_path / "page.html")
    ready = "document.getElementById('plot') && document.getElementById('plot').dataset.ready === '1'"
    visible = "document.getElementById('plot').data.map(t => t.visible !== false)"
    with Browser(width=1280, height=900) as browser:
        page = browser.new_page()
        page.goto(page_path.as_uri(), ready=ready)
        assert page.evaluate("document.getElementById('evaluated-only').checked") is False
        assert page.evaluate(visible) == [True, True, False, True]  # the table trace last
        page.evaluate("document.getElementById('evaluated-only').click()")
        page.wait_for("document.getElementById('plot').dataset.evaluatedOnly === '1'")
        assert page.evaluate(visible) == [True, False, True, True]
        markers = page.evaluate("(() => { const t = document.getElementById('plot').data[2];"
                                " return {x: t.x, z: t.z}; })()")
        assert len(markers["x"]) == refinement.evaluated.sum()
        evaluated_ln = np.log(refinement.loss[refinement.evaluated])
        assert sorted(markers["z"]) == pytest.approx(sorted(evaluated_ln))
        page.press("l")  # linear z: the markers follow
        page.wait_for("document.getElementById('plot').dataset.zScale === 'linear'")
        linear = page.evaluate("document.getElementById('plot').data[2].z")
        assert sorted(linear) == pytest.approx(sorted(np.exp(evaluated_ln)))
        page.press("e")
        page.wait_for("document.getElementById('plot').dataset.evaluatedOnly === '0'")
        assert page.evaluate(visible) == [True, True, False, True]
        page.close()


# -- resume, refusal, CLI, torchrun --------------------------------------------------------------------------
def _run_job(out: Path) -> subprocess.Popen:
    code = f"import helpers_adaptive; helpers_adaptive.slow_adaptive_job({str(out)!r})"
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR), "LOSSVIZ_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env)


def _computed(path: Path) -> int:
    with h5py.File(path, "r", locking=False) as f:
        return int((np.asarray(f["point_status"]) == COMPUTED).sum())


def test_sigkill_then_rerun_evaluates_only_what_is_missing_and_ends_identical(tmp_path):
    killed, fresh = tmp_path / "killed.h5", tmp_path / "fresh.h5"
    job = _run_job(killed)
    deadline, done = time.monotonic() + 120, 0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if killed.exists():
            try:
                done = _computed(killed)
            except (OSError, KeyError):  # caught the file mid-creation
                continue
            if done >= 20:
                break
    job.send_signal(signal.SIGKILL)
    job.wait()
    assert job.returncode == -signal.SIGKILL
    done = _computed(killed)  # the first rounds' points, support points outside the disk included
    assert done >= 20

    resumed = _run_job(killed)
    output, errors = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, errors
    complete = _run_job(fresh)
    fresh_output, errors = complete.communicate(timeout=300)
    assert complete.returncode == 0, errors
    total = int(fresh_output.split("evaluated ")[1])
    assert f"evaluated {total - done}" in output and 0 < total - done < total
    a, b = Surface.load(killed), Surface.load(fresh)
    for field in ("loss", "acc", "loss_se", "interpolated"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    assert a.meta == b.meta and a.meta["complete"] and certificate_of(a).evaluations == total
    assert not Path(f"{killed}.partial").exists()
    # A finished file reruns without building an evaluator for its drawn points: only support points, which
    # the file does not keep (they are not part of the picture), are evaluated again.
    again = _run_job(fresh)
    output, errors = again.communicate(timeout=300)
    assert again.returncode == 0, errors
    assert f"evaluated {certificate_of(b).support}\n" in output
    assert np.array_equal(Surface.load(fresh).loss, b.loss, equal_nan=True)


def test_resuming_with_other_adaptive_settings_is_refused(engine_case, tmp_path):
    model, inputs, targets, directions = engine_case
    out = tmp_path / "s.h5"
    options = dict(n_examples=10, progress=False, device="cpu", out=out)
    compute_surface(model, inputs, targets, directions, [-1, 0, 1], [-1, 0, 1], adaptive=0.1, **options)
    with pytest.raises(SurfaceFileError, match=r"adaptive_tolerance \(0.1 in the file, 0.2 now\)"):
        compute_surface(model, inputs, targets, directions, [-1, 0, 1], [-1, 0, 1], adaptive=0.2, **options)
    with pytest.raises(SurfaceFileError, match=r"adaptive_tolerance \(0.1 in the file, None now\)"):
        compute_surface(model, inputs, targets, directions, [-1, 0, 1], [-1, 0, 1], **options)


def test_cli_adaptive_prints_the_certificate_and_refuses_a_bad_tolerance(tmp_path, capsys):
    data_root = write_prepared_fashion_mnist(tmp_path / "prepared", n_test=40)
    checkpoint = tmp_path / "lenet5.pt"
    torch.save(_confident_model().state_dict(), checkpoint)
    out = tmp_path / "adaptive.h5"
    args = ["surface", "--model", "lenet5", "--checkpoint", str(checkpoint), "--dataset", "fashion_mnist",
            "--data-root", str(data_root), "--x", "-1:1:25", "--y", "-1:1:25", "--examples", "20", "--no-progress",
            "--device", "cpu", "--out", str(out)]
    assert main([*args, "--adaptive", "0.05"]) == 0
    printed = capsys.readouterr().out
    surface = Surface.load(out)
    certificate = certificate_of(surface)
    assert f"{certificate.evaluated} points computed, {certificate.interpolated} interpolated" in printed
    assert f"adaptive: evaluated {certificate.evaluated} of 625 drawn points" in printed
    assert surface.interpolated.sum() == certificate.interpolated > 0
    assert main(["metrics", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    alpha, beta = surface.coordinates()
    disk = np.hypot(alpha, beta) <= 1.0  # the metrics' default disk: LossPlot's, half the span
    assert metrics["interpolated_fraction"] == pytest.approx(surface.interpolated[disk].mean())
    with pytest.raises(SystemExit):
        main([*args, "--adaptive", "-1"])
    assert "--adaptive: '-1' is not valid; expected a tolerance in ln(loss) units" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux") or not dist.is_available() or not dist.is_gloo_available(),
                    reason="needs torch.distributed with gloo")
def test_two_gloo_ranks_share_the_rounds_and_give_the_one_process_surface(tmp_path):
    data_root = write_prepared_fashion_mnist(tmp_path / "prepared", n_test=200)
    checkpoint = tmp_path / "lenet5.pt"
    torch.save(_confident_model().state_dict(), checkpoint)
    args = ["-m", "lossviz.cli", "surface", "--model", "lenet5", "--checkpoint", str(checkpoint), "--dataset",
            "fashion_mnist", "--data-root", str(data_root), "--x", "-1:1:33", "--y", "-1:1:33", "--examples",
            "100", "--clip-radius", "1", "--adaptive", "0.02", "--no-progress"]
    env = {**os.environ, "LOSSVIZ_THREADS": "1", "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "one.h5")], capture_output=True,
                         text=True, env=env, timeout=300)
    assert one.returncode == 0, one.stderr
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "two.h5")], capture_output=True, text=True, env=env,
                         timeout=300)
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("adaptive: evaluated") == 1  # rank 0 alone reports
    a, b = Surface.load(tmp_path / "one.h5"), Surface.load(tmp_path / "two.h5")
    for field in ("loss", "acc", "loss_se", "interpolated"):
        assert np.array_equal(getattr(a, field), getattr(b, field), equal_nan=True), field
    assert a.meta == b.meta and certificate_of(a).interpolated > 0
