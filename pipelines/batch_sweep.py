"""DVC stage `batch_sweep` (the seed paper's Figure 4): an Optuna study over the training batch size, each
trial a `lossviz.training.train` run tracked as an MLflow child run of the study's parent run.

    python -m pipelines.batch_sweep                                  # the stage: set up, work, finalize
    python -m pipelines.batch_sweep worker --storage URL --study NAME  # one more worker on the same study

Sampler (params `batch_sweep.sampler`): `grid` runs every batch size of `batch_sizes` exactly once;
`tpe` runs `n_trials` trials of TPE over 2**log2_batch_size with a median pruner fed the validation
accuracy after every epoch. The objective is the final validation accuracy (maximized).

Storage: an Optuna journal file, `studies/batch_sweep/journal.log` (a `persist: true` DVC output, so a
killed sweep started again continues), or the URL in params `batch_sweep.storage` or the environment
variable LOSSVIZ_OPTUNA_STORAGE (`postgresql://…`, `sqlite:///…`, or a journal file path).
The study's name is a digest of everything that shapes its trials (settings, prepared data, training
code), and the study records those settings: changed params make a new study, and a study named by hand
whose settings differ is refused with the differing keys.

Exactly once. Trials are run with ask-and-tell by `run_sweep_worker`, which any number of processes may
call on one storage. Every grid point is enqueued (`Study.enqueue_trial`) and a worker claims a trial with
`Study.ask()`, which pops a waiting trial atomically in the storage; recovery, enqueueing and claiming take
turns under a lock, so no two workers enqueue or create the same point. What tells a dead worker's trial:
- a journal file (one host, or a shared disk): the lock is `tmp/batch_sweep/<study>/sweep.lock`; a worker
  holds an flock'd lease file per running trial, and a RUNNING trial whose lease nobody holds (or whose
  process on this host is gone) is marked FAIL;
- a database (PostgreSQL for workers on many machines): the lock is a PostgreSQL advisory lock; a worker
  records Optuna's heartbeat for its trial every `heartbeat_interval` s, and a trial silent for
  `grace_period` s is failed by Optuna and re-queued by its RetryHeartbeatStaleTrialCallback.
Either way the dead trial's MLflow run is set KILLED and its point is queued again (GridSampler counts
FAILED trials as visited, so it would never revisit it), at most `max_retries` times per stage run; the
stage fails naming the points given up on. The retry resumes from the point's training checkpoint
(`tmp/batch_sweep/<study>/bs_*.pt`; `trial-*.pt` for TPE; written after every epoch) where that directory
is shared, from scratch where it is not. A trial trained on another machine reaches the stage's DVC
outputs through its MLflow run's checkpoint artifact (use a team tracking server: MLFLOW_TRACKING_URI).

Outputs (DVC): `models/batch_sweep/bs_XXXXX/model.pt` (+ trial.json) per completed batch size and
`models/batch_sweep/sweep.json` (persisted, like the journal), `reports/batch_sweep/` (Optuna's history,
slice and intermediate-values figures as self-contained pages, also logged to the parent run).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import optuna  # noqa: E402
import sqlalchemy  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from lossviz.checkpoints import save_model  # noqa: E402
from lossviz.data import DataError, Splits, TensorSplit, load_splits  # noqa: E402
from lossviz.models import build_model  # noqa: E402
from lossviz.params import BatchSweepParams, Params  # noqa: E402
from lossviz.plots import write_gallery, write_html  # noqa: E402
from lossviz.runtime import seed_everything  # noqa: E402
from lossviz.training import EpochRecord, TrainConfig, train  # noqa: E402
from pipelines.common import PACKAGE_ROOT, data_root, repo_root, stage_params  # noqa: E402
from pipelines.tracking import ensure_store, get_experiment_id, run_tags, stage_run  # noqa: E402

STAGE = EXPERIMENT = "batch_sweep"
JOURNAL_PATH = Path("studies/batch_sweep/journal.log")
STUDY_INFO_PATH = Path("studies/batch_sweep/study.json")
MODELS_DIR = Path("models/batch_sweep")
SUMMARY_PATH = MODELS_DIR / "sweep.json"
CHECKPOINT_ARTIFACT = Path("checkpoint/model.pt")  # in each trial's MLflow run
REPORT_DIR = Path("reports/batch_sweep")
STATE_DIR = Path("tmp/batch_sweep")
STORAGE_ENV = "LOSSVIZ_OPTUNA_STORAGE"
# The library code a trial's numbers depend on: part of the study's identity.
CODE_FILES = ("lossviz/training.py", "lossviz/models.py", "lossviz/data.py", "lossviz/checkpoints.py",
              "lossviz/runtime.py")
POLL_SECONDS = 5.0
# Optuna study user attrs
SETTINGS_ATTR, N_TRIALS_ATTR, PARENT_ATTR = "lossviz.settings", "lossviz.n_trials", "lossviz.mlflow_parent_run_id"
LIVENESS_ATTR = "lossviz.liveness"
# Optuna trial user attrs
BATCH_ATTR, RUN_ATTR, LEASE_ATTR, RESULT_ATTR = ("lossviz.batch_size", "lossviz.mlflow_run_id", "lossviz.lease",
                                                 "lossviz.result")
WORKER_ATTR, RESUME_ATTR = "lossviz.worker", "lossviz.resume_file"

optuna.logging.set_verbosity(optuna.logging.WARNING)


class SweepError(RuntimeError):
    """The sweep cannot go on as asked; the message says why and what to do."""


# ------------------------------------------------------------------------------------ settings, names

def local_digests(root: Path, dataset: str) -> tuple[str, str]:
    """Digests of this checkout's prepared dataset (its manifest) and training code (CODE_FILES)."""
    manifest = data_root(root) / dataset / "manifest.json"
    code = hashlib.sha256()
    for name in CODE_FILES:
        code.update((PACKAGE_ROOT / name).read_bytes())
    data = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "missing"
    return data, code.hexdigest()[:16]


