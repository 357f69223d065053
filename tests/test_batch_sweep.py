"""The `batch_sweep` stage on a real Optuna journal file and a real SQLite MLflow store: a sweep killed
(SIGKILL) in the middle of its second trial and started again trains only what is left, resuming the
killed trial from its checkpoint; a TPE study with a pruner; changed params never reuse an old study."""

from __future__ import annotations

import json
import signal
import socket
import subprocess

import mlflow
import optuna
import pytest
import yaml
from helpers_batch import (
    EPOCHS,
    GRID,
    REPO,
    assert_offline_page,
    make_project,
    mlflow_client,
    run_stage,
    stage_command,
    stage_env,
    tiny_params,
)
from helpers_servers import api, optuna_dashboard
from optuna.trial import TrialState

from lossviz.params import parse_params
from pipelines.sweep.finalize import check_grid_done, finalize
from pipelines.sweep.layout import (
    BATCH_ATTR,
    JOURNAL_PATH,
    PARENT_ATTR,
    REPORT_DIR,
    STORAGE_ENV,
    STUDY_INFO_PATH,
    SUMMARY_PATH,
    WORKER_ATTR,
)
from pipelines.sweep.pages import load_finished_study, optuna_figures, write_sweep_pages
from pipelines.sweep.settings import SweepError, derived_study_name, sweep_settings
from pipelines.sweep.storage import Liveness, open_storage, redact, storage_url
from pipelines.sweep.study import load_sweep_study, run_sweep_worker, setup_study
from pipelines.sweep.trials import claim_trial, queue_missing_points, recover_stale_trials
from pipelines.sweep.workers import FileWorkers, sweep_workers
from pipelines.tracking import ensure_store


def load_study(root, name=None):
    storage = open_storage(str(root / JOURNAL_PATH), root)
    name = name or json.loads((root / STUDY_INFO_PATH).read_text())["study"]
    return optuna.load_study(study_name=name, storage=storage)


def test_killed_sweep_restarts_without_repeating_a_trial(tmp_path):
    grid = [32, 8, 128]  # the killed trial (the second) is the slowest, batch 8
    make_project(tmp_path, tiny_params(batch_sizes=grid), stages=(), dvc=False)
    process = subprocess.Popen(stage_command("batch_sweep"), cwd=REPO, env={**stage_env(), "DVC_ROOT": str(tmp_path)},
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "trial 1 batch 8 epoch 1/" in line:  # printed once epoch 1's checkpoint is written
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=60)
    assert any("trial 0 batch 32 done" in line for line in seen), "".join(seen)
    assert process.returncode == -signal.SIGKILL

    study_name = derived_study_name(sweep_settings(parse_params(tiny_params(batch_sizes=grid)), tmp_path))
    study = load_study(tmp_path, study_name)
    assert [(t.number, t.state) for t in study.trials] == [(0, TrialState.COMPLETE), (1, TrialState.RUNNING),
                                                            (2, TrialState.WAITING)]
    assert (tmp_path / "models/batch_sweep/bs_00032/model.pt").is_file()
    assert (tmp_path / "tmp/batch_sweep" / study_name / "bs_00008.pt").is_file()  # the killed trial's checkpoint

    again = run_stage(tmp_path, "batch_sweep")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "trial 0 " not in again.stdout and "batch 32 epoch" not in again.stdout  # never retrained
    assert "marked FAIL" in again.stdout
    assert "batch 8 epoch 1/3 (replayed)" in again.stdout and "batch 8 epoch 2/3 val" in again.stdout

    study = load_study(tmp_path, study_name)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.params["batch_size"] for t in complete) == sorted(grid)  # each point exactly once
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE,
                                               TrialState.COMPLETE]
    retry = next(t for t in complete if t.params["batch_size"] == 8)
    assert retry.number == 3 and retry.user_attrs["lossviz.result"]["resumed_from_epoch"] == 1
    assert sorted(retry.intermediate_values) == list(range(1, EPOCHS + 1))
    summary = json.loads((tmp_path / SUMMARY_PATH).read_text())
    assert [t["batch_size"] for t in summary["trials"]] == sorted(grid)
    assert summary["trial_states"]["COMPLETE"] == 3 and summary["trial_states"]["FAIL"] == 1
    assert not list((tmp_path / "tmp/batch_sweep" / study_name).glob("*.pt"))  # resume files go when done

    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("batch_sweep")
    parent = study.user_attrs[PARENT_ATTR]
    children = client.search_runs([experiment.experiment_id], "tags.`lossviz.role` = 'trial'")
    assert sorted((r.data.tags["lossviz.batch_size"], r.info.status) for r in children) == [
        ("128", "FINISHED"), ("32", "FINISHED"), ("8", "FINISHED"), ("8", "KILLED")]
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parent}
    retried_run = client.get_run(retry.user_attrs["lossviz.mlflow_run_id"])
    assert retried_run.data.tags["resumed_from_epoch"] == "1"
    history = client.get_metric_history(retried_run.info.run_id, "val_acc")
    assert sorted(m.step for m in history) == list(range(1, EPOCHS + 1))  # replayed epochs logged too
    assert client.get_run(parent).info.status == "FINISHED"


