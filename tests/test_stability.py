"""lossviz.stability: the linear path and its barriers, the plane through three checkpoints, and instability
analysis of lottery tickets, checked against independent computations: plain forwards on the same examples,
barriers worked out by hand, numpy's own Gram–Schmidt, and tiny IMP runs."""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers_training import SMALL_SHAPE, synthetic_splits
from torch import nn

from lossviz.checkpoints import load_state_dict, save_model
from lossviz.cli import main
from lossviz.data import load_splits
from lossviz.figures import barrier_figure, path_curves_figure, plane_figure
from lossviz.lottery import IMPConfig, level_dir, load_mask, run_lottery
from lossviz.models import build_model
from lossviz.pages import write_html
from lossviz.pruning import full_mask
from lossviz.stability import (
    Instability,
    InstabilityCallbacks,
    InstabilityConfig,
    PairKey,
    PairResult,
    barrier_height,
    copy_seed,
    interpolate_states,
    linear_path,
    load_pair_results,
    plane_surface,
    plane_through,
    summarize_barriers,
)
from lossviz.tasks import select_examples
from lossviz.training import TrainConfig
from tests.helpers_project import write_tiny_dataset

SPLITS = synthetic_splits(train=192, val=64, test=64)


class TinyBN(nn.Module):
    """conv → BatchNorm → ReLU → pool → linear: BatchNorm's running statistics are part of the path."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 7 * 7, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2).flatten(1))


def tiny_state(seed: int) -> dict[str, torch.Tensor]:
    """A TinyBN state with its own weights and running statistics (two batches seen in train mode)."""
    torch.manual_seed(seed)
    model = TinyBN().train()
    with torch.no_grad():
        model(SPLITS.train.x[seed * 32:(seed + 1) * 32] * (1 + seed))
        model(SPLITS.train.x[:16])
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


def own_loss(state: dict[str, torch.Tensor], inputs: torch.Tensor, targets: torch.Tensor,
             model: nn.Module | None = None) -> tuple[float, float]:
    """Mean cross-entropy and accuracy (percent) of a plain eval-mode forward: the independent reference."""
    model = model or TinyBN()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        logits = model(inputs)
    accuracy = 100 * float((logits.argmax(1) == targets).double().mean())
    return float(F.cross_entropy(logits.double(), targets)), accuracy


# -- the path --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["naive", "fast", "vmap"])
def test_path_endpoints_and_interior_equal_plain_forwards_on_the_same_examples(method):
    state_a, state_b = tiny_state(0), tiny_state(1)
    assert not torch.equal(state_a["bn.running_var"], state_b["bn.running_var"])  # the stats must move too
    test = SPLITS.test
    curve = linear_path(TinyBN(), state_a, state_b, test.x, test.y, points=5, n_examples=40, seed=3,
                        method=method, device="cpu", progress=False)
    index = torch.from_numpy(select_examples(len(test.y), 40, 3))
    x, y = test.x[index], test.y[index]
    assert curve.alphas.tolist() == [0, 0.25, 0.5, 0.75, 1] and curve.n_examples == 40
    for position, alpha in enumerate(curve.alphas):
        loss, acc = own_loss(interpolate_states(state_a, state_b, alpha), x, y)
        assert curve.loss[position] == pytest.approx(loss, rel=1e-5), alpha
        assert curve.error[position] == pytest.approx(100 - acc, abs=1e-9), alpha
    assert (curve.loss[0], curve.loss[-1]) == pytest.approx((own_loss(state_a, x, y)[0], own_loss(state_b, x, y)[0]),
                                                            rel=1e-5)
    # the error's standard error is the 0/1 errors' sample standard deviation over √n
    start = TinyBN().eval()
    start.load_state_dict(state_a)
    with torch.no_grad():
        errors = (start(x).argmax(1) != y).double()
    assert curve.error_se[0] == pytest.approx(100 * float(errors.std(unbiased=True)) / math.sqrt(40), rel=1e-9)


class LinearRegression(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)


def squared_error(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return (outputs[:, 0] - targets) ** 2


def test_convex_quadratic_has_zero_barrier_between_equally_good_ends_and_half_their_gap_otherwise():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64) + 0.1 * torch.randn(50, generator=generator,
                                                                                        dtype=torch.float64)
    best = torch.linalg.lstsq(x, y.unsqueeze(1)).solution.T  # the minimum of the quadratic
    step = torch.tensor([[0.3, 0.2, -0.4]], dtype=torch.float64)
    model = LinearRegression().double()

    def path(a, b):
        return linear_path(model, {"linear.weight": a}, {"linear.weight": b}, x, y, points=9, loss_fn=squared_error,
                           method="naive", device="cpu", progress=False)

    # the engine's target direction is float32: values agree to ~1e-7 relative
    symmetric = path(best + step, best - step)  # equal losses at the ends, the minimum in the middle
    assert symmetric.loss[0] == pytest.approx(symmetric.loss[-1], rel=1e-6)
    assert symmetric.barrier().loss == pytest.approx(0, abs=1e-6)
    assert symmetric.loss.argmin() == 4
    assert np.isnan(symmetric.barrier().error) and not symmetric.barrier().stable()  # regression: no error
    lopsided = path(best + step, best - 3 * step)  # convex: the path never rises above the worse end
    assert lopsided.barrier().loss == pytest.approx(abs(lopsided.loss[0] - lopsided.loss[-1]) / 2, rel=1e-6)
    assert lopsided.barrier().loss_alpha == 1.0


class DoubleWell(nn.Module):
    """Two logits [w² − t, 0] for an example whose input is its threshold t, class 0: right iff w² > t. Minima
    at w = ±1, a ridge at w = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((1, 1), -1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.w[0, 0] ** 2 - x[:, 0]
        return torch.stack([z, torch.zeros_like(z)], dim=1)


def test_two_separated_minima_give_the_barrier_computed_by_hand():
    thresholds = [0.1, 0.3, 0.5, 0.7, -0.5, -0.2, 2.0]  # none equals a w² on the 25-point grid
    x = torch.tensor(thresholds).unsqueeze(1)
    y = torch.zeros(len(thresholds), dtype=torch.long)
    curve = linear_path(DoubleWell(), {"w": torch.full((1, 1), -1.0)}, {"w": torch.full((1, 1), 1.0)}, x, y,
                        device="cpu", progress=False)
    assert len(curve.alphas) == 25 and curve.alphas[12] == 0.5  # w = 0 on the grid
    # ends (w² = 1): only t = 2 is wrong; the ridge (w = 0): every t ≥ 0 is wrong
    assert curve.error[0] == pytest.approx(100 / 7) and curve.error[12] == pytest.approx(500 / 7)
    barrier = curve.barrier()
    assert barrier.error == pytest.approx(100 * (5 / 7 - 1 / 7))
    assert barrier.loss_alpha == 0.5  # the loss peaks on the ridge; the error is 5/7 wherever w² < 0.1
    assert barrier.error_alpha == 0.375 and curve.error[9:16].tolist() == pytest.approx([500 / 7] * 7)

    def softplus(value: float) -> float:  # cross-entropy of logits [z, 0] for class 0 is softplus(−z)
        return math.log1p(math.exp(value))

    by_hand = np.mean([softplus(t) for t in thresholds]) - np.mean([softplus(t - 1) for t in thresholds])
    assert barrier.loss == pytest.approx(by_hand, rel=1e-5)
    assert barrier_height([1.0, 3.0, 2.0]) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="missing"):
        barrier_height([1.0, float("nan"), 2.0])


