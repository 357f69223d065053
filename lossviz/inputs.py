"""Examples of any shape and size, as the engine evaluates them: one seeded subset, drawn once, held on device.

A source of examples is one of
- `inputs, targets` tensors (as always), or inputs that are a tuple of tensors (positional arguments of the
  forward) or a dict of tensors (keyword arguments: input_ids, attention_mask...), with the targets beside
  them or, for a dict, under the task's `target_key` ('labels');
- a map-style `torch.utils.data.Dataset` (or a `DataLoader`: its dataset, its items put together by the
  loader's collate_fn, e.g. padding) whose items are (input, target) pairs, (inputs..., target) tuples,
  dicts, or bare inputs (targets then from the task, e.g. a language model's input_ids), with `targets=None`;
- an iterable dataset (no `__getitem__`/`__len__`), with `targets=None`: the first n examples after a seeded
  shuffle buffer (`SHUFFLE_BUFFER` items); n must be given.

`draw_examples` returns the subset as a batch (`Batch`: inputs as a tensor, tuple or dict, and targets):
a map-style dataset is read only at the chosen indices, so a 1.2M-example dataset costs what n tensors
cost. Integer inputs (token ids) stay integers; floating ones take the model's dtype on the device.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, default_collate

from lossviz.tasks import Task, select_examples

SHUFFLE_BUFFER = 10_000


@dataclass
class Batch:
    """A set of examples: inputs (a tensor, a tuple of tensors or a dict of tensors) and their targets."""

    inputs: Any
    targets: Any

    def __len__(self) -> int:
        return batch_length(self.targets)

    def __getitem__(self, index: Any) -> Batch:
        return Batch(map_tensors(self.inputs, lambda t: t[index]), map_tensors(self.targets, lambda t: t[index]))

    def tensors(self) -> list[torch.Tensor]:
        return flat_tensors(self.inputs) + flat_tensors(self.targets)

    def to(self, device: torch.device, dtype: torch.dtype) -> Batch:
        """On `device`; floating tensors of the inputs in `dtype` (integer inputs, e.g. token ids, unchanged)."""
        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype) if t.is_floating_point() else t.to(device)
        return Batch(map_tensors(self.inputs, move), map_tensors(self.targets, lambda t: t.to(device)))


def map_tensors(value: Any, function: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """`function` applied to every tensor of a tensor / tuple / list / dict structure."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, Mapping):
        return {key: map_tensors(v, function) for key, v in value.items()}
    if isinstance(value, tuple | list):
        return type(value)(map_tensors(v, function) for v in value)
    return value


def flat_tensors(value: Any) -> list[torch.Tensor]:
    found: list[torch.Tensor] = []
    map_tensors(value, lambda t: found.append(t) or t)
    return found


def batch_length(value: Any) -> int:
    tensors = flat_tensors(value)
    if not tensors:
        raise ValueError("no tensors in the examples")
    return len(tensors[0])


def _as_tensors(value: Any, what: str) -> Any:
    """numpy arrays → tensors, anywhere in a structure; anything else than tensors/arrays is an error."""
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, Mapping):
        return {key: _as_tensors(v, f"{what}[{key!r}]") for key, v in value.items()}
    if isinstance(value, tuple | list):
        return tuple(_as_tensors(v, f"{what}[{i}]") for i, v in enumerate(value))
    raise ValueError(f"{what}: a {type(value).__name__}; expected a tensor, a tuple or dict of tensors, a "
                     "torch Dataset or a DataLoader")


def _check_lengths(batch: Batch) -> None:
    lengths = {}
    for label, part in (("inputs", batch.inputs), ("targets", batch.targets)):
        if isinstance(part, Mapping):
            lengths.update({f"{label}[{key!r}]": len(t) for key, t in part.items() if isinstance(t, torch.Tensor)})
        elif isinstance(part, tuple):
            lengths.update({f"{label}[{i}]": len(t) for i, t in enumerate(part) if isinstance(t, torch.Tensor)})
        elif isinstance(part, torch.Tensor):
            lengths[label] = len(part)
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} ({n})" for name, n in lengths.items())
        raise ValueError(f"the examples differ in length: {listed}; every input and the targets need one row "
                         "per example")


def _split_targets(inputs: Any, task: Task, source: str) -> Batch:
    """Targets out of examples that carry them (a dict's target_key, a tuple's last element) or made by the
    task from the inputs."""
    if isinstance(inputs, Mapping) and task.target_key in inputs:
        rest = {key: value for key, value in inputs.items() if key != task.target_key}
        return Batch(rest, inputs[task.target_key])
    if isinstance(inputs, tuple) and len(inputs) >= 2 and source == "dataset":
        return Batch(inputs[0] if len(inputs) == 2 else inputs[:-1], inputs[-1])
    if task.targets_from_inputs is not None:
        return Batch(inputs, task.targets_from_inputs(inputs))
    keys = f"; dict examples need a {task.target_key!r} key" if isinstance(inputs, Mapping) else ""
    raise ValueError(f"the examples have no targets: pass targets, or {source} items as (input, target) pairs"
                     f"{keys} (or a task whose targets come from the inputs, e.g. language_modelling)")


