"""The sweep's Optuna storage: which URL (environment, params, or the journal file in the repository), how
to open it, and the liveness settings (heartbeats, grace period, retries) that database workers share."""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from lossviz.params import BatchSweepParams, Params
from pipelines.common import portable_path, repo_root
from pipelines.sweep.layout import JOURNAL_PATH, LIVENESS_ATTR, STORAGE_ENV


def storage_url(params: Params, root: Path) -> str:
    """LOSSVIZ_OPTUNA_STORAGE, else params `batch_sweep.storage`, else the journal file in the repo."""
    return os.environ.get(STORAGE_ENV) or params.batch_sweep.storage or str(root / JOURNAL_PATH)


def redact(url: str) -> str:
    """The URL without its password, for logs and run params."""
    return re.sub(r"//([^:/@]+):[^@/]*@", r"//\1:***@", url)


def describe_storage(url: str, root: Path) -> str:
    """The storage as recorded in outputs and runs: a journal file inside the repository relative to it (a
    moved checkout stays valid), a database URL without its password."""
    if is_database_url(url):
        return redact(url)
    return portable_path(url.removeprefix("journal:"), root)


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


def liveness_of(study: optuna.Study) -> Liveness:
    """The liveness the stage recorded in the study (the params' defaults for a study without one)."""
    recorded = study.user_attrs.get(LIVENESS_ATTR)
    return Liveness(**recorded) if recorded else Liveness.from_params()


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
