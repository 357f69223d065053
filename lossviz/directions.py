"""Directions in weight space: the axes of a loss-landscape plot.

Owns random (normalized) directions, the target direction between two models, PCA directions of a
training trajectory with the projection of its checkpoints, directions along given weight-space vectors
(`vector_directions`: the Hessian-eigenvector kind, kind="hessian", is made by
`lossviz.curvature.hessian_directions` through it), and the direction file (the official
loss-landscape tool's HDF5 layout, readable both ways).

A direction is a dict {name: tensor} in the model's order: `named_parameters()` in "weights" mode, the
`state_dict()` in "states" mode (running statistics included; integer buffers get a zero direction).
Defaults follow every published figure: filter normalization and zero directions for biases and BatchNorm
("biasbn"). The official tool's own CLI defaults (no normalization, no ignore) give NaNs; we do not copy
them.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch import nn

from lossviz.options import IGNORES, MODES, NORMS

DIRECTION_FORMAT = "lossviz-directions"
DIRECTION_FORMAT_VERSION = 1
# The official code adds this to norms it divides by, so that an all-zero filter stays zero.
NORM_EPS = 1e-10

Direction = dict[str, torch.Tensor]


@dataclass
class Directions:
    """The x (and optional y) direction of a plot, with how they were made."""

    x: Direction
    y: Direction | None = None
    mode: str = "weights"
    meta: dict[str, Any] = field(default_factory=dict)  # kind, seed, norm, ignore, explained variance...

    @property
    def names(self) -> list[str]:
        return list(self.x)

    def axes(self) -> list[Direction]:
        return [self.x] if self.y is None else [self.x, self.y]

    def digest(self) -> str:
        """A short hash of the direction values, to tell whether a resumed surface used the same axes."""
        return tensors_digest([t for axis in self.axes() for t in axis.values()])

    def save(self, path: str | Path) -> None:
        save_directions(self, path)

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Directions:
        return load_directions(path, model)


def tensors_digest(tensors: Iterable[torch.Tensor]) -> str:
    """SHA-256 (first 16 hex digits) over the shapes and bytes of tensors, in order."""
    digest = hashlib.sha256()
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(str(tuple(array.shape)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:16]


def model_digest(model: nn.Module) -> str:
    """Hash of a model's state_dict (names, shapes and values)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensors_digest([tensor]).encode())
    return digest.hexdigest()[:16]


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not valid; allowed: {', '.join(allowed)}")
    return value


def model_tensors(model: nn.Module, mode: str = "weights") -> dict[str, torch.Tensor]:
    """The tensors a direction moves, by name: parameters ("weights") or the whole state_dict ("states")."""
    _check_choice("mode", mode, MODES)
    if mode == "weights":
        return {name: p.detach() for name, p in model.named_parameters()}
    return {name: t.detach() for name, t in model.state_dict().items()}


# Which parameters a direction moves: every one, those with requires_grad (a frozen backbone stays put), or a
# filter: a callable name -> bool, or fnmatch patterns of names (a string or a list of strings).
PARAM_CHOICES = ("all", "trainable")
ParamsChoice = str | Callable[[str], bool] | Sequence[str]


def chosen_tensors(model: nn.Module, params: ParamsChoice = "all", mode: str = "weights") -> tuple[set[str], str]:
    """The names of the model's `mode` tensors that move under `params`, and the choice as recorded in the
    surface's metadata ("all", "trainable", "filter: pattern, ..." or "filter: <callable name>").

    "trainable" keeps the parameters with requires_grad (in "states" mode the buffers, never trained, stay put)."""
    names = list(model_tensors(model, mode))
    if isinstance(params, str) and params in PARAM_CHOICES:
        if params == "all":
            return set(names), "all"
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        return {name for name in names if name in trainable}, "trainable"
    if callable(params):
        chosen = {name for name in names if params(name)}
        label = f"filter: {getattr(params, '__name__', type(params).__name__)}"
    elif isinstance(params, str | Sequence) and all(isinstance(p, str) for p in params) and len(params):
        patterns = [params] if isinstance(params, str) else list(params)
        chosen = {name for name in names if any(fnmatch.fnmatchcase(name, pattern) for pattern in patterns)}
        label = "filter: " + ", ".join(patterns)
    else:
        raise ValueError(f"params={params!r} is not valid; allowed: {', '.join(PARAM_CHOICES)}, name patterns "
                         "(e.g. 'classifier.*' or a list of them) or a callable name -> bool")
    if not chosen:
        raise ValueError(f"params={params!r} matches none of the model's {mode} tensors (e.g. {names[:3]})")
    return chosen, label


