"""The landscape engine: mean loss and accuracy at every grid point θ = θ* + α·δ + β·η.

Owns the choice of evaluation examples (one seeded subset, the same for every point), the walk over the
grid (clip radius, resume through `SurfaceFile`, progress bar), and three interchangeable ways of
evaluating points, all returning the same numbers (tested to 1e-5 relative on the loss):

- "naive"  the reference: write θ into the model's own tensors, run the model's forward. Nothing clever.
- "fast"   a private copy of the model, traced with torch.fx once, then: eval-mode BatchNorm folded into
           the conv/linear before it, eval-mode Dropout/Identity removed, the first layer replaced by
           precomputed activations when its weight moves linearly and its bias not at all
           (layer(x, θ+αδ+βη) = layer(x, θ) + α·layer(x, δ) + β·layer(x, η)), and the weights written in
           place from precomputed θ*, δ, η (no per-point allocation, copy or file read).
- "vmap"   torch.func: many grid points per forward, each with its own weights. Pays on a GPU; on a
           CPU it does not (the work per point is the same), so "auto" picks it only on CUDA.

The user's model is never left changed: "naive" restores its tensors and training flag, the others never
touch it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from lossviz import distributed
from lossviz.directions import Directions, model_digest, model_tensors, tensors_digest
from lossviz.runtime import configure_cpu, resolve_device
from lossviz.surface import Surface, SurfaceFile, outside_radius

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
METHODS = ("auto", "naive", "fast", "vmap")
# Largest cache of precomputed first-layer activations (three tensors) the fast path will hold.
FIRST_LAYER_CACHE_BYTES = 2 << 30
# Meta keys that must match for a surface file to be resumed rather than refused.
RESUME_IDENTITY = ("model_hash", "directions_hash", "seed", "n_examples", "mode", "loss", "clip_radius")
# Under torch.distributed, each rank's share of a round doubles until the slowest rank takes half this long:
# a round ends in a collective (milliseconds), and a killed job loses the round in flight besides what rank 0
# has not flushed yet (SurfaceFile's flush interval).
ROUND_SECONDS = 0.2


def cross_entropy_per_example(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The default loss: cross-entropy of every example (the engine averages them)."""
    return F.cross_entropy(outputs, targets, reduction="none")


