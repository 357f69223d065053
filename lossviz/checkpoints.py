"""Checkpoint files: atomic writes, model weights in the official loss-landscape layout, and the training
state that lets an interrupted run resume exactly.

A checkpoint is data, never code: every load uses `torch.load(..., weights_only=True)`. Model files are
`{"state_dict": ..., <plain metadata>}` like the official tool's `.t7` files; loading also accepts a bare
state_dict and the `module.` prefixes that `nn.DataParallel` adds.
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from torch import nn

STATE_DICT_KEY = "state_dict"
DATA_PARALLEL_PREFIX = "module."


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, unreadable, or does not fit the model."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write through `write` to a temporary file next to `path`, then rename it over `path`: a reader (or a
    run killed mid-write) sees either the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(temp_name, 0o666 & ~_umask())  # mkstemp's 0600 would make pages and checkpoints private
        with os.fdopen(handle, "wb") as temp_file:
            write(temp_file)
            temp_file.flush()
            os.fsync(temp_file.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path


def atomic_save(obj: Any, path: str | Path) -> Path:
    """`torch.save` `obj` to `path` atomically (see `atomic_write`)."""
    return atomic_write(path, lambda stream: torch.save(obj, stream))


def load_checkpoint(path: str | Path) -> Any:
    """Load a checkpoint file onto the CPU as data only (weights_only=True), with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle refusals, truncated zip archives, ...: all mean "not usable"
        raise CheckpointError(f"{path}: not a readable weights-only checkpoint "
                              f"({type(error).__name__}: {error})") from error


def extract_state_dict(blob: Any, source: str = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The model weights in a loaded checkpoint: a bare state_dict or one under `state_dict`, with any
    `module.` prefixes removed."""
    if isinstance(blob, Mapping) and isinstance(blob.get(STATE_DICT_KEY), Mapping):
        blob = blob[STATE_DICT_KEY]
    if not isinstance(blob, Mapping) or not blob or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in blob.items()):
        raise CheckpointError(f"{source}: expected a state_dict (names → tensors), bare or under "
                              f"{STATE_DICT_KEY!r}")
    if all(key.startswith(DATA_PARALLEL_PREFIX) for key in blob):
        return {key[len(DATA_PARALLEL_PREFIX):]: value for key, value in blob.items()}
    return dict(blob)


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read model weights from our files or the official tool's `.t7` files (see module docstring)."""
    return extract_state_dict(load_checkpoint(path), str(path))


def load_model_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint's weights into `model` (strict), naming missing and unexpected keys on error."""
    state = load_state_dict(path)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong_shape = sorted(key for key in set(own) & set(state) if own[key].shape != state[key].shape)
    if missing or unexpected or wrong_shape:
        raise CheckpointError(
            f"{path}: does not fit {type(model).__name__}: missing {missing[:5]}{'...' if len(missing) > 5 else ''}"
            f", unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, wrong shape {wrong_shape[:5]}")
    model.load_state_dict(state)
    return model


def cpu_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of the model's weights in the standard (contiguous) memory layout."""
    return {key: value.detach().to("cpu", copy=True).contiguous() for key, value in model.state_dict().items()}


def save_model(model: nn.Module, path: str | Path, /, **metadata: Any) -> Path:
    """Write the model's weights in the official layout, `{"state_dict": ..., **metadata}`, atomically.
    Metadata must be plain values (numbers, strings, lists, dicts) so weights-only loading reads it."""
    if STATE_DICT_KEY in metadata:
        raise ValueError(f"metadata may not use the reserved key {STATE_DICT_KEY!r}")
    return atomic_save({STATE_DICT_KEY: cpu_state_dict(model), **metadata}, path)


# --------------------------------------------------------------------------------------- RNG states

def capture_rng_states(data_order: torch.Generator) -> dict[str, Any]:
    """Every random stream a training run draws from, as weights-only-loadable values."""
    numpy_state = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"algorithm": numpy_state[0], "keys": torch.from_numpy(numpy_state[1].astype(np.int64)),
                  "pos": int(numpy_state[2]), "has_gauss": int(numpy_state[3]),
                  "cached_gaussian": float(numpy_state[4])},
        "python": random.getstate(),
        "data_order": data_order.get_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping[str, Any], data_order: torch.Generator) -> None:
    """Put back the streams saved by `capture_rng_states`."""
    torch.set_rng_state(states["torch"])
    numpy_state = states["numpy"]
    np.random.set_state((numpy_state["algorithm"], numpy_state["keys"].numpy().astype(np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    data_order.set_state(states["data_order"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# ----------------------------------------------------------------------------------- training state

TRAINING_STATE_FORMAT = "lossviz.training_state/1"


def save_training_state(path: str | Path, state: Mapping[str, Any]) -> Path:
    """Write a resumable training state (model under `state_dict`, so model loaders read it too)."""
    return atomic_save({"format": TRAINING_STATE_FORMAT, **state}, path)


def load_training_state(path: str | Path) -> dict[str, Any]:
    """Read a state written by `save_training_state`; refuse other formats rather than misread them."""
    blob = load_checkpoint(path)
    found = blob.get("format") if isinstance(blob, Mapping) else None
    if found != TRAINING_STATE_FORMAT:
        raise CheckpointError(f"{path}: not a training state of format {TRAINING_STATE_FORMAT!r} "
                              f"(found {found!r}); delete it to start afresh")
    return dict(blob)