def sweep_settings(params: Params, root: Path) -> dict[str, Any]:
    """Everything that shapes the trials' numbers, as plain JSON (the study stores it; workers train from
    it). The device and the trial budget are not in it: a worker trains on its own device, and raising
    `n_trials` continues a TPE study."""
    section = params.batch_sweep
    manifest = data_root(root) / section.dataset / "manifest.json"
    if not manifest.is_file():
        raise SweepError(f"{manifest}: no prepared {section.dataset}; run the `prepare` stage first")
    data_digest, code_digest = local_digests(root, section.dataset)
    settings: dict[str, Any] = {
        "dataset": section.dataset, "model": section.model, "seed": params.seed,
        "val_size": params.data.val_size, "normalize": params.data.normalize,
        "max_train_examples": section.max_train_examples, "sampler": section.sampler,
        "train": {key: getattr(section, key) for key in (
            "optimizer", "lr", "momentum", "weight_decay", "epochs", "lr_plateau", "plateau_factor",
            "plateau_patience", "early_stopping", "patience", "train_eval_examples")},
        "data_digest": data_digest, "code_digest": code_digest,
    }
    if section.sampler == "grid":
        settings["batch_sizes"] = list(section.batch_sizes)
    else:
        settings.update(log2_batch_size_min=section.log2_batch_size_min,
                        log2_batch_size_max=section.log2_batch_size_max, pruner=section.pruner)
    return settings


def derived_study_name(settings: dict[str, Any]) -> str:
    return "batch_sweep-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def storage_url(params: Params, root: Path) -> str:
    """LOSSVIZ_OPTUNA_STORAGE, else params `batch_sweep.storage`, else the journal file in the repo."""
    return os.environ.get(STORAGE_ENV) or params.batch_sweep.storage or str(root / JOURNAL_PATH)


def redact(url: str) -> str:
    """The URL without its password, for logs and run params."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def is_database_url(url: str) -> bool:
    return "://" in url and not url.startswith("journal:")


def is_postgresql_url(url: str) -> bool:
    return url.split("://", 1)[0].split("+", 1)[0] in ("postgresql", "postgres")


@dataclass(frozen=True)
class Liveness:
    """How database workers show they are alive, and how often a point is retried (params
    `batch_sweep.heartbeat_interval`, `grace_period`, `max_retries`); the stage records it in the study so
    that every worker beats and judges alike."""
    heartbeat_interval: int
    grace_period: int
    max_retries: int | None

    @classmethod
    def from_params(cls, section: BatchSweepParams | None = None) -> Liveness:
        """From a params section; without one, the params' defaults."""
        section = section or BatchSweepParams()
        return cls(section.heartbeat_interval, section.grace_period, section.max_retries)


