"""What shapes the sweep's trials: the settings the study records (and is named by) and every worker trains
from, the digests that tie them to this checkout's data and training code, the training data itself, and
the checks only the data can make."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from lossviz.data import Splits, load_splits
from lossviz.params import Params
from lossviz.training import TrainConfig
from pipelines.code_deps import PACKAGE_ROOT, code_files
from pipelines.common import data_root
from pipelines.sweep.layout import PROTOCOL_KEY, PROTOCOLS, Protocol

# The library code a trial's numbers depend on: part of the study's identity.
# A trial's numbers depend on the training code (and what it imports): a worker on other code is refused.
TRAINING_MODULES = ("lossviz.training", "lossviz.models")


class SweepError(RuntimeError):
    """The sweep cannot go on as asked; the message says why and what to do."""


def local_digests(root: Path, dataset: str) -> tuple[str, str]:
    """Digests of this checkout's prepared dataset (its manifest) and training code (TRAINING_MODULES)."""
    manifest = data_root(root) / dataset / "manifest.json"
    code = hashlib.sha256()
    for name in sorted(set().union(*(code_files(module) for module in TRAINING_MODULES))):
        code.update((PACKAGE_ROOT / name).read_bytes())
    data = hashlib.sha256(manifest.read_bytes()).hexdigest()[:16] if manifest.is_file() else "missing"
    return data, code.hexdigest()[:16]


def protocol_training(params: Params, protocol: Protocol) -> dict[str, Any]:
    """The training settings of every trial but the batch size: the section's, and for the converged protocol
    early stopping on validation loss up to `converged_max_epochs`."""
    section = params.batch_sweep
    train = TrainConfig.fields_in(section)
    if protocol.name == "converged":
        train.update(epochs=section.converged_max_epochs, early_stopping=True, patience=section.converged_patience)
    return train


def sweep_settings(params: Params, root: Path, protocol: Protocol = PROTOCOLS["fixed"]) -> dict[str, Any]:
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
        "train": protocol_training(params, protocol),  # every training setting but the batch size (swept)
        "data_digest": data_digest, "code_digest": code_digest,
    }
    if protocol.name != "fixed":  # the fixed protocol's settings (and so its study's name) predate protocols
        settings[PROTOCOL_KEY] = protocol.name
    if section.sampler == "grid":
        settings["batch_sizes"] = list(section.batch_sizes)
    else:
        settings.update(log2_batch_size_min=section.log2_batch_size_min,
                        log2_batch_size_max=section.log2_batch_size_max, pruner=section.pruner)
    return settings


def derived_study_name(settings: dict[str, Any]) -> str:
    """`batch_sweep-<digest of the settings>`: changed settings make a new study."""
    return "batch_sweep-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def flat(settings: dict[str, Any]) -> dict[str, Any]:
    """The settings one level deep (`train.lr`), as MLflow params."""
    flattened = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flattened.update({f"{key}.{inner}": item for inner, item in value.items()})
        else:
            flattened[key] = value
    return flattened


def differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """The flat keys whose values differ between two settings."""
    stored, current = flat(stored), flat(current)
    return sorted(key for key in set(stored) | set(current) if stored.get(key) != current.get(key))


def check_worker_checkout(root: Path, study_name: str, settings: dict[str, Any]) -> None:
    """A worker trains only from the data and code the study was made with."""
    local = local_digests(root, settings["dataset"])
    if local != (settings["data_digest"], settings["code_digest"]):
        raise SweepError(f"study {study_name!r} was made with data/code digests "
                         f"{settings['data_digest']}/{settings['code_digest']}; this checkout has "
                         f"{local[0]}/{local[1]}: run the worker from the same code and prepared data")


def load_sweep_splits(root: Path, settings: dict[str, Any]) -> Splits:
    """The prepared dataset as the settings split it, the training set cut to `max_train_examples`."""
    return load_splits(data_root(root), settings["dataset"], settings["val_size"], settings["seed"],
                       settings["normalize"], max_train_examples=settings["max_train_examples"])


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