# -- the plane -------------------------------------------------------------------------------------------------
def flat(state, names):
    return np.concatenate([state[name].double().numpy().ravel() for name in names])


def test_plane_holds_the_three_points_at_the_coordinates_its_page_marks(tmp_path):
    states = [tiny_state(seed) for seed in (0, 1, 2)]
    plane = plane_through(*states, names=("start", "copy A", "copy B"))
    floats = [name for name, value in states[0].items() if value.is_floating_point()]
    a, b, c = (flat(state, floats) for state in states)
    # independent Gram–Schmidt in numpy
    u = (b - a) / np.linalg.norm(b - a)
    rest = (c - a) - ((c - a) @ u) * u
    expected = {"start": (0, 0), "copy A": (np.linalg.norm(b - a), 0), "copy B": ((c - a) @ u, np.linalg.norm(rest))}
    for name, xy in expected.items():
        assert plane.points[name] == pytest.approx(xy, rel=1e-9)
    u_ours, v_ours = flat(plane.u, floats), flat(plane.v, floats)
    assert np.linalg.norm(u_ours) == pytest.approx(1, abs=1e-6) and np.linalg.norm(v_ours) == pytest.approx(1, abs=1e-6)
    assert abs(u_ours @ v_ours) < 1e-6
    for state, (x, y) in zip(states, plane.points.values(), strict=True):
        on_plane = plane.state_at(x, y)
        for name in floats:
            torch.testing.assert_close(on_plane[name], state[name], atol=1e-5, rtol=1e-5)

    test = SPLITS.test
    result = plane_surface(TinyBN(), plane, test.x, test.y, grid_points=4, margin=0.2, n_examples=50, seed=1,
                           device="cpu", progress=False)
    assert result.surface.loss.shape == (4, 4) and np.isfinite(result.surface.loss).all()
    xs, ys = result.surface.xs, result.surface.ys
    span = max(expected["copy A"][0], expected["copy B"][1], abs(expected["copy B"][0]))
    assert xs.min() < min(0, expected["copy B"][0]) and ys.max() > expected["copy B"][1]
    assert xs.max() - xs.min() <= 1.4 * span + 1e-9
    index = torch.from_numpy(select_examples(len(test.y), 50, 1))
    for point, state in zip(result.points, states, strict=True):  # each point evaluates to its own network
        loss, acc = own_loss(state, test.x[index], test.y[index])
        assert point.loss == pytest.approx(loss, rel=1e-4) and point.acc == pytest.approx(acc)

    page = write_html(plane_figure(result.surface, {p.name: (p.x, p.y, p.loss) for p in result.points}, title="plane"),
                      tmp_path / "plane.html")
    figure = json.loads(re.search(r'id="lossviz-figure">(.*?)</script>', page.read_text(), re.S).group(1))
    markers = next(trace for trace in figure["data"] if trace["type"] == "scatter3d")
    assert markers["text"] == ["start", "copy A", "copy B"]
    for position, name in enumerate(expected):
        assert (markers["x"][position], markers["y"][position]) == pytest.approx(expected[name], rel=1e-9)
        assert markers["z"][position] == pytest.approx(math.log(result.points[position].loss))


