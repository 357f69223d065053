"""The `train` stage end to end: the real dvc.yaml stage run by `dvc repro` in a temporary repository
with tiny params and data, logging to a real SQLite MLflow store; and its params checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lossviz.checkpoints import load_model_weights
from lossviz.models import build_model
from lossviz.params import load_params, parse_params
from lossviz.training import TrainConfig
from pipelines import lottery as lottery_stage
from pipelines import train as train_stage
from tests.helpers_project import REPO, make_project, stage_env, write_tiny_dataset

EPOCHS = 2

def tiny_params() -> dict:
    """The repository's params.yaml (DVC wants every key the stage lists) with tiny settings."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(seed=3, device="cpu")
    params["data"].update(datasets=["fashion_mnist"], download=False, val_size=100)
    params["train"].update(dataset="fashion_mnist", model="lenet5", epochs=EPOCHS, batch_size=50,
                           lr_plateau=True, early_stopping=True, patience=None, max_train_examples=None,
                           train_eval_examples=100)
    return params


TINY_PARAMS = tiny_params()

# The params keys that configure training, as the stages used them before the shared schema (a list kept
# here, independent of TrainConfig.fields_in): the mapping must keep producing the same configs.
TRAINING_KEYS = ("optimizer", "lr", "momentum", "weight_decay", "batch_size", "epochs", "lr_plateau",
                 "plateau_factor", "plateau_patience", "early_stopping", "patience", "train_eval_examples")


def test_stage_configs_come_from_their_sections_of_params_yaml():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    params = load_params(REPO / "params.yaml")
    for stage, fixed in ((train_stage, {}), (lottery_stage, {"early_stopping": True})):
        section = raw[stage.STAGE]
        expected = TrainConfig(**{key: section[key] for key in TRAINING_KEYS if key in section}, **fixed,
                               seed=raw["seed"], device=raw["device"])
        assert stage.train_config(params) == expected, stage.STAGE


def test_dvc_repro_train_logs_every_epoch_to_mlflow(tmp_path):
    stage = make_project(tmp_path, TINY_PARAMS, ("train",))["train"]
    assert {"lossviz/training.py", "lossviz/checkpoints.py", "data/prepared"} <= set(stage["deps"])
    run = subprocess.run(["dvc", "repro", "train"], cwd=tmp_path, env=stage_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr

    summary = json.loads((tmp_path / "results" / "train.json").read_text())
    assert summary["model"] == "lenet5" and 0 <= summary["final_test_acc"] <= 1
    assert 1 <= summary["best_epoch"] <= EPOCHS and summary["iterations"] == EPOCHS * 6  # 300 / 50
    metrics = json.loads((tmp_path / "metrics" / "train.json").read_text())  # what `dvc exp show` compares
    assert metrics == {key: summary[key] for key in ("final_test_acc", "final_test_loss", "final_train_loss",
                                                     "stopped_epoch")}
    model = load_model_weights(build_model("lenet5", (1, 28, 28)), tmp_path / "models/train/model.pt")
    assert model.fc3.out_features == 10
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]["train"]
    assert {out["path"] for out in lock["outs"]} == {"models/train", "metrics/train.json", "results/train.json",
                                                    "metrics/train_history.csv"}
    assert not list((tmp_path / "tmp" / "resume").glob("*.pt"))  # the resume file goes once done

    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    run_id = runs[0].info.run_id
    for name in ("train_loss", "val_loss", "val_acc", "test_loss", "test_acc", "lr"):
        history = client.get_metric_history(run_id, name)
        assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1)), name
    test_acc = {m.step: m.value for m in client.get_metric_history(run_id, "test_acc")}
    assert test_acc[summary["best_epoch"]] == pytest.approx(summary["final_test_acc"])
    logged = runs[0].data
    assert logged.params["train.model"] == "lenet5" and logged.params["seed"] == "3"
    assert logged.metrics["batch_size"] == 50 and logged.tags["dvc.stage"] == "train"
    assert [a.path for a in client.list_artifacts(run_id, "checkpoint")] == ["checkpoint/model.pt"]

    again = subprocess.run(["dvc", "repro", "train"], cwd=tmp_path, env=stage_env(), capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "didn't change" in again.stdout, again.stdout + again.stderr
    assert len(client.search_runs([experiment.experiment_id])) == 1


def run_stage_module(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.train"], cwd=REPO,
                          env={**stage_env(), "DVC_ROOT": str(root)}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize(("section", "message"), [
    ({"optimizer": "rmsprop"}, "train.optimizer: got 'rmsprop'; Input should be 'adam' or 'sgd'"),
    ({"batch_size": 5000}, "train.batch_size: got 5000; allowed: 1 … 300"),
])
def test_bad_params_stop_the_stage_before_any_output(tmp_path, section, message):
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({**TINY_PARAMS,
                                                          "train": {**TINY_PARAMS["train"], **section}}))
    write_tiny_dataset(tmp_path)
    run = run_stage_module(tmp_path)
    assert run.returncode == 2 and message in run.stderr, run.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlruns").exists()


def test_resume_file_is_keyed_by_the_run(tmp_path):
    write_tiny_dataset(tmp_path)
    base = parse_params(TINY_PARAMS)
    same = parse_params(json.loads(json.dumps(TINY_PARAMS)))
    other = parse_params({**TINY_PARAMS, "train": {**TINY_PARAMS["train"], "lr": 0.01}})
    assert train_stage.resume_file(tmp_path, base) == train_stage.resume_file(tmp_path, same)
    assert train_stage.resume_file(tmp_path, base) != train_stage.resume_file(tmp_path, other)
    assert train_stage.resume_file(tmp_path, base).parent == tmp_path / "tmp" / "resume"