def open_storage(url: str, root: Path | None = None, liveness: Liveness | None = None) -> optuna.storages.BaseStorage:
    """A database URL (`scheme://…`) → RDBStorage, with Optuna's heartbeats when `liveness` is given (a
    trial silent for the grace period is failed and re-queued by RetryHeartbeatStaleTrialCallback);
    anything else (optionally `journal:`-prefixed) is a journal file path, relative to the repository root."""
    if is_database_url(url):
        if liveness is None:
            return optuna.storages.RDBStorage(url)
        with warnings.catch_warnings():  # heartbeats are an experimental argument
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=liveness.heartbeat_interval, grace_period=liveness.grace_period,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=liveness.max_retries))
    path = Path(url.removeprefix("journal:"))
    path = path if path.is_absolute() else (root or repo_root()) / path
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


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


def state_dir(root: Path, study_name: str) -> Path:
    path = root / STATE_DIR / study_name
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------ workers: turns and liveness

@contextlib.contextmanager
def sweep_lock(directory: Path) -> Iterator[None]:
    """Serializes recovery, enqueueing and claiming among the workers of one study on one host (or a
    shared disk)."""
    with open(directory / "sweep.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def advisory_lock(url: str, study_name: str) -> Iterator[None]:
    """The same for workers on many machines: a PostgreSQL session advisory lock keyed by the study,
    which the server drops if the holder's connection dies."""
    key = int.from_bytes(hashlib.sha256(f"lossviz:{study_name}".encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
    finally:
        engine.dispose()


class Hold(Protocol):
    def release(self) -> None: ...


class Lease:
    """An flock'd file held while a worker runs a trial; the OS drops it when the process dies."""

    def __init__(self, path: Path):
        self.path = path
        self._handle = open(path, "w")  # noqa: SIM115 (held for the trial's lifetime)
        fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        self._handle.write(f"{socket.gethostname()} {os.getpid()}\n")
        self._handle.flush()

    def release(self) -> None:
        self.path.unlink(missing_ok=True)
        self._handle.close()

    @staticmethod
    def is_held(path: Path) -> bool:
        if not path.exists():
            return False
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False


class Heartbeat:
    """Optuna's heartbeat for a trial run by ask-and-tell (Study.optimize would start it itself): the first
    beat is recorded before the claim's lock is let go, so no running trial is ever without one."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial):
        from optuna.storages._heartbeat import HeartbeatThread

        study._storage.record_heartbeat(trial._trial_id)
        self._thread = HeartbeatThread(trial._trial_id, study._storage)
        self._thread.start()

    def release(self) -> None:
        self._thread.join()


class FileWorkers:
    """Journal-file studies: a lock file and per-trial lease files in the study's state directory."""

    def __init__(self, directory: Path):
        self.directory = directory

    def turn(self) -> contextlib.AbstractContextManager[None]:
        return sweep_lock(self.directory)

    def hold(self, study: optuna.Study, trial: optuna.Trial) -> Hold:
        lease = Lease(self.directory / f"trial-{trial.number:05d}.lease")
        trial.set_user_attr(LEASE_ATTR, lease.path.name)
        return lease

    def fail_dead(self, study: optuna.Study) -> list[FrozenTrial]:
        """Mark FAIL every RUNNING trial whose worker is gone: its lease file exists here and nobody holds
        it; its lease file is missing and its process on this host is dead; or it has no lease yet (leases
        are taken under the lock, which the caller holds). Trials leased on a machine that does not share
        this directory are left alone."""
        failed = []
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            lease = trial.user_attrs.get(LEASE_ATTR)
            if lease is not None and (self.directory / lease).exists():
                if Lease.is_held(self.directory / lease):
                    continue
            elif lease is not None and not _dead_here(trial.user_attrs.get(WORKER_ATTR, "")):
                continue  # leased where this directory is not shared: another machine's to judge
            study.tell(trial.number, state=TrialState.FAIL, skip_if_finished=True)
            failed.append(trial)
        return failed


class DatabaseWorkers:
    """RDB studies (PostgreSQL for workers on many machines): Optuna's heartbeats tell the living, a
    PostgreSQL advisory lock serializes the claims (the state directory's lock file for other databases,
    which are one machine's). Optuna fails a trial silent for the grace period and re-queues it."""

    def __init__(self, url: str, study_name: str, directory: Path):
        self.url, self.study_name, self.directory = url, study_name, directory

    def turn(self) -> contextlib.AbstractContextManager[None]:
        if is_postgresql_url(self.url):
            return advisory_lock(self.url, self.study_name)
        return sweep_lock(self.directory)

    def hold(self, study: optuna.Study, trial: optuna.Trial) -> Hold:
        return Heartbeat(study, trial)

    def fail_dead(self, study: optuna.Study) -> list[FrozenTrial]:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in running]


Workers = FileWorkers | DatabaseWorkers


def sweep_workers(url: str, study_name: str, root: Path) -> Workers:
    directory = state_dir(root, study_name)
    return DatabaseWorkers(url, study_name, directory) if is_database_url(url) else FileWorkers(directory)


# ----------------------------------------------------------------------------------- study bookkeeping

def trial_batch_size(trial: FrozenTrial) -> int | None:
    if BATCH_ATTR in trial.user_attrs:
        return int(trial.user_attrs[BATCH_ATTR])
    if "batch_size" in trial.params:
        return int(trial.params["batch_size"])
    if "log2_batch_size" in trial.params:
        return 2 ** int(trial.params["log2_batch_size"])
    return None


def _point_params(settings: dict[str, Any], batch_size: int) -> dict[str, int]:
    return ({"batch_size": batch_size} if settings["sampler"] == "grid"
            else {"log2_batch_size": int(math.log2(batch_size))})


def _dead_here(worker: str) -> bool:
    """True when `worker` ("host:pid") ran on this host and that process is gone."""
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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
            continue  # given up on in this stage run (main says so)
        resume = failed[-1].user_attrs.get(RESUME_ATTR) if failed else None
        study.enqueue_trial(_point_params(settings, size), user_attrs={
            BATCH_ATTR: size, RESUME_ATTR: resume or f"bs_{size:05d}.pt"})
        missing.append(size)
    return missing


def _count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))


