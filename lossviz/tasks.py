"""Evaluation tasks: how a batch of examples meets a model and a loss, and what one grid point's result is.

The lowest layer of the engine. A `Task` is the evaluation contract of any model:

- `feed(model, inputs)`: how a batch reaches the forward (a tensor → `model(x)`, a tuple → `model(*x)`, a
  dict → `model(**x)`);
- `output(outputs)`: the tensor the loss reads (a tensor as is, a tuple's first element, a dict's or a Hugging
  Face `ModelOutput`'s 'logits');
- `loss(output, targets)`: one loss per example;
- `accuracy(output, targets)`: (number correct, number counted) of a batch, or None when "accuracy" means
  nothing for the task (regression): the point's accuracy is then NaN, shown as absent, never as 0 %.

Built-ins: `classification` (the default: cross-entropy and top-1 accuracy, today's numbers bit for bit),
`regression` (per-example MSE or any per-example loss, no accuracy) and `language_modelling` (token
cross-entropy with an ignore index averaged per sequence, token accuracy). A user's own task is a few lines:

    task = Task("my_task", loss=lambda out, y: (out - y).abs().flatten(1).mean(1))

Also here: the seeded example subset every point of a surface is evaluated on, and the summary (mean loss,
accuracy, standard error) of one point.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

# A per-example loss: (model outputs, targets) -> one loss per example (reduction="none").
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
# (output, targets) -> (number correct, number counted) over a batch, as 0-d tensors or ints.
AccuracyFn = Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any]]


def cross_entropy_per_example(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy of every example (the engine averages them)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def feed_inputs(model: Callable[..., Any], inputs: Any) -> Any:
    """A batch to the forward: a tensor as the one argument, a tuple/list as positional arguments, a dict as
    keyword arguments (e.g. input_ids, attention_mask)."""
    if isinstance(inputs, Mapping):
        return model(**inputs)
    if isinstance(inputs, tuple | list):
        return model(*inputs)
    return model(inputs)


def main_output(outputs: Any) -> torch.Tensor:
    """The tensor a loss reads from any model's outputs: a tensor as is, the 'logits' of a dict or a Hugging
    Face ModelOutput (else its first value), the first element of a tuple or list."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, Mapping):  # dicts and transformers' ModelOutput (an OrderedDict)
        if "logits" in outputs:
            return outputs["logits"]
        values = [v for v in outputs.values() if v is not None]
        if values:
            return main_output(values[0])
    elif isinstance(outputs, tuple | list) and outputs:
        return main_output(outputs[0])
    raise TypeError(f"the model returned {type(outputs).__name__}; expected a tensor, a tuple whose first element "
                    "is one, or a dict / ModelOutput with 'logits' (or pass Task(output=...) to pick the tensor)")


def top1_accuracy(output: torch.Tensor, targets: torch.Tensor) -> tuple[Any, Any] | None:
    """Top-1 accuracy of a classifier: (correct, counted); None where it means nothing (outputs that are not
    (N, classes) scores or targets that are not class indices, e.g. a regression through the default task)."""
    if output.dim() != 2 or targets.dim() != 1 or targets.is_floating_point():
        return None
    return output.argmax(dim=1).eq(targets).sum(), targets.numel()


def token_accuracy(ignore_index: int = -100, shift: bool = True) -> AccuracyFn:
    """Accuracy over the tokens a language model is scored on (targets ≠ ignore_index)."""
    def accuracy(output: torch.Tensor, targets: torch.Tensor) -> tuple[Any, Any]:
        logits, labels = _aligned_tokens(output, targets, shift)
        counted = labels.ne(ignore_index)
        return (logits.argmax(dim=-1).eq(labels) & counted).sum(), counted.sum()
    return accuracy


