"""Team tracking: a stage logs to a real `mlflow server` (PostgreSQL backend store, proxied artifact
store, as the README sets it up) through MLFLOW_TRACKING_URI, and its run, metrics and checkpoint are
found there through the REST API, with nothing written to the local store."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import urllib.parse
import urllib.request

from helpers_project import REPO, make_project, stage_env
from helpers_servers import api, mlflow_server
from test_train_stage import EPOCHS, TINY_PARAMS


def test_train_stage_logs_to_a_team_mlflow_server(tmp_path, postgres):
    project = tmp_path / "project"
    make_project(project, TINY_PARAMS, stages=("train",), dvc=False)
    backend = postgres.url(postgres.new_database())
    with mlflow_server(backend, tmp_path, stage_env(), "--artifacts-destination",
                       (tmp_path / "team-artifacts").as_uri()) as url:
        stage = subprocess.run([sys.executable, "-m", "pipelines.train"],
                               cwd=REPO, env={**stage_env(), "DVC_ROOT": str(project), "MLFLOW_TRACKING_URI": url},
                               capture_output=True, text=True, timeout=600)
        assert stage.returncode == 0, stage.stdout + stage.stderr

        experiments = api(url, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        experiment = next(e for e in experiments if e["name"] == "train")
        (run,) = api(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment["experiment_id"]]})["runs"]
        tags = {tag["key"]: tag["value"] for tag in run["data"]["tags"]}
        assert run["info"]["status"] == "FINISHED" and tags["dvc.stage"] == "train"
        run_id = run["info"]["run_id"]
        query = urllib.parse.urlencode({"run_id": run_id, "metric_key": "test_acc"})
        history = api(url, f"/api/2.0/mlflow/metrics/get-history?{query}")["metrics"]
        assert sorted(metric["step"] for metric in history) == list(range(1, EPOCHS + 1))

        query = urllib.parse.urlencode({"path": "checkpoint/model.pt", "run_uuid": run_id})
        with urllib.request.urlopen(f"{url}/get-artifact?{query}", timeout=30) as response:
            served = response.read()
    local = (project / "models" / "train" / "model.pt").read_bytes()
    assert hashlib.sha256(served).hexdigest() == hashlib.sha256(local).hexdigest()
    assert list((tmp_path / "team-artifacts").rglob("model.pt"))  # stored by the server, not the stage
    assert not (project / "mlruns").exists()  # nothing went to the local store