def claim_trial(study: optuna.Study, settings: dict[str, Any], workers: Workers,
                log=print) -> tuple[optuna.Trial, Hold] | None:
    """In the workers' turn: recover dead trials, enqueue missing points, and take the next trial (a
    waiting one; for TPE a new one while the budget lasts) with a lease or heartbeat. None when nothing
    is left."""
    with workers.turn():
        recover_stale_trials(study, workers, log)
        queue_missing_points(study, settings, liveness_of(study).max_retries)
        has_waiting = _count(study, TrialState.WAITING) > 0
        budget = int(study.user_attrs.get(N_TRIALS_ATTR, 0))
        if not has_waiting and not (settings["sampler"] == "tpe" and _count(
                study, TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING) < budget):
            return None
        with warnings.catch_warnings():  # we record the heartbeats Study.optimize would
            warnings.filterwarnings("ignore", "Heartbeat of storage is supposed to be used with Study.optimize")
            trial = study.ask()
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        return trial, workers.hold(study, trial)


def liveness_of(study: optuna.Study) -> Liveness:
    recorded = study.user_attrs.get(LIVENESS_ATTR)
    return Liveness(**recorded) if recorded else Liveness.from_params()


# ------------------------------------------------------------------------------------------- the data

def load_sweep_splits(root: Path, settings: dict[str, Any]) -> Splits:
    splits = load_splits(data_root(root), settings["dataset"], settings["val_size"], settings["seed"],
                         settings["normalize"])
    limit = settings["max_train_examples"]
    if limit:
        splits = Splits(TensorSplit(splits.train.x[:limit], splits.train.y[:limit]), splits.val, splits.test,
                        splits.dataset)
    return splits


