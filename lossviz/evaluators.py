"""Point evaluators: the mean loss and accuracy of θ* + α·δ + β·η on cached examples, for one or many (α, β).

- `NaiveEvaluator`, the reference: write θ into the model's own tensors, run the model's forward. Nothing
  clever; restores the model's tensors on `close()`.
- `VmapEvaluator`: torch.func, many grid points per forward, each with its own weights. Pays on a GPU; on a
  CPU it does not (the work per point is the same).
- The fused fast path (`lossviz.fused.FastEvaluator`) builds on `PointEvaluator` in a module of its own.

All of them return the same numbers (tested to 1e-5 relative on the loss) and never leave the user's model
changed.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lossviz.directions import Directions, model_tensors
from lossviz.inputs import Batch
from lossviz.tasks import LossFn, PointResult, Task, as_task, summarize


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def live_tensors(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The model's own storage for each direction name: writing into these changes the model."""
    if mode == "weights":
        return {name: p.data for name, p in model.named_parameters()}
    return dict(model.state_dict())  # detached views of the live parameters and buffers


class PointEvaluator:
    """Evaluates grid points on the cached examples; subclasses differ in how θ reaches the forward."""

    def __init__(self, model: nn.Module, directions: Directions, inputs: Any, targets: Any,
                 task: Task | LossFn, batch_size: int, device: torch.device):
        self.mode = directions.mode
        self.task = task if isinstance(task, Task) else as_task(None, task)
        self.device = device
        self.dtype = next(iter(model_tensors(model, self.mode).values())).dtype
        # Cached on the device once; floating inputs in the model's dtype, integer ones (token ids) as they are.
        self.examples = Batch(inputs, targets).to(device, self.dtype)
        self.slices = _batches(len(self.examples), batch_size)
        reference = model_tensors(model, self.mode)
        # Only tensors with a nonzero direction change between points.
        self.moving = [name for name in reference if reference[name].is_floating_point() and any(
            bool(axis[name].any()) for axis in directions.axes())]
        self.dx = {n: directions.x[n].to(device=device, dtype=self.dtype) for n in self.moving}
        self.dy = None if directions.y is None else {
            n: directions.y[n].to(device=device, dtype=self.dtype) for n in self.moving}

    def evaluate(self, alpha: float, beta: float) -> PointResult:
        raise NotImplementedError

    def evaluate_many(self, alphas: Sequence[float], betas: Sequence[float]) -> list[PointResult]:
        return [self.evaluate(a, b) for a, b in zip(alphas, betas, strict=True)]

    def _forward_all(self, model: Callable[..., Any],
                     before_batch: Callable[[slice], None] | None = None) -> PointResult:
        """All cached examples through `model` (the forward at the current point), batch by batch."""
        losses, correct = [], []
        for batch in self.slices:
            if before_batch is not None:
                before_batch(batch)
            examples = self.examples[batch]
            batch_losses, batch_correct = self.task.evaluate(model, examples.inputs, examples.targets)
            losses.append(batch_losses)
            correct.append(batch_correct)
        return summarize(torch.cat(losses), correct)

    def close(self) -> None:
        """Undo whatever the evaluator changed outside itself."""


class NaiveEvaluator(PointEvaluator):
    """The reference: θ* + α·δ + β·η written into the model's own tensors, then its plain forward."""

    def __init__(self, model: nn.Module, directions: Directions, *args: Any, **kwargs: Any):
        self.model = model
        self.original_device = next(iter(model_tensors(model, directions.mode).values())).device
        super().__init__(model, directions, *args, **kwargs)
        model.to(self.device).eval()
        self.live = live_tensors(model, self.mode)
        self.base = {n: self.live[n].clone() for n in self.moving}

    def evaluate(self, alpha: float, beta: float) -> PointResult:
        with torch.no_grad():
            for name in self.moving:
                step = alpha * self.dx[name] if self.dy is None else \
                    alpha * self.dx[name] + beta * self.dy[name]
                self.live[name].copy_(self.base[name] + step)
            return self._forward_all(self.model)

    def close(self) -> None:
        with torch.no_grad():
            for name in self.moving:
                self.live[name].copy_(self.base[name])
        self.model.to(self.original_device)


class VmapEvaluator(PointEvaluator):
    """Many points per forward with torch.func: each point's weights are a slice of batched tensors."""

    def __init__(self, model: nn.Module, directions: Directions, *args: Any, points_per_batch: int = 16,
                 **kwargs: Any):
        super().__init__(model, directions, *args, **kwargs)
        self.work = copy.deepcopy(model).to(self.device).eval()
        self.points_per_batch = points_per_batch
        self.fixed = {**{n: p.detach() for n, p in self.work.named_parameters()},
                      **{n: b.detach() for n, b in self.work.named_buffers()}}
        self.base = {n: self.fixed[n] for n in self.moving}

    def evaluate(self, alpha: float, beta: float) -> PointResult:
        return self.evaluate_many([alpha], [beta])[0]

    def evaluate_many(self, alphas: Sequence[float], betas: Sequence[float]) -> list[PointResult]:
        results: list[PointResult] = []
        for start in range(0, len(alphas), self.points_per_batch):
            results.extend(self._chunk(alphas[start:start + self.points_per_batch],
                                       betas[start:start + self.points_per_batch]))
        return results

    def _chunk(self, alphas: Sequence[float], betas: Sequence[float]) -> list[PointResult]:
        a = torch.tensor(list(alphas), dtype=self.dtype, device=self.device)
        b = torch.tensor(list(betas), dtype=self.dtype, device=self.device)

        def per_point(moved: dict[str, torch.Tensor], x: Any, y: Any):
            model = functools.partial(torch.func.functional_call, self.work, {**self.fixed, **moved})
            losses, correct = self.task.evaluate(lambda *args, **kwargs: model(args, kwargs), x, y)
            if correct is None:
                return losses, torch.zeros(()), torch.zeros(())
            return losses, torch.as_tensor(correct[0]), torch.as_tensor(correct[1])

        with torch.no_grad():
            moved = {}
            for name in self.moving:
                shape = (-1,) + (1,) * self.base[name].dim()
                moved[name] = self.base[name] + a.view(shape) * self.dx[name]
                if self.dy is not None:
                    moved[name] = moved[name] + b.view(shape) * self.dy[name]
            losses, correct, counted = [], [], []
            for batch in self.slices:
                examples = self.examples[batch]
                batch_losses, batch_correct, batch_counted = torch.func.vmap(per_point, in_dims=(0, None, None))(
                    moved, examples.inputs, examples.targets)
                losses.append(batch_losses)
                correct.append(batch_correct)
                counted.append(batch_counted)
            losses_all = torch.cat(losses, dim=1)
            correct_all, counted_all = torch.stack(correct, dim=1), torch.stack(counted, dim=1)
        if self.task.accuracy is None or not counted_all.any():
            return [summarize(losses_all[k], None) for k in range(len(alphas))]
        return [summarize(losses_all[k], list(zip(correct_all[k], counted_all[k], strict=True)))
                for k in range(len(alphas))]
