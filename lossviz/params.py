"""The schema of params.yaml: one pydantic model per section, every key validated (`extra="forbid"`).

The sections that train a model (`train`, `batch_sweep`, `lottery`) share one model of training settings,
`TrainingSettings`: its defaults are `lossviz.training.TrainConfig`'s, its rules across keys are TrainConfig's
own (it builds one to check them), and each section adds its own keys and states where its defaults differ.
Allowed names come from the registries: datasets (`lossviz.data.DATASETS`), models (`lossviz.models.MODELS`),
optimizers (`lossviz.training.OPTIMIZERS`), and the engine's and directions' names (`lossviz.options`: methods,
norms, ignored parameters; kept there so that validating params never imports the engine). The `train` and
`sample_size` sections also take the user's own model and dataset (`lossviz.user_specs`: `package.module:factory`
with `model_kwargs`, a user dataset form with `dataset_kwargs`); only their syntax is checked here, the stage
imports them when it starts.

`load_params(path)` returns a typed `Params` or raises `ParamsError` whose lines each name the key path,
the bad value and what is allowed. Pipelines validate before touching any output.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from lossviz.data import DATASETS
from lossviz.models import MODELS
from lossviz.options import IGNORES, METHODS, NORMS
from lossviz.runtime import check_device_name
from lossviz.training import OPTIMIZERS, TrainConfig
from lossviz.user_specs import MODEL_FORMS, USER_DATASET_FORMS, is_import_spec, is_user_dataset_spec


def one_of(names: Iterable[str]) -> Any:
    """The type of a name from a registry: pydantic checks it, and its error lists the allowed names."""
    return Literal[tuple(names)]


DatasetName = one_of(DATASETS)
ModelName = one_of(MODELS)
OptimizerName = one_of(OPTIMIZERS)
MethodName = one_of(METHODS)
NormName = one_of(NORMS)
IgnoreName = one_of(IGNORES)


def _model_spec(value: str) -> str:
    if value in MODELS or is_import_spec(value):
        return value
    raise ValueError(f"expected {MODEL_FORMS.format(names=', '.join(map(repr, MODELS)))}; your own model: put "
                     "its module in user/ and write user.mymodule:factory")


def _dataset_spec(value: str) -> str:
    if value in DATASETS or is_user_dataset_spec(value):
        return value
    raise ValueError(f"expected a prepared dataset ({', '.join(map(repr, DATASETS))}) or {USER_DATASET_FORMS}")


# A registered model or the user's `package.module:factory`; a prepared dataset or a user dataset form
# (syntax only: the stage imports and reads them, naming the key on error).
ModelSpec = Annotated[str, AfterValidator(_model_spec)]
DatasetSpec = Annotated[str, AfterValidator(_dataset_spec)]
SpecKwargs = dict[str, Any]  # keyword arguments of a model factory or a dataset spec


def _kwargs_only_with_a_spec(section: Any) -> Any:
    """The rule of a section with model/dataset specs (`train`, `sample_size`): keyword arguments only where
    something takes them, a user's model or dataset (not a registered one, not null)."""
    for key, registry, taker in (("model", MODELS, "a package.module:factory model"),
                                 ("dataset", DATASETS, "a user dataset")):
        spec, kwargs = getattr(section, key), getattr(section, f"{key}_kwargs")
        if kwargs and (spec is None or spec in registry):
            why = f"{key} is null (train.{key}_kwargs go with train.{key})" if spec is None else \
                f"{key}={spec!r} takes none"
            raise ValueError(f"{key}_kwargs={kwargs!r} is given, but {why}; allowed: {{}}, or keyword arguments "
                             f"with {taker}")
    return section


# Constrained types for keys whose default a section overrides (the constraint is stated once, here).
LearningRate = Annotated[float, Field(gt=0)]
BatchSize = Annotated[int, Field(ge=1)]
ExampleLimit = Annotated[int, Field(ge=1)] | None  # None: all
EvalExamples = Annotated[int, Field(ge=0)] | None  # None: all; 0: none

_CONFIG_DEFAULTS = {f.name: f.default for f in fields(TrainConfig)}


class Section(BaseModel):
    # strict: `epochs: true` is not 1 and `lr: "fast"` is not a number; finite: `extent: .inf` is refused.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


# Seeds reach torch.Generator.manual_seed and numpy, which take 64-bit integers.
Seed = Annotated[int, Field(ge=0, le=2**63 - 1)]