def check_settings(settings: dict[str, Any], splits: Splits) -> list[str]:
    """Problems only the data reveal, found before any output is touched."""
    problems, train_size = [], len(splits.train)
    sizes = (settings["batch_sizes"] if settings["sampler"] == "grid"
             else [2 ** settings["log2_batch_size_max"]])
    too_big = [size for size in sizes if size > train_size]
    if too_big:
        key = "batch_sweep.batch_sizes" if settings["sampler"] == "grid" else "batch_sweep.log2_batch_size_max"
        problems.append(f"{key}: batch sizes {too_big} exceed the {train_size} training examples; allowed: "
                        f"1 … {train_size} (raise batch_sweep.max_train_examples or lower the sizes)")
    if splits.val is None:
        problems.append("data.val_size: got 0; the sweep's objective is validation accuracy: set it > 0")
    return problems


# ------------------------------------------------------------------------------------------- a trial

def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flat[key] = value
    return flat


def checkpoint_dir(root: Path, batch_size: int) -> Path:
    return root / MODELS_DIR / f"bs_{batch_size:05d}"


def write_trial_file(out: Path, study_name: str, summary: dict[str, Any]) -> None:
    (out / "trial.json").write_text(json.dumps({"study": study_name, **summary}, indent=2, sort_keys=True) + "\n")


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
        log(f"{STAGE}: trial {trial.number} batch {batch_size} epoch {record.epoch}/{epochs}"
            f"{' (replayed)' if replayed else ''} val_acc {record.val_acc:.4f} test_acc {record.test_acc:.4f}")
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {record.epoch}")

    parent = study.user_attrs[PARENT_ATTR]
    with stage_run(EXPERIMENT, f"batch {batch_size}", STAGE, root=root, parent_run_id=parent) as run:
        trial.set_user_attr(RUN_ATTR, run.info.run_id)
        mlflow.set_tags({"lossviz.study": study.study_name, "lossviz.batch_size": str(batch_size),
                         "lossviz.role": "trial", "optuna.trial_number": str(trial.number)})
        mlflow.log_params({**_flat(settings), "batch_size": batch_size, "device": device,
                           "trial_number": trial.number, "study_name": study.study_name})
        steps = math.ceil(len(splits.train) / batch_size)
        mlflow.log_metrics({"batch_size": batch_size, "log2_batch_size": math.log2(batch_size),
                            "train_examples": len(splits.train), "steps_per_epoch": steps})
        try:
            result = train(model, splits, config, callbacks=[on_epoch], checkpoint_path=resume)
        except optuna.TrialPruned:
            mlflow.set_tag("optuna.trial_state", "PRUNED")
            study.tell(trial, state=TrialState.PRUNED)
            resume.unlink(missing_ok=True)
            log(f"{STAGE}: trial {trial.number} batch {batch_size} pruned")
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
        out = checkpoint_dir(root, batch_size)
        model_path = save_model(model, out / "model.pt", model=settings["model"], dataset=settings["dataset"],
                                input_shape=list(splits.input_shape), num_classes=splits.num_classes,
                                batch_size=batch_size, epoch=result.final.epoch, acc=result.final.test_acc)
        write_trial_file(out, study.study_name, summary)
        mlflow.log_metrics({key: float(value) for key, value in result.summary().items()
                            if isinstance(value, int | float) and value is not None})
        mlflow.log_metric("train_seconds", result.seconds)
        mlflow.log_artifact(str(model_path), CHECKPOINT_ARTIFACT.parent.as_posix())
        trial.set_user_attr(RESULT_ATTR, summary)
        mlflow.set_tag("optuna.trial_state", "COMPLETE")
        study.tell(trial, result.final.val_acc)
    resume.unlink(missing_ok=True)
    log(f"{STAGE}: trial {trial.number} batch {batch_size} done: val_acc {result.final.val_acc:.4f} "
        f"test_acc {result.final.test_acc:.4f} ({result.seconds:.0f} s)")
    return TrialState.COMPLETE


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


def run_sweep_worker(url: str, study_name: str, root: Path | None = None, *, device: str = "auto",
                     max_trials: int | None = None, progress: bool = True, splits: Splits | None = None,
                     log=print) -> list[int]:
    """Run trials of the study until none is left (or `max_trials` were run); safe to call from several
    processes on one storage (see the module docstring). Returns the numbers of the trials it ran."""
    root = root or repo_root()
    study, settings = load_sweep_study(url, study_name, root)
    ensure_store(root)
    if splits is None:
        local = local_digests(root, settings["dataset"])
        if local != (settings["data_digest"], settings["code_digest"]):
            raise SweepError(f"study {study_name!r} was made with data/code digests "
                             f"{settings['data_digest']}/{settings['code_digest']}; this checkout has "
                             f"{local[0]}/{local[1]}: run the worker from the same code and prepared data")
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


