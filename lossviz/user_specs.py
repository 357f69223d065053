"""Models and datasets named on the command line (or in params) by the user's own code and files.

Model specs: a registered name (`lossviz.models.MODELS`), or `package.module:factory` called with keyword
arguments (`--model-kwargs '{"width": 8}'` or `width=8,depth=2`); a factory that takes `input_shape` or
`num_classes` gets them from the data unless given.

Dataset specs (`user_dataset`), besides the prepared datasets of `lossviz.data`:
- `folder:PATH` (or an existing directory): an image folder, one sub-folder per class (torchvision
  ImageFolder), with `train/` and `test/` inside when the splits are separate;
- `PATH.npz`: arrays `x_test`/`y_test` and `x_train`/`y_train` (or `x`/`y` for both splits);
- `torchvision:CLASS`: a torchvision dataset class read from a local root (`--data-root`, or a `root` keyword
  argument; no download);
- `package.module:function`: the user's function, called with the dataset keyword arguments, returning
  (train, test) datasets or {"train": ..., "test": ...}.
Bad specs raise `SpecError`, naming the flag and the accepted forms. params.yaml takes the same specs
(`train.model`, `sample_size.dataset`...): `is_import_spec` and `is_user_dataset_spec` check their syntax
there without importing or reading anything.
"""

from __future__ import annotations

import importlib
import inspect
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

MODEL_FORMS = "a registered name ({names}) or package.module:factory (a function returning an nn.Module)"
USER_DATASET_FORMS = ("folder:PATH (an image folder), PATH.npz (x_test/y_test and x_train/y_train arrays), "
                      "torchvision:CLASS (read from --data-root or a root keyword argument, no download) or "
                      "package.module:function (returning train and test datasets)")
DATASET_FORMS = f"a prepared dataset name (fashion_mnist, cifar10), {USER_DATASET_FORMS}"
KWARGS_FORMS = "a JSON object ('{\"width\": 8}') or key=value pairs separated by commas ('width=8,depth=2')"


_DOTTED_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


class SpecError(ValueError):
    """A model, dataset or keyword-argument spec that cannot be used; the message names the flag."""


def is_import_spec(spec: str) -> bool:
    """Whether `spec` reads `package.module:name` (dotted identifiers on both sides); nothing is imported."""
    module_name, sep, attribute = spec.partition(":")
    return bool(sep) and all(_DOTTED_NAME.fullmatch(part) for part in (module_name, attribute))


def is_user_dataset_spec(spec: str) -> bool:
    """Whether `spec` has the syntax of a user dataset form (folder:PATH, PATH.npz, torchvision:CLASS,
    package.module:function); nothing is read or imported."""
    kind, _, rest = spec.partition(":")
    if kind == "folder":
        return bool(rest)
    if kind == "torchvision":
        return rest.isidentifier()
    return spec.endswith(".npz") or is_import_spec(spec)


def parse_kwargs(text: str | Mapping[str, Any] | None, flag: str) -> dict[str, Any]:
    """`{"width": 8}` (JSON) or `width=8,depth=2` (values read as YAML scalars: numbers, booleans, strings)."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return dict(text)
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as error:
            raise SpecError(f"{flag} {text!r} is not valid JSON ({error.msg}); expected {KWARGS_FORMS}") from None
        if not isinstance(value, dict):
            raise SpecError(f"{flag} {text!r} is not valid; expected {KWARGS_FORMS}")
        return value
    result: dict[str, Any] = {}
    for pair in text.split(","):
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise SpecError(f"{flag} {text!r}: {pair!r} is not key=value; expected {KWARGS_FORMS}")
        result[key.strip()] = yaml.safe_load(raw.strip()) if raw.strip() else ""
    return result


def import_object(spec: str, flag: str, forms: str) -> Any:
    """`package.module:name` → the object (a factory), with errors naming the flag and the accepted forms."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise SpecError(f"{flag} {spec!r} is not valid; expected {forms}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise SpecError(f"{flag} {spec!r}: module {module_name!r} cannot be imported ({error}); expected "
                        f"{forms}, the module on PYTHONPATH") from None
    target: Any = module
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise SpecError(f"{flag} {spec!r}: {module_name} has no {attribute!r}; expected {forms}")
        target = getattr(target, part)
    if not callable(target):
        raise SpecError(f"{flag} {spec!r}: {attribute} is a {type(target).__name__}, not a callable; expected {forms}")
    return target


def _call(factory: Any, kwargs: dict[str, Any], spec: str, flag: str, kwargs_flag: str, **defaults: Any) -> Any:
    """factory(**kwargs), with `defaults` added where the factory takes them and they were not given."""
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        parameters = {}
    extra = {k: v for k, v in defaults.items() if k in parameters and k not in kwargs and v is not None}
    try:
        return factory(**kwargs, **extra)
    except TypeError as error:
        raise SpecError(f"{flag} {spec!r} with {kwargs_flag} {kwargs}: {error}") from None