def restrict_directions(directions: Directions, model: nn.Module, params: ParamsChoice) -> Directions:
    """The same directions with zeros on the tensors `params` does not choose: those are never perturbed (the
    evaluators skip zero directions). Per-tensor normalization is unchanged, so this equals normalizing on the
    chosen set alone; the choice goes into the metadata ("params") and from there into the surface's."""
    chosen, label = chosen_tensors(model, params, directions.mode)
    axes = [{name: tensor if name in chosen else torch.zeros_like(tensor) for name, tensor in axis.items()}
            for axis in directions.axes()]
    return Directions(axes[0], axes[1] if len(axes) > 1 else None, directions.mode,
                      {**directions.meta, "params": label})


def normalize_direction(direction: torch.Tensor, weight: torch.Tensor, norm: str) -> torch.Tensor:
    """Rescale one tensor's direction against its weight (in place; returned for chaining).

    filter: every slice along dim 0 (a conv filter, a linear row) gets the norm of the weight's slice;
    layer: the whole tensor gets the weight's norm; weight: d *= w; dfilter/dlayer: unit norm per
    filter/tensor; none: unchanged.
    """
    _check_choice("norm", norm, NORMS)
    if norm == "filter":
        d_norms = direction.flatten(1).norm(dim=1)
        w_norms = weight.flatten(1).norm(dim=1)
        direction.mul_((w_norms / (d_norms + NORM_EPS)).view(-1, *[1] * (direction.dim() - 1)))
    elif norm == "layer":
        direction.mul_(weight.norm() / (direction.norm() + NORM_EPS))
    elif norm == "weight":
        direction.mul_(weight)
    elif norm == "dfilter":
        d_norms = direction.flatten(1).norm(dim=1)
        direction.div_((d_norms + NORM_EPS).view(-1, *[1] * (direction.dim() - 1)))
    elif norm == "dlayer":
        direction.div_(direction.norm() + NORM_EPS)
    return direction


def _random_direction(tensors: Mapping[str, torch.Tensor], generator: torch.Generator, norm: str,
                      ignore: str, mask: Mapping[str, torch.Tensor] | None) -> Direction:
    direction: Direction = {}
    for name, weight in tensors.items():
        # Draw for every tensor, even those zeroed below, so the random stream does not depend on the
        # options (and matches the official tool's draw order).
        values = torch.randn(weight.shape, generator=generator, dtype=torch.float32)
        if not weight.is_floating_point():
            direction[name] = torch.zeros(weight.shape, dtype=torch.float32)
            continue
        weight = weight.detach().cpu().float()
        if mask is not None and name in mask:
            # Mask first, then normalize: pruned coordinates stay zero and each filter still gets the
            # norm of its surviving weights.
            values.mul_(mask[name].detach().cpu().to(values.dtype))
        if weight.dim() <= 1:
            # Biases and BatchNorm: zero under "biasbn"; otherwise the official tool's choice, d = w.
            values = torch.zeros_like(values) if ignore == "biasbn" else weight.clone()
        else:
            normalize_direction(values, weight, norm)
        direction[name] = values
    return direction


def random_directions(model: nn.Module, seed: int = 0, norm: str = "filter", ignore: str = "biasbn",
                      mode: str = "weights", mask: Mapping[str, torch.Tensor] | None = None,
                      two_d: bool = True, params: ParamsChoice = "all") -> Directions:
    """Two (or one, `two_d=False`) seeded Gaussian directions, normalized against the model's weights.

    Draws one N(0,1) tensor per model tensor from `torch.Generator().manual_seed(seed)`, x before y.
    `mask` ({name: 0/1 tensor}) zeroes pruned coordinates before normalization. `params` chooses the tensors
    that move (`chosen_tensors`: "all", "trainable", name patterns or a callable); the others get zero
    directions, so a frozen backbone is never perturbed. The random stream is the same whatever the choice.
    """
    _check_choice("norm", norm, NORMS)
    _check_choice("ignore", ignore, IGNORES)
    tensors = model_tensors(model, mode)
    if mask is not None:
        unknown = sorted(set(mask) - set(tensors))
        if unknown:
            raise ValueError(f"mask names {unknown} are not {mode} tensors of the model")
    generator = torch.Generator().manual_seed(seed)
    x = _random_direction(tensors, generator, norm, ignore, mask)
    y = _random_direction(tensors, generator, norm, ignore, mask) if two_d else None
    meta = {"kind": "random", "seed": seed, "norm": norm, "ignore": ignore, "masked": mask is not None}
    directions = Directions(x, y, mode, meta)
    return directions if params == "all" else restrict_directions(directions, model, params)