# -------------------------------------------------------------------------------- set-up and finalize

def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    stored, current = _flat(stored), _flat(current)
    return sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))


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
        liveness = asdict(liveness or Liveness.from_params())
        if study.user_attrs.get(LIVENESS_ATTR) != liveness:
            study.set_user_attr(LIVENESS_ATTR, liveness)
        stored = study.user_attrs.get(SETTINGS_ATTR)
        if stored is None:
            study.set_user_attr(SETTINGS_ATTR, settings)
        elif stored != settings:
            raise SweepError(f"study {study_name!r} in {redact(url)} was made with other settings (differ: "
                             f"{', '.join(_differences(stored, settings))}); set batch_sweep.study_name to "
                             "null (a name derived from the settings) or to a new name")
        if study.user_attrs.get(N_TRIALS_ATTR) != n_trials:
            study.set_user_attr(N_TRIALS_ATTR, n_trials)
        client = MlflowClient()
        parent = study.user_attrs.get(PARENT_ATTR)
        try:
            exists = parent is not None and client.get_run(parent).info.lifecycle_stage == "active"
        except mlflow.exceptions.MlflowException:
            exists = False
        if not exists:
            experiment_id = get_experiment_id(EXPERIMENT, root)
            run = client.create_run(experiment_id, run_name=study_name, tags={
                **run_tags(STAGE, root), "lossviz.study": study_name, "lossviz.role": "study"})
            parent = run.info.run_id
            for key, value in {**_flat(settings), "study_name": study_name, "storage": redact(url),
                               "n_trials": n_trials}.items():
                client.log_param(parent, key, value)
            study.set_user_attr(PARENT_ATTR, parent)
        log(f"{STAGE}: study {study_name} in {redact(url)}, MLflow parent run {parent} (more workers: "
            f"python -m pipelines.batch_sweep worker --study {study_name})")
        queue_missing_points(study, settings)
    return study


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
            waiting = _count(study, TrialState.WAITING)
            running = _count(study, TrialState.RUNNING)
        if not waiting and not running:
            return
        if running and not waiting:
            log(f"{STAGE}: waiting for {running} trial(s) running in other workers")
            time.sleep(POLL_SECONDS)


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


def optuna_figures(study: optuna.Study) -> dict[str, Any]:
    from optuna import visualization as vis

    figures = {"history": vis.plot_optimization_history(study),
               "intermediate_values": vis.plot_intermediate_values(study)}
    param = "batch_size" if any("batch_size" in t.params for t in study.trials) else "log2_batch_size"
    figures["slice"] = vis.plot_slice(study, params=[param])
    return figures


