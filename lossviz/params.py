"""The schema of params.yaml: one pydantic model per section, every key validated (`extra="forbid"`).

`load_params(path)` returns a typed `Params` or raises `ParamsError` whose lines each name the key path,
the bad value and what is allowed. Pipelines validate before touching any output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lossviz.data import DATASETS
from lossviz.models import MODELS
from lossviz.runtime import check_device_name

DatasetName = Literal["fashion_mnist", "cifar10"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataParams(Section):
    datasets: list[DatasetName] = Field(default=["fashion_mnist"], min_length=1)
    fashion_mnist_dir: str | None = None
    cifar10_dir: str | None = None
    download: bool = True
    verify_checksums: bool = True
    val_size: int = Field(default=5000, ge=0)
    normalize: bool = False


def _check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"unknown model; allowed: {', '.join(sorted(MODELS))}")
    return name


ModelName = Annotated[str, AfterValidator(_check_model_name)]


class TrainParams(Section):
    dataset: DatasetName = "fashion_mnist"
    model: ModelName = "fashion_cnn"
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=256, ge=1)
    epochs: int = Field(default=3, ge=1)
    lr_plateau: bool = True
    plateau_factor: float = Field(default=0.1, gt=0, lt=1)
    plateau_patience: int = Field(default=5, ge=0)
    early_stopping: bool = False
    patience: int | None = Field(default=None, ge=1)
    max_train_examples: int | None = Field(default=None, ge=1)
    train_eval_examples: int | None = Field(default=10_000, ge=0)

    @model_validator(mode="after")
    def _patience_needs_early_stopping(self) -> TrainParams:
        if self.patience is not None and not self.early_stopping:
            raise ValueError(f"train.patience={self.patience} needs train.early_stopping: true "
                             "(patience is when early stopping ends training); or set patience: null")
        return self


class SampleSizeParams(Section):
    """The `sample_size` stage: one model, one pair of directions, a surface per number of examples."""
    model: ModelName | None = None          # None: train.model (with the train stage's checkpoint)
    dataset: DatasetName | None = None      # None: train.dataset
    checkpoint: str | None = None           # None: models/train/model.pt; else a state_dict/.t7 file
    normalize: bool | None = None           # None: data.normalize (inputs as the model was trained)
    n_examples: list[int] = Field(default=[1, 10, 100, 250, 1000, 10000], min_length=2)
    grid_points: int = Field(default=21, ge=2)
    extent: float = Field(default=1.0, gt=0)
    clip: bool = True
    batch_size: int | None = Field(default=None, ge=1)
    method: Literal["auto", "naive", "fast", "vmap"] = "auto"
    auto_tolerance: float = Field(default=0.05, gt=0)
    auto_candidates: list[int] = Field(default=[10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
                                       min_length=1)
    auto_pilot_points: int = Field(default=7, ge=2)
    timing_points: int = Field(default=12, ge=0)
    timing_rounds: int = Field(default=3, ge=1)

    @field_validator("n_examples")
    @classmethod
    def _distinct_positive(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value) or len(set(value)) != len(value):
            raise ValueError("expected distinct positive integers (the largest is the reference)")
        return sorted(value)

    @field_validator("auto_candidates")
    @classmethod
    def _increasing(cls, value: list[int]) -> list[int]:
        if any(n < 2 for n in value) or value != sorted(set(value)):
            raise ValueError("expected increasing integers of at least 2 (one example has no standard error)")
        return value


class BatchSweepParams(Section):
    """The `batch_sweep` stage: an Optuna study over the training batch size (seed paper, Figure 4)."""
    dataset: DatasetName = "fashion_mnist"
    model: ModelName = "fashion_cnn"
    sampler: Literal["grid", "tpe"] = "grid"
    batch_sizes: list[int] = Field(default=[16, 64, 256, 1024, 4000], min_length=1)  # grid
    log2_batch_size_min: int = Field(default=1, ge=0, le=24)   # tpe: batch size = 2**k, k in [min, max]
    log2_batch_size_max: int = Field(default=11, ge=0, le=24)
    n_trials: int = Field(default=8, ge=1)                       # tpe only (the grid runs every point once)
    pruner: Literal["median", "none"] = "median"                # tpe only; the grid never prunes
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=1e-3, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    epochs: int = Field(default=3, ge=1)
    lr_plateau: bool = True
    plateau_factor: float = Field(default=0.1, gt=0, lt=1)
    plateau_patience: int = Field(default=5, ge=0)
    early_stopping: bool = False
    patience: int | None = Field(default=None, ge=1)
    max_train_examples: int | None = Field(default=4000, ge=1)
    train_eval_examples: int | None = Field(default=2000, ge=0)
    storage: str | None = None      # Optuna storage URL; None: the journal file studies/batch_sweep/
    study_name: str | None = None   # None: derived from a digest of everything that shapes the trials
    # Database storage (PostgreSQL: workers on several machines): a running trial's worker records a heartbeat
    # every `heartbeat_interval` s; a trial silent for `grace_period` s is failed and retried. Any storage: a
    # point is retried at most `max_retries` times per stage run (None: no limit). Not part of the study's
    # identity; the stage records them in the study so every worker beats and judges alike.
    heartbeat_interval: int = Field(default=10, ge=1)
    grace_period: int = Field(default=60, ge=1)
    max_retries: int | None = Field(default=3, ge=0)

    @field_validator("batch_sizes")
    @classmethod
    def _distinct_positive(cls, value: list[int]) -> list[int]:
        if any(n < 1 for n in value) or len(set(value)) != len(value):
            raise ValueError("expected distinct positive integers")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> BatchSweepParams:
        if self.log2_batch_size_min > self.log2_batch_size_max:
            raise ValueError(f"batch_sweep.log2_batch_size_min={self.log2_batch_size_min} is above "
                             f"log2_batch_size_max={self.log2_batch_size_max}")
        if self.patience is not None and not self.early_stopping:
            raise ValueError(f"batch_sweep.patience={self.patience} needs batch_sweep.early_stopping: true")
        if self.grace_period <= self.heartbeat_interval:  # else a live worker's trial is failed between beats
            raise ValueError(f"batch_sweep.grace_period={self.grace_period} must exceed heartbeat_interval="
                             f"{self.heartbeat_interval} (allowed: > {self.heartbeat_interval}; a few intervals)")
        return self


class BatchLandscapesParams(Section):
    """The `batch_landscapes` stage: a surface, shape and Hessian metrics per trained batch size."""
    grid_points: int = Field(default=15, ge=3)         # per axis, on [-extent, extent]²
    extent: float = Field(default=1.0, gt=0)
    n_examples: int = Field(default=250, ge=2)         # seeded test examples (surface and Hessian)
    direction_seed: int = Field(default=0, ge=0)       # the same for every batch size
    norm: Literal["filter", "layer", "weight", "dfilter", "dlayer", "none"] = "filter"
    ignore: Literal["biasbn", "none"] = "biasbn"
    flat_tolerance: float = Field(default=0.1, gt=0)   # loss units, for the flatness measure
    hessian_iterations: int = Field(default=100, ge=1)  # power iteration cap
    trace_samples: int = Field(default=10, ge=2)       # Hutchinson probes
    method: Literal["auto", "naive", "fast", "vmap"] = "auto"


class LotteryParams(Section):
    """The `lottery` stage: iterative magnitude pruning with rewinding and random tickets (paper Fig 5)."""
    dataset: DatasetName = "fashion_mnist"
    model: ModelName = "lenet5"
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(default=2e-3, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    batch_size: int = Field(default=128, ge=1)
    epochs: int = Field(default=3, ge=1)                 # per level; the early-stop point is the min val loss
    patience: int | None = Field(default=None, ge=1)     # stop a level after this many epochs without improvement
    lr_plateau: bool = False
    plateau_factor: float = Field(default=0.1, gt=0, lt=1)
    plateau_patience: int = Field(default=5, ge=0)
    max_train_examples: int | None = Field(default=8000, ge=1)
    train_eval_examples: int | None = Field(default=1000, ge=0)
    levels: int = Field(default=7, ge=1)                 # trained levels, level 0 = dense
    rate: float = Field(default=0.35, ge=0, lt=1)        # fraction of each layer's live weights pruned per level
    output_rate: float | None = Field(default=None, ge=0, lt=1)
    scope: Literal["layer", "global"] = "layer"
    rewind_epoch: int = Field(default=0, ge=0)           # 0: rewind to θ0; e: to the dense run after epoch e
    random_tickets: bool = True

    @model_validator(mode="after")
    def _rewind_within_epochs(self) -> LotteryParams:
        if self.rewind_epoch > self.epochs:
            raise ValueError(f"lottery.rewind_epoch={self.rewind_epoch} is above lottery.epochs={self.epochs}; "
                             "allowed: 0 … epochs")
        return self


class LotteryLandscapesParams(Section):
    """The `lottery_landscapes` stage: masked-direction surfaces of chosen levels (paper Figs 6-7)."""
    levels: list[int] = Field(default=[0, 2, 4, 6], min_length=1)  # each < lottery.levels
    kinds: list[Literal["winning", "random"]] = Field(default=["winning", "random"], min_length=1)
    grid_points: int = Field(default=15, ge=3)         # per axis, on [-extent, extent]²
    extent: float = Field(default=1.0, gt=0)
    clip: bool = True                                  # skip points outside the disk of radius extent
    n_examples: int = Field(default=250, ge=1)         # seeded test examples, the same for every surface
    direction_seed: int = Field(default=0, ge=0)       # the same for every ticket (masked per ticket)
    norm: Literal["filter", "layer", "weight", "dfilter", "dlayer", "none"] = "filter"
    ignore: Literal["biasbn", "none"] = "biasbn"
    shared_z: bool = False                             # one z range on the comparison pages
    method: Literal["auto", "naive", "fast", "vmap"] = "auto"

    @field_validator("levels")
    @classmethod
    def _distinct_levels(cls, value: list[int]) -> list[int]:
        if any(n < 0 for n in value) or len(set(value)) != len(value):
            raise ValueError("expected distinct levels >= 0")
        return sorted(value)

    @field_validator("kinds")
    @classmethod
    def _distinct_kinds(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("expected distinct kinds")
        return value


class Params(Section):
    seed: int = Field(default=0, ge=0)
    device: str = "auto"
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    sample_size: SampleSizeParams = SampleSizeParams()
    batch_sweep: BatchSweepParams = BatchSweepParams()
    batch_landscapes: BatchLandscapesParams = BatchLandscapesParams()
    lottery: LotteryParams = LotteryParams()
    lottery_landscapes: LotteryLandscapesParams = LotteryLandscapesParams()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _datasets_prepared(self) -> Params:
        for section_name in type(self).model_fields:
            section = getattr(self, section_name)
            dataset = getattr(section, "dataset", None)
            if dataset is not None and dataset not in self.data.datasets:
                raise ValueError(f"{section_name}.dataset={dataset!r} is not in data.datasets "
                                 f"{self.data.datasets}: add it there so `prepare` makes it")
        return self


class ParamsError(ValueError):
    """Invalid params: `errors` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.errors = errors
        super().__init__(f"{source}: invalid params\n" + "\n".join(f"  {line}" for line in errors))


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return sorted(model.model_fields)


def format_errors(error: ValidationError, model: type[BaseModel] = Params) -> list[str]:
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        if not key:  # a check across sections: its message names the keys
            lines.append(message)
        elif item["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, item["loc"])
            lines.append(f"{key}: unknown key; allowed keys here: {', '.join(allowed)}")
        else:
            lines.append(f"{key}: got {item.get('input')!r}; {message}")
    return lines


def parse_params(raw: Any, source: str = "params") -> Params:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(source, [f"(top level): got {type(raw).__name__}; expected a mapping of sections"])
    try:
        return Params.model_validate(raw)
    except ValidationError as error:
        raise ParamsError(source, format_errors(error)) from None


def merge(base: dict, overrides: dict) -> dict:
    """`base` with `overrides` merged in, section by section (nested mappings merge, other values replace)."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(str(path), ["file not found"])
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ParamsError(str(path), [f"not valid YAML: {error}"]) from None
    return parse_params(raw, str(path))


assert set(DatasetName.__args__) == set(DATASETS)  # one list of datasets, checked at import
