"""The `sample_size` stage end to end: the real dvc.yaml stage run by `dvc repro` in a temporary repository
with tiny params, data and checkpoint, logging to a real SQLite MLflow store; the same study on ResNet-56
(with and without shortcuts) from official-layout `.t7` checkpoints on synthetic CIFAR-10; params checks;
and the stage's timing of resumed surfaces."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lossviz.checkpoints import save_model
from lossviz.models import build_model
from lossviz.surface import Surface
from tests.helpers_batch import assert_offline_page
from tests.helpers_project import REPO, make_project, stage_env, write_tiny_dataset

NS = [1, 5, 20, 60]


def tiny_params(**section) -> dict:
    """The repository's params.yaml (DVC wants every key the stage lists) with tiny settings."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(seed=2, device="cpu")
    params["data"].update(datasets=["fashion_mnist"], download=False, val_size=100)
    params["train"].update(dataset="fashion_mnist", model="lenet5")
    params["sample_size"].update({"model": None, "dataset": None, "checkpoint": None, "n_examples": NS,
                                  "grid_points": 5, "extent": 1.0, "clip": True, "auto_tolerance": 0.2,
                                  "auto_candidates": [5, 20, 60], "auto_pilot_points": 3, "timing_points": 3,
                                  "timing_rounds": 2, "adaptive_grid_points": 33, "adaptive_n_examples": 20,
                                  "adaptive_spot_checks": 10, **section})
    return params


def write_trained_like_checkpoint(root: Path) -> None:
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28))
    with torch.no_grad():  # confident outputs, so the per-example losses (and their errors) differ
        model.fc3.weight.mul_(10)
    save_model(model, root / "models" / "train" / "model.pt", model="lenet5", dataset="fashion_mnist")




