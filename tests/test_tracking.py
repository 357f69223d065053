"""The MLflow store: anchored on the repository root (DVC_ROOT), SQLite under mlruns/, tagged runs."""

import sqlite3

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from pipelines import tracking


@pytest.fixture
def fresh_root(tmp_path, monkeypatch):
    monkeypatch.setenv("DVC_ROOT", str(tmp_path))
    monkeypatch.setenv("DVC_STAGE", "demo_stage")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-demo")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path.parent)  # the cwd must not matter
    yield tmp_path
    mlflow.set_tracking_uri(None)


def test_stage_run_lands_in_the_repo_sqlite_store(fresh_root):
    with tracking.stage_run("demo", "run-1", stage="fallback") as run:
        mlflow.log_metrics({"acc": 0.5}, step=1)
        mlflow.log_text("hello", "note.txt")
    db = fresh_root / "mlruns" / "mlflow.db"
    assert db.is_file()
    names = {row[0] for row in sqlite3.connect(db).execute("select name from runs")}
    assert names == {"run-1"}
    client = MlflowClient(f"sqlite:///{db}")
    stored = client.get_run(run.info.run_id)
    assert stored.data.tags["dvc.stage"] == "demo_stage"
    assert stored.data.tags["dvc.exp"] == "exp-demo"
    assert stored.data.metrics["acc"] == 0.5
    experiment = client.get_experiment_by_name("demo")
    assert experiment.artifact_location == (fresh_root / "mlruns" / "artifacts" / "demo").as_uri()
    assert (fresh_root / "mlruns" / "artifacts" / "demo").is_dir()
    assert any(p.name == "note.txt" for p in (fresh_root / "mlruns" / "artifacts").rglob("*"))


def test_tracking_uri_env_overrides(fresh_root, monkeypatch, tmp_path):
    other = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{other}")
    assert tracking.tracking_uri() == f"sqlite:///{other}"
    assert tracking.artifact_location("x") is None


def test_a_killed_stage_s_run_is_closed_when_the_next_stage_starts(fresh_root):
    """A stage killed with SIGKILL leaves its run RUNNING; the next stage on this host marks it KILLED, and
    leaves alone the runs of live processes and of other hosts (sweep workers elsewhere)."""
    import os
    import socket
    import subprocess
    import sys

    tracking.ensure_store(fresh_root)
    client = MlflowClient()
    experiment = tracking.get_experiment_id("demo", fresh_root)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    dead_pid = gone.stdout.strip()
    here = socket.gethostname()
    runs = {name: client.create_run(experiment, run_name=name, tags={tracking.HOST_TAG: host,
                                                                     tracking.PID_TAG: pid}).info.run_id
            for name, host, pid in (("killed", here, dead_pid), ("alive", here, str(os.getpid())),
                                    ("elsewhere", "another-host", dead_pid))}
    assert client.get_run(runs["killed"]).info.status == "RUNNING"
    tracking.ensure_store(fresh_root)
    status = {name: client.get_run(run_id).info.status for name, run_id in runs.items()}
    assert status == {"killed": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING"}

    tracking.reclaim_run(client, runs["killed"])  # a resumed stage continues it
    resumed = client.get_run(runs["killed"])
    assert resumed.info.status == "RUNNING" and resumed.data.tags[tracking.PID_TAG] == str(os.getpid())


def test_a_copied_store_points_at_its_new_checkout(fresh_root, tmp_path_factory, monkeypatch):
    """Issue 17: MLflow records absolute artifact locations; a copy of the checkout (`cp -a`, `mv`) opened by a
    stage points every location at itself, keeps its runs and artifacts, and writes nothing under the old one."""
    import shutil
    from pathlib import Path

    (fresh_root / "fetched").mkdir()
    import torch

    with tracking.stage_run("demo", "before", stage="demo") as run:
        mlflow.log_text("kept", "note.txt")
        tracking.log_torch_model(torch.nn.Linear(3, 2), torch.rand(4, 3))  # its MLmodel records a location
    copy = tmp_path_factory.mktemp("moved") / "checkout"
    shutil.copytree(fresh_root, copy)
    shutil.rmtree(fresh_root / "mlruns" / "artifacts")  # the old tree's artifacts are gone: only the copy's remain
    monkeypatch.setenv("DVC_ROOT", str(copy))
    tracking.ensure_store(copy)
    client = MlflowClient()
    assert client.get_experiment_by_name("demo").artifact_location == (copy / "mlruns" / "artifacts" / "demo").as_uri()
    fetched = client.download_artifacts(run.info.run_id, "note.txt", str(copy / "fetched"))
    assert Path(fetched).read_text() == "kept"
    with mlflow.start_run(run_id=run.info.run_id):  # a resumed run logs into the copy
        mlflow.log_text("more", "later.txt")
    assert not (fresh_root / "mlruns" / "artifacts").exists()
    assert any(p.name == "later.txt" for p in (copy / "mlruns" / "artifacts").rglob("*"))
    holding = [path.name for path in (copy / "mlruns").rglob("*")
               if path.is_file() and str(fresh_root).encode() in path.read_bytes()]
    assert holding == []  # the database and the model's MLmodel
    assert client.get_run(run.info.run_id).data.tags["mlflow.source.name"] != "" and \
        not client.get_run(run.info.run_id).data.tags["mlflow.source.name"].startswith(str(fresh_root))
