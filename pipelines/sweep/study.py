"""The sweep's Optuna study: its sampler and pruner, its set-up by the stage (settings, liveness, the MLflow
parent run, the queue of points), and the worker loop that any number of processes may run on one storage.

Sampler (params `batch_sweep.sampler`): `grid` runs every batch size of `batch_sizes` exactly once; `tpe`
runs `n_trials` trials of TPE over 2**log2_batch_size with a median pruner fed the validation accuracy after
every epoch. The objective is the final validation accuracy (maximized).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from lossviz.data import Splits
from pipelines.common import repo_root
from pipelines.sweep.layout import (
    EXPERIMENT,
    LIVENESS_ATTR,
    N_TRIALS_ATTR,
    PARENT_ATTR,
    SETTINGS_ATTR,
    STAGE,
    protocol_of,
)
from pipelines.sweep.settings import SweepError, check_worker_checkout, differences, flat, load_sweep_splits
from pipelines.sweep.storage import Liveness, describe_storage, is_database_url, liveness_of, open_storage, redact
from pipelines.sweep.trials import claim_trial, count_trials, queue_missing_points, recover_stale_trials, run_trial
from pipelines.sweep.workers import sweep_workers
from pipelines.tracking import ensure_store, get_experiment_id, run_tags

OBJECTIVE = "val_acc"  # the study's one objective, maximized: the final validation accuracy
POLL_SECONDS = 5.0  # how often the stage looks again while other workers finish their trials

optuna.logging.set_verbosity(optuna.logging.WARNING)


class QueuedGridSampler(optuna.samplers.GridSampler):
    """GridSampler for ask-and-tell workers that enqueue every grid point themselves. The worker loop, not
    the sampler, decides when the grid is done: GridSampler.after_trial calls Study.stop(), which raises
    outside Study.optimize, and reads a grid_id that enqueued trials do not carry."""

    def after_trial(self, study, trial, state, values) -> None:  # noqa: ANN001
        return None


def make_sampler(settings: dict[str, Any]) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    if settings["sampler"] == "grid":
        return (QueuedGridSampler({"batch_size": settings["batch_sizes"]}, seed=settings["seed"]),
                optuna.pruners.NopPruner())
    pruner = (optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
              if settings["pruner"] == "median" else optuna.pruners.NopPruner())
    return optuna.samplers.TPESampler(seed=settings["seed"]), pruner


def load_sweep_study(url: str, study_name: str, root: Path) -> tuple[optuna.Study, dict[str, Any]]:
    """The study with its sampler and pruner, on a storage with the heartbeats the stage recorded in it."""
    storage = open_storage(url, root)
    try:
        plain = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        raise SweepError(f"no study {study_name!r} in {redact(url)}; the stage creates it "
                         "(python -m pipelines.batch_sweep)") from None
    settings = plain.user_attrs.get(SETTINGS_ATTR)
    if settings is None or PARENT_ATTR not in plain.user_attrs:
        raise SweepError(f"study {study_name!r} in {redact(url)} is not a set-up lossviz batch sweep")
    if is_database_url(url):
        storage = open_storage(url, root, liveness_of(plain))
    sampler, pruner = make_sampler(settings)
    return optuna.load_study(study_name=study_name, storage=storage, sampler=sampler, pruner=pruner), settings


def ensure_parent_run(study: optuna.Study, settings: dict[str, Any], url: str, n_trials: int, root: Path) -> str:
    """The study's MLflow parent run (made anew if it was deleted), its id recorded in the study."""
    client = MlflowClient()
    parent = study.user_attrs.get(PARENT_ATTR)
    try:
        exists = parent is not None and client.get_run(parent).info.lifecycle_stage == "active"
    except mlflow.exceptions.MlflowException:
        exists = False
    if exists:
        return parent
    experiment_id = get_experiment_id(EXPERIMENT, root)
    run = client.create_run(experiment_id, run_name=study.study_name, tags={
        **run_tags(protocol_of(settings).stage, root), "lossviz.study": study.study_name,
        "lossviz.protocol": protocol_of(settings).name, "lossviz.role": "study"})
    for key, value in {**flat(settings), "study_name": study.study_name, "storage": describe_storage(url, root),
                       "n_trials": n_trials}.items():
        client.log_param(run.info.run_id, key, value)
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    return run.info.run_id