def mlflow_run(root: Path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("sample_size")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    return client, runs[0]


def test_dvc_repro_sample_size_writes_every_output_and_the_mlflow_run(tmp_path):
    stage = make_project(tmp_path, tiny_params(), ("sample_size",))["sample_size"]
    write_trained_like_checkpoint(tmp_path)
    assert {"lossviz/sampling.py", "lossviz/engine.py", "models/train", "data/prepared"} <= set(stage["deps"])
    run = subprocess.run(["dvc", "repro", "sample_size"], cwd=tmp_path, env=stage_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr

    surfaces = {n: Surface.load(tmp_path / "surfaces" / "sample_size" / f"n_{n:05d}.h5") for n in NS}
    assert (tmp_path / "surfaces" / "sample_size" / "directions.h5").is_file()
    assert len({s.meta["directions_hash"] for s in surfaces.values()}) == 1  # the same directions for every n
    for n, surface in surfaces.items():
        assert surface.meta["n_examples"] == n == len(surface.example_indices) and surface.meta["complete"]
        assert surface.shape == (5, 5) and np.isnan(surface.loss[0, 0])  # the corner is outside the disk
    assert set(surfaces[5].example_indices) <= set(surfaces[20].example_indices)  # nested subsets

    metrics = json.loads((tmp_path / "results" / "sample_size.json").read_text())
    assert metrics["reference_n"] == 60 and sorted(map(int, metrics["by_n"])) == NS
    timings = json.loads((tmp_path / "timings" / "sample_size.json").read_text())  # wall times: never versioned
    for n in NS:
        row = metrics["by_n"][str(n)]
        assert {"n", "pearson_ln_loss", "rmse_ln_loss", "argmin_distance", "mean_loss_se"} <= set(row)
        assert not {"seconds", "speedup", "point_seconds"} & set(row)
        timed = timings["by_n"][str(n)]
        assert row["n"] == n and timed["seconds"] > 0 and timed["point_seconds"] > 0
        assert len(timings["point_seconds_by_round"][str(n)]["seconds_per_point"]) == 2  # timing_rounds
    reference = metrics["by_n"]["60"]
    assert reference["pearson_ln_loss"] == pytest.approx(1) and reference["rmse_ln_loss"] == 0
    assert timings["by_n"]["60"]["speedup"] == 1 and metrics["by_n"]["1"]["mean_loss_se"] is None
    headline = json.loads((tmp_path / "metrics" / "sample_size.json").read_text())
    settled = [n for n in NS[:-1] if (metrics["by_n"][str(n)]["pearson_ln_loss"] or 0) >= 0.99]
    assert headline["settled_n"] == (settled[0] if settled else None)
    assert headline["auto_n"] == metrics["auto"]["n"]
    assert metrics["by_n"]["20"]["rmse_ln_loss"] > 0
    with np.errstate(divide="ignore"):
        expected_rmse = np.sqrt(np.nanmean((np.log(surfaces[20].loss) - np.log(surfaces[60].loss)) ** 2))
    assert metrics["by_n"]["20"]["rmse_ln_loss"] == pytest.approx(expected_rmse)
    assert metrics["auto"]["n"] in (5, 20, 60) and metrics["auto"]["tolerance"] == 0.2
    assert set(metrics["auto"]["trials"]) <= {"5", "20", "60"}

    pages = {page: (tmp_path / "reports" / "sample_size" / page).read_text() for page in ("compare.html",
                                                                                          "fidelity.html")}
    for page in pages:
        assert_offline_page(tmp_path / "reports" / "sample_size" / page)
    assert "n = 60" in pages["compare.html"] and "pearson_ln_loss" in pages["compare.html"]
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["sample_size"]
    assert {out["path"] for out in lock["outs"]} == {"surfaces/sample_size", "reports/sample_size",
                                                     "results/sample_size.json", "metrics/sample_size.json",
                                                     "metrics/sample_size.csv"}
    assert not list((tmp_path / "tmp" / "resume").glob("sample_size-*"))  # the work directory goes once done

    client, logged = mlflow_run(tmp_path)
    history = client.get_metric_history(logged.info.run_id, "pearson_ln_loss")
    assert sorted(m.step for m in history) == NS
    assert {m.step: m.value for m in client.get_metric_history(logged.info.run_id, "seconds")}[20] == \
        pytest.approx(timings["by_n"]["20"]["seconds"])
    assert logged.data.metrics["auto_n"] == metrics["auto"]["n"] and logged.data.tags["dvc.stage"] == "sample_size"
    assert logged.data.params["sample_size.grid_points"] == "5"
    artifacts = {a.path for a in client.list_artifacts(logged.info.run_id, "reports")}
    assert artifacts == {"reports/compare.html", "reports/fidelity.html", "reports/adaptive.html"}
    adaptive = Surface.load(tmp_path / "surfaces" / "sample_size" / "adaptive.h5")  # 33×33 beside n = 20's 5×5
    assert adaptive.shape == (33, 33) and adaptive.interpolated.any() and metrics["adaptive"]["compared_with_n"] == 20
    assert metrics["adaptive"]["spot_within_certificate"] and metrics["adaptive"]["max_error"] <= 0.05
    assert (metrics["adaptive"]["grid_points"], metrics["adaptive"]["grid_points_total"]) == (33, 33 * 33)
    surfaces_logged = {a.path for a in client.list_artifacts(logged.info.run_id, "surfaces")}
    assert "surfaces/n_00060.h5" in surfaces_logged and "surfaces/directions.h5" in surfaces_logged
    assert "sample_size.json" in {a.path for a in client.list_artifacts(logged.info.run_id)}


def run_stage(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.sample_size"], cwd=REPO,
                          env={**stage_env(), "DVC_ROOT": str(root)}, capture_output=True, text=True, timeout=300)


def prepare_cifar(root: Path, cifar_dir: Path, params: dict) -> None:
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    run = subprocess.run([sys.executable, "-m", "pipelines.prepare"], cwd=REPO,
                         env={**stage_env(), "DVC_ROOT": str(root)}, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("model_name", ["resnet56", "resnet56_noshort"])
def test_resnet56_study_from_an_official_t7_on_cifar10(tmp_path, cifar_dir, model_name):
    torch.manual_seed(0)
    model = build_model(model_name, (3, 32, 32))
    checkpoint = tmp_path / f"{model_name}.t7"  # the official layout: DataParallel prefixes, extra keys
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}, "acc": 93.0,
                "epoch": 300}, checkpoint)
    params = tiny_params(model=model_name, dataset="cifar10", checkpoint=str(checkpoint), normalize=True,
                         n_examples=[1, 4, 20], grid_points=3, auto_candidates=[4, 20], auto_pilot_points=2,
                         adaptive_grid_points=0)
    params["data"].update(datasets=["cifar10"], cifar10_dir=str(cifar_dir), verify_checksums=False, val_size=10)
    for section in params.values():  # every stage's dataset must be prepared: make them all cifar10 here
        if isinstance(section, dict) and section.get("dataset") is not None:
            section["dataset"] = "cifar10"
    prepare_cifar(tmp_path, cifar_dir, params)

    run = run_stage(tmp_path)
    assert run.returncode == 0, run.stderr
    metrics = json.loads((tmp_path / "results" / "sample_size.json").read_text())
    assert metrics["model"] == model_name and metrics["dataset"] == "cifar10" and metrics["reference_n"] == 20
    surface = Surface.load(tmp_path / "surfaces" / "sample_size" / "n_00004.h5")
    assert surface.meta["model"] == model_name and surface.meta["checkpoint"] == checkpoint.name  # relative
    assert int(np.isfinite(surface.loss).sum()) == 5  # 3×3 grid, the 4 corners outside the disk
    assert (tmp_path / "reports" / "sample_size" / "compare.html").is_file()
    mlflow_run(tmp_path)


