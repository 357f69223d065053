"""How the sweep's workers take turns and tell the dead from the living.

- A journal file (one host, or a shared disk): turns are an flock'd lock file in the study's state
  directory; a worker holds an flock'd lease file per running trial, and a RUNNING trial whose lease nobody
  holds (or whose process on this host is gone) belonged to a dead worker.
- A database (PostgreSQL for workers on many machines): turns are a PostgreSQL advisory lock (the lock file
  for other databases, which are one machine's); a worker records Optuna's heartbeat for its trial, and
  Optuna fails a trial silent for the grace period (its RetryHeartbeatStaleTrialCallback re-queues it).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Protocol

import optuna
import sqlalchemy
from optuna.trial import FrozenTrial, TrialState

from pipelines.sweep.layout import LEASE_ATTR, STATE_DIR, WORKER_ATTR
from pipelines.sweep.storage import is_database_url, is_postgresql_url, liveness_of


def state_dir(root: Path, study_name: str) -> Path:
    """The study's working directory: lock, leases, resumable training checkpoints."""
    path = root / STATE_DIR / study_name
    path.mkdir(parents=True, exist_ok=True)
    return path


def worker_id() -> str:
    """This worker, as recorded in its trials: "host:pid"."""
    return f"{socket.gethostname()}:{os.getpid()}"


def dead_here(worker: str) -> bool:
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
    """What a worker holds while it runs a trial, to show it is alive."""

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
    """Optuna's heartbeat for a trial run by ask-and-tell (Study.optimize would keep it itself). The first
    beat is recorded before the claim's lock is let go, so no running trial is ever without one; then a
    thread beats every `interval` seconds until released. Public storage methods only: the trial's id
    looked up from its number, and RDBStorage.record_heartbeat (what optuna.storages.fail_stale_trials
    reads)."""

    def __init__(self, storage: optuna.storages.RDBStorage, study_name: str, trial_number: int, interval: int):
        study_id = storage.get_study_id_from_name(study_name)
        self._trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial_number)
        self._storage = storage
        storage.record_heartbeat(self._trial_id)
        self._stop = threading.Event()
        # A daemon: a worker that dies must not be kept alive, beating, by its own heartbeat.
        self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True,
                                        name=f"heartbeat-trial-{trial_number}")
        self._thread.start()

    def _beat(self, interval: int) -> None:
        while not self._stop.wait(interval):
            self._storage.record_heartbeat(self._trial_id)

    def release(self) -> None:
        self._stop.set()
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
            elif lease is not None and not dead_here(trial.user_attrs.get(WORKER_ATTR, "")):
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

    @cached_property
    def _heartbeat_storage(self) -> optuna.storages.RDBStorage:
        """Opened on the first claim: set-up and recovery never beat."""
        return optuna.storages.RDBStorage(self.url)

    def turn(self) -> contextlib.AbstractContextManager[None]:
        if is_postgresql_url(self.url):
            return advisory_lock(self.url, self.study_name)
        return sweep_lock(self.directory)

    def hold(self, study: optuna.Study, trial: optuna.Trial) -> Hold:
        return Heartbeat(self._heartbeat_storage, study.study_name, trial.number,
                         liveness_of(study).heartbeat_interval)

    def fail_dead(self, study: optuna.Study) -> list[FrozenTrial]:
        running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        return [t for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)) if t.number in running]


Workers = FileWorkers | DatabaseWorkers


def sweep_workers(url: str, study_name: str, root: Path) -> Workers:
    """The turns and liveness that fit the storage at `url`."""
    directory = state_dir(root, study_name)
    return DatabaseWorkers(url, study_name, directory) if is_database_url(url) else FileWorkers(directory)
