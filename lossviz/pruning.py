"""Masks and magnitude pruning for lottery tickets (Frankle & Carbin's IMP).

A mask is a plain `{parameter name: bool tensor}` over the prunable weights: every conv and linear
weight (tensors with more than one dimension). Biases and BatchNorm parameters are never pruned.
Each pruning step removes exactly round(p · n_alive) of a layer's *live* weights (Python's round,
half to even), smallest magnitude first, ties broken by position so the result is deterministic.
"""

from __future__ import annotations

import torch
from torch import nn

Mask = dict[str, torch.Tensor]


def prunable_names(model: nn.Module) -> list[str]:
    """Names of the weights IMP may prune, in parameter order (the last one is the output layer)."""
    return [name for name, param in model.named_parameters() if param.dim() > 1]


def full_mask(model: nn.Module) -> Mask:
    return {name: torch.ones_like(param, dtype=torch.bool) for name, param in model.named_parameters()
            if param.dim() > 1}


def _check(weights: dict[str, torch.Tensor], mask: Mask) -> None:
    missing = [name for name in mask if name not in weights]
    if missing:
        raise KeyError(f"mask names parameters the model does not have: {missing}")
    for name, keep in mask.items():
        if keep.shape != weights[name].shape:
            raise ValueError(f"mask {name!r} has shape {tuple(keep.shape)}, weight {tuple(weights[name].shape)}")


def _check_rate(rate: float, what: str) -> None:
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"{what}={rate} must be in [0, 1)")


def _prune_smallest(magnitudes: torch.Tensor, alive: torch.Tensor, count: int) -> torch.Tensor:
    """Flat bool tensor: `alive` less the `count` live entries of smallest magnitude (stable: lower
    position first among ties)."""
    keep = alive.clone()
    if count <= 0:
        return keep
    live_positions = alive.nonzero().flatten()
    order = torch.sort(magnitudes[live_positions], stable=True).indices
    keep[live_positions[order[:count]]] = False
    return keep


def magnitude_prune(weights: dict[str, torch.Tensor], mask: Mask, rate: float,
                    output_rate: float | None = None, scope: str = "layer") -> Mask:
    """The next mask: prune `rate` of the live weights, per layer (`scope="layer"`, the paper's setting)
    or across all layers at once (`scope="global"`, as for ResNets/VGG). The output layer (the last
    masked tensor) is pruned at `output_rate` when given (Frankle & Carbin use half the rate), on its
    own in both scopes."""
    _check(weights, mask)
    _check_rate(rate, "rate")
    if output_rate is not None:
        _check_rate(output_rate, "output_rate")
    if scope not in ("layer", "global"):
        raise ValueError(f"scope={scope!r}; allowed: 'layer', 'global'")
    names = list(mask)
    output = names[-1]
    rates = {name: rate for name in names}
    if output_rate is not None:
        rates[output] = output_rate
    flat_mag = {name: weights[name].detach().abs().flatten().cpu() for name in names}
    flat_alive = {name: mask[name].flatten().cpu().bool() for name in names}
    new: dict[str, torch.Tensor] = {}
    if scope == "layer":
        for name in names:
            count = round(rates[name] * int(flat_alive[name].sum()))
            new[name] = _prune_smallest(flat_mag[name], flat_alive[name], count)
    else:
        pooled = [name for name in names if not (output_rate is not None and name == output)]
        magnitudes = torch.cat([flat_mag[name] for name in pooled])
        alive = torch.cat([flat_alive[name] for name in pooled])
        keep = _prune_smallest(magnitudes, alive, round(rate * int(alive.sum())))
        for name, part in zip(pooled, keep.split([flat_alive[n].numel() for n in pooled]), strict=True):
            new[name] = part
        if output_rate is not None:
            count = round(output_rate * int(flat_alive[output].sum()))
            new[output] = _prune_smallest(flat_mag[output], flat_alive[output], count)
    return {name: new[name].view_as(mask[name]).to(mask[name].device) for name in names}


def random_mask_like(mask: Mask, generator: torch.Generator) -> Mask:
    """A random mask with exactly the same number of live weights in every layer (the random-ticket
    control of the seed paper's Figure 7)."""
    result = {}
    for name, keep in mask.items():
        alive = int(keep.sum())
        flat = torch.zeros(keep.numel(), dtype=torch.bool)
        flat[torch.randperm(keep.numel(), generator=generator)[:alive]] = True
        result[name] = flat.view_as(keep).to(keep.device)
    return result


@torch.no_grad()
def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero the pruned weights in place."""
    params = dict(model.named_parameters())
    _check(params, mask)
    for name, keep in mask.items():
        params[name].mul_(keep.to(params[name].device, params[name].dtype))


def masked_state(state: dict[str, torch.Tensor], mask: Mask) -> dict[str, torch.Tensor]:
    """A copy of `state` with the masked weights zeroed: a level's starting point mask ⊙ θ0 (every
    other entry, biases and BatchNorm included, is θ0 as it was)."""
    return {name: value * mask[name].to(value.dtype) if name in mask else value.clone()
            for name, value in state.items()}


def density(mask: Mask) -> dict:
    """Live fractions per layer and in total (P_m of the paper, over the prunable weights)."""
    layers = {name: float(keep.float().mean()) for name, keep in mask.items()}
    alive = sum(int(keep.sum()) for keep in mask.values())
    size = sum(keep.numel() for keep in mask.values())
    return {"layers": layers, "alive": alive, "size": size, "total": alive / size if size else 1.0}


def layer_schedule(sizes: dict[str, int], rate: float, levels: int,
                   output_rate: float | None = None) -> list[dict[str, int]]:
    """Live counts per layer after 0..levels per-layer prunes: the exact schedule, rounding included."""
    names = list(sizes)
    counts = [dict(sizes)]
    for _ in range(levels):
        previous = counts[-1]
        step = {}
        for name in names:
            layer_rate = output_rate if (output_rate is not None and name == names[-1]) else rate
            step[name] = previous[name] - round(layer_rate * previous[name])
        counts.append(step)
    return counts


def remaining_fractions(sizes: dict[str, int], rate: float, levels: int,
                        output_rate: float | None = None) -> list[float]:
    total = sum(sizes.values())
    return [sum(c.values()) / total for c in layer_schedule(sizes, rate, levels, output_rate)]


def mask_to_cpu(mask: Mask) -> Mask:
    return {name: keep.detach().to("cpu", torch.bool).contiguous() for name, keep in mask.items()}

