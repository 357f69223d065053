"""The one training loop every experiment uses (the `train` stage, the batch-size sweep, lottery tickets).

The data stay in memory as tensors on the device: each epoch draws a permutation from a seeded generator
and slices batches from it, so there is no DataLoader, no per-item work and no worker process. The loop
knows nothing of MLflow or Optuna: after each epoch it hands an `EpochRecord` to the callbacks.

Features, each optional: Adam or SGD; ReduceLROnPlateau on validation loss; a pruning mask
`{parameter name: bool tensor}` whose zeros stay zero (gradients of pruned entries are zeroed, and the mask
is re-applied after every optimizer step because Adam's moments would otherwise regrow them); early
stopping on validation loss (Frankle & Carbin: the early-stop point is the epoch of minimum validation
loss, whose weights are restored, with an optional patience that ends training sooner); and a resume
checkpoint written atomically after every epoch, from which a killed run continues and ends with exactly
the weights of an uninterrupted one (on CPU).

Train metrics are measured like validation and test (eval mode, no dropout, batch-norm running
statistics) on a fixed, seeded subset of `train_eval_examples` training examples, for speed.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from lossviz.checkpoints import (
    capture_rng_states,
    load_training_state,
    restore_rng_states,
    save_training_state,
)
from lossviz.data import Splits, TensorSplit
from lossviz.runtime import configure_cpu, resolve_device, seed_everything

OPTIMIZERS = ("adam", "sgd")
Masks = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Validated on creation; an error names the field, the value and what is allowed.
    These defaults are also the params' (`lossviz.params.TrainingSettings`), where a section names no other."""

    epochs: int = 3
    batch_size: int = 256  # 1 … the whole training set; the last batch of an epoch may be smaller
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = 1e-3
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    lr_plateau: bool = False  # ReduceLROnPlateau on validation loss
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    early_stopping: bool = False  # restore the weights of the epoch with the lowest validation loss
    patience: int | None = None  # with early_stopping: stop after this many epochs without improvement
    seed: int = 0
    device: str = "auto"
    train_eval_examples: int | None = 10_000  # subset for train metrics; None: all; 0: no train metrics
    eval_batch_size: int = 2048
    channels_last: bool = True  # faster convolutions on CPU (oneDNN) and on tensor-core GPUs
    progress: bool = True

    def __post_init__(self) -> None:
        def require(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; allowed: {allowed}")

        require(self.epochs >= 1, "epochs", "an integer >= 1")
        require(self.batch_size >= 1, "batch_size", "an integer >= 1 (up to the training-set size)")
        require(self.optimizer in OPTIMIZERS, "optimizer", ", ".join(OPTIMIZERS))
        require(self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0")
        require(0 <= self.momentum < 1, "momentum", "0 <= momentum < 1")
        require(self.weight_decay >= 0, "weight_decay", "a number >= 0")
        require(0 < self.plateau_factor < 1, "plateau_factor", "0 < factor < 1")
        require(self.plateau_patience >= 0, "plateau_patience", "an integer >= 0")
        require(self.patience is None or self.patience >= 1, "patience", "null or an integer >= 1")
        require(self.patience is None or self.early_stopping, "patience",
                "null unless early_stopping is true (patience is when early stopping ends training)")
        require(self.seed >= 0, "seed", "an integer >= 0")
        require(self.train_eval_examples is None or self.train_eval_examples >= 0, "train_eval_examples",
                "null (all) or an integer >= 0")
        require(self.eval_batch_size >= 1, "eval_batch_size", "an integer >= 1")
        resolve_device(self.device)  # raises naming `device` and the allowed spellings

    @classmethod
    def fields_in(cls, settings: Any) -> dict[str, Any]:
        """The config's fields that `settings` (e.g. a params section) holds as attributes, by name: the one
        mapping from settings to a config (a sweep stores this dict and rebuilds its configs from it)."""
        return {f.name: getattr(settings, f.name) for f in fields(cls) if hasattr(settings, f.name)}

    @classmethod
    def from_settings(cls, settings: Any, **overrides: Any) -> TrainConfig:
        """A config from `fields_in(settings)`, the rest left at their defaults; `overrides` win."""
        return cls(**{**cls.fields_in(settings), **overrides})


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch produced. Losses are mean cross-entropy, accuracies fractions in [0, 1]; a metric
    is None when its split was not given (or train metrics are off)."""

    epoch: int  # 1-based
    iteration: int  # optimizer steps taken so far
    lr: float  # the learning rate this epoch trained with
    seconds: float  # wall time of this epoch (training + evaluation)
    train_loss: float | None = None
    train_acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None

    def metrics(self) -> dict[str, float]:
        """The measured numbers, ready for a tracker (e.g. `mlflow.log_metrics(r.metrics(), step=r.epoch)`)."""
        return {key: float(value) for key, value in asdict(self).items()
                if key != "epoch" and value is not None}


class EpochCallback(Protocol):
    """Called after every epoch, once its checkpoint is written. `replayed` is True for epochs restored
    from a resume checkpoint, replayed first so that a new tracker run still gets every epoch. A callback
    may raise to stop training (e.g. optuna.TrialPruned); the checkpoint already holds the epoch."""

    def __call__(self, record: EpochRecord, replayed: bool) -> None: ...


@dataclass
class TrainResult:
    history: list[EpochRecord]
    final: EpochRecord  # the metrics of the returned weights (the best epoch's with early stopping)
    best_epoch: int | None  # epoch of minimum validation loss (None without a validation split)
    best_iteration: int | None
    stopped_epoch: int  # last epoch trained
    stopped_early: bool  # True when patience ended training before `epochs`
    iterations: int  # optimizer steps taken in all
    resumed_from_epoch: int | None = None  # the epoch a resume checkpoint had finished, if any
    seconds: float = 0.0  # wall time of this call

    def summary(self) -> dict[str, Any]:
        """Headline numbers as plain values (for metrics files)."""
        return {**{f"final_{key}": value for key, value in self.final.metrics().items()
                   if key not in ("seconds", "iteration", "lr")},
                "best_epoch": self.best_epoch, "best_iteration": self.best_iteration,
                "stopped_epoch": self.stopped_epoch, "stopped_early": self.stopped_early,
                "iterations": self.iterations}


@dataclass
class _Best:
    epoch: int
    iteration: int
    val_loss: float
    state_dict: dict[str, torch.Tensor] | None = field(default=None, repr=False)


@dataclass
class _Progress:
    """Where a run stands between epochs: everything besides model, optimizer, scheduler and RNGs that
    a resume checkpoint must carry."""

    history: list[EpochRecord] = field(default_factory=list)
    best: _Best | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    iteration: int = 0

    def record(self, record: EpochRecord, model: nn.Module, config: TrainConfig) -> None:
        """Add an epoch; track the minimum validation loss (with its weights for early stopping)."""
        self.history.append(record)
        self.iteration = record.iteration
        if record.val_loss is None:
            return
        best = self.best
        # a NaN best (a diverged first epoch) must not block every later improvement
        if best is None or record.val_loss < best.val_loss or math.isnan(best.val_loss):
            weights = ({key: value.detach().clone() for key, value in model.state_dict().items()}
                       if config.early_stopping else None)
            self.best = _Best(record.epoch, record.iteration, record.val_loss, weights)
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        self.stopped_early = (config.patience is not None and record.epoch < config.epochs
                              and self.epochs_without_improvement >= config.patience)

    def to_checkpoint(self) -> dict[str, Any]:
        return {"history": [asdict(item) for item in self.history],
                "best": vars(self.best).copy() if self.best is not None else None,
                "epochs_without_improvement": self.epochs_without_improvement,
                "stopped_early": self.stopped_early, "iteration": self.iteration}

    @classmethod
    def from_checkpoint(cls, state: Mapping[str, Any]) -> _Progress:
        return cls(history=[EpochRecord(**record) for record in state["history"]],
                   best=_Best(**state["best"]) if state["best"] is not None else None,
                   epochs_without_improvement=state["epochs_without_improvement"],
                   stopped_early=state["stopped_early"], iteration=state["iteration"])


# ------------------------------------------------------------------------------------------ helpers

def check_masks(model: nn.Module, masks: Masks) -> dict[str, torch.Tensor]:
    """Check a mask dict against the model: known parameter names, same shapes, bool dtype."""
    parameters = dict(model.named_parameters())
    checked = {}
    for name, mask in masks.items():
        if name not in parameters:
            raise ValueError(f"mask for {name!r}: the model has no such parameter; parameters: "
                             f"{', '.join(list(parameters)[:8])}...")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask for {name!r}: expected a bool tensor, got "
                             f"{getattr(mask, 'dtype', type(mask).__name__)}")
        if mask.shape != parameters[name].shape:
            raise ValueError(f"mask for {name!r}: shape {tuple(mask.shape)} does not match the parameter's "
                             f"{tuple(parameters[name].shape)}")
        checked[name] = mask
    return checked


@torch.no_grad()
def evaluate(model: nn.Module, split: TensorSplit, batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of `model` on `split`, in eval mode, without gradients.
    The split must already be on the model's device. The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), dtype=torch.float64, device=split.x.device)
    correct = torch.zeros((), dtype=torch.int64, device=split.x.device)
    for start in range(0, len(split), batch_size):
        logits = model(split.x[start:start + batch_size])
        targets = split.y[start:start + batch_size]
        total_loss += F.cross_entropy(logits, targets, reduction="sum").double()
        correct += (logits.argmax(1) == targets).sum()
    model.train(was_training)
    count = max(len(split), 1)
    return total_loss.item() / count, correct.item() / count


def _derived_seeds(seed: int) -> tuple[int, int]:
    """Independent seeds for the data order and for the global RNGs (dropout), both from `seed`, so the
    shuffle never reuses the stream that initialized or drops out the model."""
    order_seed, global_seed = np.random.SeedSequence(seed).generate_state(2)
    return int(order_seed), int(global_seed)


def _to_device(split: TensorSplit | None, device: torch.device, channels_last: bool) -> TensorSplit | None:
    if split is None:
        return None
    x = split.x.to(device)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return TensorSplit(x, split.y.to(device))


def _train_subset(split: TensorSplit, examples: int | None, seed: int) -> TensorSplit | None:
    if examples == 0:
        return None
    if examples is None or examples >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(len(split), generator=generator)[:examples].sort().values.to(split.x.device)
    return TensorSplit(split.x.index_select(0, chosen), split.y.index_select(0, chosen))


def _make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    # foreach: one multi-tensor kernel per update instead of a Python loop over parameters.
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                foreach=True)
    return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, foreach=True)


def _fingerprint(model: nn.Module, config: TrainConfig, splits: Splits, masks: Masks) -> dict[str, Any]:
    """What must match for a resume checkpoint to belong to this run: the config (less the progress bar),
    the model's parameter shapes, the data sizes and sums, the masks' live counts."""
    settings = {key: value for key, value in asdict(config).items() if key != "progress"}
    return {
        "config": settings,
        "model": type(model).__name__,
        "parameters": {name: list(p.shape) for name, p in model.named_parameters()},
        "data": splits.fingerprint(),
        "masks": {name: int(mask.sum()) for name, mask in sorted(masks.items())},
    }


def _describe_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> str:
    differences = []
    for section in current:
        if saved.get(section) != current[section]:
            if isinstance(current[section], Mapping) and isinstance(saved.get(section), Mapping):
                keys = [key for key in current[section] if saved[section].get(key) != current[section][key]]
                keys += [key for key in saved[section] if key not in current[section]]
                differences.append(f"{section}: {', '.join(map(str, keys))}")
            else:
                differences.append(section)
    return "; ".join(differences)


# -------------------------------------------------------------------------------------------- train

def train(model: nn.Module, splits: Splits, config: TrainConfig | None = None, *,
          masks: Masks | None = None, callbacks: Sequence[EpochCallback] = (),
          checkpoint_path: str | Path | None = None) -> TrainResult:
    """Train `model` in place on `splits.train`, measuring `splits.val` and `splits.test` (either may be
    None) after every epoch, and return the history and headline numbers.

    The model arrives initialized (seed before building it); training itself draws every random number
    from `config.seed`. With `checkpoint_path`, the full training state is written there after every
    epoch, and an existing file is resumed from (it must come from the same config, model, data and
    masks). A finished checkpoint returns at once. The model is left on the training device in the
    standard memory layout, holding the final (or, with early stopping, the best) weights.
    """
    started = time.perf_counter()
    config = config or TrainConfig()
    configure_cpu()
    device = resolve_device(config.device)
    masks = check_masks(model, masks or {})
    _check_splits(splits, config)
    if device.type == "cuda":  # the deterministic convolution algorithms, so that a seed fixes the run
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    run = _TrainingRun(model, splits, config, masks, device, checkpoint_path)
    history_before = run.resume_or_seed(callbacks)
    progress = tqdm(total=config.epochs * run.steps_per_epoch, initial=history_before * run.steps_per_epoch,
                    disable=not config.progress, unit="step", desc=f"train {type(model).__name__}",
                    mininterval=1.0, dynamic_ncols=True)
    model.train()
    try:
        while len(run.progress.history) < config.epochs and not run.progress.stopped_early:
            record = run.epoch(progress)
            progress.set_postfix(_postfix(record), refresh=False)
            for callback in callbacks:
                callback(record, False)
    finally:
        progress.close()
    return run.result(started, resumed_from=history_before or None)


def _check_splits(splits: Splits, config: TrainConfig) -> None:
    if not 1 <= config.batch_size <= len(splits.train):
        raise ValueError(f"batch_size={config.batch_size} is not valid; allowed: 1 … {len(splits.train)} "
                         "(the training-set size)")
    if splits.val is None and (config.lr_plateau or config.early_stopping):
        raise ValueError("lr_plateau and early_stopping need a validation split (val_size > 0); "
                         f"got lr_plateau={config.lr_plateau}, early_stopping={config.early_stopping}")


class _TrainingRun:
    """One training run's state: the model on its device, the data, the masks, optimizer, scheduler, the
    data-order generator and the history; saved after every epoch when there is a checkpoint path."""

    def __init__(self, model: nn.Module, splits: Splits, config: TrainConfig, masks: Masks, device: torch.device,
                 checkpoint_path: str | Path | None):
        self.model, self.config = model, config
        self.fingerprint = _fingerprint(model, config, splits, masks)
        memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        model.to(device=device, memory_format=memory_format)
        self.train_data = _to_device(splits.train, device, config.channels_last)
        self.val_data = _to_device(splits.val, device, config.channels_last)
        self.test_data = _to_device(splits.test, device, config.channels_last)
        order_seed, self.global_seed = _derived_seeds(config.seed)
        self.train_eval_data = _train_subset(self.train_data, config.train_eval_examples, order_seed + 1)
        self.live = [(parameter, masks[name].to(device=device, dtype=parameter.dtype))
                     for name, parameter in model.named_parameters() if name in masks]
        self.optimizer = _make_optimizer(model, config)
        self.scheduler = (torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="min", factor=config.plateau_factor, patience=config.plateau_patience)
            if config.lr_plateau else None)
        self.data_order = torch.Generator().manual_seed(order_seed)
        self.progress = _Progress()
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.steps_per_epoch = math.ceil(len(self.train_data) / config.batch_size)

    def resume_or_seed(self, callbacks: Sequence[EpochCallback]) -> int:
        """Continue from the checkpoint when there is one (replaying its epochs to the callbacks), else seed
        the run; then apply the masks (w = m ⊙ w from the first step). Returns the epochs already done."""
        path = self.checkpoint_path
        if path is not None and path.exists():
            state = load_training_state(path)
            if state["fingerprint"] != self.fingerprint:
                raise ValueError(f"{path}: resume checkpoint belongs to a different run (differs in "
                                 f"{_describe_mismatch(state['fingerprint'], self.fingerprint)}); delete it or "
                                 "choose another checkpoint path")
            self.model.load_state_dict(state["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None:
                self.scheduler.load_state_dict(state["scheduler"])
            restore_rng_states(state["rng"], self.data_order)
            self.progress = _Progress.from_checkpoint(state)
            for record in self.progress.history:
                for callback in callbacks:
                    callback(record, True)
        else:
            seed_everything(self.global_seed)
        with torch.no_grad():
            for parameter, mask in self.live:
                parameter.mul_(mask)
        return len(self.progress.history) if path is not None else 0

    def epoch(self, progress: tqdm) -> EpochRecord:
        """Train one epoch, measure the splits, step the scheduler, record and save."""
        config, run = self.config, self.progress
        epoch_started = time.perf_counter()
        lr = self.optimizer.param_groups[0]["lr"]
        steps = _train_epoch(self.model, self.optimizer, self.train_data, config.batch_size, self.data_order,
                             self.live, progress)
        train_loss, train_acc = _measure(self.model, self.train_eval_data, config.eval_batch_size)
        val_loss, val_acc = _measure(self.model, self.val_data, config.eval_batch_size)
        test_loss, test_acc = _measure(self.model, self.test_data, config.eval_batch_size)
        record = EpochRecord(epoch=len(run.history) + 1, iteration=run.iteration + steps, lr=lr,
                             seconds=time.perf_counter() - epoch_started,
                             train_loss=train_loss, train_acc=train_acc, val_loss=val_loss,
                             val_acc=val_acc, test_loss=test_loss, test_acc=test_acc)
        if self.scheduler is not None:
            self.scheduler.step(record.val_loss)
        run.record(record, self.model, config)
        if self.checkpoint_path is not None:
            save_training_state(self.checkpoint_path, {
                "fingerprint": self.fingerprint, "state_dict": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "rng": capture_rng_states(self.data_order), **run.to_checkpoint()})
        return record

    def result(self, started: float, resumed_from: int | None) -> TrainResult:
        """The headline numbers; with early stopping the model is given its best weights back."""
        run = self.progress
        best, final = run.best, run.history[-1]
        if self.config.early_stopping and best is not None:
            self.model.load_state_dict(best.state_dict)
            final = run.history[best.epoch - 1]
        self.model.to(memory_format=torch.contiguous_format)
        return TrainResult(history=run.history, final=final,
                           best_epoch=best.epoch if best else None, best_iteration=best.iteration if best else None,
                           stopped_epoch=len(run.history), stopped_early=run.stopped_early, iterations=run.iteration,
                           resumed_from_epoch=resumed_from, seconds=time.perf_counter() - started)


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, data: TensorSplit, batch_size: int,
                 data_order: torch.Generator, live: list[tuple[nn.Parameter, torch.Tensor]],
                 progress: tqdm) -> int:
    """One pass over `data` in a fresh seeded order; returns the number of optimizer steps."""
    order = torch.randperm(len(data), generator=data_order).to(data.x.device)
    steps = 0
    for start in range(0, len(data), batch_size):
        batch = order[start:start + batch_size]
        loss = F.cross_entropy(model(data.x.index_select(0, batch)), data.y.index_select(0, batch))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if live:
            _apply_masks(live, gradients=True)
        optimizer.step()
        if live:
            _apply_masks(live, gradients=False)
        steps += 1
        progress.update()
    return steps


@torch.no_grad()
def _apply_masks(live: list[tuple[nn.Parameter, torch.Tensor]], gradients: bool) -> None:
    for parameter, mask in live:
        target = parameter.grad if gradients else parameter
        if target is not None:
            target.mul_(mask)


def _measure(model: nn.Module, split: TensorSplit | None, batch_size: int) -> tuple[float | None, float | None]:
    return evaluate(model, split, batch_size) if split is not None else (None, None)


def _postfix(record: EpochRecord) -> dict[str, str]:
    shown = {"epoch": str(record.epoch)}
    for key in ("train_loss", "val_loss", "val_acc", "test_acc"):
        value = getattr(record, key)
        if value is not None:
            shown[key] = f"{value:.4f}"
    return shown
