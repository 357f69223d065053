"""The fused fast path: a private copy of the model traced with torch.fx once, then rewritten so a grid point
costs as little as the forward allows, with the same numbers as the naive loop (tested to 1e-5 relative):

- eval-mode BatchNorm folded into the conv/linear before it; eval-mode Dropout/Identity removed;
- the first layer replaced by precomputed activations when its weight moves linearly and its bias not at all
  (layer(x, θ+αδ+βη) = layer(x, θ) + α·layer(x, δ) + β·layer(x, η));
- max-pools that tile (kernel = stride) as strided maxima (this CPU build's max_pool2d is slow);
- weights written in place from precomputed θ*, δ, η (no per-point allocation, copy or file read).

Where torch.fx cannot trace the model (e.g. Hugging Face models) or a rewrite does not apply, it falls back to
the untraced copy, saying why once (`FastPathFallback` warning): exact, just less fast.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from lossviz.directions import Directions
from lossviz.evaluators import PointEvaluator, live_tensors
from lossviz.tasks import PointResult

# (model class, error type) pairs already warned about: the fallback is said once, not at every surface.
_WARNED: set[tuple[str, str]] = set()


class RewriteMismatch(RuntimeError):
    """The fast path's rewritten graph does not compute what the model computes."""


class FastPathFallback(UserWarning):
    """The fast path could not trace or rewrite a model and uses its plain forward instead."""


# Largest cache of precomputed first-layer activations (three tensors) the fast path will hold.
FIRST_LAYER_CACHE_BYTES = 2 << 30


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
        self.live = live_tensors(self.work, self.mode)
        self.optimizations: list[str] = []
        self.first: PrecomputedFirstLayer | None = None
        self.dynamic_folds: list[FoldedLayer] = []
        handled: set[str] = set()   # moving names whose effect is already produced some other way
        updates: list[AffineUpdate] = []
        with torch.no_grad():
            try:
                self.module: nn.Module = fx.symbolic_trace(self.work)
                self._drop_eval_identities()
                self._tile_max_pools()
                layer_updates = self._fold_batchnorms(handled)
                absorbed = self._precompute_first_layer(layer_updates, handled)
                updates.extend(u for name, u in layer_updates.items() if name != absorbed)
                self.module.graph.eliminate_dead_code()
                self.module.graph.lint()
                self.module.recompile()
                self._check_against_plain()
            except Exception as error:  # untraceable Python in forward, or a rewrite that does not apply
                self._fall_back(error, handled, updates)
            for name in self.moving:
                if name not in handled:
                    updates.append(AffineUpdate(self.live[name], self.live[name].clone(), self.dx[name],
                                                None if self.dy is None else self.dy[name]))
        self.updates = updates

    def _check_against_plain(self) -> None:
        """The rewritten graph at the centre against the model's own forward on the first batch: a rewrite that
        does not apply to some model raises here, and the evaluator falls back instead of being wrong."""
        first = self.slices[0]
        inputs = self.examples[first].inputs
        self._select_batch(first)
        rewritten = self.task.output(self.task.feed(self.module, inputs))
        plain = self.task.output(self.task.feed(self.work, inputs))
        tolerance = 1e-4 * (1.0 + float(plain.abs().max())) if plain.numel() else 0.0
        if rewritten.shape != plain.shape or not bool(((rewritten - plain).abs() <= tolerance).all()):
            raise RewriteMismatch("the rewritten graph's outputs differ from the model's own forward at the centre")

    def _fall_back(self, error: Exception, handled: set[str], updates: list[AffineUpdate]) -> None:
        """The untraced copy, weights written in place: exact, just less fast. Says why, once per model class
        and reason."""
        self.module = self.work
        self.first, self.dynamic_folds = None, []
        handled.clear()
        updates.clear()
        reason = f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"
        self.optimizations = [f"no fx trace ({type(error).__name__})"]
        key = (type(self.work).__name__, type(error).__name__)
        if key not in _WARNED:
            _WARNED.add(key)
            warnings.warn(f"lossviz fast path: torch.fx cannot trace or rewrite {type(self.work).__name__} ({reason}); "
                          "using its plain forward with weights written in place (same numbers, less speed)",
                          FastPathFallback, stacklevel=4)

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
                self.task.feed(self.module, self.examples[batch].inputs)
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
            return self._forward_all(self.module, self._select_batch)

    def _select_batch(self, batch: slice) -> None:
        if self.first is not None:
            self.first.batch = batch