def finalize(study: optuna.Study, settings: dict[str, Any], url: str, root: Path, log=print) -> dict[str, Any]:
    """Write sweep.json and the report pages, drop checkpoints of other studies or sizes, and log the
    figures and the summary to the parent run (which it ends)."""
    done = completed_trials(study)
    trials = []
    for batch_size, trial in done.items():
        result = dict(trial.user_attrs[RESULT_ATTR])
        path = checkpoint_dir(root, batch_size) / "model.pt"
        if not path.is_file() and fetch_checkpoint(trial, study.study_name, path.parent):
            log(f"{STAGE}: batch {batch_size}: checkpoint fetched from MLflow run {trial.user_attrs[RUN_ATTR]}")
        if not path.is_file():
            raise SweepError(f"{path}: missing for the completed trial {trial.number}, and not in its MLflow "
                             f"run either; delete the study {study.study_name!r} from {redact(url)} (or its "
                             "journal) and rerun")
        trials.append({**result, "val_objective": trial.value, "checkpoint": path.relative_to(root).as_posix()})
    for stale in sorted((root / MODELS_DIR).glob("bs_*")):
        if stale.is_dir() and stale.name not in {f"bs_{size:05d}" for size in done}:
            shutil.rmtree(stale)
    states = {state.name: _count(study, state) for state in TrialState}
    best = max(trials, key=lambda t: t["val_objective"]) if trials else None
    summary = {"study": study.study_name, "storage": redact(url), "sampler": settings["sampler"],
               "dataset": settings["dataset"], "model": settings["model"], "normalize": settings["normalize"],
               "seed": settings["seed"], "epochs": settings["train"]["epochs"], "trial_states": states,
               "best_batch_size": best["batch_size"] if best else None, "trials": trials}
    (root / SUMMARY_PATH).parent.mkdir(parents=True, exist_ok=True)
    (root / SUMMARY_PATH).write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    (root / STUDY_INFO_PATH).parent.mkdir(parents=True, exist_ok=True)
    (root / STUDY_INFO_PATH).write_text(json.dumps({"study": study.study_name, "storage": redact(url)},
                                                   indent=2) + "\n")
    report = root / REPORT_DIR
    if report.exists():
        shutil.rmtree(report)
    pages = [write_html(figure, report / f"{name}.html", title=f"{study.study_name}: {name.replace('_', ' ')}")
             for name, figure in optuna_figures(study).items()]
    write_gallery(report, title=f"Batch-size sweep {study.study_name}")
    with mlflow.start_run(run_id=study.user_attrs[PARENT_ATTR]):
        for page in pages:
            mlflow.log_artifact(str(page), "optuna")
        mlflow.log_artifact(str(root / SUMMARY_PATH))
        mlflow.log_metrics({f"trials_{name.lower()}": float(count) for name, count in states.items()})
        if best:
            mlflow.log_metrics({"best_batch_size": best["batch_size"], "best_val_acc": best["val_objective"],
                                "best_test_acc": best["final_test_acc"]})
    return summary


# ----------------------------------------------------------------------------------------------- main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.batch_sweep", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    worker = sub.add_parser("worker", help="run trials of an existing study (several workers may share it)")
    worker.add_argument("--storage", default=None, help="Optuna storage URL (default: as the stage resolves it)")
    worker.add_argument("--study", required=True, help="study name (printed by the stage, in study.json)")
    worker.add_argument("--device", default=None, help="default: params `device`")
    worker.add_argument("--max-trials", type=int, default=None)
    args = parser.parse_args(argv)

    root = repo_root()
    params = stage_params(root)
    progress = True  # tqdm per trial, as the train stage
    if args.command == "worker":
        url = args.storage or storage_url(params, root)
        try:
            ran = run_sweep_worker(url, args.study, root, device=args.device or params.device,
                                   max_trials=args.max_trials, progress=progress)
        except SweepError as error:
            print(f"{STAGE} worker: {error}", file=sys.stderr)
            return 2
        print(f"{STAGE} worker: ran trials {ran}")
        return 0

    section = params.batch_sweep
    try:
        settings = sweep_settings(params, root)
        splits = load_sweep_splits(root, settings)
    except (SweepError, DataError, ValueError) as error:
        print(f"{STAGE}: {error}", file=sys.stderr)
        return 2
    problems = check_settings(settings, splits)
    if problems:
        print(f"{STAGE}: invalid params\n" + "\n".join(f"  {line}" for line in problems), file=sys.stderr)
        return 2
    url = storage_url(params, root)
    study_name = section.study_name or derived_study_name(settings)
    (root / JOURNAL_PATH).parent.mkdir(parents=True, exist_ok=True)  # the DVC output exists whatever the URL
    (root / MODELS_DIR).mkdir(parents=True, exist_ok=True)
    ensure_store(root)
    try:
        setup_study(url, study_name, settings, section.n_trials, root, Liveness.from_params(section))
        wait_until_done(url, study_name, root, settings, params.device, splits, progress)
        study, _ = load_sweep_study(url, study_name, root)
        check_grid_done(study, settings)
        summary = finalize(study, settings, url, root)
    except SweepError as error:
        print(f"{STAGE}: {error}", file=sys.stderr)
        return 2
    for trial in summary["trials"]:
        print(f"{STAGE}: batch {trial['batch_size']:>6}: val {trial['final_val_acc']:.4f} "
              f"test {trial['final_test_acc']:.4f} train {trial.get('final_train_acc', math.nan):.4f}")
    print(f"{STAGE}: study {study_name}: best batch size {summary['best_batch_size']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