@pytest.fixture
def tracking(tmp_path, monkeypatch):
    """The in-process MLflow store of a temporary project, restored afterwards."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    previous = mlflow.get_tracking_uri()
    yield tmp_path
    mlflow.set_tracking_uri(previous)


def test_tpe_study_with_pruner_in_process(tracking):
    root = tracking
    params = parse_params(tiny_params(sampler="tpe", log2_batch_size_min=3, log2_batch_size_max=6, n_trials=4,
                                      pruner="median", epochs=2))
    make_project(root, params.model_dump(), stages=(), dvc=False)
    settings = sweep_settings(params, root)
    name = derived_study_name(settings)
    url = str(root / JOURNAL_PATH)
    ensure_store(root)
    setup_study(url, name, settings, n_trials=4, root=root)
    assert run_sweep_worker(url, name, root, device="cpu", progress=False, max_trials=1) == [0]
    ran = run_sweep_worker(url, name, root, device="cpu", progress=False)
    assert ran == [1, 2, 3]
    assert run_sweep_worker(url, name, root, device="cpu", progress=False) == []  # budget spent
    study = load_study(root, name)
    assert len(study.trials) == 4
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in study.trials)
    for trial in study.trials:
        assert 3 <= trial.params["log2_batch_size"] <= 6
        assert trial.user_attrs["lossviz.batch_size"] == 2 ** trial.params["log2_batch_size"]
        assert 1 <= len(trial.intermediate_values) <= 2  # val accuracy reported every epoch
    summary = finalize(load_sweep_study(url, name, root)[0], settings, url, root)
    assert summary["sampler"] == "tpe" and summary["trials"]
    with optuna_dashboard(url) as dashboard:  # the README's way to browse the study live
        listed = {study["study_name"]: study for study in api(dashboard, "/api/studies")["study_summaries"]}
        assert name in listed and listed[name]["directions"] == ["maximize"]
        detail = api(dashboard, f"/api/studies/{listed[name]['study_id']}")
        assert detail["objective_names"] == ["val_acc"] and len(detail["trials"]) == 4
    assert not (root / REPORT_DIR).exists()  # the sweep stage only trains: batch_landscapes draws its pages

    finished = load_finished_study(url, name, root)  # as batch_landscapes reads it back from the storage
    history = optuna_figures(finished)["history"].data[0]  # the objective of every finished trial, in order
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert (list(history.x), list(history.y)) == ([t.number for t in done], [t.value for t in done])
    written = write_sweep_pages(finished, root / REPORT_DIR)
    pages = sorted(page.name for page in (root / REPORT_DIR).glob("*.html"))
    assert pages == ["history.html", "index.html", "intermediate_values.html", "slice.html"]
    assert sorted(page.name for page in written) == ["history.html", "intermediate_values.html", "slice.html"]
    for page in written:
        assert_offline_page(page)


def test_changed_params_never_reuse_a_study(tracking):
    root = tracking
    base = parse_params(tiny_params())
    make_project(root, base.model_dump(), stages=(), dvc=False)
    other = parse_params(tiny_params(lr=0.01))
    first, second = sweep_settings(base, root), sweep_settings(other, root)
    assert derived_study_name(first) != derived_study_name(second)
    assert derived_study_name(first) == derived_study_name(sweep_settings(base, root))
    url = str(root / JOURNAL_PATH)
    ensure_store(root)
    study = setup_study(url, "mine", first, n_trials=1, root=root)
    assert [t.state for t in study.trials] == [TrialState.WAITING] * 3  # the grid, queued once
    setup_study(url, "mine", first, n_trials=1, root=root)  # same settings: loaded, not re-queued
    assert len(load_study(root, "mine").trials) == 3
    with pytest.raises(SweepError, match=r"other settings \(differ: train.lr\)"):
        setup_study(url, "mine", second, n_trials=1, root=root)


def test_bad_params_stop_the_stage_before_any_output(tmp_path):
    make_project(tmp_path, tiny_params(batch_sizes=[8, 1000]), stages=(), dvc=False)
    run = run_stage(tmp_path, "batch_sweep")
    assert run.returncode == 2, run.stdout + run.stderr
    assert "batch_sweep.batch_sizes: batch sizes [1000] exceed the 300 training examples" in run.stderr
    assert not (tmp_path / "models").exists() and not (tmp_path / "mlruns").exists()
    params = tiny_params()
    params["batch_sweep"]["sampler"] = "random"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    run = run_stage(tmp_path, "batch_sweep")
    assert run.returncode == 2 and "batch_sweep.sampler: got 'random'" in run.stderr, run.stderr


def test_storage_url_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert storage_url(parse_params(tiny_params()), tmp_path) == str(tmp_path / "studies/batch_sweep/journal.log")
    params = parse_params(tiny_params(storage=f"sqlite:///{tmp_path / 'optuna.db'}"))
    assert storage_url(params, tmp_path) == f"sqlite:///{tmp_path / 'optuna.db'}"
    assert isinstance(open_storage(storage_url(params, tmp_path)), optuna.storages.RDBStorage)
    monkeypatch.setenv(STORAGE_ENV, "postgresql://me:secret@db:5432/optuna")
    assert storage_url(params, tmp_path) == "postgresql://me:secret@db:5432/optuna"
    assert redact(storage_url(params, tmp_path)) == "postgresql://me:***@db:5432/optuna"


def test_only_trials_of_dead_workers_are_recovered(tracking):
    root = tracking
    params = parse_params(tiny_params())
    make_project(root, params.model_dump(), stages=(), dvc=False)
    settings, url = sweep_settings(params, root), str(root / JOURNAL_PATH)
    ensure_store(root)
    setup_study(url, "s", settings, n_trials=1, root=root)
    study, _ = load_sweep_study(url, "s", root)
    workers = sweep_workers(url, "s", root)
    assert isinstance(workers, FileWorkers)
    first, first_lease = claim_trial(study, settings, workers)
    assert recover_stale_trials(study, workers) == []  # its worker holds the lease
    second, second_lease = claim_trial(study, settings, workers)
    assert (first.number, second.number) == (0, 1)  # the next point, never the running one
    first_lease._handle.close()  # the worker dies: the OS drops its flock, the file stays
    assert recover_stale_trials(study, workers) == [0]
    assert queue_missing_points(study, settings) == [GRID[0]]
    assert queue_missing_points(study, settings) == []  # queued once

    second_lease._handle.close()
    second_lease.path.unlink()  # no lease file here: leased on a machine not sharing this directory
    second.set_user_attr(WORKER_ATTR, "another-host:1")
    assert recover_stale_trials(study, workers) == []
    dead = subprocess.Popen(["true"])
    dead.wait()
    second.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{dead.pid}")  # this host, process gone
    assert recover_stale_trials(study, workers) == [1]
    third, _ = claim_trial(study, settings, workers)  # the queue first: 128, then the retries 8, 32
    assert [third.number, third.params.get("batch_size", study.trials[third.number].user_attrs[BATCH_ATTR])] \
        == [2, 128]
    assert [t.user_attrs[BATCH_ATTR] for t in study.get_trials(states=(TrialState.WAITING,))] == [8, 32]


def test_a_point_that_keeps_failing_is_given_up_after_max_retries(tracking):
    root = tracking
    params = parse_params(tiny_params(batch_sizes=[8], max_retries=1))
    make_project(root, params.model_dump(), stages=(), dvc=False)
    settings, url = sweep_settings(params, root), str(root / JOURNAL_PATH)
    ensure_store(root)
    setup_study(url, "s", settings, n_trials=1, root=root,
                      liveness=Liveness.from_params(params.batch_sweep))
    study, _ = load_sweep_study(url, "s", root)
    workers = sweep_workers(url, "s", root)
    for attempt in range(2):  # the first run and its one retry fail (say, the worker runs out of memory)
        trial, hold = claim_trial(study, settings, workers)
        assert trial.number == attempt
        study.tell(trial, state=TrialState.FAIL)
        hold.release()
    assert claim_trial(study, settings, workers) is None  # not queued a third time
    with pytest.raises(SweepError, match=r"batch sizes 8 \(failed 2x\) were given up on after "
                                               r"batch_sweep.max_retries=1"):
        check_grid_done(study, settings)
    setup_study(url, "s", settings, n_trials=1, root=root)  # a new stage run tries again
    assert [t.state for t in load_study(root, "s").trials][-1] == TrialState.WAITING
