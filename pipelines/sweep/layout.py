"""Where the batch-size sweep keeps things and the names it records them under: its DVC outputs, its working
state, the Optuna study's and trials' user attributes. Shared by the `batch_sweep` stage, its workers and the
`batch_landscapes` stage, which reads the sweep's outputs; it imports neither optuna nor mlflow, so reading
a path from here costs nothing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

STAGE = EXPERIMENT = "batch_sweep"  # the DVC stage and its MLflow experiment
JOURNAL_PATH = Path("studies/batch_sweep/journal.log")  # the default Optuna storage (a DVC output, persisted)
STUDY_INFO_PATH = Path("studies/batch_sweep/study.json")  # the study's name and (redacted) storage
MODELS_DIR = Path("models/batch_sweep")  # bs_XXXXX/model.pt + trial.json per completed batch size
SUMMARY_PATH = MODELS_DIR / "sweep.json"  # what `batch_landscapes` reads
REPORT_DIR = Path("reports/batch_sweep")  # Optuna's pages of the study, drawn by `batch_landscapes`
STATE_DIR = Path("tmp/batch_sweep")  # per study: the lock file, leases and resumable training checkpoints
CHECKPOINT_ARTIFACT = Path("checkpoint/model.pt")  # in each trial's MLflow run
STORAGE_ENV = "LOSSVIZ_OPTUNA_STORAGE"  # overrides params `batch_sweep.storage`



@dataclass(frozen=True)
class Protocol:
    """How the sweep's models are trained, and where that protocol's study keeps its outputs. `fixed`: the
    section's own `epochs` for every batch size (the seed paper: 40); `converged`: early stopping on validation
    loss, up to `converged_max_epochs`, so that a large batch is not compared undertrained. Each protocol is its
    own study (its settings differ) in the same storage, with its own DVC stages and outputs."""
    name: str
    stage: str        # the DVC stage that trains it
    models_dir: Path  # bs_XXXXX/ per completed batch size, and sweep.json
    study_info: Path
    report_dir: Path  # Optuna's pages of its study (drawn by its landscapes stage)

    @property
    def summary_path(self) -> Path:
        return self.models_dir / "sweep.json"

    @property
    def suffix(self) -> str:
        """What the protocol's stages and outputs add to the fixed protocol's names."""
        return "" if self.name == "fixed" else f"_{self.name}"


PROTOCOLS = {
    "fixed": Protocol("fixed", STAGE, MODELS_DIR, STUDY_INFO_PATH, REPORT_DIR),
    "converged": Protocol("converged", f"{STAGE}_converged", Path("models/batch_sweep_converged"),
                          Path("studies/batch_sweep/study_converged.json"), Path("reports/batch_sweep_converged")),
}
PROTOCOL_KEY = "protocol"  # in the study's settings; absent for `fixed` (its studies predate protocols)


def protocol_of(settings: dict[str, Any]) -> Protocol:
    return PROTOCOLS[settings.get(PROTOCOL_KEY, "fixed")]


# Optuna study user attributes
SETTINGS_ATTR = "lossviz.settings"  # everything that shapes the trials (pipelines.sweep.settings)
N_TRIALS_ATTR = "lossviz.n_trials"  # the TPE budget
PARENT_ATTR = "lossviz.mlflow_parent_run_id"  # the study's MLflow run; trials are its children
LIVENESS_ATTR = "lossviz.liveness"  # heartbeat interval, grace period, max retries (pipelines.sweep.storage)
# Optuna trial user attributes
BATCH_ATTR = "lossviz.batch_size"
RUN_ATTR = "lossviz.mlflow_run_id"
LEASE_ATTR = "lossviz.lease"  # the lease file's name in the study's state directory (journal storage)
RESULT_ATTR = "lossviz.result"  # the trained trial's summary (trial.json)
WORKER_ATTR = "lossviz.worker"  # "host:pid" of the worker running it
RESUME_ATTR = "lossviz.resume_file"  # the training checkpoint a retry resumes from
# Facts of one run of a trial, kept in the study and MLflow but not in the DVC outputs, which must be the same
# bytes whenever the same code and params run again (issue 17)
RUN_FACTS = ("seconds", "mlflow_run_id", "resumed_from_epoch")