def test_plane_refuses_points_on_one_line():
    a, b = tiny_state(0), tiny_state(1)
    middle = interpolate_states(a, b, 0.5)
    with pytest.raises(ValueError, match="on one line"):
        plane_through(a, b, middle)
    with pytest.raises(ValueError, match="same point"):
        plane_through(a, a, b)


def test_masks_hold_along_the_path_and_on_the_plane():
    states = [tiny_state(seed) for seed in (0, 1, 2)]
    generator = torch.Generator().manual_seed(4)
    mask = {name: torch.rand(states[0][name].shape, generator=generator) < 0.4 for name in ("conv.weight", "fc.weight")}
    for alpha in np.linspace(0, 1, 7):
        between = interpolate_states(states[0], states[1], alpha, mask)
        assert all(not between[name][~keep].any() for name, keep in mask.items())
    plane = plane_through(*states, mask=mask)
    for name, keep in mask.items():
        assert not plane.u[name][~keep].any() and not plane.v[name][~keep].any()
        assert plane.u[name][keep].any()
    for x, y in ((0.3, -2.0), (5.0, 1.5)):
        assert all(not plane.state_at(x, y)[name][~keep].any() for name, keep in mask.items())
    # the engine walks the masked path: an interior point equals the masked interpolation's own forward
    test = SPLITS.test
    curve = linear_path(TinyBN(), states[0], states[1], test.x, test.y, points=5, mask=mask, device="cpu",
                        progress=False)
    unmasked = linear_path(TinyBN(), states[0], states[1], test.x, test.y, points=5, device="cpu", progress=False)
    loss, _ = own_loss(interpolate_states(states[0], states[1], 0.25, mask), test.x, test.y)
    assert curve.loss[1] == pytest.approx(loss, rel=1e-5) and abs(unmasked.loss[1] - loss) > 1e-3