def setup_study(url: str, study_name: str, settings: dict[str, Any], n_trials: int, root: Path,
                liveness: Liveness | None = None, log=print) -> optuna.Study:
    """Create the study (or load it, refusing one made with other settings), its MLflow parent run, and
    its queue of grid points (every point without a live or finished trial, however often it failed: a
    new stage run tries again). Records `liveness` in the study for every worker to use."""
    storage = open_storage(url, root)
    sampler, pruner = make_sampler(settings)
    with sweep_workers(url, study_name, root).turn():
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
        if study.metric_names != [OBJECTIVE]:  # named in optuna-dashboard and the study's pages
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names([OBJECTIVE])
        liveness = asdict(liveness or Liveness.from_params())
        if study.user_attrs.get(LIVENESS_ATTR) != liveness:
            study.set_user_attr(LIVENESS_ATTR, liveness)
        stored = study.user_attrs.get(SETTINGS_ATTR)
        if stored is None:
            study.set_user_attr(SETTINGS_ATTR, settings)
        elif stored != settings:
            raise SweepError(f"study {study_name!r} in {redact(url)} was made with other settings (differ: "
                             f"{', '.join(differences(stored, settings))}); set batch_sweep.study_name to "
                             "null (a name derived from the settings) or to a new name")
        if study.user_attrs.get(N_TRIALS_ATTR) != n_trials:
            study.set_user_attr(N_TRIALS_ATTR, n_trials)
        parent = ensure_parent_run(study, settings, url, n_trials, root)
        log(f"{STAGE}: study {study_name} in {redact(url)}, MLflow parent run {parent} (more workers: "
            f"python -m pipelines.batch_sweep worker --study {study_name})")
        queue_missing_points(study, settings)
    return study


def run_sweep_worker(url: str, study_name: str, root: Path | None = None, *, device: str = "auto",
                     max_trials: int | None = None, progress: bool = True, splits: Splits | None = None,
                     log=print) -> list[int]:
    """Run trials of the study until none is left (or `max_trials` were run); safe to call from several
    processes on one storage (see pipelines.sweep.trials). Returns the numbers of the trials it ran."""
    root = root or repo_root()
    study, settings = load_sweep_study(url, study_name, root)
    ensure_store(root)
    if splits is None:
        check_worker_checkout(root, study_name, settings)
        splits = load_sweep_splits(root, settings)
    workers = sweep_workers(url, study_name, root)
    ran: list[int] = []
    while max_trials is None or len(ran) < max_trials:
        claimed = claim_trial(study, settings, workers, log)
        if claimed is None:
            break
        trial, hold = claimed
        try:
            run_trial(study, trial, settings, splits, root, workers.directory, device, progress, log)
        finally:
            hold.release()
        ran.append(trial.number)
    return ran


def wait_until_done(url: str, study_name: str, root: Path, settings: dict[str, Any], device: str,
                    splits: Splits, progress: bool, log=print) -> None:
    """Work until no trial is waiting and none is running in another live worker."""
    workers = sweep_workers(url, study_name, root)
    while True:
        run_sweep_worker(url, study_name, root, device=device, progress=progress, splits=splits, log=log)
        study, _ = load_sweep_study(url, study_name, root)
        with workers.turn():
            recover_stale_trials(study, workers, log)
            queue_missing_points(study, settings, liveness_of(study).max_retries)
            waiting = count_trials(study, TrialState.WAITING)
            running = count_trials(study, TrialState.RUNNING)
        if not waiting and not running:
            return
        if running and not waiting:
            log(f"{STAGE}: waiting for {running} trial(s) running in other workers")
            time.sleep(POLL_SECONDS)
