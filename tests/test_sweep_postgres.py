"""The batch sweep's workers on a real PostgreSQL server (Optuna's RDB storage): two worker processes
share a 4-point grid with no trial run twice, and a worker killed mid-trial has its trial failed by
Optuna's heartbeat and retried, resuming from its epoch checkpoint."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess

import mlflow
import optuna
import pytest
from helpers_batch import EPOCHS, REPO, make_project, mlflow_client, run_stage, stage_command, stage_env, tiny_params
from optuna.trial import TrialState

from lossviz.params import parse_params
from pipelines.sweep.layout import RESULT_ATTR, STORAGE_ENV, SUMMARY_PATH
from pipelines.sweep.settings import derived_study_name, sweep_settings
from pipelines.sweep.storage import Liveness
from pipelines.sweep.study import setup_study
from pipelines.sweep.workers import DatabaseWorkers, sweep_workers
from pipelines.tracking import ensure_store

GRID4 = [8, 16, 32, 64]
# Heartbeats fast enough for a test: a dead worker's trial is failed 3 s after its last beat.
LIVENESS = {"heartbeat_interval": 1, "grace_period": 3, "max_retries": 2}


@pytest.fixture
def sweep_on_postgres(tmp_path, postgres, monkeypatch):
    """A project whose params point the sweep at a fresh PostgreSQL database, and its study set up (the
    queue of 4 points, the MLflow parent run) as the stage does before its workers start."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    previous = mlflow.get_tracking_uri()
    url = postgres.url(postgres.new_database())
    raw = tiny_params(batch_sizes=GRID4, storage=url, **LIVENESS)
    params = parse_params(raw)
    make_project(tmp_path, raw, stages=(), dvc=False)
    settings = sweep_settings(params, tmp_path)
    name = derived_study_name(settings)
    ensure_store(tmp_path)
    setup_study(url, name, settings, n_trials=1, root=tmp_path,
                      liveness=Liveness.from_params(params.batch_sweep))
    yield tmp_path, url, name
    mlflow.set_tracking_uri(previous)


def start_worker(root, url: str, name: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(stage_command("batch_sweep", "worker", "--storage", url, "--study", name,
                                          "--device", "cpu", *extra),
                            cwd=REPO, env={**stage_env(), "DVC_ROOT": str(root)}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def ran_trials(output: str) -> list[int]:
    (listed,) = re.findall(r"batch_sweep worker: ran trials \[([\d, ]*)\]", output)
    return [int(number) for number in listed.split(",") if number.strip()]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_two_workers_share_the_grid_without_repeating_a_trial(sweep_on_postgres):
    root, url, name = sweep_on_postgres
    assert isinstance(sweep_workers(url, name, root), DatabaseWorkers)
    # Two trials each, claimed concurrently: any point claimed twice would leave another one unrun.
    workers = [start_worker(root, url, name, "--max-trials", "2") for _ in range(2)]
    outputs = [worker.communicate(timeout=600)[0] for worker in workers]
    assert [worker.returncode for worker in workers] == [0, 0], outputs
    ran = [ran_trials(output) for output in outputs]
    assert sorted(ran[0] + ran[1]) == [0, 1, 2, 3] and all(len(numbers) == 2 for numbers in ran), ran

    study = load(url, name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    assert sorted(t.params["batch_size"] for t in study.trials) == GRID4  # each point exactly once
    assert all(t.user_attrs[RESULT_ATTR]["resumed_from_epoch"] is None for t in study.trials)

    # A worker on another machine leaves its checkpoint there: the stage takes it from the trial's MLflow run.
    elsewhere = root / "models/batch_sweep/bs_00016"
    trained = (elsewhere / "model.pt").read_bytes()
    shutil.rmtree(elsewhere)
    stage = run_stage(root, "batch_sweep")  # the stage finds nothing left to train, and finalizes
    assert stage.returncode == 0, stage.stdout + stage.stderr
    assert " epoch " not in stage.stdout
    assert "batch 16: checkpoint fetched from MLflow run" in stage.stdout
    assert (elsewhere / "model.pt").read_bytes() == trained and (elsewhere / "trial.json").is_file()
    summary = json.loads((root / SUMMARY_PATH).read_text())
    assert [t["batch_size"] for t in summary["trials"]] == GRID4 and summary["trial_states"]["COMPLETE"] == 4
    assert summary["storage"] == url  # no password in this URL to redact


def test_a_killed_workers_trial_is_failed_by_its_heartbeat_and_retried(sweep_on_postgres):
    root, url, name = sweep_on_postgres
    victim = start_worker(root, url, name)
    survivor = start_worker(root, url, name)
    killed = None
    try:
        for line in victim.stdout:  # printed once epoch 1's checkpoint is written
            found = re.search(r"trial (\d+) batch (\d+) epoch 1/", line)
            if found:
                victim.send_signal(signal.SIGKILL)
                killed = int(found.group(1)), int(found.group(2))
                break
        victim.wait(timeout=60)
        assert killed is not None and victim.returncode == -signal.SIGKILL
        survivor_output = survivor.communicate(timeout=600)[0]
    finally:
        for process in (victim, survivor):
            process.kill()
            process.wait()
    assert survivor.returncode == 0, survivor_output

    # The survivor may have left before the dead trial went stale; the stage waits for it, then retries.
    stage = run_stage(root, "batch_sweep")
    assert stage.returncode == 0, stage.stdout + stage.stderr
    study = load(url, name)
    number, batch_size = killed
    assert study.trials[number].state == TrialState.FAIL
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["batch_size"] for t in complete) == GRID4 and len(study.trials) == 5
    (retry,) = [t for t in complete if t.params["batch_size"] == batch_size]
    # Optuna's RetryHeartbeatStaleTrialCallback made the retry; it resumed the killed trial's checkpoint.
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == number
    assert retry.user_attrs[RESULT_ATTR]["resumed_from_epoch"] == 1
    assert sorted(retry.intermediate_values) == list(range(1, EPOCHS + 1))

    runs = mlflow_client(root).search_runs(
        [mlflow_client(root).get_experiment_by_name("batch_sweep").experiment_id], "tags.`lossviz.role` = 'trial'")
    statuses = sorted((int(r.data.tags["lossviz.batch_size"]), r.info.status) for r in runs)
    assert statuses == sorted([(size, "FINISHED") for size in GRID4] + [(batch_size, "KILLED")])