def _difference(start: Mapping[str, torch.Tensor], end: Mapping[str, torch.Tensor]) -> Direction:
    if list(start) != list(end):
        raise ValueError("the two models do not have the same tensors (names or order differ)")
    diff = {}
    for name, a in start.items():
        b = end[name]
        if a.shape != b.shape:
            raise ValueError(f"{name}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        diff[name] = (b.detach().cpu().float() - a.detach().cpu().float()) if a.is_floating_point() \
            else torch.zeros(a.shape)
    return diff


def target_direction(model_a: nn.Module, model_b: nn.Module, mode: str = "weights") -> Directions:
    """The direction from model_a to model_b (θ_b − θ_a), for 1-D linear interpolation: α=0 is model_a,
    α=1 is model_b."""
    _check_choice("mode", mode, MODES)
    return Directions(_difference(model_tensors(model_a, mode), model_tensors(model_b, mode)), None, mode,
                      {"kind": "target"})


def vector_directions(model: nn.Module, vectors: list[Mapping[str, torch.Tensor]], meta: dict[str, Any],
                      norm: str = "none", ignore: str = "none", mode: str = "weights") -> Directions:
    """Directions along one or two given weight-space vectors ({name: tensor}, the model's `mode` tensors),
    e.g. Hessian eigenvectors. By default they are kept as given (norm="none", ignore="none": an
    eigenvector stays an eigenvector); `norm` rescales tensors of 2+ dimensions like random directions,
    ignore="biasbn" zeroes biases and BatchNorm. `meta` (its "kind" first) gets norm and ignore added."""
    _check_choice("norm", norm, NORMS)
    _check_choice("ignore", ignore, IGNORES)
    _check_choice("mode", mode, MODES)
    if not 1 <= len(vectors) <= 2:
        raise ValueError(f"vectors: got {len(vectors)}; allowed: one or two (the x and optional y axis)")
    tensors = model_tensors(model, mode)
    axes = []
    for vector in vectors:
        if list(vector) != list(tensors):
            raise ValueError(f"the vector's names do not match the model's {mode} tensors (names or order differ)")
        axis: Direction = {}
        for name, weight in tensors.items():
            values = vector[name].detach().cpu().float().clone()
            if tuple(values.shape) != tuple(weight.shape):
                raise ValueError(f"{name}: the vector's shape {tuple(values.shape)} is not the model's "
                                 f"{tuple(weight.shape)}")
            if weight.dim() <= 1 and ignore == "biasbn":
                values.zero_()
            elif weight.dim() > 1:
                normalize_direction(values, weight.detach().cpu().float(), norm)
            axis[name] = values
        axes.append(axis)
    return Directions(axes[0], axes[1] if len(axes) > 1 else None, mode, {**meta, "norm": norm, "ignore": ignore})


def _flatten(direction: Mapping[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1).double() for t in direction.values()])


def _unflatten(vector: torch.Tensor, like: Mapping[str, torch.Tensor]) -> Direction:
    out, offset = {}, 0
    for name, t in like.items():
        out[name] = vector[offset:offset + t.numel()].reshape(t.shape).float().clone()
        offset += t.numel()
    return out


def _zero_biasbn(direction: Direction) -> None:
    for t in direction.values():
        if t.dim() <= 1:
            t.zero_()


def pca_directions(checkpoints: list[nn.Module], final: nn.Module | None = None, mode: str = "weights",
                   ignore: str = "biasbn") -> Directions:
    """The plane of a training trajectory: the first two principal components of θ_i − θ_final.

    As the official tool: rows are the checkpoints' differences to the final model (the last checkpoint
    when `final` is None), centred by their mean; components are unit vectors (not filter-normalized).
    The sign of each component is fixed so that its largest-magnitude entry is positive.
    `meta` holds explained_variance, explained_variance_ratio and singular_values.
    """
    _check_choice("ignore", ignore, IGNORES)
    if len(checkpoints) < 3:
        raise ValueError(f"PCA directions need at least 3 checkpoints, got {len(checkpoints)}")
    final_tensors = model_tensors(final if final is not None else checkpoints[-1], mode)
    rows = []
    for checkpoint in checkpoints:
        diff = _difference(final_tensors, model_tensors(checkpoint, mode))
        if ignore == "biasbn":
            _zero_biasbn(diff)
        rows.append(_flatten(diff))
    matrix = torch.stack(rows)
    centred = matrix - matrix.mean(dim=0, keepdim=True)
    _, singular, vt = torch.linalg.svd(centred, full_matrices=False)
    components = vt[:2].clone()
    for component in components:
        if component[component.abs().argmax()] < 0:
            component.neg_()
    variance = singular**2 / (len(checkpoints) - 1)
    x, y = (_unflatten(c, final_tensors) for c in components)
    if ignore == "biasbn":
        _zero_biasbn(x)
        _zero_biasbn(y)
    meta = {"kind": "pca", "ignore": ignore, "n_checkpoints": len(checkpoints),
            "explained_variance": variance[:2].tolist(),
            "explained_variance_ratio": (variance[:2] / variance.sum()).tolist(),
            "singular_values": singular[:2].tolist()}
    return Directions(x, y, mode, meta)


