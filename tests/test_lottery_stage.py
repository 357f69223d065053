"""The `lottery` and `lottery_landscapes` stages end to end: the real dvc.yaml stages run by `dvc repro` in a
temporary repository with tiny params and data, logging to a real SQLite MLflow store (masks in MLflow equal
the DVC outputs); and the `lottery` stage SIGKILLed mid-level and restarted."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lossviz.lottery import load_mask
from lossviz.surface import Surface
from tests.helpers_project import REPO, make_project, mlflow_client, stage_env, write_tiny_dataset

STAGES = ("lottery", "lottery_landscapes")


def tiny_params(levels: int = 3, epochs: int = 2) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(seed=2, device="cpu")
    params["data"].update(datasets=["fashion_mnist"], download=False, val_size=100)
    params["lottery"].update(dataset="fashion_mnist", model="lenet5", epochs=epochs, batch_size=50, levels=levels,
                             rate=0.5, output_rate=None, scope="layer", rewind_epoch=0, patience=None,
                             max_train_examples=None, train_eval_examples=100, random_tickets=True)
    params["lottery_landscapes"].update(levels=[0, levels - 1], kinds=["winning", "random"], grid_points=5,
                                        n_examples=50)
    params["lottery_stability"].update(levels=[0, levels - 1], rewind_epochs=[0])  # below lottery.levels/epochs
    return params






def lottery_runs(root: Path) -> tuple[dict, dict]:
    """(parents by kind, children by (kind, level)) of experiment "lottery"."""
    client = mlflow_client(root)
    experiment = client.get_experiment_by_name("lottery")
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    parents = {r.data.tags["lottery.kind"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    children = {}
    for run in runs:
        if "mlflow.parentRunId" in run.data.tags:
            key = (run.data.tags["lottery.kind"], int(run.data.tags["lottery.level"]))
            assert key not in children, f"two runs for {key}"
            children[key] = run
    return parents, children


def test_dvc_repro_runs_imp_logs_masks_and_draws_the_landscapes(tmp_path):
    stages = make_project(tmp_path, tiny_params(), STAGES)
    assert {"lossviz/lottery.py", "lossviz/pruning.py", "data/prepared"} <= set(stages["lottery"]["deps"])
    assert "models/lottery" in stages["lottery_landscapes"]["deps"]
    run = subprocess.run(["dvc", "repro"], cwd=tmp_path, env=stage_env(), capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    metrics = json.loads((tmp_path / "results" / "lottery.json").read_text())
    out = tmp_path / "models" / "lottery"
    assert (out / "theta0.pt").is_file() and not list((tmp_path / "tmp" / "resume").glob("lottery-*"))
    for kind in ("winning", "random"):
        assert sorted(metrics[kind]) == ["level_00", "level_01", "level_02"]
        for level in range(3):
            entry = metrics[kind][f"level_{level:02d}"]
            mask = load_mask(out / kind / f"level_{level:02d}" / "mask.pt")
            alive = sum(int(m.sum()) for m in mask.values()) / sum(m.numel() for m in mask.values())
            assert entry["remaining"] == pytest.approx(alive)
            assert entry["early_stop_iteration"] == 6 * entry["early_stop_epoch"]  # 300 examples / 50
            assert 0 <= entry["test_acc"] <= 1
    assert metrics["winning"]["level_02"]["remaining"] == pytest.approx(0.25, abs=0.01)

    client = mlflow_client(tmp_path)
    parents, children = lottery_runs(tmp_path)
    assert set(parents) == {"winning", "random"} and len(children) == 6
    for kind, parent in parents.items():
        assert parent.info.status == "FINISHED" and parent.data.tags["dvc.stage"] == "lottery"
        logged = {m.step: m.value for m in client.get_metric_history(parent.info.run_id, "test_acc")}
        assert logged == pytest.approx({level: metrics[kind][f"level_{level:02d}"]["test_acc"] for level in range(3)})
        steps = sorted(m.step for m in client.get_metric_history(parent.info.run_id, "remaining"))
        assert steps == [0, 1, 2]
    for (kind, level), child in children.items():
        assert child.info.status == "FINISHED"
        assert child.data.tags["mlflow.parentRunId"] == parents[kind].info.run_id
        epochs = sorted(m.step for m in client.get_metric_history(child.info.run_id, "val_loss"))
        assert epochs == [1, 2]  # per-epoch curves
        # the mask artifact is the DVC output, byte for byte and tensor for tensor
        downloaded = Path(client.download_artifacts(child.info.run_id, "mask/mask.pt", str(tmp_path / "dl" /
                                                                                        f"{kind}{level}")))
        published = out / kind / f"level_{level:02d}" / "mask.pt"
        assert downloaded.read_bytes() == published.read_bytes()
        theirs, ours = load_mask(downloaded), load_mask(published)
        assert theirs.keys() == ours.keys() and all(torch.equal(theirs[k], ours[k]) for k in ours)

    reports = tmp_path / "reports" / "lottery_landscapes"
    assert sorted(p.name for p in reports.glob("*.html")) == ["figure5.html", "random.html", "side_by_side.html",
                                                              "winning.html"]
    winning_page = (reports / "winning.html").read_text()
    for level in (0, 2):  # subtitles: method, P_m, test accuracy
        entry = metrics["winning"][f"level_{level:02d}"]
        title = f"IMP · P_m={100 * entry['remaining']:.1f}% · test acc {100 * entry['test_acc']:.2f}%"
        assert title in winning_page, title
    assert "random · P_m=" in (reports / "random.html").read_text()
    assert "early-stop iteration" in (reports / "figure5.html").read_text()
    surface = Surface.load(tmp_path / "surfaces" / "lottery_landscapes" / "random_level_02.h5")
    assert surface.meta["method"] == "random" and surface.meta["masked_directions"]
    assert surface.loss.shape == (5, 5)
    shapes = json.loads((tmp_path / "results" / "lottery_landscapes.json").read_text())
    assert set(shapes["winning"]) == {"level_00", "level_02"} and "depth" in shapes["random"]["level_02"]


def digests(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


def test_killed_mid_level_and_restarted_keeps_finished_levels_bit_identical(tmp_path):
    params = tiny_params(levels=4, epochs=3)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    write_tiny_dataset(tmp_path)
    env = {**stage_env(), "DVC_ROOT": str(tmp_path)}
    command = [sys.executable, "-m", "pipelines.lottery"]
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith("lottery: winning level_02 epoch 1"):
            os.kill(process.pid, signal.SIGKILL)
            break
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, "".join(seen)
    work = next((tmp_path / "tmp" / "resume").glob("lottery-*"))
    levels = work / "levels"
    finished = sorted(p.parent for p in levels.rglob("result.json"))
    finished_names = [str(p.relative_to(levels)) for p in finished]
    assert "winning/level_00" in finished_names and "winning/level_03" not in finished_names
    assert list((work / "checkpoints").glob("winning-level_0*.pt"))  # the level in progress
    before = {name: digests(levels / name) for name in finished_names}

    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    for name in finished_names:
        assert f"lottery: {name.replace('/', ' ')} found finished" in again.stdout
        assert digests(tmp_path / "models" / "lottery" / name) == before[name], name
    assert "winning level_03 done" in again.stdout and "random level_03 done" in again.stdout

    client = mlflow_client(tmp_path)
    parents, children = lottery_runs(tmp_path)  # the same runs continued: one per kind and level
    assert len(parents) == 2 and len(children) == 8
    assert all(r.info.status == "FINISHED" for r in [*parents.values(), *children.values()])
    for parent in parents.values():
        steps = [m.step for m in client.get_metric_history(parent.info.run_id, "test_acc")]
        assert sorted(steps) == [0, 1, 2, 3]  # no level logged twice
    for (kind, level), child in children.items():
        steps = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        result = json.loads((tmp_path / "models/lottery" / kind / f"level_{level:02d}" / "result.json").read_text())
        assert sorted(steps) == list(range(1, result["epochs_trained"] + 1)), (kind, level)
