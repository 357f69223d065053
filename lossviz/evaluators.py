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
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from lossviz.directions import Directions, model_tensors
from lossviz.tasks import LossFn, PointResult, summarize


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def live_tensors(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
    """The model's own storage for each direction name: writing into these changes the model."""
    if mode == "weights":
        return {name: p.data for name, p in model.named_parameters()}
    return dict(model.state_dict())  # detached views of the live parameters and buffers


class PointEvaluator:
    """Evaluates grid points on the cached examples; subclasses differ in how θ reaches the forward."""

    def __init__(self, model: nn.Module, directions: Directions, inputs: torch.Tensor, targets: torch.Tensor,
                 loss_fn: LossFn, batch_size: int, device: torch.device):
        self.mode = directions.mode
        self.loss_fn = loss_fn
        self.device = device
        self.dtype = next(iter(model_tensors(model, self.mode).values())).dtype
        self.inputs = inputs.to(device=device, dtype=self.dtype)  # cached on the device once
        self.targets = targets.to(device)
        self.slices = _batches(len(self.targets), batch_size)
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

    def _forward_all(self, forward: Callable[[torch.Tensor, slice], torch.Tensor]) -> PointResult:
        losses, correct = [], []
        for batch in self.slices:
            outputs = forward(self.inputs[batch], batch)
            per_example = self.loss_fn(outputs, self.targets[batch])
            if per_example.dim() != 1:
                raise ValueError("loss_fn must return one loss per example (e.g. reduction='none')")
            losses.append(per_example)
            correct.append(outputs.argmax(dim=1).eq(self.targets[batch]).sum())
        return summarize(torch.cat(losses), torch.stack(correct))

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
            return self._forward_all(lambda x, _: self.model(x))

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

        def per_point(moved: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor):
            outputs = torch.func.functional_call(self.work, {**self.fixed, **moved}, (x,))
            return self.loss_fn(outputs, y), outputs.argmax(dim=1).eq(y).sum()

        with torch.no_grad():
            moved = {}
            for name in self.moving:
                shape = (-1,) + (1,) * self.base[name].dim()
                moved[name] = self.base[name] + a.view(shape) * self.dx[name]
                if self.dy is not None:
                    moved[name] = moved[name] + b.view(shape) * self.dy[name]
            losses, correct = [], []
            for batch in self.slices:
                batch_losses, batch_correct = torch.func.vmap(per_point, in_dims=(0, None, None))(
                    moved, self.inputs[batch], self.targets[batch])
                losses.append(batch_losses)
                correct.append(batch_correct)
            losses_all, correct_all = torch.cat(losses, dim=1), torch.stack(correct, dim=1)
        return [summarize(losses_all[k], correct_all[k]) for k in range(len(alphas))]