# -- instability analysis of lottery tickets -------------------------------------------------------------------
CONFIG = TrainConfig(epochs=2, batch_size=64, lr=3e-3, early_stopping=True, train_eval_examples=0, progress=False)


def make_model() -> nn.Module:
    return build_model("lenet5", SMALL_SHAPE, 10)


@pytest.fixture(scope="module")
def tickets(tmp_path_factory) -> Path:
    """A tiny IMP run that rewound to epoch 1 (so rewind.pt holds θ_1 of the dense run)."""
    out = tmp_path_factory.mktemp("lottery")
    torch.manual_seed(0)
    run_lottery(make_model, SPLITS, CONFIG, IMPConfig(levels=2, rate=0.5, rewind_epoch=1, seed=5), out)
    return out


SETTINGS = InstabilityConfig(levels=(0, 1), rewind_epochs=(0, 1), path_points=5, n_examples=48, seed=7,
                             plane_grid_points=3, plane_n_examples=32)


def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def analysed(tickets, tmp_path_factory):
    out = tmp_path_factory.mktemp("instability")
    starts: dict[tuple, dict] = {}

    def epoch(key, copy_name, record, replayed):
        starts.setdefault((key, copy_name), {"replayed": replayed})

    analysis = Instability(make_model, SPLITS, CONFIG, SETTINGS, tickets, out, progress=False,
                           callbacks=InstabilityCallbacks(epoch=epoch))
    return analysis, analysis.run(), out


def test_copies_start_at_the_masked_rewind_point_train_apart_and_keep_the_mask(analysed, tickets):
    analysis, results, out = analysed
    assert [r.key for r in results] == analysis.keys()
    assert {(r.kind, r.level, r.rewind_epoch) for r in results} == {
        (kind, level, k) for kind in ("winning", "random") for level in (0, 1) for k in (0, 1)}
    # θ_1 computed here from θ0 equals the lottery's own rewind.pt, the dense run after epoch 1
    analysis._dense_trajectory()
    computed, lottery = load_state_dict(out / "rewind" / "epoch_1.pt"), load_state_dict(tickets / "rewind.pt")
    assert all(torch.equal(computed[name], lottery[name]) for name in lottery)
    theta0 = load_state_dict(tickets / "theta0.pt")
    for result in results:
        mask = load_mask(level_dir(tickets, result.kind, result.level) / "mask.pt")
        start = analysis.start_state(result.key)
        base = theta0 if result.rewind_epoch == 0 else lottery
        for name, value in base.items():
            expected = value * mask[name] if name in mask else value
            assert torch.equal(start[name], expected), (result.key, name)
        a, b = (analysis.copy_state(result.key, copy_name) for copy_name in ("a", "b"))
        assert not torch.equal(a["fc1.weight"], b["fc1.weight"])  # different data orders
        for name, keep in mask.items():
            assert not a[name][~keep].any() and not b[name][~keep].any()
        assert result.seeds == [copy_seed(7, result.level, result.rewind_epoch, result.pair, c) for c in "ab"]
        assert result.barrier.error == pytest.approx(barrier_height(result.curve.error))
        assert result.barrier.error >= abs(result.curve.error[0] - result.curve.error[-1]) / 2 - 1e-9
        history = json.loads((result.key.directory(out) / "copy_a" / "result.json").read_text())["history"]
        assert len(history) == CONFIG.epochs - result.rewind_epoch  # the remaining epochs, to the end


