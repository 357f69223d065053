"""The finished sweep's DVC outputs: `models/batch_sweep/bs_XXXXX/` for every completed batch size (fetched
from the trial's MLflow run when a worker on another machine trained it), `models/batch_sweep/sweep.json`
(what `batch_landscapes` reads) and `studies/batch_sweep/study.json`; the summary logged to the study's
MLflow parent run, which it ends."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna.trial import FrozenTrial, TrialState

from pipelines.common import write_timings
from pipelines.sweep.layout import PARENT_ATTR, RESULT_ATTR, RUN_ATTR, RUN_FACTS, protocol_of
from pipelines.sweep.settings import SweepError
from pipelines.sweep.storage import describe_storage, liveness_of, redact
from pipelines.sweep.trials import checkpoint_dir, count_trials, fetch_checkpoint, trial_batch_size


def check_grid_done(study: optuna.Study, settings: dict[str, Any]) -> None:
    """Every grid point has a COMPLETE trial, or the sweep stops here naming those that kept failing."""
    if settings["sampler"] != "grid":
        return
    trials = study.get_trials(deepcopy=False)
    done = {trial_batch_size(t) for t in trials if t.state == TrialState.COMPLETE}
    failures = {size: sum(t.state == TrialState.FAIL and trial_batch_size(t) == size for t in trials)
                for size in settings["batch_sizes"] if size not in done}
    if failures:
        raise SweepError(f"batch sizes {', '.join(f'{size} (failed {count}x)' for size, count in failures.items())} "
                         f"were given up on after batch_sweep.max_retries={liveness_of(study).max_retries} "
                         "retries: see their FAILED trial runs in MLflow; rerun the stage to try again")


def completed_trials(study: optuna.Study) -> dict[int, FrozenTrial]:
    """The first COMPLETE trial of each batch size, by batch size."""
    done: dict[int, FrozenTrial] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        done.setdefault(trial_batch_size(trial), trial)
    return dict(sorted(done.items()))


def trained_checkpoints(study: optuna.Study, settings: dict[str, Any], url: str, root: Path,
                        log=print) -> list[dict[str, Any]]:
    """Each completed batch size's result and checkpoint, fetching checkpoints trained elsewhere; drops the
    checkpoints of other studies or sizes."""
    stage = protocol_of(settings).stage
    done = completed_trials(study)
    trials = []
    for batch_size, trial in done.items():
        result = {key: value for key, value in trial.user_attrs[RESULT_ATTR].items() if key not in RUN_FACTS}
        path = checkpoint_dir(root, settings, batch_size) / "model.pt"
        if not path.is_file() and fetch_checkpoint(trial, study.study_name, path.parent):
            log(f"{stage}: batch {batch_size}: checkpoint fetched from MLflow run {trial.user_attrs[RUN_ATTR]}")
        if not path.is_file():
            raise SweepError(f"{path}: missing for the completed trial {trial.number}, and not in its MLflow "
                             f"run either; delete the study {study.study_name!r} from {redact(url)} (or its "
                             "journal) and rerun")
        trials.append({**result, "val_objective": trial.value, "checkpoint": path.relative_to(root).as_posix()})
    for stale in sorted((root / protocol_of(settings).models_dir).glob("bs_*")):
        if stale.is_dir() and stale.name not in {f"bs_{size:05d}" for size in done}:
            shutil.rmtree(stale)
    return trials


def finalize(study: optuna.Study, settings: dict[str, Any], url: str, root: Path, log=print) -> dict[str, Any]:
    """Write the checkpoints, sweep.json and study.json, and log the summary to the parent run (which it
    ends). Returns the summary (sweep.json)."""
    protocol = protocol_of(settings)
    trials = trained_checkpoints(study, settings, url, root, log)
    states = {state.name: count_trials(study, state) for state in TrialState}
    best = max(trials, key=lambda t: t["val_objective"]) if trials else None
    summary = {"study": study.study_name, "storage": describe_storage(url, root), "sampler": settings["sampler"],
               "dataset": settings["dataset"], "model": settings["model"], "normalize": settings["normalize"],
               "seed": settings["seed"], "protocol": protocol.name, "epochs": settings["train"]["epochs"],
               "early_stopping": settings["train"]["early_stopping"], "patience": settings["train"]["patience"],
               "trial_states": states,
               "best_batch_size": best["batch_size"] if best else None, "trials": trials}
    (root / protocol.summary_path).parent.mkdir(parents=True, exist_ok=True)
    (root / protocol.summary_path).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (root / protocol.study_info).parent.mkdir(parents=True, exist_ok=True)
    (root / protocol.study_info).write_text(json.dumps({"study": study.study_name,
                                                        "storage": describe_storage(url, root)}, indent=2) + "\n")
    write_timings(root, protocol.stage, {"trial_seconds": {  # the run facts outputs leave out (RUN_FACTS)
        str(batch_size): {key: trial.user_attrs[RESULT_ATTR].get(key) for key in RUN_FACTS}
        for batch_size, trial in completed_trials(study).items()}})
    with mlflow.start_run(run_id=study.user_attrs[PARENT_ATTR]):
        mlflow.log_artifact(str(root / protocol.summary_path))
        mlflow.log_metrics({f"trials_{name.lower()}": float(count) for name, count in states.items()})
        if best:
            mlflow.log_metrics({"best_batch_size": best["batch_size"], "best_val_acc": best["val_objective"],
                                "best_test_acc": best["final_test_acc"]})
    return summary
