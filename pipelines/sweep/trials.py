"""One trial's life: queueing the points that still need a trial, claiming the next trial in the workers'
turn, training it as an MLflow child run of the study's run, and recovering the trials of dead workers.

Exactly once: every point is enqueued (`Study.enqueue_trial`) and a worker claims a trial with
`Study.ask()`, which pops a waiting trial atomically in the storage; recovery, enqueueing and claiming take
turns (`pipelines.sweep.workers`), so no two workers enqueue or run the same point. A dead worker's trial
is failed, its MLflow run set KILLED and its point queued again (GridSampler counts FAILED trials as
visited, so it would never revisit it), at most `max_retries` times per stage run; the retry resumes the
point's training checkpoint (`tmp/batch_sweep/<study>/bs_*.pt`; `trial-*.pt` for TPE; written after every
epoch) where that directory is shared, and starts afresh where it is not.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from lossviz.checkpoints import save_model
from lossviz.data import Splits
from lossviz.models import build_model
from lossviz.runtime import seed_everything
from lossviz.training import EpochRecord, TrainConfig, train
from pipelines.sweep.layout import (
    BATCH_ATTR,
    CHECKPOINT_ARTIFACT,
    EXPERIMENT,
    N_TRIALS_ATTR,
    PARENT_ATTR,
    RESULT_ATTR,
    RESUME_ATTR,
    RUN_ATTR,
    RUN_FACTS,
    STAGE,
    WORKER_ATTR,
    protocol_of,
)
from pipelines.sweep.settings import flat
from pipelines.sweep.storage import liveness_of
from pipelines.sweep.workers import Hold, Workers, worker_id
from pipelines.tracking import log_splits, log_torch_model, stage_run

# ------------------------------------------------------------------------------------------- the queue


def trial_batch_size(trial: FrozenTrial) -> int | None:
    """The batch size a trial trains (or was queued for); None for a TPE trial not yet sampled."""
    if BATCH_ATTR in trial.user_attrs:
        return int(trial.user_attrs[BATCH_ATTR])
    if "batch_size" in trial.params:
        return int(trial.params["batch_size"])
    if "log2_batch_size" in trial.params:
        return 2 ** int(trial.params["log2_batch_size"])
    return None


def point_params(settings: dict[str, Any], batch_size: int) -> dict[str, int]:
    """The Optuna params of a point: the grid's batch size, or TPE's log2 of it."""
    return ({"batch_size": batch_size} if settings["sampler"] == "grid"
            else {"log2_batch_size": int(math.log2(batch_size))})


def count_trials(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def queue_missing_points(study: optuna.Study, settings: dict[str, Any], max_retries: int | None = None) -> list[int]:
    """Enqueue every point that has no COMPLETE, RUNNING, WAITING (or, for TPE, PRUNED) trial: the whole
    grid on a new study; a dead or failed trial's point later, unless it failed more than `max_retries`
    times (None: no limit). Returns the batch sizes enqueued."""
    trials = study.get_trials(deepcopy=False)
    alive = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
    covered = {trial_batch_size(t) for t in trials if t.state in alive}
    if settings["sampler"] == "grid":
        wanted = list(settings["batch_sizes"])
    else:  # retry the points of failed TPE trials (a new TPE trial would sample afresh)
        wanted = list(dict.fromkeys(trial_batch_size(t) for t in trials
                                    if t.state == TrialState.FAIL and trial_batch_size(t) is not None))
    missing = []
    for size in (size for size in wanted if size not in covered):
        # a retry resumes its point's training checkpoint: the grid's is named by the batch size, a TPE
        # trial's by the trial that first ran it
        failed = [t for t in trials if t.state == TrialState.FAIL and trial_batch_size(t) == size]
        if max_retries is not None and len(failed) > max_retries:
            continue  # given up on in this stage run (the stage says so when it finalizes)
        resume = failed[-1].user_attrs.get(RESUME_ATTR) if failed else None
        study.enqueue_trial(point_params(settings, size), user_attrs={
            BATCH_ATTR: size, RESUME_ATTR: resume or f"bs_{size:05d}.pt"})
        missing.append(size)
    return missing


def recover_stale_trials(study: optuna.Study, workers: Workers, log=print) -> list[int]:
    """Fail the RUNNING trials of dead workers (the caller holds the workers' turn) and set their MLflow
    runs KILLED. Returns the trial numbers failed."""
    failed = workers.fail_dead(study)
    for trial in failed:
        run_id = trial.user_attrs.get(RUN_ATTR)
        if run_id:
            with contextlib.suppress(mlflow.exceptions.MlflowException):
                if MlflowClient().get_run(run_id).info.status == "RUNNING":
                    MlflowClient().set_terminated(run_id, "KILLED")
        log(f"{STAGE}: trial {trial.number} (batch {trial_batch_size(trial)}) was left running by a dead "
            "worker: marked FAIL, its point goes back in the queue")
    return [trial.number for trial in failed]


def claim_trial(study: optuna.Study, settings: dict[str, Any], workers: Workers,
                log=print) -> tuple[optuna.Trial, Hold] | None:
    """In the workers' turn: recover dead trials, enqueue missing points, and take the next trial (a
    waiting one; for TPE a new one while the budget lasts) with a lease or heartbeat. None when nothing
    is left."""
    with workers.turn():
        recover_stale_trials(study, workers, log)
        queue_missing_points(study, settings, liveness_of(study).max_retries)
        has_waiting = count_trials(study, TrialState.WAITING) > 0
        budget = int(study.user_attrs.get(N_TRIALS_ATTR, 0))
        if not has_waiting and not (settings["sampler"] == "tpe" and count_trials(
                study, TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) < budget):
            return None
        with warnings.catch_warnings():  # we record the heartbeats Study.optimize would
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, worker_id())
        return trial, workers.hold(study, trial)


# --------------------------------------------------------------------------------- a trial's outputs

def checkpoint_dir(root: Path, settings: dict[str, Any], batch_size: int) -> Path:
    """A batch size's DVC output in its protocol's directory: model.pt and trial.json."""
    return root / protocol_of(settings).models_dir / f"bs_{batch_size:05d}"


def write_trial_file(out: Path, study_name: str, summary: dict[str, Any]) -> None:
    kept = {key: value for key, value in summary.items() if key not in RUN_FACTS}
    (out / "trial.json").write_text(json.dumps({"study": study_name, **kept}, indent=2, sort_keys=True) + "\n")


def fetch_checkpoint(trial: FrozenTrial, study_name: str, out: Path) -> bool:
    """A trial trained by a worker on another machine: its checkpoint from its MLflow run (a team tracking
    server's artifact store), into `out`. False when the run or its artifact cannot be had."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    if not run_id:
        return False
    try:
        with tempfile.TemporaryDirectory() as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=CHECKPOINT_ARTIFACT.as_posix(),
                                                        dst_path=tmp)
            out.mkdir(parents=True, exist_ok=True)
            shutil.move(local, out / "model.pt")
    except (mlflow.exceptions.MlflowException, OSError):
        return False
    write_trial_file(out, study_name, trial.user_attrs[RESULT_ATTR])
    return True