class DataParams(Section):
    datasets: list[DatasetName] = Field(default=["fashion_mnist"], min_length=1)
    fashion_mnist_dir: str | None = None   # a `<dataset>_dir` per registered dataset (tests check the set)
    cifar10_dir: str | None = None
    download: bool = True
    verify_checksums: bool = True
    val_size: int = Field(default=5000, ge=0)
    normalize: bool = False

    @model_validator(mode="after")
    def _directories_exist(self, info: ValidationInfo) -> DataParams:
        # A configured directory that is missing is an error, never a silent fall-back to another source.
        # Relative directories are relative to the params file's folder (the repository, where stages run).
        base = Path((info.context or {}).get("base_dir") or ".")
        for dataset in DATASETS:
            directory = self.directory_for(dataset)
            if directory is not None and not (base / Path(directory).expanduser()).is_dir():
                raise ValueError(f"{dataset}_dir={directory!r} is not a directory; allowed: a directory holding "
                                 f"the raw {dataset} files, or null (the Debian package, else a download)")
        return self

    def directory_for(self, dataset: str) -> str | None:
        """The user's directory of `dataset`'s raw files (key `<dataset>_dir`), or None."""
        return getattr(self, f"{dataset}_dir")


class TrainingSettings(Section):
    """How a section trains its model: the keys every training section shares. Defaults are TrainConfig's
    (`_CONFIG_DEFAULTS`) unless a section states its own; `TrainConfig.from_settings(section)` is the mapping."""

    dataset: DatasetName = "fashion_mnist"
    model: ModelName = "fashion_cnn"
    optimizer: OptimizerName = _CONFIG_DEFAULTS["optimizer"]
    lr: LearningRate = _CONFIG_DEFAULTS["lr"]
    momentum: float = Field(default=_CONFIG_DEFAULTS["momentum"], ge=0, lt=1)  # sgd only
    weight_decay: float = Field(default=_CONFIG_DEFAULTS["weight_decay"], ge=0)
    epochs: int = Field(default=_CONFIG_DEFAULTS["epochs"], ge=1)
    lr_plateau: bool = _CONFIG_DEFAULTS["lr_plateau"]  # ReduceLROnPlateau on validation loss
    plateau_factor: float = Field(default=_CONFIG_DEFAULTS["plateau_factor"], gt=0, lt=1)
    plateau_patience: int = Field(default=_CONFIG_DEFAULTS["plateau_patience"], ge=0)
    early_stopping: bool = _CONFIG_DEFAULTS["early_stopping"]  # restore the epoch of minimum validation loss
    patience: int | None = Field(default=_CONFIG_DEFAULTS["patience"], ge=1)  # with early_stopping
    max_train_examples: ExampleLimit = None  # train on the first N training examples
    train_eval_examples: EvalExamples = _CONFIG_DEFAULTS["train_eval_examples"]

    @model_validator(mode="after")
    def _valid_training_config(self) -> TrainingSettings:
        # The rules across keys (patience needs early_stopping, ...) are TrainConfig's, written once there;
        # its error starts "key=value", which format_errors prefixes with the section.
        TrainConfig.from_settings(self)
        return self


class TrainParams(TrainingSettings):
    """The `train` stage: one reference model, tracked in MLflow; a registered model or the user's own, on a
    prepared dataset or the user's own (`lossviz.user_specs`)."""

    dataset: DatasetSpec = "fashion_mnist"
    dataset_kwargs: SpecKwargs = {}  # a user dataset's keyword arguments
    model: ModelSpec = "fashion_cnn"
    model_kwargs: SpecKwargs = {}    # a package.module:factory model's keyword arguments
    batch_size: BatchSize = _CONFIG_DEFAULTS["batch_size"]
    lr_plateau: bool = True  # this section's own default (TrainConfig's is False)

    _kwargs_with_a_spec = model_validator(mode="after")(_kwargs_only_with_a_spec)