def build_user_model(spec: str, kwargs: dict[str, Any] | None = None, input_shape: tuple[int, ...] | None = None,
                     num_classes: int | None = None, flag: str = "--model",
                     kwargs_flag: str = "--model-kwargs") -> nn.Module:
    """A registered model, or the user's `package.module:factory(**kwargs)`."""
    from lossviz.models import MODELS, build_model

    forms = MODEL_FORMS.format(names=", ".join(sorted(MODELS)))
    kwargs = dict(kwargs or {})
    if ":" not in spec:
        if spec not in MODELS:
            raise SpecError(f"{flag} {spec!r} is not valid; expected {forms}")
        if kwargs:
            raise SpecError(f"{kwargs_flag}: registered models take no keyword arguments; got {kwargs}")
        return build_model(spec, input_shape or (1, 28, 28), num_classes or 10)
    model = _call(import_object(spec, flag, forms), kwargs, spec, flag, kwargs_flag, input_shape=input_shape,
                  num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise SpecError(f"{flag} {spec!r} returned a {type(model).__name__}; expected {forms}")
    return model


@dataclass
class UserData:
    """One split of a user's dataset, with what a registered model needs to be built for it."""

    dataset: Any                       # a map-style Dataset (or tensors' TensorDataset)
    input_shape: tuple[int, ...] | None
    num_classes: int | None


def is_user_dataset(spec: str) -> bool:
    """Whether `--dataset` names a user's dataset (a form of `user_dataset`) rather than a prepared one."""
    return ":" in spec or spec.endswith(".npz") or Path(spec).is_dir()


def user_dataset(spec: str, split: str, root: str | Path = "data", kwargs: dict[str, Any] | None = None,
                 flag: str = "--dataset", kwargs_flag: str = "--dataset-kwargs") -> UserData:
    """The `split` ("train" or "test") of a user's dataset (see the module docstring for the forms)."""
    kwargs = dict(kwargs or {})
    kind, _, rest = spec.partition(":")
    if kind == "folder" or (not rest and Path(spec).is_dir()):
        dataset = _image_folder(Path(rest if kind == "folder" else spec), split, flag, spec)
    elif spec.endswith(".npz"):
        dataset = _npz(Path(spec), split, flag)
    elif kind == "torchvision":
        dataset = _torchvision(rest, split, Path(kwargs.pop("root", root)), kwargs, flag, spec)
    elif rest:
        made = _call(import_object(spec, flag, DATASET_FORMS), kwargs, spec, flag, kwargs_flag)
        if isinstance(made, Mapping) and {"train", "test"} <= set(made):
            dataset = made[split]
        elif isinstance(made, tuple | list) and len(made) == 2:
            dataset = made[0 if split == "train" else 1]
        else:
            raise SpecError(f"{flag} {spec!r} returned a {type(made).__name__}; expected (train, test) datasets "
                            "or {'train': ..., 'test': ...}")
    else:
        raise SpecError(f"{flag} {spec!r} is not valid; expected {DATASET_FORMS}")
    return UserData(dataset, _input_shape(dataset), _num_classes(dataset))


def _image_folder(path: Path, split: str, flag: str, spec: str):
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import ToTensor

    if not path.is_dir():
        raise SpecError(f"{flag} {spec!r}: {path} is not a directory; expected {DATASET_FORMS}")
    folder = path / split if (path / split).is_dir() else path
    try:
        return ImageFolder(str(folder), transform=ToTensor())
    except (FileNotFoundError, RuntimeError) as error:
        raise SpecError(f"{flag} {spec!r}: {folder} is not an image folder ({error}); expected one sub-folder "
                        "of images per class") from None


def _npz(path: Path, split: str, flag: str):
    if not path.is_file():
        raise SpecError(f"{flag} {str(path)!r}: no such file; expected {DATASET_FORMS}")
    with np.load(path, allow_pickle=False) as arrays:
        names = list(arrays)
        for x_key, y_key in ((f"x_{split}", f"y_{split}"), ("x", "y")):
            if x_key in arrays and y_key in arrays:
                x, y = torch.from_numpy(arrays[x_key]), torch.from_numpy(arrays[y_key])
                break
        else:
            raise SpecError(f"{flag} {str(path)!r} holds arrays {names}; expected x_{split} and y_{split} (or x and y)")
    if len(x) != len(y):
        raise SpecError(f"{flag} {str(path)!r}: {len(x)} inputs and {len(y)} targets differ in length")
    if x.dtype == torch.uint8:  # images: as the prepared datasets, in [0, 1]
        x = x.float().div_(255.0)
    if not y.is_floating_point():
        y = y.long()
    return torch.utils.data.TensorDataset(x, y)


def _torchvision(name: str, split: str, root: Path, kwargs: dict[str, Any], flag: str, spec: str):
    import torchvision.datasets
    from torchvision.transforms import ToTensor

    cls = getattr(torchvision.datasets, name, None)
    if not inspect.isclass(cls):
        raise SpecError(f"{flag} {spec!r}: torchvision.datasets has no dataset class {name!r}; expected "
                        "torchvision:CLASS, e.g. torchvision:CIFAR10")
    parameters = inspect.signature(cls).parameters
    options = {"transform": ToTensor(), **kwargs}
    if "train" in parameters:
        options.setdefault("train", split == "train")
    elif "split" in parameters:
        options.setdefault("split", split)
    if "download" in parameters:
        options["download"] = False  # a local root only: the data are the user's, not fetched here
    try:
        return cls(str(root), **options)
    except (RuntimeError, FileNotFoundError, OSError) as error:
        raise SpecError(f"{flag} {spec!r}: cannot read {name} from the root {root} ({error}); download it "
                        "there first") from None


def _first_item(dataset: Any) -> Any:
    try:
        return dataset[0]
    except Exception:  # an iterable or an empty dataset: nothing to infer from
        return None


def _input_shape(dataset: Any) -> tuple[int, ...] | None:
    item = _first_item(dataset)
    if isinstance(item, tuple | list) and item and isinstance(item[0], torch.Tensor):
        return tuple(item[0].shape)
    return None


def _num_classes(dataset: Any) -> int | None:
    if getattr(dataset, "classes", None) is not None:
        return len(dataset.classes)
    tensors = getattr(dataset, "tensors", None)
    if tensors and not tensors[-1].is_floating_point():
        return int(tensors[-1].max()) + 1
    return None
