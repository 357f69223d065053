"""Optuna's private API, kept out: the sweep uses no private Optuna name (its heartbeat is a thread of its own
over public storage methods, the study's storage is the one it opened, a trial's id is looked up from its
number). These tests fail, naming the name, when code starts using one, or when Optuna changes one of the
public methods the workers' liveness rests on; and they run that liveness on a real SQLite database."""

from __future__ import annotations

import ast
import inspect
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from pipelines.sweep.layout import LIVENESS_ATTR
from pipelines.sweep.storage import Liveness, open_storage
from pipelines.sweep.trials import claim_trial
from pipelines.sweep.workers import DatabaseWorkers, sweep_workers

REPO = Path(__file__).resolve().parent.parent
# The one module where a private Optuna name may appear, should Optuna ever leave no public way: each use
# wrapped in a function whose docstring says why, and checked here.
ALLOWED = {"pipelines/sweep/optuna_private.py"}


def private_optuna_names(path: Path) -> list[str]:
    """`line: name` for each private Optuna module or name imported, and each private attribute read off an
    object other than `self`/`cls`, in a module that imports optuna."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imports_optuna = False
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "optuna":
                    imports_optuna = True
                    if any(part.startswith("_") for part in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "optuna":
            imports_optuna = True
            private = [alias.name for alias in node.names if alias.name.startswith("_")]
            if any(part.startswith("_") for part in node.module.split(".")) or private:
                found.append(f"{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
        elif (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
              and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))):
            found.append(f"{node.lineno}: .{node.attr}")
    return found if imports_optuna else []


def test_no_private_optuna_name_outside_its_one_module():
    offenders = {}
    for path in sorted([*(REPO / "pipelines").rglob("*.py"), *(REPO / "lossviz").rglob("*.py")]):
        name = path.relative_to(REPO).as_posix()
        if name not in ALLOWED and (found := private_optuna_names(path)):
            offenders[name] = found
    assert not offenders, ("private Optuna names (use the public API, or wrap the name in "
                           f"pipelines/sweep/optuna_private.py with a test here): {offenders}")


def test_the_scan_finds_private_names(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("import optuna\nfrom optuna.storages._heartbeat import HeartbeatThread\n"
                       "def f(study, trial):\n    return study._storage, trial._trial_id, self_like._x\n")
    assert private_optuna_names(planted) == [
        "2: from optuna.storages._heartbeat import HeartbeatThread", "4: ._storage", "4: ._trial_id", "4: ._x"]
    (tmp_path / "other.py").write_text("def f(thing):\n    return thing._handle\n")  # no optuna: not judged
    assert private_optuna_names(tmp_path / "other.py") == []


# The public methods the workers' liveness uses, with the parameters they pass.
PUBLIC_API = [
    (optuna.storages.RDBStorage.record_heartbeat, ["self", "trial_id"]),
    (optuna.storages.RDBStorage.get_study_id_from_name, ["self", "study_name"]),
    (optuna.storages.RDBStorage.get_trial_id_from_study_id_trial_number, ["self", "study_id", "trial_number"]),
    (optuna.storages.RDBStorage.__init__, ["self", "url", "heartbeat_interval", "grace_period",
                                           "heartbeat_stale_trial_callback"]),
    (optuna.storages.fail_stale_trials, ["study"]),
    (optuna.storages.RetryHeartbeatStaleTrialCallback.__init__, ["self", "max_retry"]),
    (optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number, ["trial"]),
]


@pytest.mark.parametrize(("function", "expected"), PUBLIC_API, ids=[f.__qualname__ for f, _ in PUBLIC_API])
def test_public_optuna_api_the_workers_use_is_unchanged(function, expected):
    parameters = list(inspect.signature(function).parameters)
    used = [name for name in expected if name in parameters]
    assert used == expected, f"optuna {optuna.__version__}: {function.__qualname__}{parameters} lacks " \
                             f"{sorted(set(expected) - set(parameters))}"


def test_heartbeats_keep_a_live_trial_and_a_silent_one_is_failed_and_requeued(tmp_path):
    """Our heartbeat thread on a real SQLite database: a claimed trial outlives the grace period while its
    worker beats; once it stops, Optuna's stale check fails it and its retry callback queues it again."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    liveness = Liveness(heartbeat_interval=1, grace_period=3, max_retries=1)
    study = optuna.create_study(storage=open_storage(url, tmp_path, liveness), study_name="s", direction="maximize")
    study.set_user_attr(LIVENESS_ATTR, asdict(liveness))
    settings = {"sampler": "grid", "batch_sizes": [8]}
    workers = sweep_workers(url, "s", tmp_path)
    assert isinstance(workers, DatabaseWorkers)
    quiet = []
    with warnings.catch_warnings(record=True) as caught:  # Optuna's "heartbeats are for Study.optimize" included
        warnings.simplefilter("always")
        trial, hold = claim_trial(study, settings, workers, log=quiet.append)
    assert [str(warning.message) for warning in caught] == []
    time.sleep(5)  # beyond the grace period (the database clock counts whole seconds)
    try:
        assert workers.fail_dead(study) == []  # it beat every second
    finally:
        hold.release()
    time.sleep(5)  # now silent beyond the grace period
    assert [t.number for t in workers.fail_dead(study)] == [trial.number]
    (retry,) = study.get_trials(states=(TrialState.WAITING,))
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == trial.number
    assert retry.user_attrs["lossviz.batch_size"] == 8 and quiet == []
