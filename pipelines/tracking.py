"""MLflow tracking for the stages: a SQLite store and artifacts under `<repo>/mlruns/`, anchored on the
repository root, overridable with MLFLOW_TRACKING_URI (a team server). The store is created once, under a
file lock, so parallel stages never race on its migrations."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines.common import git_commit, repo_root  # noqa: E402

# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: remember what we set, so that our own
# value is never mistaken for a user's override.
_uri_set_here: str | None = None


def user_tracking_uri() -> str | None:
    value = os.environ.get("MLFLOW_TRACKING_URI")
    return value if value and value != _uri_set_here else None


def tracking_uri(root: Path | None = None) -> str:
    return user_tracking_uri() or f"sqlite:///{(root or repo_root()) / 'mlruns' / 'mlflow.db'}"


def artifact_location(experiment: str, root: Path | None = None) -> str | None:
    if user_tracking_uri():
        return None  # the user's store or server decides where artifacts go
    return ((root or repo_root()) / "mlruns" / "artifacts" / experiment).as_uri()


def ensure_store(root: Path | None = None) -> str:
    """Point MLflow at the store, creating it once (the lock serializes first-time migrations)."""
    global _uri_set_here
    root = root or repo_root()
    users = user_tracking_uri()
    uri = tracking_uri(root)
    mlflow.set_tracking_uri(uri)
    if users is None:  # a user's server stays the user's: its artifacts go where the server says
        _uri_set_here = uri
    if uri.startswith("sqlite:///"):
        store_dir = root / "mlruns"
        store_dir.mkdir(parents=True, exist_ok=True)
        with open(store_dir / ".store.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            MlflowClient(uri).search_experiments(max_results=1)
    close_orphaned_runs(MlflowClient(uri))
    return uri


HOST_TAG, PID_TAG = "lossviz.host", "lossviz.pid"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def close_orphaned_runs(client: MlflowClient) -> list[str]:
    """Mark KILLED the runs still RUNNING whose stage process, on this host, is gone (a SIGKILL, an out-of-memory
    kill, a closed terminal): MLflow alone would show them running forever. Runs of other hosts (sweep workers
    elsewhere) are left to their own machines. Returns the run ids it closed."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    host = socket.gethostname().replace("'", "")
    orphans = [run for run in client.search_runs(
        experiments, filter_string=f"attributes.status = 'RUNNING' and tags.`{HOST_TAG}` = '{host}'")
        if not _alive(int(run.data.tags.get(PID_TAG, "0") or 0))]
    for run in orphans:
        client.set_terminated(run.info.run_id, "KILLED")
    return [run.info.run_id for run in orphans]


def get_experiment_id(name: str, root: Path | None = None) -> str:
    client = MlflowClient()
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_location(name, root))
    except mlflow.exceptions.MlflowException:  # created meanwhile by another process
        return client.get_experiment_by_name(name).experiment_id


def reclaim_run(client: MlflowClient, run_id: str) -> None:
    """A run this process continues (a resumed stage): RUNNING again, owned by this host and process."""
    client.set_tag(run_id, HOST_TAG, socket.gethostname())
    client.set_tag(run_id, PID_TAG, str(os.getpid()))
    client.update_run(run_id, status="RUNNING")


def run_tags(stage: str, root: Path) -> dict[str, str]:
    # host and pid: the process that owns the run, so that the next stage run can close it if it was killed
    tags = {"dvc.stage": os.environ.get("DVC_STAGE", stage), HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}
    commit = git_commit(root)
    if commit:
        tags["mlflow.source.git.commit"] = commit
    if os.environ.get("DVC_EXP_NAME"):
        tags["dvc.exp"] = os.environ["DVC_EXP_NAME"]
    return tags


@contextlib.contextmanager
def stage_run(experiment: str, run_name: str, stage: str, root: Path | None = None,
              **start_kwargs) -> Iterator[mlflow.ActiveRun]:
    """Open a run for a stage in `experiment`, tagged with the git commit, the DVC stage and experiment."""
    root = root or repo_root()
    ensure_store(root)
    experiment_id = get_experiment_id(experiment, root)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name,
                          tags=run_tags(stage, root), **start_kwargs) as run:
        yield run