class SampleSizeParams(Section):
    """The `sample_size` stage: one model, one pair of directions, a surface per number of examples."""
    model: ModelSpec | None = None          # None: train.model and train.model_kwargs (the train stage's checkpoint)
    model_kwargs: SpecKwargs = {}
    dataset: DatasetSpec | None = None      # None: train.dataset and train.dataset_kwargs
    dataset_kwargs: SpecKwargs = {}
    checkpoint: str | None = None           # None: models/train/model.pt; else a state_dict/.t7 file
    normalize: bool | None = None           # None: data.normalize (inputs as the model was trained)
    n_examples: list[int] = Field(default=[1, 10, 100, 250, 1000, 10000], min_length=2)
    grid_points: int = Field(default=21, ge=2)
    extent: float = Field(default=1.0, gt=0)
    clip: bool = True
    batch_size: int | None = Field(default=None, ge=1)
    method: MethodName = "auto"
    auto_tolerance: float = Field(default=0.05, gt=0)
    auto_candidates: list[int] = Field(default=[10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000],
                                       min_length=1)
    auto_pilot_points: int = Field(default=7, ge=2)
    timing_points: int = Field(default=12, ge=0)
    timing_rounds: int = Field(default=3, ge=1)
    adaptive_grid_points: int = Field(default=125, ge=0)  # an adaptive surface on this grid (0: none)
    adaptive_tolerance: float = Field(default=0.05, ge=0)  # ln(loss) units (lossviz.adaptive)
    adaptive_n_examples: int = Field(default=250, ge=2)  # capped at the test set
    adaptive_spot_checks: int = Field(default=100, ge=0)  # interpolated points evaluated to measure the real error

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

    _kwargs_with_a_spec = model_validator(mode="after")(_kwargs_only_with_a_spec)


class BatchSweepParams(TrainingSettings):
    """The `batch_sweep` stage: an Optuna study over the training batch size (seed paper, Figure 4); every
    other training key is shared with the other sections (`TrainingSettings`)."""
    sampler: Literal["grid", "tpe"] = "grid"
    batch_sizes: list[int] = Field(default=[16, 64, 256, 1024, 4000], min_length=1)  # grid
    log2_batch_size_min: int = Field(default=1, ge=0, le=24)   # tpe: batch size = 2**k, k in [min, max]
    log2_batch_size_max: int = Field(default=11, ge=0, le=24)
    n_trials: int = Field(default=8, ge=1)                       # tpe only (the grid runs every point once)
    pruner: Literal["median", "none"] = "median"                # tpe only; the grid never prunes
    # this section's own defaults (TrainConfig's: no plateau, all examples, 10000 for train metrics)
    lr_plateau: bool = True
    max_train_examples: ExampleLimit = 4000
    train_eval_examples: EvalExamples = 2000
    # The converged protocol (stages batch_sweep_converged, batch_landscapes_converged): every batch size trained
    # with early stopping on validation loss (the best epoch's weights), at most this many epochs
    converged_max_epochs: int = Field(default=10, ge=1)
    converged_patience: int = Field(default=2, ge=1)  # epochs without a lower validation loss before it stops
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
            raise ValueError(f"log2_batch_size_min={self.log2_batch_size_min} is above "
                             f"log2_batch_size_max={self.log2_batch_size_max}")
        if self.grace_period <= self.heartbeat_interval:  # else a live worker's trial is failed between beats
            raise ValueError(f"grace_period={self.grace_period} must exceed heartbeat_interval="
                             f"{self.heartbeat_interval} (allowed: > {self.heartbeat_interval}; a few intervals)")
        return self


class BatchLandscapesParams(Section):
    """The `batch_landscapes` stage: a surface, shape and Hessian metrics per trained batch size."""
    grid_points: int = Field(default=15, ge=3)         # per axis, on [-extent, extent]²
    extent: float = Field(default=1.0, gt=0)
    n_examples: int = Field(default=250, ge=2)         # seeded test examples (surface and Hessian)
    direction_seed: Seed = 0                           # the same for every batch size
    norm: NormName = "filter"
    ignore: IgnoreName = "biasbn"
    flat_tolerance: float = Field(default=0.1, gt=0)   # loss units, for the flatness measure
    hessian_iterations: int = Field(default=20, ge=1)  # Lanczos steps (lossviz.curvature)
    trace_samples: int = Field(default=12, ge=2)       # trace products: Hutch++ from 9, Hutchinson below
    method: MethodName = "auto"