def _aligned_tokens(logits: torch.Tensor, labels: torch.Tensor, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(batch, tokens, vocab) logits and (batch, tokens) labels; with `shift` position t predicts token t+1
    (the Hugging Face convention: labels = input_ids)."""
    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ValueError(f"language modelling needs logits (batch, tokens, vocab) and labels (batch, tokens); got "
                         f"{tuple(logits.shape)} and {tuple(labels.shape)}")
    if shift:
        return logits[:, :-1], labels[:, 1:]
    return logits, labels


def mean_squared_error_per_example(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-example MSE, the mean over each example's values; an (N, 1) output meets (N,) targets."""
    if output.shape != targets.shape and output.numel() == targets.numel():
        output = output.reshape(targets.shape)
    if output.shape != targets.shape:
        raise ValueError(f"regression: the model's output {tuple(output.shape)} and the targets "
                         f"{tuple(targets.shape)} differ in shape")
    error = (output - targets.to(output.dtype)) ** 2
    return error.reshape(len(error), -1).mean(dim=1)


@dataclass(frozen=True)
class Task:
    """The evaluation contract: how a batch is fed to the model, the per-example loss and what accuracy is.

    name       recorded in the surface's metadata ("task")
    loss       (output, targets) → one loss per example
    accuracy   (output, targets) → (correct, counted) of the batch, or None for no accuracy (NaN)
    feed       (model, inputs) → outputs; the default unpacks tuples and dicts
    output     outputs → the tensor `loss` and `accuracy` read; the default takes 'logits' or the first element
    target_key for examples that are dicts: the key holding the targets (the other keys are the inputs)
    """

    name: str
    loss: LossFn
    accuracy: Callable[[torch.Tensor, torch.Tensor], tuple[Any, Any] | None] | None = None
    feed: Callable[[Any, Any], Any] = feed_inputs
    output: Callable[[Any], torch.Tensor] = main_output
    target_key: str = "labels"
    targets_from_inputs: Callable[[Any], torch.Tensor] | None = None  # when the examples carry no targets

    @property
    def loss_name(self) -> str:
        return getattr(self.loss, "__name__", type(self.loss).__name__)

    def evaluate(self, model: Callable[..., Any], inputs: Any, targets: torch.Tensor
                 ) -> tuple[torch.Tensor, tuple[Any, Any] | None]:
        """Per-example losses of one batch and its (correct, counted), None when there is no accuracy."""
        output = self.output(self.feed(model, inputs))
        losses = self.loss(output, targets)
        n = len(targets)
        if not isinstance(losses, torch.Tensor) or losses.dim() != 1 or len(losses) != n:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
            raise ValueError(f"the loss ({self.loss_name}) returned {shape} for a batch of {n} examples; it must "
                             f"return one loss per example, shape ({n},) (e.g. reduction='none')")
        return losses, None if self.accuracy is None else self.accuracy(output, targets)


def classification(loss: LossFn = cross_entropy_per_example) -> Task:
    """A classifier: `loss` (cross-entropy by default) and top-1 accuracy (absent where outputs are not
    (N, classes) scores against class indices)."""
    return Task("classification", loss, top1_accuracy)


def regression(loss: LossFn = mean_squared_error_per_example) -> Task:
    """A regressor: per-example MSE (or any per-example loss) and no accuracy."""
    return Task("regression", loss, None)


def language_modelling(ignore_index: int = -100, shift: bool = True) -> Task:
    """A (causal) language model: token cross-entropy averaged over each sequence's scored tokens (labels ≠
    `ignore_index`; with `shift`, position t predicts token t+1, labels = input_ids as in Hugging Face), and
    token accuracy. Examples without 'labels' are scored on their input_ids."""
    def token_cross_entropy(output: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits, labels = _aligned_tokens(output, targets, shift)
        tokens = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=ignore_index, reduction="none")
        counted = labels.ne(ignore_index).sum(dim=1)
        return tokens.sum(dim=1) / counted.clamp(min=1)

    return Task("language_modelling", token_cross_entropy, token_accuracy(ignore_index, shift),
                targets_from_inputs=_input_ids)


def _input_ids(inputs: Any) -> torch.Tensor:
    if isinstance(inputs, Mapping) and "input_ids" in inputs:
        return inputs["input_ids"]
    raise ValueError("language modelling: the examples have neither 'labels' nor 'input_ids' to score")


TASKS = {"classification": classification, "regression": regression, "language_modelling": language_modelling}


def as_task(task: Task | str | None, loss_fn: LossFn | None = None) -> Task:
    """A Task from a Task, a built-in's name or None (classification); `loss_fn` replaces its loss."""
    if task is None:
        task = classification()
    elif isinstance(task, str):
        if task not in TASKS:
            raise ValueError(f"task={task!r} is not valid; allowed: {', '.join(TASKS)} or a lossviz.tasks.Task")
        task = TASKS[task]()
    elif not isinstance(task, Task):
        raise ValueError(f"task={task!r} is not valid; allowed: {', '.join(TASKS)} or a lossviz.tasks.Task")
    if loss_fn is not None and loss_fn is not task.loss:
        task = replace(task, loss=loss_fn)
    return task


# From this many examples on, a subset is drawn at a cost that grows with its size, not the dataset's (a full
# permutation of 1.2M indices takes ~0.2 s); below it, as always (the same subsets as before).
LARGE_DATASET = 100_000
_DRAW_CHUNK = 4096  # fixed, so the stream of draws (and so every subset) does not depend on n_examples


def select_examples(n_available: int, n_examples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset (all examples when n_examples is None or too large). Subsets
    of one seed are nested: the first n of one seeded random order, so a larger n only adds examples."""
    if n_examples is None or n_examples >= n_available:
        return np.arange(n_available, dtype=np.int64)
    if n_examples < 1:
        raise ValueError(f"n_examples={n_examples} must be at least 1")
    generator = torch.Generator().manual_seed(seed)
    if n_available < LARGE_DATASET:
        order = torch.randperm(n_available, generator=generator)
        return np.sort(order[:n_examples].numpy()).astype(np.int64)
    # The first n distinct values of a seeded stream of uniform draws: a prefix of a seeded random order too.
    picked = np.empty(0, dtype=np.int64)
    while len(picked) < n_examples:
        draws = torch.randint(n_available, (_DRAW_CHUNK,), generator=generator).numpy()
        _, first = np.unique(draws, return_index=True)
        draws = draws[np.sort(first)]
        picked = np.concatenate([picked, draws[~np.isin(draws, picked)]])
    return np.sort(picked[:n_examples]).astype(np.int64)


@dataclass(frozen=True)
class PointResult:
    loss: float      # mean loss over the examples
    acc: float       # accuracy in percent; NaN when the task has none (regression)
    loss_se: float   # standard error of the mean loss: sample std of per-example losses / sqrt(n)


def summarize(losses: torch.Tensor, correct: torch.Tensor | Sequence[tuple[Any, Any] | None] | None) -> PointResult:
    """One point's result from its per-example losses and the batches' (correct, counted) pairs (or, as
    before, a tensor of correct counts with one counted example per loss); no pairs: accuracy NaN."""
    losses = losses.double()
    n = losses.numel()
    se = float(losses.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    if isinstance(correct, torch.Tensor):
        return PointResult(float(losses.mean()), 100.0 * float(correct.sum()) / n, se)
    pairs = [pair for pair in (correct or []) if pair is not None]
    if not pairs or len(pairs) != len(correct):
        return PointResult(float(losses.mean()), float("nan"), se)
    counted = sum(int(c) for _, c in pairs)
    right = sum(int(r) for r, _ in pairs)
    return PointResult(float(losses.mean()), 100.0 * right / counted if counted else float("nan"), se)