# ------------------------------------------------------------------------------------------ a trial

def run_trial(study: optuna.Study, trial: optuna.Trial, settings: dict[str, Any], splits: Splits, root: Path,
              directory: Path, device: str, progress: bool, log=print) -> TrialState:
    """Train one trial's batch size (resuming its checkpoint), log it as a child run of the study's parent
    run, write its DVC checkpoint, and tell the study. Returns the state told."""
    if settings["sampler"] == "grid":
        batch_size = int(trial.suggest_categorical("batch_size", settings["batch_sizes"]))
    else:
        batch_size = 2 ** trial.suggest_int("log2_batch_size", settings["log2_batch_size_min"],
                                            settings["log2_batch_size_max"])
    trial.set_user_attr(BATCH_ATTR, batch_size)
    config = TrainConfig(batch_size=batch_size, seed=settings["seed"], device=device, progress=progress,
                         **settings["train"])
    if RESUME_ATTR not in trial.user_attrs:  # a new TPE trial: its own file (another may share its size)
        trial.set_user_attr(RESUME_ATTR, f"trial-{trial.number:05d}.pt")
    resume = directory / trial.user_attrs[RESUME_ATTR]
    seed_everything(settings["seed"])
    model = build_model(settings["model"], splits.input_shape, splits.num_classes)
    epochs = settings["train"]["epochs"]

    def on_epoch(record: EpochRecord, replayed: bool) -> None:
        mlflow.log_metrics(record.metrics(), step=record.epoch)
        trial.report(record.val_acc, record.epoch)
        log(f"{protocol.stage}: trial {trial.number} batch {batch_size} epoch {record.epoch}/{epochs}"
            f"{' (replayed)' if replayed else ''} val_acc {record.val_acc:.4f} test_acc {record.test_acc:.4f}")
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {record.epoch}")

    parent = study.user_attrs[PARENT_ATTR]
    protocol = protocol_of(settings)
    name = f"batch {batch_size}" + ("" if protocol.name == "fixed" else f" ({protocol.name})")
    with stage_run(EXPERIMENT, name, protocol.stage, root=root, parent_run_id=parent) as run:
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        mlflow.set_tags({"lossviz.study": study.study_name, "lossviz.batch_size": str(batch_size),
                         "lossviz.protocol": protocol.name, "lossviz.role": "trial",
                         "optuna.trial_number": str(trial.number)})
        mlflow.log_params({**flat(settings), "batch_size": batch_size, "device": device,
                           "trial_number": trial.number, "study_name": study.study_name})
        steps = math.ceil(len(splits.train) / batch_size)
        log_splits(splits)
        mlflow.log_metrics({"batch_size": batch_size, "log2_batch_size": math.log2(batch_size),
                            "train_examples": len(splits.train), "steps_per_epoch": steps})
        try:
            result = train(model, splits, config, callbacks=[on_epoch], checkpoint_path=resume)
        except optuna.TrialPruned:
            mlflow.set_tag("optuna.trial_state", "PRUNED")
            study.tell(trial, state=TrialState.PRUNED)
            resume.unlink(missing_ok=True)
            log(f"{protocol.stage}: trial {trial.number} batch {batch_size} pruned")
            return TrialState.PRUNED
        except BaseException:
            mlflow.set_tag("optuna.trial_state", "FAIL")
            study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
            raise
        if result.resumed_from_epoch is not None:
            mlflow.set_tag("resumed_from_epoch", str(result.resumed_from_epoch))
        summary = {"batch_size": batch_size, "trial": trial.number, **result.summary(),
                   "seconds": result.seconds, "mlflow_run_id": run.info.run_id,
                   "resumed_from_epoch": result.resumed_from_epoch}
        out = checkpoint_dir(root, settings, batch_size)
        model_path = save_model(model, out / "model.pt", model=settings["model"], dataset=settings["dataset"],
                                input_shape=list(splits.input_shape), num_classes=splits.num_classes,
                                batch_size=batch_size, epoch=result.final.epoch, acc=result.final.test_acc)
        write_trial_file(out, study.study_name, summary)
        mlflow.log_metrics({key: float(value) for key, value in result.summary().items()
                            if isinstance(value, int | float) and value is not None})
        mlflow.log_metric("train_seconds", result.seconds)
        mlflow.log_artifact(str(model_path), CHECKPOINT_ARTIFACT.parent.as_posix())
        log_torch_model(model.cpu(), splits.test.x[:8].cpu())
        trial.set_user_attr(RESULT_ATTR, summary)
        mlflow.set_tag("optuna.trial_state", "COMPLETE")
        study.tell(trial, result.final.val_acc)
    resume.unlink(missing_ok=True)
    log(f"{protocol.stage}: trial {trial.number} batch {batch_size} done: val_acc {result.final.val_acc:.4f} "
        f"test_acc {result.final.test_acc:.4f} ({result.seconds:.0f} s)")
    return TrialState.COMPLETE