def is_dataset(value: Any) -> bool:
    return isinstance(value, DataLoader | torch.utils.data.Dataset) or (
        not isinstance(value, torch.Tensor | np.ndarray | Mapping | tuple | list) and hasattr(value, "__iter__"))


def count_examples(inputs: Any, targets: Any) -> int | None:
    """How many examples a source holds (None for an iterable dataset)."""
    dataset, _ = _as_dataset(inputs)
    if dataset is not None:
        return len(dataset) if _is_map_style(dataset) else None
    return batch_length(targets if targets is not None else inputs)


def _as_dataset(inputs: Any) -> tuple[Any, Callable[[list[Any]], Any]]:
    """(the dataset, how its items are put together) of a Dataset or a DataLoader (its dataset, whatever its
    type, and its own collate_fn, e.g. padding: its batching and order do not matter, the subset is drawn by
    index); (None, default_collate) for tensors."""
    if isinstance(inputs, DataLoader):
        return inputs.dataset, inputs.collate_fn or default_collate
    return (inputs if is_dataset(inputs) else None), default_collate


def _is_map_style(dataset: Any) -> bool:
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return False
    return hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


def draw_examples(inputs: Any, targets: Any, n_examples: int | None, seed: int, task: Task
                  ) -> tuple[np.ndarray, Batch]:
    """The seeded subset of n examples (all when None) of any source, and the indices it was drawn at (for
    an iterable dataset: positions in the shuffled stream, 0..n-1)."""
    dataset, collate = _as_dataset(inputs)
    if dataset is not None and targets is not None:
        raise ValueError("targets: pass None with a Dataset or DataLoader (the targets are in its items)")
    if dataset is not None and not _is_map_style(dataset):
        if n_examples is None:
            raise ValueError("n_examples: an iterable dataset has no length; give the number of examples to "
                             f"take (the first n after a seeded shuffle buffer of {SHUFFLE_BUFFER})")
        items = list(itertools.islice(shuffled(dataset, seed, SHUFFLE_BUFFER), n_examples))
        return np.arange(len(items), dtype=np.int64), _collate(items, task, collate)
    available = len(dataset) if dataset is not None else len(_tensor_batch(inputs, targets, task))
    indices = select_examples(available, n_examples, seed)
    return indices, examples_at(inputs, targets, indices, task)


def examples_at(inputs: Any, targets: Any, indices: np.ndarray, task: Task) -> Batch:
    """The examples of a source at these indices, as one batch (a map-style dataset is read only there)."""
    dataset, collate = _as_dataset(inputs)
    if dataset is not None:
        if targets is not None:
            raise ValueError("targets: pass None with a Dataset or DataLoader (the targets are in its items)")
        if not _is_map_style(dataset):
            raise ValueError("an iterable dataset cannot be read at given indices; pass a map-style Dataset or "
                             "tensors")
        return _collate([dataset[int(i)] for i in indices], task, collate)
    batch = _tensor_batch(inputs, targets, task)
    if len(indices) == len(batch) and np.array_equal(indices, np.arange(len(batch))):
        return batch  # all of them, in order: no copy
    return batch[torch.from_numpy(np.asarray(indices, dtype=np.int64))]


def _collate(items: list[Any], task: Task, collate: Callable[[list[Any]], Any]) -> Batch:
    if not items:
        raise ValueError("the dataset holds no examples")
    batch = _split_targets(_as_tensors(collate(items), "the dataset's items"), task, "dataset")
    _check_lengths(batch)
    return batch


def _tensor_batch(inputs: Any, targets: Any, task: Task) -> Batch:
    inputs = _as_tensors(inputs, "inputs")
    batch = _split_targets(inputs, task, "the inputs") if targets is None else Batch(
        inputs, _as_tensors(targets, "targets"))
    _check_lengths(batch)
    return batch


def shuffled(iterable: Any, seed: int, buffer_size: int):
    """The items of a stream in a seeded shuffle-buffer order (each item out is a random one of the next
    `buffer_size`), as tf.data and torchdata shuffle streams."""
    generator = torch.Generator().manual_seed(seed)
    buffer: list[Any] = []
    for item in iterable:
        if len(buffer) < buffer_size:
            buffer.append(item)
            continue
        j = int(torch.randint(len(buffer), (1,), generator=generator))
        yield buffer[j]
        buffer[j] = item
    order = torch.randperm(len(buffer), generator=generator).tolist()
    for j in order:
        yield buffer[j]


def check_model_accepts(model: torch.nn.Module, inputs: Any) -> None:
    """Dict inputs whose keys the forward does not take: name them and the accepted ones (before the first
    forward, rather than a TypeError deep inside it)."""
    if not isinstance(inputs, Mapping):
        return
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    unknown = [key for key in inputs if key not in parameters]
    if unknown:
        accepted = [name for name, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL]
        raise ValueError(f"batch keys {unknown} are not arguments of {type(model).__name__}.forward (it accepts "
                         f"{', '.join(accepted)}); rename or drop them, or set the task's target_key")