def project_checkpoints(directions: Directions, final: nn.Module, checkpoints: list[nn.Module],
                        method: str = "cos") -> np.ndarray:
    """Coordinates (n, 2) of each checkpoint's θ_i − θ_final in the plane of `directions`.

    "cos": x = ⟨d, dx⟩/‖dx‖, y = ⟨d, dy⟩/‖dy‖ (exact for orthogonal axes such as PCA's);
    "lstsq": least squares d ≈ x·dx + y·dy (any axes).
    """
    _check_choice("method", method, ("cos", "lstsq"))
    if directions.y is None:
        raise ValueError("projection needs two directions (a plane)")
    dx, dy = _flatten(directions.x), _flatten(directions.y)
    final_tensors = model_tensors(final, directions.mode)
    coords = []
    for checkpoint in checkpoints:
        d = _flatten(_difference(final_tensors, model_tensors(checkpoint, directions.mode)))
        if method == "cos":
            coords.append([float(d @ dx / dx.norm()), float(d @ dy / dy.norm())])
        else:
            basis = torch.stack([dx, dy], dim=1)
            coords.append(torch.linalg.lstsq(basis, d.unsqueeze(1)).solution.squeeze(1).tolist())
    return np.asarray(coords, dtype=np.float64)


# ------------------------------------------------------------------------------------- direction file

def save_directions(directions: Directions, path: str | Path) -> None:
    """Write the official direction-file layout (groups xdirection/ydirection, datasets '0'..'n-1' in
    model order) plus our attributes: tensor names, mode, meta, format version."""
    with h5py.File(path, "w") as f:
        f.attrs["format"] = DIRECTION_FORMAT
        f.attrs["version"] = DIRECTION_FORMAT_VERSION
        f.attrs["mode"] = directions.mode
        f.attrs["meta"] = json.dumps(directions.meta)
        f.attrs["names"] = json.dumps(directions.names)
        for key, axis in (("xdirection", directions.x), ("ydirection", directions.y)):
            if axis is None:
                continue
            group = f.create_group(key)
            for i, tensor in enumerate(axis.values()):
                group.create_dataset(str(i), data=tensor.detach().cpu().numpy())
        # The official PCA file keeps the explained variance beside the directions.
        for key in ("explained_variance_ratio", "explained_variance", "singular_values"):
            if key in directions.meta:
                f[key + "_"] = np.asarray(directions.meta[key])


def _official_names(model: nn.Module, count: int, path: str | Path) -> tuple[list[str], str]:
    weights = list(dict(model.named_parameters()))
    states = list(model.state_dict())
    if count == len(weights):
        return weights, "weights"
    if count == len(states):
        return states, "states"
    raise ValueError(f"{path}: the file has {count} tensors per direction, the model has {len(weights)} "
                     f"parameters and {len(states)} state_dict entries: not a direction file of this model")


def load_directions(path: str | Path, model: nn.Module | None = None) -> Directions:
    """Read a direction file written by us or by the official tool. Official files carry no tensor names:
    pass the model, whose parameter (or state_dict) order gives them."""
    with h5py.File(path, "r") as f:
        if "xdirection" not in f:
            raise ValueError(f"{path}: not a direction file (no 'xdirection' group)")
        version = f.attrs.get("version")
        if version is not None and int(version) != DIRECTION_FORMAT_VERSION:
            raise ValueError(f"{path}: direction file version {version} is not supported; this lossviz "
                             f"reads version {DIRECTION_FORMAT_VERSION}")
        count = len(f["xdirection"])
        axes = [[np.asarray(f[key][str(i)]) for i in range(count)]
                for key in ("xdirection", "ydirection") if key in f]
        if "names" in f.attrs:
            names, mode = json.loads(f.attrs["names"]), str(f.attrs["mode"])
            meta = json.loads(f.attrs.get("meta", "{}"))
        else:
            if model is None:
                raise ValueError(f"{path}: an official direction file has no tensor names; pass the model")
            names, mode = _official_names(model, count, path)
            meta = {"kind": "official"}
            for key in ("explained_variance_ratio", "explained_variance", "singular_values"):
                if key + "_" in f:
                    meta[key] = np.asarray(f[key + "_"]).tolist()
    if model is not None:
        expected = model_tensors(model, mode)
        for name, array in zip(names, axes[0], strict=True):
            if name not in expected or tuple(expected[name].shape) != array.shape:
                raise ValueError(f"{path}: direction {name!r} of shape {array.shape} does not fit the model")
    tensors = [{n: torch.from_numpy(np.array(a, dtype=np.float32)) for n, a in zip(names, axis, strict=True)}
               for axis in axes]
    return Directions(tensors[0], tensors[1] if len(tensors) > 1 else None, mode, meta)
