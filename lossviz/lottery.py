"""Iterative magnitude pruning (IMP, Frankle & Carbin's lottery tickets) and the random-ticket control.

Owns the level loop. Level 0 trains the dense network from θ0 (saved before any training, never re-made by
re-seeding); level k starts from m_k ⊙ θ0 (biases and BatchNorm: θ0 as they were), or from m_k ⊙ θ_e when
`rewind_epoch=e` asks for late rewinding to the dense run's weights after epoch e; it trains with
`lossviz.training.train` under the mask (pruned weights stay zero), early-stopping on the validation split,
records test accuracy at the early-stop point, the early-stop iteration and the per-layer density, then
prunes `rate` of each layer's live weights by magnitude (`lossviz.pruning.magnitude_prune`) for level k+1.
The random tickets train, per level, a random mask with the winning mask's exact per-layer live counts,
from the same θ0, with the same training seed (so the mask is the only difference). Level 0's random
ticket is the dense network itself: its mask and training are identical to the winning level 0, so it is
copied (marked `shared_with: "winning"`), not trained twice.

On disk (`out_dir`), the layout the `lottery` stage publishes:

    theta0.pt                       the initial weights, {"state_dict": ...}
    rewind.pt                       θ_e, only with rewind_epoch > 0
    imp.json                        what the directory belongs to (configs, model, data); a mismatch refuses
    <kind>/level_<NN>/mask.pt       the mask dict {name: bool tensor}
    <kind>/level_<NN>/model.pt      the trained weights at the early-stop point, {"state_dict": ..., meta}
    <kind>/level_<NN>/result.json   `LevelResult`: written last, it marks the level as finished

Resume: finished levels (result.json present) are skipped, their files left untouched, and reported to the
callbacks with `replayed=True`; the level in progress resumes from its per-epoch training checkpoint in
`checkpoint_dir` (when given). No MLflow here: progress goes through `LotteryCallbacks`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from lossviz.checkpoints import atomic_save, atomic_write, cpu_state_dict, load_checkpoint, load_state_dict
from lossviz.data import Splits
from lossviz.pruning import (
    Mask,
    density,
    full_mask,
    magnitude_prune,
    mask_to_cpu,
    masked_state,
    random_mask_like,
)
from lossviz.training import EpochRecord, TrainConfig, TrainResult, train

KINDS = ("winning", "random")
SCOPES = ("layer", "global")
FORMAT = "lossviz.imp/1"


def level_name(level: int) -> str:
    return f"level_{level:02d}"


def level_dir(out_dir: str | Path, kind: str, level: int) -> Path:
    return Path(out_dir) / kind / level_name(level)


@dataclass(frozen=True)
class IMPConfig:
    """The pruning schedule. Validated on creation; an error names the field, the value and what is allowed."""

    levels: int = 35  # trained levels, the dense network being level 0 (so levels − 1 prunes)
    rate: float = 0.1  # fraction of each layer's live weights pruned per level (of all, with scope=global)
    output_rate: float | None = None  # the output layer's own rate (Frankle & Carbin: rate / 2)
    scope: str = "layer"  # layer (the seed paper) | global (ResNets/VGG in Frankle & Carbin)
    rewind_epoch: int = 0  # 0: rewind to θ0; e > 0: to the dense run's weights after epoch e
    random_tickets: bool = True  # also train the random-mask control at every level
    seed: int = 0  # seed of the random masks (level k draws from SeedSequence([seed, k]))

    def __post_init__(self) -> None:
        def require(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is not valid; allowed: {allowed}")

        require(self.levels >= 1, "levels", "an integer >= 1 (level 0 is the dense network)")
        require(0 <= self.rate < 1, "rate", "0 <= rate < 1")
        require(self.output_rate is None or 0 <= self.output_rate < 1, "output_rate", "null or 0 <= rate < 1")
        require(self.scope in SCOPES, "scope", ", ".join(SCOPES))
        require(self.rewind_epoch >= 0, "rewind_epoch", "an integer >= 0 (0: rewind to θ0)")
        require(self.seed >= 0, "seed", "an integer >= 0")


@dataclass
class LevelResult:
    """One trained ticket. Accuracies are fractions in [0, 1]; the early-stop point is the epoch of minimum
    validation loss (with early stopping on), whose weights are kept and whose test accuracy is reported."""

    kind: str
    level: int
    remaining: float  # P_m: live fraction of the prunable weights
    alive: int
    size: int
    layer_density: dict[str, float]
    layer_alive: dict[str, int]
    test_acc: float | None
    test_loss: float | None
    val_acc: float | None
    val_loss: float | None
    early_stop_epoch: int
    early_stop_iteration: int
    epochs_trained: int
    iterations: int
    stopped_early: bool
    seconds: float
    start: str  # "theta0" or "rewind_epoch_<e>"
    shared_with: str | None = None  # "winning" for random level 0, which is the same dense run
    history: list[dict[str, float]] = field(default_factory=list)  # every epoch's metrics, with "epoch"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> LevelResult:
        return cls(**json.loads(text))

    @classmethod
    def load(cls, directory: str | Path) -> LevelResult:
        return cls.from_json((Path(directory) / "result.json").read_text())


@dataclass
class LotteryCallbacks:
    """Hooks for trackers and tests, all optional. `replayed` is True for work found finished on disk (a
    resumed run) or, for epochs, restored from a training checkpoint."""

    level_start: Callable[[str, int, nn.Module, Mask], None] | None = None  # model holds the start weights
    epoch: Callable[[str, int, EpochRecord, bool], None] | None = None
    level_end: Callable[[str, int, LevelResult, Path, bool], None] | None = None


def write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, lambda stream: stream.write(text.encode()))


def load_mask(path: str | Path) -> Mask:
    blob = load_checkpoint(path)
    if not isinstance(blob, Mapping) or not all(isinstance(v, torch.Tensor) and v.dtype == torch.bool
                                                for v in blob.values()):
        raise ValueError(f"{path}: not a mask file ({{name: bool tensor}})")
    return dict(blob)


def random_mask_generator(seed: int, level: int) -> torch.Generator:
    """The generator of level `level`'s random mask: independent per level, fixed by (seed, level)."""
    state = int(np.random.SeedSequence([seed, level]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(state % (2**63))


def expected_random_mask(winning_mask: Mask, seed: int, level: int) -> Mask:
    return random_mask_like(mask_to_cpu(winning_mask), random_mask_generator(seed, level))


def _identity(model: nn.Module, splits: Splits, config: TrainConfig, imp: IMPConfig) -> dict[str, Any]:
    return {"format": FORMAT,
            "imp": asdict(imp),
            "train": {k: v for k, v in asdict(config).items() if k != "progress"},
            "model": type(model).__name__,
            "parameters": {name: list(p.shape) for name, p in model.named_parameters()},
            "data": splits.fingerprint()}


class Lottery:
    """The IMP run over one output directory. `run()` does everything; the pieces are public for tests."""

    def __init__(self, make_model: Callable[[], nn.Module], splits: Splits, config: TrainConfig, imp: IMPConfig,
                 out_dir: str | Path, *, checkpoint_dir: str | Path | None = None,
                 callbacks: LotteryCallbacks | None = None):
        if splits.val is None:
            raise ValueError("IMP early-stops on a validation split: give splits with val (val_size > 0)")
        if imp.rewind_epoch > config.epochs:
            raise ValueError(f"rewind_epoch={imp.rewind_epoch} is not valid; allowed: 0 … epochs "
                             f"({config.epochs})")
        self.make_model, self.splits, self.config, self.imp = make_model, splits, config, imp
        self.out_dir = Path(out_dir)
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else None
        self.callbacks = callbacks or LotteryCallbacks()
        self.theta0: dict[str, torch.Tensor] | None = None
        self.start_state: dict[str, torch.Tensor] | None = None

    # -- setup --------------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """θ0 (made once and saved before any training), the directory's identity, the rewind point."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        model = self.make_model()
        identity = _identity(model, self.splits, self.config, self.imp)
        identity_path = self.out_dir / "imp.json"
        if identity_path.exists():
            saved = json.loads(identity_path.read_text())
            if saved != json.loads(json.dumps(identity)):
                differs = sorted(key for key in identity if saved.get(key) != json.loads(json.dumps(identity[key])))
                raise ValueError(f"{self.out_dir}: holds another IMP run (differs in {', '.join(differs)}); "
                                 "delete it or choose another directory")
        else:
            write_text_atomic(identity_path, json.dumps(identity, indent=2, sort_keys=True) + "\n")
        theta0_path = self.out_dir / "theta0.pt"
        if not theta0_path.exists():
            atomic_save({"state_dict": cpu_state_dict(model), "what": "theta0"}, theta0_path)
        self.theta0 = load_state_dict(theta0_path)
        self.start_state = self.theta0
        if self.imp.rewind_epoch > 0:
            self.start_state = self._rewind_state()

    def _rewind_state(self) -> dict[str, torch.Tensor]:
        """θ_e: the dense network after `rewind_epoch` epochs of exactly level 0's training (same config,
        seed and data order; the plateau scheduler only acts between epochs and early stopping only
        restores weights at the end, so a run of e epochs without it passes through the same weights)."""
        path = self.out_dir / "rewind.pt"
        if not path.exists():
            model = self._model_at(self.theta0)
            config = replace(self.config, epochs=self.imp.rewind_epoch, early_stopping=False, patience=None)
            checkpoint = self.checkpoint_dir / "rewind.pt" if self.checkpoint_dir else None
            result = train(model, self.splits, config, checkpoint_path=checkpoint)
            atomic_save({"state_dict": cpu_state_dict(model), "what": "rewind", "epoch": self.imp.rewind_epoch,
                         "iteration": result.iterations}, path)
            if checkpoint is not None:
                checkpoint.unlink(missing_ok=True)
        return load_state_dict(path)

    def _model_at(self, state: Mapping[str, torch.Tensor]) -> nn.Module:
        model = self.make_model()
        model.load_state_dict(dict(state))
        return model

    # -- one level ----------------------------------------------------------------------------------------
    def start_weights(self, level: int, mask: Mask) -> dict[str, torch.Tensor]:
        """Level `level`'s starting point: mask ⊙ θ0 (or ⊙ θ_e when rewinding late; level 0 is always θ0)."""
        base = self.theta0 if level == 0 else self.start_state
        return masked_state(base, mask)

    def _start_label(self, level: int) -> str:
        return "theta0" if level == 0 or self.imp.rewind_epoch == 0 else f"rewind_epoch_{self.imp.rewind_epoch}"

    def finished(self, kind: str, level: int) -> bool:
        return (level_dir(self.out_dir, kind, level) / "result.json").is_file()

    def train_level(self, kind: str, level: int, mask: Mask) -> LevelResult:
        directory = level_dir(self.out_dir, kind, level)
        if self.finished(kind, level):
            saved = load_mask(directory / "mask.pt")
            if not all(torch.equal(saved[name], mask[name].cpu()) for name in mask) or set(saved) != set(mask):
                raise ValueError(f"{directory}: its mask differs from the one this run computes; "
                                 f"delete {self.out_dir} to start afresh")
            result = LevelResult.load(directory)
            self._emit_end(kind, level, result, directory, True)
            return result
        model = self._model_at(self.start_weights(level, mask))
        if self.callbacks.level_start:
            self.callbacks.level_start(kind, level, model, mask)
        epoch_callbacks = []
        if self.callbacks.epoch:
            epoch_callback = self.callbacks.epoch
            epoch_callbacks.append(lambda record, replayed: epoch_callback(kind, level, record, replayed))
        checkpoint = (self.checkpoint_dir / f"{kind}-{level_name(level)}.pt") if self.checkpoint_dir else None
        trained = train(model, self.splits, self.config, masks=mask, callbacks=epoch_callbacks,
                        checkpoint_path=checkpoint)
        result = self._result(kind, level, mask, trained)
        self._write_level(directory, mask, cpu_state_dict(model), result)
        if checkpoint is not None:
            checkpoint.unlink(missing_ok=True)
        self._emit_end(kind, level, result, directory, False)
        return result

    def _result(self, kind: str, level: int, mask: Mask, trained: TrainResult) -> LevelResult:
        dens = density(mask)
        final = trained.final
        return LevelResult(
            kind=kind, level=level, remaining=dens["total"], alive=dens["alive"], size=dens["size"],
            layer_density=dens["layers"], layer_alive={name: int(keep.sum()) for name, keep in mask.items()},
            test_acc=final.test_acc, test_loss=final.test_loss, val_acc=final.val_acc, val_loss=final.val_loss,
            early_stop_epoch=final.epoch, early_stop_iteration=final.iteration,
            epochs_trained=trained.stopped_epoch, iterations=trained.iterations,
            stopped_early=trained.stopped_early, seconds=trained.seconds, start=self._start_label(level),
            history=[{"epoch": record.epoch, **record.metrics()} for record in trained.history])

    def _write_level(self, directory: Path, mask: Mask, state: dict[str, torch.Tensor],
                     result: LevelResult) -> None:
        atomic_save(mask_to_cpu(mask), directory / "mask.pt")
        atomic_save({"state_dict": state, "kind": result.kind, "level": result.level,
                     "remaining": result.remaining, "test_acc": result.test_acc,
                     "epoch": result.early_stop_epoch, "iteration": result.early_stop_iteration},
                    directory / "model.pt")
        write_text_atomic(directory / "result.json", result.to_json())  # last: marks the level finished

    def _emit_end(self, kind: str, level: int, result: LevelResult, directory: Path, replayed: bool) -> None:
        # epochs not trained in this call (found finished, or shared with winning level 0) are replayed
        if (replayed or result.shared_with) and self.callbacks.epoch:
            for record in result.history:
                self.callbacks.epoch(kind, level, EpochRecord(**record), True)
        if self.callbacks.level_end:
            self.callbacks.level_end(kind, level, result, directory, replayed)

    # -- the loops ----------------------------------------------------------------------------------------
    def run_winning(self) -> list[LevelResult]:
        mask = full_mask(self.make_model())
        results = []
        bar = tqdm(range(self.imp.levels), desc="IMP winning", unit="level", disable=not self.config.progress)
        for level in bar:
            result = self.train_level("winning", level, mask)
            results.append(result)
            bar.set_postfix(P_m=f"{100 * result.remaining:.1f}%", test_acc=f"{result.test_acc:.4f}",
                            refresh=False)
            if level + 1 < self.imp.levels:
                trained = load_state_dict(level_dir(self.out_dir, "winning", level) / "model.pt")
                mask = magnitude_prune(trained, mask, self.imp.rate, self.imp.output_rate, self.imp.scope)
        bar.close()
        return results

    def run_random(self) -> list[LevelResult]:
        results = []
        bar = tqdm(range(self.imp.levels), desc="IMP random", unit="level", disable=not self.config.progress)
        for level in bar:
            winning_mask = load_mask(level_dir(self.out_dir, "winning", level) / "mask.pt")
            if level == 0:
                result = self._share_dense_level()
            else:
                result = self.train_level("random", level, expected_random_mask(winning_mask, self.imp.seed, level))
            results.append(result)
            bar.set_postfix(P_m=f"{100 * result.remaining:.1f}%", test_acc=f"{result.test_acc:.4f}",
                            refresh=False)
        bar.close()
        return results

    def _share_dense_level(self) -> LevelResult:
        """Random level 0 = winning level 0: the full mask, θ0, the same seed: the same run, not redone."""
        directory = level_dir(self.out_dir, "random", 0)
        if self.finished("random", 0):
            result = LevelResult.load(directory)
            self._emit_end("random", 0, result, directory, True)
            return result
        source = level_dir(self.out_dir, "winning", 0)
        result = replace(LevelResult.load(source), kind="random", shared_with="winning")
        self._write_level(directory, load_mask(source / "mask.pt"), load_state_dict(source / "model.pt"), result)
        self._emit_end("random", 0, result, directory, False)
        return result

    def run(self) -> dict[str, list[LevelResult]]:
        self.prepare()
        results = {"winning": self.run_winning()}
        if self.imp.random_tickets:
            results["random"] = self.run_random()
        return results


def run_lottery(make_model: Callable[[], nn.Module], splits: Splits, config: TrainConfig, imp: IMPConfig,
                out_dir: str | Path, *, checkpoint_dir: str | Path | None = None,
                callbacks: LotteryCallbacks | None = None) -> dict[str, list[LevelResult]]:
    """Run (or resume) IMP and its random-ticket control into `out_dir` (layout: module docstring).

    `make_model()` builds the architecture; its weights the first time are θ0 (seed before calling, or
    build deterministically); later calls only provide the structure. `config` trains every level (use
    early_stopping=True for the Frankle & Carbin early-stop point). Returns the results per kind.
    """
    return Lottery(make_model, splits, config, imp, out_dir, checkpoint_dir=checkpoint_dir,
                   callbacks=callbacks).run()


def load_results(out_dir: str | Path, kinds: Sequence[str] = KINDS) -> dict[str, list[LevelResult]]:
    """The finished levels in `out_dir`, per kind, in level order."""
    results: dict[str, list[LevelResult]] = {}
    for kind in kinds:
        directories = sorted((Path(out_dir) / kind).glob("level_*"))
        found = [LevelResult.load(d) for d in directories if (d / "result.json").is_file()]
        if found:
            results[kind] = sorted(found, key=lambda r: r.level)
    return results