@pytest.mark.parametrize(("section", "message"), [
    ({"n_examples": [10, 500]}, "sample_size.n_examples: got 500; allowed: 1 … 100"),
    ({"model": "fashion_cnn"}, "set sample_size.checkpoint to a checkpoint of that model"),
    ({"n_examples": [5, 5]}, "sample_size.n_examples: got [5, 5]; expected distinct positive integers"),
    ({"auto_candidates": [1, 10]}, "sample_size.auto_candidates: got [1, 10]; expected increasing integers"),
])
def test_bad_params_stop_the_stage_before_any_output(tmp_path, section, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_params(**section)))
    write_tiny_dataset(tmp_path)
    write_trained_like_checkpoint(tmp_path)
    run = run_stage(tmp_path)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not (tmp_path / "surfaces").exists() and not (tmp_path / "mlruns").exists()


class FakeClock:
    """perf_counter and process_time that advance by fixed steps per call: 10 s wall, 4 s CPU."""

    def __init__(self):
        self.wall = self.cpu = 0.0

    def perf_counter(self):
        self.wall += 10.0
        return self.wall

    def process_time(self):
        self.cpu += 4.0
        return self.cpu


def test_resumed_surfaces_keep_or_scale_their_time(tmp_path, monkeypatch):
    import pipelines.sample_size as stage
    from lossviz.directions import random_directions
    from lossviz.engine import compute_surface
    from pipelines.sample_size import timed_surface

    model = build_model("lenet5", (1, 28, 28))
    inputs, targets = torch.rand(30, 1, 28, 28), torch.randint(0, 10, (30,))
    directions, axis = random_directions(model), np.linspace(-1, 1, 4)
    path = tmp_path / "s.h5"
    calls = []

    def compute():
        calls.append(1)
        return compute_surface(model, inputs, targets, directions, axis, axis, n_examples=10, out=path,
                               progress=False)

    surface, times = timed_surface(path, {}, 10, compute)
    assert len(calls) == 1 and surface.meta["complete"] and times["seconds"] > 0 and times["cpu_seconds"] > 0
    recorded = {"10": {"seconds": 123.0, "cpu_seconds": 200.0}}
    again, kept = timed_surface(path, recorded, 10, compute)  # finished and timed: nothing recomputed
    assert len(calls) == 1 and kept == recorded["10"] and np.array_equal(again.loss, surface.loss)
    _, retimed = timed_surface(path, {}, 10, compute)  # finished but its time lost: computed again
    assert len(calls) == 2 and retimed["seconds"] < 100
    # Killed half-way: the next run times only the points it computes, and scales that to the whole surface.
    import h5py

    with h5py.File(path, "r+") as handle:
        status = handle["point_status"][...]
        status.flat[: status.size // 2] = 0  # pending again
        handle["point_status"][...] = status
    monkeypatch.setattr(stage, "time", FakeClock())
    _, scaled = timed_surface(path, {}, 10, compute)
    assert len(calls) == 3 and Surface.load(path).meta["complete"]
    assert scaled == {"seconds": 20.0, "cpu_seconds": 8.0}  # half the points took 10 s: the whole, 20 s


def test_timing_points_spread_over_the_disk():
    from pipelines.sample_size import timing_points

    axis = np.linspace(-1, 1, 21)
    alphas, betas = timing_points(axis, 1.0, 12)
    assert len(alphas) == 12 and np.all(np.hypot(alphas, betas) <= 1)
    assert len(set(zip(alphas, betas, strict=True))) == 12
    assert betas.min() == -1 and betas.max() == 1  # from the first row of the disk to the last
