"""MLflow tracking for the stages: a SQLite store and artifacts under `<repo>/mlruns/`, anchored on the
repository root, overridable with MLFLOW_TRACKING_URI (a team server). The store is created once, under a
file lock, so parallel stages never race on its migrations.

Relocatable: MLflow records absolute artifact locations (it resolves relative ones against the working
directory when an experiment is created). So each stage, on opening the store, points every location recorded
under another checkout's `mlruns/` at this checkout's (`relocate_store`): a `cp -a` or `mv` of the checkout keeps
its runs, artifacts and resumable runs, and writes only under the new path. Run tags and params hold paths
relative to the repository."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import logging
import os
import socket
import sqlite3
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from pipelines.common import git_commit, portable_path, repo_root  # noqa: E402

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
            if users is None:
                relocate_store(store_dir / "mlflow.db", root)
    close_orphaned_runs(MlflowClient(uri))
    return uri


# (table, column) of every artifact location MLflow records
LOCATION_COLUMNS = (("experiments", "artifact_location"), ("runs", "artifact_uri"),
                    ("logged_models", "artifact_location"))


def relocate_store(database: Path, root: Path) -> list[str]:
    """Point the artifact locations recorded under another checkout's `mlruns/` (the store was copied or
    moved with its checkout) at `root`'s. Returns the former roots it replaced."""
    new = str(root.resolve())
    connection = sqlite3.connect(database)
    try:
        tables = {row[0] for row in connection.execute("select name from sqlite_master where type = 'table'")}
        old_roots = set()
        for (location,) in connection.execute("select artifact_location from experiments"):
            path = urllib.parse.unquote(location.removeprefix("file://"))
            if "/mlruns/" in path:
                old_roots.add(path.rsplit("/mlruns/", 1)[0])
        old_roots.discard(new)
        with connection:
            for old in sorted(old_roots):
                for before, after in ((old, new), (urllib.parse.quote(old), urllib.parse.quote(new))):
                    for table, column in LOCATION_COLUMNS:
                        if table in tables:
                            connection.execute(f"update {table} set {column} = replace({column}, ?, ?) "
                                               f"where {column} like ?", (f"{before}/mlruns/", f"{after}/mlruns/",
                                                                         f"%{before}/mlruns/%"))
        if old_roots:  # rebuilt: no page keeps a former path in its free space
            connection.execute("vacuum")
    finally:
        connection.close()
    for model_file in (database.parent / "artifacts").glob("*/models/*/artifacts/MLmodel") if old_roots else ():
        text = model_file.read_text()  # MLmodel records where the model was logged
        for old in old_roots:
            for before, after in ((old, new), (urllib.parse.quote(old), urllib.parse.quote(new))):
                text = text.replace(f"{before}/mlruns/", f"{after}/mlruns/")
        model_file.write_text(text)
    if old_roots:
        _forget_cached_artifact_repositories()
    return sorted(old_roots)


def _forget_cached_artifact_repositories() -> None:
    """MLflow caches one artifact repository per run in the process (a private cache, mlflow 2.x-3.x); after a
    relocation its entries still point at the old tree. A stage relocates before its first run, when the cache
    is empty; a process that logged before (a test, a notebook) needs it emptied. Without that cache (another
    MLflow version) there is nothing to forget."""
    try:
        from mlflow.tracking._tracking_service import utils as service_utils
    except ImportError:
        return
    cache = getattr(service_utils, "_artifact_repos_cache", None)
    if hasattr(cache, "clear"):
        cache.clear()


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
    tags = {"dvc.stage": os.environ.get("DVC_STAGE", stage), HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid()),
            # MLflow's default is the absolute path of the entry point: relative, the store stays relocatable
            "mlflow.source.name": portable_path(sys.argv[0], root) if sys.argv and sys.argv[0] else stage}
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


# Explicit requirements: MLflow's inference imports the model in a subprocess (seconds per call on CPU).
MODEL_REQUIREMENTS = tuple(f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "mlflow")) + ("lossviz",)


def log_torch_model(model: Any, example: Any, name: str = "model") -> Any:
    """`mlflow.pytorch.log_model` of `model` (eval mode) into the active run, with the signature of its outputs
    on `example` (a batch of inputs): the Models column of the MLflow UI, loadable with
    `mlflow.pytorch.load_model`. Returns the model info."""
    import mlflow.pytorch
    import torch
    from mlflow.models import infer_signature

    model.eval()
    with torch.no_grad():
        outputs = model(example)
    signature = infer_signature(example.cpu().numpy(), outputs.cpu().numpy())
    logging.getLogger("mlflow.pytorch").setLevel(logging.ERROR)  # its pickle notice, once per model: we load our own
    # pickled: loads wherever lossviz is installed, without tracing the model (pt2 would need an export per call)
    run = mlflow.active_run()  # the model's own source tag, relative like its run's (MLflow's: the absolute path)
    source = run.data.tags.get("mlflow.source.name") if run is not None else None
    return mlflow.pytorch.log_model(model, name=name, signature=signature, pip_requirements=list(MODEL_REQUIREMENTS),
                                    serialization_format="pickle",
                                    tags={"mlflow.source.name": source} if source else None)


SPLIT_CONTEXTS = {"train": "training", "val": "validation", "test": "evaluation"}


def split_inputs(splits: Any, only: tuple[str, ...] = ("train", "val", "test")) -> list[Any]:
    """MLflow dataset inputs of each split of `splits` (a `lossviz.data.Splits`) in `only` that it has: named
    `<dataset>-<split>`, MLflow's digest of the data, its shape and size in the profile, the prepared directory
    (relative to the repository) as source. Made once, logged to any number of runs with `log_inputs`."""
    return [dataset_input(part.x, part.y, f"{splits.dataset}-{split}", f"data/prepared/{splits.dataset}",
                          SPLIT_CONTEXTS[split])
            for split in only if (part := getattr(splits, split, None)) is not None]


def dataset_input(features: Any, targets: Any, name: str, source: str, context: str) -> Any:
    import mlflow.data
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    dataset = mlflow.data.from_numpy(features.cpu().numpy(), targets=targets.cpu().numpy(), name=name,
                                     source=HTTPDatasetSource(source))
    return DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])


def log_inputs(inputs: list[Any], run_id: str | None = None) -> None:
    """`mlflow.log_input` of `inputs` (from `split_inputs`) into `run_id`, by default the active run."""
    if inputs:
        MlflowClient().log_inputs(run_id or mlflow.active_run().info.run_id, datasets=inputs)


def log_splits(splits: Any, only: tuple[str, ...] = ("train", "val", "test")) -> None:
    """`log_inputs` of `split_inputs(splits, only)` into the active run."""
    log_inputs(split_inputs(splits, only))