class LotteryParams(TrainingSettings):
    """The `lottery` stage: iterative magnitude pruning with rewinding and random tickets (paper Fig 5).
    `epochs` and `patience` are per level."""
    # Every level early-stops at its minimum validation loss (Frankle & Carbin): a fixed setting, not a key.
    early_stopping: ClassVar[bool] = True
    # this section's own defaults (TrainConfig's: fashion_cnn, lr 1e-3, batch 256, all examples, 10000)
    model: ModelName = "lenet5"
    lr: LearningRate = 2e-3
    batch_size: BatchSize = 128
    max_train_examples: ExampleLimit = 8000
    train_eval_examples: EvalExamples = 1000
    levels: int = Field(default=7, ge=1)                 # trained levels, level 0 = dense
    rate: float = Field(default=0.35, ge=0, lt=1)        # fraction of each layer's live weights pruned per level
    output_rate: float | None = Field(default=None, ge=0, lt=1)
    scope: Literal["layer", "global"] = "layer"
    rewind_epoch: int = Field(default=0, ge=0)           # 0: rewind to θ0; e: to the dense run after epoch e
    random_tickets: bool = True

    @model_validator(mode="after")
    def _rewind_within_epochs(self) -> LotteryParams:
        if self.rewind_epoch > self.epochs:
            raise ValueError(f"rewind_epoch={self.rewind_epoch} is above epochs={self.epochs}; "
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
    direction_seed: Seed = 0                           # the same for every ticket (masked per ticket)
    norm: NormName = "filter"
    ignore: IgnoreName = "biasbn"
    shared_z: bool = False                             # one z range on the comparison pages
    method: MethodName = "auto"

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


class LotteryStabilityParams(Section):
    """The `lottery_stability` stage: instability analysis of the lottery tickets (Frankle et al. 2020, linear
    mode connectivity of two copies trained from a rewind point) and planes through checkpoints (Garipov et al.)."""
    levels: list[int] = Field(default=[0, 6], min_length=1)            # each < lottery.levels
    kinds: list[Literal["winning", "random"]] = Field(default=["winning", "random"], min_length=1)
    rewind_epochs: list[int] = Field(default=[0, 1], min_length=1)     # k, each < lottery.epochs
    pairs: int = Field(default=1, ge=1)                # independent pairs of copies per (kind, level, k)
    path_points: int = Field(default=25, ge=3)         # α evenly spaced on [0, 1]
    n_examples: int = Field(default=2000, ge=2)        # seeded test examples of every path
    stable_threshold: float = Field(default=2.0, gt=0)  # error barrier (percentage points) called stable
    planes: list[Literal["copies", "tickets"]] = ["copies", "tickets"]
    plane_grid_points: int = Field(default=11, ge=2)   # per axis
    plane_margin: float = Field(default=0.25, ge=0)    # around the three points, × their larger span
    plane_n_examples: int = Field(default=250, ge=2)
    method: MethodName = "auto"

    @field_validator("levels", "rewind_epochs")
    @classmethod
    def _distinct_non_negative(cls, value: list[int]) -> list[int]:
        if any(n < 0 for n in value) or len(set(value)) != len(value):
            raise ValueError("expected distinct integers >= 0")
        return sorted(value)

    @field_validator("kinds", "planes")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("expected distinct values")
        return value

    @model_validator(mode="after")
    def _tickets_plane_needs_dense_and_both_kinds(self) -> LotteryStabilityParams:
        if "tickets" in self.planes and (0 not in self.levels or len(self.kinds) < 2):
            raise ValueError(f"planes={self.planes}: 'tickets' (winning, random and dense copies) needs level 0 "
                             f"in levels (got {self.levels}) and both kinds (got {self.kinds})")
        return self

class Params(Section):
    seed: Seed = 0
    device: str = "auto"
    data: DataParams = DataParams()
    train: TrainParams = TrainParams()
    sample_size: SampleSizeParams = SampleSizeParams()
    batch_sweep: BatchSweepParams = BatchSweepParams()
    batch_landscapes: BatchLandscapesParams = BatchLandscapesParams()
    lottery: LotteryParams = LotteryParams()
    lottery_landscapes: LotteryLandscapesParams = LotteryLandscapesParams()
    lottery_stability: LotteryStabilityParams = LotteryStabilityParams()

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        return check_device_name(value)

    @model_validator(mode="after")
    def _datasets_prepared(self) -> Params:
        for section_name in type(self).model_fields:
            section = getattr(self, section_name)
            dataset = getattr(section, "dataset", None)
            if dataset in DATASETS and dataset not in self.data.datasets:  # a user's dataset needs no `prepare`
                raise ValueError(f"{section_name}.dataset={dataset!r} is not in data.datasets "
                                 f"{self.data.datasets}: add it there so `prepare` makes it")
        return self

    @model_validator(mode="after")
    def _within_the_lottery_and_the_test_set(self) -> Params:
        """Rules across sections, checked here so that `params check` and every stage agree before any runs."""
        problems = []
        for name in ("lottery_landscapes", "lottery_stability"):
            levels = [level for level in getattr(self, name).levels if level >= self.lottery.levels]
            if levels:
                problems.append(f"{name}.levels: got {levels}; allowed: 0 … {self.lottery.levels - 1} "
                                f"(lottery.levels={self.lottery.levels} trains levels 0 … {self.lottery.levels - 1})")
        late = [k for k in self.lottery_stability.rewind_epochs if k >= self.lottery.epochs]
        if late:  # a copy rewound to the last epoch would have nothing left to train
            problems.append(f"lottery_stability.rewind_epochs: got {late}; allowed: 0 … {self.lottery.epochs - 1} "
                            f"(below lottery.epochs={self.lottery.epochs})")
        sample_dataset = self.sample_size.dataset or self.train.dataset
        for key, dataset, count in (
                ("sample_size.n_examples", sample_dataset, max(self.sample_size.n_examples)),
                ("batch_landscapes.n_examples", self.batch_sweep.dataset, self.batch_landscapes.n_examples),
                ("lottery_landscapes.n_examples", self.lottery.dataset, self.lottery_landscapes.n_examples),
                ("lottery_stability.n_examples", self.lottery.dataset, self.lottery_stability.n_examples)):
            if dataset not in DATASETS:  # a user's dataset: its stage checks the size when it reads it
                continue
            test_size = DATASETS[dataset].test_size
            if count > test_size:
                problems.append(f"{key}: got {count}; allowed: 1 … {test_size} (the {dataset} test set)")
        if problems:
            raise ValueError("\n".join(problems))
        return self


class ParamsError(ValueError):
    """Invalid params: `errors` holds one line per problem."""

    def __init__(self, source: str, errors: list[str]):
        self.errors = errors
        super().__init__(f"{source}: invalid params\n" + "\n".join(f"  {line}" for line in errors))


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The section model that the key path `loc` leads to (None when it leads to no model)."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


def format_errors(error: ValidationError, model: type[BaseModel] = Params) -> list[str]:
    """One line per problem, each naming the key path. A rule across a section's keys says "key=value ...";
    its line becomes "section.key=value ..."."""
    lines = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        section = _model_at(model, item["loc"])
        if not key:  # a check across sections: its message names the keys, one problem a line
            lines.extend(message.splitlines())
        elif item["type"] == "extra_forbidden":
            parent = _model_at(model, item["loc"][:-1])
            allowed = sorted(parent.model_fields) if parent is not None else []
            lines.append(f"{key}: unknown key; allowed keys here: {', '.join(allowed)}")
        elif section is not None and item["type"] == "value_error":
            named = message.split("=", 1)[0]
            lines.append(f"{key}.{message}" if named in section.model_fields else f"{key}: {message}")
        else:
            lines.append(f"{key}: got {item.get('input')!r}; {message}")
    return lines


def parse_params(raw: Any, source: str = "params", base_dir: str | Path | None = None) -> Params:
    """Validate a params mapping; relative directories in it are taken from `base_dir` (default: here)."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ParamsError(source, [f"(top level): got {type(raw).__name__}; expected a mapping of sections"])
    try:
        return Params.model_validate(raw, context={"base_dir": base_dir})
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


class _ParamsLoader(yaml.SafeLoader):
    """YAML as a params file needs it: a key given twice is an error (PyYAML keeps the last silently), and
    `1e-3` is a number (YAML 1.1 wants `1.0e-3`; YAML 1.2 and every user read it as a number)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (lines {seen[key]} and {key_node.start_mark.line + 1}); "
                    "keep one", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


_ParamsLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def read_params_file(path: str | Path) -> Any:
    """The raw contents of a params file (see `_ParamsLoader`), or ParamsError."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(str(path), ["file not found"])
    try:
        return yaml.load(path.read_text(), Loader=_ParamsLoader)  # noqa: S506 (a SafeLoader)
    except yaml.YAMLError as error:
        raise ParamsError(str(path), [f"not valid YAML: {error}"]) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """A params file as the stages read it: every section present (DVC reads them by name: a missing one is
    not silently replaced by defaults), every key valid."""
    raw = read_params_file(path)
    if isinstance(raw, dict) or raw is None:
        missing = [name for name in Params.model_fields if name not in (raw or {})]
        if missing:
            raise ParamsError(str(path), [f"{name}: missing; a params file holds every section "
                                          f"({', '.join(Params.model_fields)}): start from the repository's "
                                          "params.yaml" for name in missing])
    return parse_params(raw, str(path), Path(path).parent)