def select_examples(n_available: int, n_examples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded random subset (all examples when n_examples is None or too large)."""
    if n_examples is None or n_examples >= n_available:
        return np.arange(n_available, dtype=np.int64)
    if n_examples < 1:
        raise ValueError(f"n_examples={n_examples} must be at least 1")
    order = torch.randperm(n_available, generator=torch.Generator().manual_seed(seed))
    return np.sort(order[:n_examples].numpy()).astype(np.int64)


def grid_points(xs: np.ndarray, ys: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """α and β of every point, flat, in the stored order Z[iy, ix] (the official meshgrid('xy') order)."""
    if ys is None:
        return np.asarray(xs, dtype=np.float64), np.zeros(len(xs))
    alpha, beta = np.meshgrid(xs, ys, indexing="xy")
    return alpha.ravel(), beta.ravel()


@dataclass(frozen=True)
class PointResult:
    loss: float      # mean loss over the examples
    acc: float       # accuracy in percent
    loss_se: float   # standard error of the mean loss: sample std of per-example losses / sqrt(n)


def summarize(losses: torch.Tensor, correct: torch.Tensor) -> PointResult:
    losses = losses.double()
    n = losses.numel()
    se = float(losses.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan")
    return PointResult(float(losses.mean()), 100.0 * float(correct.sum()) / n, se)


def _batches(n: int, batch_size: int) -> list[slice]:
    return [slice(start, min(start + batch_size, n)) for start in range(0, n, batch_size)]


def _live_tensors(model: nn.Module, mode: str) -> dict[str, torch.Tensor]:
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
        self.live = _live_tensors(model, self.mode)
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


# ----------------------------------------------------------------------------------------- fast path

class AffineUpdate:
    """target ← base + α·dx + β·dy, in place (dy may be None for 1-D)."""

    def __init__(self, target: torch.Tensor, base: torch.Tensor, dx: torch.Tensor, dy: torch.Tensor | None):
        self.target, self.base, self.dx, self.dy = target, base, dx, dy

    def apply(self, alpha: float, beta: float) -> None:
        torch.add(self.base, self.dx, alpha=alpha, out=self.target)
        if self.dy is not None:
            self.target.add_(self.dy, alpha=beta)


def _is_foldable_layer(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or (
        isinstance(module, nn.modules.conv._ConvNd) and not module.transposed)


def _bn_scale_shift(bn: nn.modules.batchnorm._BatchNorm, bias: torch.Tensor | None) -> tuple[torch.Tensor,
                                                                                               torch.Tensor]:
    """Eval-mode BatchNorm after a layer with `bias` as (scale, shift) per output channel."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bias is not None:
        shift = shift + bias * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


class FoldedLayer(nn.Module):
    """A conv or linear layer with the BatchNorm after it folded in: its own weight and bias buffers,
    refreshed from the original tensors whenever they move."""

    def __init__(self, layer: nn.Module, bn: nn.modules.batchnorm._BatchNorm, weight_name: str):
        super().__init__()
        self.weight_name = weight_name  # the direction name of the unfolded weight
        self._parts = (layer, bn)  # a tuple, so they are not registered (and not traced) twice
        scale, shift = _bn_scale_shift(bn, layer.bias)
        self.register_buffer("weight", layer.weight * self._channel(scale))
        self.register_buffer("bias", shift.clone())

    def _channel(self, scale: torch.Tensor) -> torch.Tensor:
        return scale.view(-1, *[1] * (self._parts[0].weight.dim() - 1))

    def refresh(self) -> None:
        layer, bn = self._parts
        scale, shift = _bn_scale_shift(bn, layer.bias)
        torch.mul(layer.weight, self._channel(scale), out=self.weight)
        self.bias.copy_(shift)

    def apply_layer(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return apply_layer(self._parts[0], x, weight, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.apply_layer(x, self.weight, self.bias)


def apply_layer(layer: nn.Module, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None
                ) -> torch.Tensor:
    """A conv or linear layer's operation with the given weight and bias (its own hyperparameters)."""
    if isinstance(layer, nn.Linear):
        return F.linear(x, weight, bias)
    return layer._conv_forward(x, weight, bias)


class PrecomputedFirstLayer(nn.Module):
    """The first layer's output at (α, β), from activations computed once: A0 + α·A1 + β·A2."""

    def __init__(self, a0: torch.Tensor, a1: torch.Tensor | None, a2: torch.Tensor | None):
        super().__init__()
        self.a0, self.a1, self.a2 = a0, a1, a2
        self.alpha = self.beta = 0.0
        self.batch = slice(None)

    def forward(self) -> torch.Tensor:
        if self.a1 is None:  # the first layer's weight does not move
            return self.a0[self.batch]
        out = torch.add(self.a0[self.batch], self.a1[self.batch], alpha=self.alpha)
        if self.a2 is not None:
            out.add_(self.a2[self.batch], alpha=self.beta)
        return out


def tiled_max_pool2d(x: torch.Tensor, size: int) -> torch.Tensor:
    """max_pool2d with kernel = stride = `size`, no padding, floor mode, as elementwise maxima of strided
    views: bit-identical and, on CPU, ~10-20x faster than this torch's max_pool2d kernel."""
    height, width = x.shape[-2] // size * size, x.shape[-1] // size * size
    x = x[..., :height, :width]
    rows = x[..., 0::size, :]
    for offset in range(1, size):
        rows = torch.maximum(rows, x[..., offset::size, :])
    out = rows[..., 0::size]
    for offset in range(1, size):
        out = torch.maximum(out, rows[..., offset::size])
    return out


def _pair(value: Any) -> int | None:
    """An int from an int or a square pair; None for anything else."""
    if isinstance(value, int):
        return value
    if isinstance(value, (tuple, list)) and len(value) == 2 and value[0] == value[1]:
        return int(value[0])
    return None


_MAX_POOL_PARAMS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")


def _tiled_pool_size(settings: dict[str, Any]) -> int | None:
    """The tile size when a max-pool's settings make it a plain tiling (kernel = stride, no padding)."""
    kernel = _pair(settings["kernel_size"])
    stride = _pair(settings.get("stride") or settings["kernel_size"])
    if kernel is None or stride != kernel or _pair(settings.get("padding", 0)) != 0:
        return None
    if _pair(settings.get("dilation", 1)) != 1 or settings.get("ceil_mode") or settings.get("return_indices"):
        return None
    return kernel


_RELU_FUNCTIONS = {F.relu, torch.relu}
_EVAL_IDENTITY = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.Identity)
_SHAPE_ONLY_METHODS = {"flatten", "view", "reshape", "contiguous"}
_SHAPE_ONLY_FUNCTIONS = {torch.flatten, torch.reshape}


class FastEvaluator(PointEvaluator):
    """Private traced copy of the model with BatchNorm folded, the first layer precomputed when that is
    exact, and weights written in place. Falls back to the untraced copy when torch.fx cannot trace."""

    def __init__(self, model: nn.Module, directions: Directions, *args: Any, **kwargs: Any):
        super().__init__(model, directions, *args, **kwargs)
        self.work = copy.deepcopy(model).to(self.device).eval()
        self.live = _live_tensors(self.work, self.mode)
        self.optimizations: list[str] = []
        self.first: PrecomputedFirstLayer | None = None
        self.dynamic_folds: list[FoldedLayer] = []
        handled: set[str] = set()   # moving names whose effect is already produced some other way
        updates: list[AffineUpdate] = []
        with torch.no_grad():
            try:
                self.module: nn.Module = fx.symbolic_trace(self.work)
            except Exception as error:  # any untraceable Python in forward: stay exact, just less fast
                self.module = self.work
                self.optimizations.append(f"no fx trace ({type(error).__name__})")
            else:
                self._drop_eval_identities()
                self._tile_max_pools()
                layer_updates = self._fold_batchnorms(handled)
                absorbed = self._precompute_first_layer(layer_updates, handled)
                updates.extend(u for name, u in layer_updates.items() if name != absorbed)
                self.module.graph.eliminate_dead_code()
                self.module.graph.lint()
                self.module.recompile()
            for name in self.moving:
                if name not in handled:
                    updates.append(AffineUpdate(self.live[name], self.live[name].clone(), self.dx[name],
                                                None if self.dy is None else self.dy[name]))
        self.updates = updates

    # -- graph rewrites -----------------------------------------------------------------------------
    def _call_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.module.graph.nodes:
            if node.op == "call_module":
                counts[node.target] = counts.get(node.target, 0) + 1
        return counts

    def _drop_eval_identities(self) -> None:
        dropped = 0
        for node in list(self.module.graph.nodes):
            if node.op == "call_module" and isinstance(self.module.get_submodule(node.target), _EVAL_IDENTITY):
                node.replace_all_uses_with(node.args[0])
                self.module.graph.erase_node(node)
                dropped += 1
        if dropped:
            self.optimizations.append(f"dropped {dropped} eval-mode identity layers")

    def _max_pool_size(self, node: fx.Node) -> int | None:
        if node.op == "call_module":
            module = self.module.get_submodule(node.target)
            if isinstance(module, nn.MaxPool2d):
                return _tiled_pool_size({k: getattr(module, k) for k in _MAX_POOL_PARAMS})
        elif node.op == "call_function" and node.target in (F.max_pool2d, torch.max_pool2d):
            settings = dict(zip(_MAX_POOL_PARAMS, node.args[1:], strict=False)) | dict(node.kwargs)
            return _tiled_pool_size(settings) if "kernel_size" in settings else None
        return None

    def _is_relu(self, node: fx.Node) -> bool:
        return (node.op == "call_function" and node.target in _RELU_FUNCTIONS) or (
            node.op == "call_method" and node.target == "relu") or (
            node.op == "call_module" and isinstance(self.module.get_submodule(node.target), nn.ReLU))

    def _tile_max_pools(self) -> None:
        """Max-pools that tile become `tiled_max_pool2d`; a ReLU right before one moves after it
        (max and ReLU commute), so the ReLU sees a quarter of the elements."""
        graph, tiled, swapped = self.module.graph, 0, 0
        for node in list(graph.nodes):
            size = self._max_pool_size(node)
            if size is None:
                continue
            source = node.args[0]
            relu_first = isinstance(source, fx.Node) and self._is_relu(source) and len(source.users) == 1
            with graph.inserting_before(node):
                pool_input = source.args[0] if relu_first else source
                replacement = graph.call_function(tiled_max_pool2d, (pool_input, size))
                if relu_first:
                    replacement = graph.call_function(F.relu, (replacement,))
                    swapped += 1
            node.replace_all_uses_with(replacement)
            graph.erase_node(node)
            if relu_first:
                graph.erase_node(source)
            tiled += 1
        if tiled:
            self.optimizations.append(f"{tiled} max-pools as strided maxima ({swapped} after their ReLU)")

    def _fold_batchnorms(self, handled: set[str]) -> dict[str, AffineUpdate]:
        """Fold every BatchNorm whose input is a conv/linear used nowhere else. Returns the in-place
        updates of folded weights that move linearly (BatchNorm and bias fixed), by weight name."""
        counts = self._call_counts()
        linear_updates: dict[str, AffineUpdate] = {}
        moving = set(self.moving)
        folds = 0
        for node in list(self.module.graph.nodes):
            if node.op != "call_module":
                continue
            bn = self.module.get_submodule(node.target)
            if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None:
                continue
            source = node.args[0]
            if not (isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1
                    and counts[source.target] == 1 and counts[node.target] == 1):
                continue
            layer = self.module.get_submodule(source.target)
            if not _is_foldable_layer(layer):
                continue
            layer_name = source.target
            weight_name = f"{layer_name}.weight"
            folded = FoldedLayer(layer, bn, weight_name)
            fold_name = f"lossviz_folded_{folds}"
            self.module.add_submodule(fold_name, folded)
            source.target = fold_name
            node.replace_all_uses_with(source)
            self.module.graph.erase_node(node)
            folds += 1
            others = {f"{layer_name}.bias"} | {
                f"{node.target}.{k}" for k in ("weight", "bias", "running_mean", "running_var")}
            if others & moving:
                self.dynamic_folds.append(folded)  # BatchNorm or bias moves: recompute the fold per point
                continue
            if weight_name in moving:
                scale = folded._channel(_bn_scale_shift(bn, layer.bias)[0])
                base = self.live[weight_name] * scale
                linear_updates[weight_name] = AffineUpdate(
                    folded.weight, base, self.dx[weight_name] * scale,
                    None if self.dy is None else self.dy[weight_name] * scale)
                handled.add(weight_name)
        if folds:
            self.optimizations.append(f"folded {folds} BatchNorm layers")
        return linear_updates

    def _first_layer_node(self) -> fx.Node | None:
        placeholders = [n for n in self.module.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            return None
        node = placeholders[0]
        while len(node.users) == 1:
            (user,) = node.users
            shape_only = (user.op == "call_method" and user.target in _SHAPE_ONLY_METHODS) or (
                user.op == "call_function" and user.target in _SHAPE_ONLY_FUNCTIONS)
            if user.args[0] is not node:
                return None
            if not shape_only:
                return user if user.op == "call_module" else None
            node = user
        return None

    def _precompute_first_layer(self, layer_updates: dict[str, AffineUpdate], handled: set[str]) -> str | None:
        """Replace the first layer by A0 + α·A1 + β·A2 when that is exact; return the name of the weight
        whose updates this makes unnecessary."""
        node = self._first_layer_node()
        if node is None or self._call_counts()[node.target] != 1:
            return None
        module = self.module.get_submodule(node.target)
        moving = set(self.moving)
        if isinstance(module, FoldedLayer):
            if module in self.dynamic_folds:
                return None
            layer, weight_name = module._parts[0], module.weight_name
            update = layer_updates.get(weight_name)
            base_weight, bias = module.weight.clone(), module.bias
            dx, dy = (update.dx, update.dy) if update is not None else (None, None)
        elif _is_foldable_layer(module):
            layer, weight_name = module, f"{node.target}.weight"
            if layer.bias is not None and f"{node.target}.bias" in moving:
                return None  # the output would not be A0 + α·A1 + β·A2 with a bias that moves
            base_weight, bias = layer.weight.detach().clone(), layer.bias
            moves = weight_name in moving
            dx = self.dx[weight_name] if moves else None
            dy = self.dy[weight_name] if moves and self.dy is not None else None
        else:
            return None
        layer_input = self._capture_input(node)
        probe = apply_layer(layer, layer_input[:1], base_weight, bias)
        n_cached = 1 + (dx is not None) + (dy is not None)
        if probe.numel() * len(layer_input) * probe.element_size() * n_cached > FIRST_LAYER_CACHE_BYTES:
            return None
        a0 = apply_layer(layer, layer_input, base_weight, bias)
        a1 = apply_layer(layer, layer_input, dx, None) if dx is not None else None
        a2 = apply_layer(layer, layer_input, dy, None) if dy is not None else None
        self.first = PrecomputedFirstLayer(a0, a1, a2)
        self.module.add_submodule("lossviz_first_layer", self.first)
        with self.module.graph.inserting_after(node):
            replacement = self.module.graph.call_module("lossviz_first_layer", ())
        node.replace_all_uses_with(replacement)
        self.module.graph.erase_node(node)
        handled.add(weight_name)
        self.optimizations.append("first layer precomputed (linear in α, β)")
        return weight_name

    def _capture_input(self, node: fx.Node) -> torch.Tensor:
        """The first layer's input for all cached examples (it depends on the examples only)."""
        captured: list[torch.Tensor] = []
        module = self.module.get_submodule(node.target)
        hook = module.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            self.module.recompile()
            for batch in self.slices:
                self.module(self.inputs[batch])
        finally:
            hook.remove()
        return torch.cat(captured)

    # -- evaluation ---------------------------------------------------------------------------------
    def evaluate(self, alpha: float, beta: float) -> PointResult:
        with torch.no_grad():
            for update in self.updates:
                update.apply(alpha, beta)
            for fold in self.dynamic_folds:
                fold.refresh()
            if self.first is not None:
                self.first.alpha, self.first.beta = alpha, beta
            return self._forward_all(self._forward_batch)

    def _forward_batch(self, x: torch.Tensor, batch: slice) -> torch.Tensor:
        if self.first is not None:
            self.first.batch = batch
        return self.module(x)


# ----------------------------------------------------------------------------------------- vmap path

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


EVALUATORS = {"naive": NaiveEvaluator, "fast": FastEvaluator, "vmap": VmapEvaluator}


def make_evaluator(method: str, model: nn.Module, directions: Directions, inputs: torch.Tensor,
                   targets: torch.Tensor, loss_fn: LossFn = cross_entropy_per_example,
                   batch_size: int | None = None, device: str | torch.device = "auto",
                   points_per_batch: int | None = None) -> PointEvaluator:
    """An evaluator over exactly these examples (no subset is drawn here)."""
    if method not in METHODS:
        raise ValueError(f"method={method!r} is not valid; allowed: {', '.join(METHODS)}")
    device = resolve_device(device)
    if method == "auto":
        method = "vmap" if device.type == "cuda" else "fast"
    extra = {"points_per_batch": points_per_batch} if method == "vmap" and points_per_batch else {}
    return EVALUATORS[method](model, directions, inputs, targets, loss_fn, batch_size or len(targets), device,
                              **extra)


def _check_directions(model: nn.Module, directions: Directions, two_d: bool) -> None:
    expected = model_tensors(model, directions.mode)
    for axis in directions.axes():
        if list(axis) != list(expected):
            missing = sorted(set(expected) - set(axis))[:3]
            extra = sorted(set(axis) - set(expected))[:3]
            raise ValueError(f"the directions do not match the model's {directions.mode} tensors "
                             f"(missing {missing}, unexpected {extra})")
        for name, tensor in axis.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise ValueError(f"direction {name!r} has shape {tuple(tensor.shape)}, the model's tensor "
                                 f"{tuple(expected[name].shape)}")
    if two_d and directions.y is None:
        raise ValueError("a 2-D surface (ys given) needs two directions; these have no y direction")


def compute_surface(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, directions: Directions,
                    xs: Sequence[float] | np.ndarray, ys: Sequence[float] | np.ndarray | None = None,
                    n_examples: int | str | None = 250, seed: int = 0, loss_fn: LossFn = cross_entropy_per_example,
                    batch_size: int | None = None, device: str | torch.device = "auto",
                    clip_radius: float | None = None, out: str | Path | None = None, progress: bool = True,
                    method: str = "auto", points_per_batch: int | None = None,
                    meta: dict[str, Any] | None = None) -> Surface:
    """The loss landscape of `model` on a seeded subset of (inputs, targets) over the grid xs × ys.

    Points are θ* + α·δ + β·η with δ, η = directions.x, .y; arrays are (ny, nx) with Z[iy, ix], or (nx,)
    when `ys` is None. `loss_fn(outputs, targets)` returns per-example losses. Points farther than
    `clip_radius` from the centre are skipped (NaN). With `out`, points are flushed to that HDF5 file as
    they finish and a rerun with the same arguments computes only the missing ones. `meta` adds entries
    (dataset, model name, dir_file...) to the surface's metadata. `n_examples="auto"` (or a
    `lossviz.sampling.AutoExamples`) picks n from a pilot grid's standard errors: see lossviz.sampling.

    Under torch.distributed (an initialized default group, e.g. `lossviz.distributed.process_group` in a
    torchrun job) every rank calls this with the same arguments: rank 0 alone opens `out` and decides the
    pending points, the ranks compute their shares of each round and send the results to rank 0, which
    records them; every rank returns the whole surface.
    """
    if isinstance(n_examples, str) or getattr(n_examples, "adaptive", False):
        from lossviz.sampling import adaptive_surface
        # Only rank 0 may write `out` (adaptive_surface rewrites it at the end).
        out = out if distributed.rank() == 0 else None
        return adaptive_surface(model, inputs, targets, directions, xs, ys, n_examples, seed=seed, loss_fn=loss_fn,
                                batch_size=batch_size, device=device, clip_radius=clip_radius, out=out,
                                progress=progress, method=method, points_per_batch=points_per_batch, meta=meta)
    xs = np.asarray(xs, dtype=np.float64).ravel()
    ys = None if ys is None else np.asarray(ys, dtype=np.float64).ravel()
    if len(xs) == 0 or (ys is not None and len(ys) == 0):
        raise ValueError("xs and ys must hold at least one coordinate each")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
    _check_directions(model, directions, ys is not None)
    torch_device = resolve_device(device)
    if torch_device.type == "cpu":
        configure_cpu()
    indices = select_examples(len(targets), n_examples, seed)
    index_tensor = torch.from_numpy(indices)
    surface_meta = {
        "seed": seed, "n_examples": len(indices), "mode": directions.mode,
        "norm": directions.meta.get("norm"), "ignore": directions.meta.get("ignore"),
        "direction_kind": directions.meta.get("kind"), "direction_seed": directions.meta.get("seed"),
        "model_hash": model_digest(model), "directions_hash": directions.digest(),
        "loss": getattr(loss_fn, "__name__", type(loss_fn).__name__), "clip_radius": clip_radius,
        "split": "test", **(meta or {}),
    }
    shape = (len(xs),) if ys is None else (len(ys), len(xs))
    empty = np.full(shape, np.nan)
    template = Surface(xs, ys, empty, empty.copy(), empty.copy(), indices, surface_meta)
    alphas, betas = grid_points(xs, ys)
    clipped = outside_radius(alphas, None if ys is None else betas, clip_radius) if clip_radius is not None \
        else np.zeros(len(alphas), dtype=bool)

    rank, world = distributed.rank(), distributed.world_size()
    if world > 1:
        _check_same_on_every_rank(surface_meta, inputs[index_tensor], targets[index_tensor], xs, ys,
                                  (method, torch_device.type, batch_size, points_per_batch))
    store: SurfaceFile | None = None

    def open_store() -> np.ndarray:  # rank 0 alone owns the file and decides what is left to compute
        nonlocal store
        if out is None:
            return np.flatnonzero(~clipped)
        store = SurfaceFile.open_or_create(out, template, RESUME_IDENTITY)
        return store.pending()

    arrays = {"loss": template.loss, "acc": template.acc, "loss_se": template.loss_se}
    was_training = model.training
    evaluator = None
    try:
        pending = distributed.from_rank_zero(open_store)
        if len(pending):
            evaluator = make_evaluator(method, model, directions, inputs[index_tensor], targets[index_tensor],
                                       loss_fn, batch_size, torch_device, points_per_batch)
            total = int((~clipped).sum())
            share = getattr(evaluator, "points_per_batch", 1)  # points per rank per round
            with tqdm(total=total, initial=total - len(pending), unit="pt", disable=not progress or rank != 0,
                      desc="surface", smoothing=0.1) as bar:
                position = 0
                while position < len(pending):  # rounds in lockstep: every rank computes the same sequence
                    batch = pending[position:position + share * world]
                    position += len(batch)
                    mine = np.array_split(batch, world)[rank]
                    started = time.perf_counter()
                    results = evaluator.evaluate_many(alphas[mine], betas[mine]) if len(mine) else []
                    gathered = distributed.all_gather((mine, results, time.perf_counter() - started))
                    if rank == 0:
                        for flats, rank_results, _ in gathered:
                            for flat, result in zip(flats, rank_results, strict=True):
                                if store is not None:
                                    store.record(int(flat), result.loss, result.acc, result.loss_se)
                                else:
                                    for name in arrays:
                                        arrays[name].flat[flat] = getattr(result, name)
                    # Every rank sees the same timings, so every rank takes the same decision.
                    if world > 1 and max(seconds for *_, seconds in gathered) < ROUND_SECONDS / 2:
                        share *= 2
                    bar.update(len(batch))
    finally:
        if evaluator is not None:
            evaluator.close()
        model.train(was_training)
        if store is not None:
            store.close()

    def finished() -> Surface:
        if out is not None:
            return Surface.load(out)
        surface_meta["complete"] = True
        return template

    return distributed.from_rank_zero(finished)  # the whole surface, on every rank


def _check_same_on_every_rank(meta: dict[str, Any], inputs: torch.Tensor, targets: torch.Tensor, xs: np.ndarray,
                              ys: np.ndarray | None, settings: tuple[Any, ...]) -> None:
    """Ranks that loaded different checkpoints, directions or data would silently mix surfaces, and ranks
    with different settings would walk the grid out of step: refuse, on every rank alike (all see the same
    gathered fingerprints)."""
    grid = [torch.from_numpy(xs)] + ([] if ys is None else [torch.from_numpy(ys)])
    fingerprint = (meta["model_hash"], meta["directions_hash"], tensors_digest([inputs, targets, *grid]),
                   meta["loss"], meta["clip_radius"], settings)
    fingerprints = distributed.all_gather(fingerprint)
    differing = [r for r, other in enumerate(fingerprints) if other != fingerprints[0]]
    if differing:
        raise distributed.on_every_rank(ValueError(
            f"ranks {differing} hold a different model, directions, examples, grid or settings (method, "
            "device type, batch size) than rank 0; every rank must load the same checkpoint, directions and "
            "data with the same arguments"))
