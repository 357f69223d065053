"""The `lottery_stability` and `lottery_stability_pages` stages end to end: the real dvc.yaml stages (after
`lottery`) run by `dvc repro` in a temporary repository with tiny params and data, logging to a real SQLite MLflow
store (a run for the stage, a child per pair with its path, a child of the pair per copy with its curves, a run
with the pages); and the stage SIGKILLed after its first pair and restarted (finished work kept bit for bit, no
run logged twice)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lossviz.params import ParamsError, parse_params
from lossviz.stability import PairResult
from lossviz.surface import Surface
from pipelines.lottery_stability import check
from tests.helpers_project import REPO, make_project, mlflow_client, stage_env

STAGES = ("lottery", "lottery_stability", "lottery_stability_pages")
OUT = Path("models/lottery_stability")


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(seed=2, device="cpu")
    params["data"].update(datasets=["fashion_mnist"], download=False, val_size=100)
    params["lottery"].update(dataset="fashion_mnist", model="lenet5", epochs=2, batch_size=50, levels=2, rate=0.5,
                             output_rate=None, scope="layer", rewind_epoch=0, patience=None, max_train_examples=None,
                             train_eval_examples=0, random_tickets=True)
    params["lottery_landscapes"].update(levels=[0, 1])  # below lottery.levels, as params require
    params["lottery_stability"].update(levels=[0, 1], kinds=["winning", "random"], rewind_epochs=[0, 1], pairs=1,
                                       path_points=5, n_examples=50, plane_grid_points=3, plane_n_examples=20)
    return params


def stability_runs(root: Path) -> tuple[list, dict, dict]:
    """(stage runs, pair runs by name, copy runs by (pair name, copy)) of experiment "lottery_stability"."""
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("lottery_stability")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    stage = [r for r in runs
             if r.data.tags["dvc.stage"] == "lottery_stability" and "mlflow.parentRunId" not in r.data.tags]
    pairs, copies = {}, {}
    for run in runs:
        tags = run.data.tags
        if "stability.copy" in tags:
            key = (run.info.run_name.rsplit("-copy_", 1)[0], tags["stability.copy"])
            assert key not in copies, f"two runs for {key}"
            copies[key] = run
        elif "stability.pair" in tags:
            assert run.info.run_name not in pairs, f"two runs for {run.info.run_name}"
            pairs[run.info.run_name] = run
    return stage, pairs, copies


def test_dvc_repro_measures_barriers_logs_pairs_and_copies_and_writes_the_pages(tmp_path):
    stages = make_project(tmp_path, tiny_params(), STAGES)
    assert {"lossviz/stability.py", "models/lottery"} <= set(stages["lottery_stability"]["deps"])
    run = subprocess.run(["dvc", "repro"], cwd=tmp_path, env=stage_env(), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    metrics = json.loads((tmp_path / "results" / "lottery_stability.json").read_text())
    keys = [(kind, level, k) for kind in ("winning", "random") for level in (0, 1) for k in (0, 1)]
    for kind, level, k in keys:
        pair = PairResult.load(tmp_path / OUT / kind / f"level_0{level}" / f"k_{k}" / "pair_0")
        entry = metrics[kind][f"level_0{level}"][f"k_{k}"]
        assert entry["error_barrier"] == pytest.approx(pair.barrier.error)
        assert entry["loss_barrier"] == pytest.approx(pair.barrier.loss) and entry["pairs"] == 1
        assert entry["stable"] == (pair.barrier.error <= 2.0)
        surface = Surface.load(tmp_path / "surfaces/lottery_stability/paths" / f"{kind}_level_0{level}_k_{k}_pair_0.h5")
        assert surface.loss.tolist() == pytest.approx(pair.curve.loss.tolist())
    assert metrics["random"]["level_00"] == metrics["winning"]["level_00"]  # the dense pair, shared
    assert metrics["winning"]["level_01"]["remaining"] == pytest.approx(0.5, abs=0.01)
    table = (tmp_path / "metrics" / "lottery_stability.csv").read_text().splitlines()
    assert table[0].split(",") == ["level", "percent_remaining", "winning_error_barrier_k0", "winning_error_barrier_k1",
                                   "random_error_barrier_k0", "random_error_barrier_k1"] and len(table) == 3
    reports = tmp_path / "reports" / "lottery_stability"
    assert sorted(p.name for p in reports.glob("*.html")) == [
        "barriers.html", "paths_level_00.html", "paths_level_01.html", "planes_copies.html", "planes_tickets.html"]
    assert "stable below 2 points" in (reports / "barriers.html").read_text()
    planes = sorted(p.name for p in (tmp_path / "surfaces/lottery_stability/planes").glob("*.h5"))
    assert planes == sorted([f"copies_winning_level_0{level}_k_{k}.h5" for level in (0, 1) for k in (0, 1)]
                            + [f"copies_random_level_01_k_{k}.h5" for k in (0, 1)]
                            + [f"tickets_level_01_k_{k}.h5" for k in (0, 1)])
    assert not list((tmp_path / "tmp" / "resume").glob("lottery_stability-*"))

    client = mlflow_client(tmp_path)
    stage, pairs, copies = stability_runs(tmp_path)
    assert len(stage) == 1 and stage[0].info.status == "FINISHED"
    stage_id = stage[0].info.run_id
    history = client.get_metric_history(stage_id, "winning_error_barrier_k_0")
    assert {m.step: m.value for m in history} == pytest.approx(
        {level: metrics["winning"][f"level_0{level}"]["k_0"]["error_barrier"] for level in (0, 1)})
    pages_run = client.search_runs([stage[0].info.experiment_id], "tags.`dvc.stage` = 'lottery_stability_pages'")
    assert len(pages_run) == 1 and pages_run[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(pages_run[0].info.run_id, "reports")}
    assert logged == {f"reports/{page.name}" for page in reports.glob("*.html")}
    assert len(pairs) == 8 and len(copies) == 16
    for pair_run in pairs.values():
        assert pair_run.data.tags["mlflow.parentRunId"] == stage_id and pair_run.info.status == "FINISHED"
        assert sorted(m.step for m in client.get_metric_history(pair_run.info.run_id, "path_error")) == list(range(5))
    for (pair_name, copy_name), copy_run in copies.items():
        assert copy_run.data.tags["mlflow.parentRunId"] == pairs[pair_name].info.run_id
        k = int(pair_name.split("-k_")[1].split("-")[0])
        steps = sorted(m.step for m in client.get_metric_history(copy_run.info.run_id, "test_acc"))
        assert steps == list(range(1, 2 - k + 1)), (pair_name, copy_name)  # the epochs after the rewind point
    assert copies[("random-level_00-k_0-pair_0", "a")].data.tags["stability.shared_with"] == "winning"


def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_killed_after_a_pair_and_restarted_keeps_finished_work_and_logs_nothing_twice(tmp_path):
    params = tiny_params()
    params["lottery"]["random_tickets"] = False
    params["lottery_stability"].update(levels=[1], kinds=["winning"], planes=[])
    # the code copied into the project: the resume folder is keyed by the code, which must not change in between
    make_project(tmp_path, params, STAGES)
    env = {**stage_env(), "DVC_ROOT": str(tmp_path)}
    lottery = subprocess.run([sys.executable, "-m", "pipelines.lottery"], cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
    assert lottery.returncode == 0, lottery.stderr[-2000:]
    command = [sys.executable, "-m", "pipelines.lottery_stability"]
    process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("lottery_stability: winning/level_01/k_1/pair_0 copy a epoch 1"):
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    work = next((tmp_path / "tmp" / "resume").glob("lottery_stability-*")) / "runs"
    first = work / "winning/level_01/k_0/pair_0"
    assert (first / "path.json").is_file() and not (work / "winning/level_01/k_1/pair_0/path.json").exists()
    before = digests(first)

    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "lottery_stability: winning/level_01/k_0/pair_0 found finished" in again.stdout
    assert "winning/level_01/k_1/pair_0 done" in again.stdout
    path_file = before.pop("path.h5")  # published among the surfaces, the rest among the models
    assert digests(tmp_path / OUT / "winning/level_01/k_0/pair_0") == before
    published = tmp_path / "surfaces/lottery_stability/paths/winning_level_01_k_0_pair_0.h5"
    assert hashlib.sha256(published.read_bytes()).hexdigest() == path_file
    client = mlflow_client(tmp_path)
    stage, pairs, copies = stability_runs(tmp_path)
    assert len(stage) == 1 and len(pairs) == 2 and len(copies) == 4
    for run in [*stage, *pairs.values(), *copies.values()]:
        assert run.info.status == "FINISHED"
    for pair_run in pairs.values():
        assert sorted(m.step for m in client.get_metric_history(pair_run.info.run_id, "path_error")) == list(range(5))
    for copy_run in copies.values():
        steps = [m.step for m in client.get_metric_history(copy_run.info.run_id, "test_acc")]
        assert len(steps) == len(set(steps))


def test_params_are_checked_against_the_lottery_run_before_any_output(tmp_path):
    params = tiny_params()
    params["lottery_stability"].update(levels=[0, 5])
    with pytest.raises(ParamsError, match=r"lottery_stability.levels: got \[5\]; allowed: 0 … 1"):
        parse_params(params)
    params = tiny_params()
    params["lottery_stability"].update(rewind_epochs=[0, 2])  # k = epochs would leave the copies nothing to train
    with pytest.raises(ParamsError, match=r"lottery_stability.rewind_epochs: got \[2\]; allowed: 0 … 1"):
        parse_params(params)
    params = tiny_params()
    params["lottery"]["random_tickets"] = False
    problems = check(parse_params(params), tmp_path)
    assert problems == ["lottery_stability.kinds: got 'random' but lottery.random_tickets is false"]
    assert check(parse_params(tiny_params()), tmp_path) == [
        "models/lottery lacks models/lottery/winning/level_00, models/lottery/winning/level_01, "
        "models/lottery/random/level_00, models/lottery/random/level_01: run the `lottery` stage first"]