def test_path_ends_are_the_copies_own_losses(analysed):
    analysis, results, _ = analysed
    result = next(r for r in results if r.key == PairKey("winning", 1, 0, 0))
    index = torch.from_numpy(select_examples(len(SPLITS.test.y), 48, 7))
    x, y = SPLITS.test.x[index], SPLITS.test.y[index]
    for position, copy_name in ((0, "a"), (-1, "b")):
        loss, acc = own_loss(analysis.copy_state(result.key, copy_name), x, y, make_model())
        assert result.curve.loss[position] == pytest.approx(loss, rel=1e-5)
        assert result.curve.error[position] == pytest.approx(100 - acc)


def test_random_level_zero_is_the_winning_dense_pair_not_trained_twice(analysed):
    _, results, out = analysed
    by_key = {r.key: r for r in results}
    for k in (0, 1):
        shared, source = by_key[PairKey("random", 0, k, 0)], by_key[PairKey("winning", 0, k, 0)]
        assert shared.shared_with == "winning" and source.shared_with is None
        assert shared.curve.to_dict() == source.curve.to_dict() and shared.barrier == source.barrier
        copied = PairKey("random", 0, k, 0).directory(out) / "copy_a" / "model.pt"
        assert copied.read_bytes() == (PairKey("winning", 0, k, 0).directory(out) / "copy_a" / "model.pt").read_bytes()
    assert by_key[PairKey("random", 1, 0, 0)].shared_with is None


def test_a_rerun_replays_every_finished_pair_and_changes_no_file(analysed, tickets):
    _, results, out = analysed
    before = digests(out)
    ends = []
    again = Instability(make_model, SPLITS, CONFIG, SETTINGS, tickets, out, progress=False,
                        callbacks=InstabilityCallbacks(pair_end=lambda key, result, d, replayed: ends.append(replayed)))
    assert [r.to_json() for r in again.run()] == [r.to_json() for r in results]
    assert ends == [True] * len(results) and digests(out) == before
    assert [r.to_json() for r in load_pair_results(out)] == [r.to_json() for r in results]
    assert isinstance(PairResult.load(results[0].key.directory(out)), PairResult)


def test_planes_through_copies_and_tickets(analysed):
    analysis, _, out = analysed
    planes = analysis.planes()
    # copies: every unshared (kind, level, k); tickets: level 1 at each k
    assert sorted(planes) == sorted([f"copies_winning_level_0{level}_k_{k}" for level in (0, 1) for k in (0, 1)]
                                    + [f"copies_random_level_01_k_{k}" for k in (0, 1)]
                                    + [f"tickets_level_01_k_{k}" for k in (0, 1)])
    key = PairKey("winning", 1, 0, 0)
    copies = planes["copies_winning_level_01_k_0"]
    mask = analysis.mask("winning", 1)
    assert all(not copies.plane.u[name][~keep].any() for name, keep in mask.items())
    index = torch.from_numpy(select_examples(len(SPLITS.test.y), 32, 7))
    own = own_loss(analysis.copy_state(key, "b"), SPLITS.test.x[index], SPLITS.test.y[index], make_model())[0]
    assert copies.points[2].name == "copy B" and copies.points[2].loss == pytest.approx(own, rel=1e-4)
    assert (out / "planes" / "tickets_level_01_k_1.h5").is_file()


def test_summary_and_figures(analysed, tmp_path):
    _, results, _ = analysed
    summary = summarize_barriers(results, threshold=2.0)
    entry = summary["winning"]["level_01"]["k_0"]
    pair = next(r for r in results if r.key == PairKey("winning", 1, 0, 0))
    assert entry["error_barrier"] == pair.barrier.error and entry["pairs"] == 1
    assert entry["error_barrier_se"] == pair.barrier.error_se
    assert entry["stable"] == (pair.barrier.error <= 2.0)
    assert summary["random"]["level_01"]["remaining"] == pytest.approx(pair.remaining)
    paths = path_curves_figure({r.key.name: r.curve.to_dict() for r in results}, threshold=2.0)
    assert len([t for t in paths.data if t.fill == "toself"]) == 2 * len(results)  # a band per panel and path
    bars = barrier_figure({"IMP, k=0": {"remaining": [1.0, 0.5], "error": [1.0, 2.0], "error_se": [0.1, 0.2],
                                        "loss": [0.1, 0.2], "loss_se": [0.01, 0.02]}}, threshold=2.0)
    assert list(bars.data[0].error_y.array) == [0.1, 0.2] and bars.layout.xaxis.type == "log"
    assert "instability" in write_html(bars, tmp_path / "b.html").read_text()


def test_settings_are_validated_against_the_lottery_run(tickets, tmp_path):
    with pytest.raises(ValueError, match=r"rewind_epochs \[2\].*allowed: 0 … 1"):
        Instability(make_model, SPLITS, CONFIG, InstabilityConfig(levels=(0,), rewind_epochs=(0, 2)), tickets,
                    tmp_path)
    with pytest.raises(ValueError, match="levels must exist"):
        Instability(make_model, SPLITS, CONFIG, InstabilityConfig(levels=(0, 3)), tickets, tmp_path)
    with pytest.raises(ValueError, match="differs from the lottery run's in lr"):
        Instability(make_model, SPLITS, TrainConfig(**{**CONFIG.__dict__, "lr": 1e-2}),
                    InstabilityConfig(levels=(0,)), tickets, tmp_path)
    with pytest.raises(ValueError, match="planes=.*tickets"):
        InstabilityConfig(levels=(1,))
    with pytest.raises(ValueError, match="kinds="):
        InstabilityConfig(kinds=("winning", "lucky"), planes=())


# -- the command line ------------------------------------------------------------------------------------------
def test_cli_interpolate_and_plane_on_checkpoint_files(tmp_path, capsys):
    write_tiny_dataset(tmp_path)
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        paths.append(str(save_model(build_model("lenet5"), tmp_path / f"m{seed}.pt")))
    mask = {name: torch.rand(keep.shape, generator=torch.Generator().manual_seed(1)) < 0.5
            for name, keep in full_mask(build_model("lenet5")).items()}
    torch.save(mask, tmp_path / "mask.pt")
    common = ["--model", "lenet5", "--dataset", "fashion_mnist", "--data-root", str(tmp_path / "data/prepared"),
              "--no-progress", "--device", "cpu"]
    assert main(["interpolate", *paths[:2], *common, "--examples", "40", "--points", "5",
                 "--html", str(tmp_path / "path.html")]) == 0
    report = json.loads(capsys.readouterr().out)
    test = load_splits(tmp_path / "data/prepared", "fashion_mnist", val_size=0).test
    index = torch.from_numpy(select_examples(len(test.y), 40, 0))
    for position, path in enumerate(paths[:2]):
        loss, _ = own_loss(load_state_dict(path), test.x[index], test.y[index], build_model("lenet5"))
        assert report["endpoints"]["loss"][position] == pytest.approx(loss, rel=1e-5)
    assert report["error_barrier"] >= 0 and (tmp_path / "path.html").is_file()

    assert main(["plane", *paths, *common, "--mask", str(tmp_path / "mask.pt"), "--grid", "3", "--examples", "30",
                 "--names", "a", "b", "c", "--out", str(tmp_path / "plane.h5"),
                 "--html", str(tmp_path / "plane.html")]) == 0
    points = json.loads(capsys.readouterr().out)["points"]
    states = [apply_mask_to(load_state_dict(path), mask) for path in paths]
    expected = plane_through(*states, names=("a", "b", "c")).points
    for name, xy in expected.items():  # the CLI masked every checkpoint: unmasked ones lie elsewhere
        assert (points[name]["x"], points[name]["y"]) == pytest.approx(xy, rel=1e-6)

    assert main(["interpolate", paths[0], str(tmp_path / "mask.pt"), *common]) == 2
    assert "does not fit LeNet5" in capsys.readouterr().err


def apply_mask_to(state, mask):
    return {name: value * mask[name] if name in mask else value for name, value in state.items()}
