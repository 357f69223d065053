"""DVC stage `train`: train the model named in params `train` on its prepared dataset with
`lossviz.training.train`, log params, per-epoch metrics and the checkpoint to MLflow (experiment "train"),
and write the DVC outputs `models/train/model.pt` (official `{"state_dict": ...}` layout),
`results/train.json` (the training summary) and `metrics/train.json` (its headline numbers).

`train.model` is a registered model or the user's `package.module:factory` (with `train.model_kwargs`; its
module in `user/`, a dep of this stage), `train.dataset` a prepared dataset or a user's (`pipelines.user_data`);
the checkpoint records the spec and its keyword arguments, so `sample_size` rebuilds the same model.

Resume: DVC deletes a stage's outputs before running it, so the per-epoch resume checkpoint is not an
output. It lives under `tmp/resume/` (git-ignored, unknown to DVC), named by a digest of everything that
shapes the run (the params it uses, the prepared data's manifest, the code, `user/`), so a killed `dvc repro`
continues from its last finished epoch while a changed run starts afresh. It is deleted once the outputs
are written. This keeps DVC's run-cache, which `persist: true` outputs would turn off.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mlflow

from lossviz.checkpoints import save_model
from lossviz.data import DATASETS, DataError, Splits, carve_splits, load_splits
from lossviz.params import Params
from lossviz.runtime import seed_everything
from lossviz.training import EpochRecord, TrainConfig, train
from lossviz.user_specs import SpecError, build_user_model
from pipelines.code_deps import user_code_files
from pipelines.common import (
    data_root,
    repo_root,
    resume_path,
    stage_params,
    write_json,
    write_plot_table,
    write_timings,
)
from pipelines.tracking import log_splits, log_torch_model, stage_run
from pipelines.user_data import number_of_classes, user_split

STAGE = "train"
MODEL_PATH = Path("models/train/model.pt")
METRICS_PATH = Path("metrics/train.json")  # the headline numbers (HEADLINE), what `dvc exp show` compares
RESULTS_PATH = Path("results/train.json")  # the whole summary: model, dataset, best and stopping epochs, ...
HEADLINE = ("final_test_acc", "final_test_loss", "final_train_loss", "stopped_epoch")
PLOT_PATH = Path("metrics/train_history.csv")  # the training curve, one row per epoch


def train_config(params: Params) -> TrainConfig:
    """The library's config from the validated params (TrainConfig checks the combinations)."""
    return TrainConfig.from_settings(params.train, seed=params.seed, device=params.device)


def used_params(params: Params) -> dict[str, object]:
    """Every param this stage reads, flat, as logged to MLflow and hashed for the resume file."""
    return {"seed": params.seed, "device": params.device, "data.val_size": params.data.val_size,
            "data.normalize": params.data.normalize,
            **{f"train.{key}": value for key, value in params.train.model_dump().items()}}


def resume_file(root: Path, params: Params) -> Path:
    dataset = params.train.dataset
    manifest = [data_root(root) / dataset / "manifest.json"] if dataset in DATASETS else []
    return resume_path(root, STAGE, used_params(params), [*manifest, *user_code_files(root)], suffix=".pt")


def load_data(root: Path, params: Params) -> tuple[Splits, int]:
    """The splits the stage trains on and the number of classes: a prepared dataset, or the user's
    (`pipelines.user_data`) with the same validation carve-out (data.val_size) and train.max_train_examples."""
    section = params.train
    if section.dataset in DATASETS:
        splits = load_splits(data_root(root), section.dataset, params.data.val_size, params.seed,
                             params.data.normalize, section.max_train_examples)
        return splits, splits.num_classes
    train_split, test_split = (user_split(section.dataset, split, section.dataset_kwargs, data_root(root),
                                          "train.dataset") for split in ("train", "test"))
    splits = carve_splits(train_split[0], test_split[0], section.dataset, params.data.val_size, params.seed,
                          section.max_train_examples)
    return splits, number_of_classes(train_split, test_split)


def spec_record(params: Params) -> dict[str, object]:
    """What the checkpoint records beside the model and dataset names: their keyword arguments, when given."""
    section = params.train
    return {key: value for key, value in (("model_kwargs", section.model_kwargs),
                                          ("dataset_kwargs", section.dataset_kwargs)) if value}


def check_against_data(params: Params, splits: Splits) -> list[str]:
    """Problems that only the data reveal, found before any output is touched."""
    section, problems = params.train, []
    if section.batch_size > len(splits.train):
        problems.append(f"train.batch_size: got {section.batch_size}; allowed: 1 … {len(splits.train)} "
                        "(the training-set size)")
    if splits.val is None and (section.lr_plateau or section.early_stopping):
        problems.append("train.lr_plateau / train.early_stopping need a validation split: set data.val_size "
                        "> 0 or turn both off")
    return problems


def main() -> int:
    root = repo_root()
    params = stage_params(root)
    section = params.train
    try:
        config = train_config(params)
        splits, num_classes = load_data(root, params)
    except (ValueError, DataError) as error:  # SpecError included: one line naming the key
        print(f"{STAGE}: {error}", file=sys.stderr)
        return 2
    problems = check_against_data(params, splits)
    if problems:
        print(f"{STAGE}: invalid params\n" + "\n".join(f"  {line}" for line in problems), file=sys.stderr)
        return 2

    seed_everything(params.seed)
    try:
        model = build_user_model(section.model, section.model_kwargs, splits.input_shape, num_classes,
                                 flag="train.model", kwargs_flag="train.model_kwargs")
    except SpecError as error:
        print(f"{STAGE}: {error}", file=sys.stderr)
        return 2
    checkpoint = resume_file(root, params)

    def log_epoch(record: EpochRecord, replayed: bool) -> None:
        mlflow.log_metrics(record.metrics(), step=record.epoch)

    run_name = f"{section.model}-{section.dataset}-bs{section.batch_size}"
    with stage_run("train", run_name, STAGE, root=root):
        mlflow.log_params(used_params(params))
        log_splits(splits)
        mlflow.log_metrics({"batch_size": section.batch_size, "train_examples": len(splits.train)})
        result = train(model, splits, config, callbacks=[log_epoch], checkpoint_path=checkpoint)
        if result.resumed_from_epoch is not None:
            mlflow.set_tag("resumed_from_epoch", str(result.resumed_from_epoch))
        summary = {"model": section.model, "dataset": section.dataset, **result.summary()}
        model_path = save_model(model, root / MODEL_PATH, model=section.model, dataset=section.dataset,
                                input_shape=list(splits.input_shape), num_classes=num_classes,
                                epoch=result.final.epoch, acc=result.final.test_acc, **spec_record(params))
        metrics_path = write_json(root / RESULTS_PATH, summary)
        write_json(root / METRICS_PATH, {key: summary[key] for key in HEADLINE})
        # without the epochs' wall times, which would change the git-tracked table on every rerun
        curve = [{"epoch": r.epoch, **{key: value for key, value in r.metrics().items() if key != "seconds"}}
                 for r in result.history]
        write_plot_table(root / PLOT_PATH, curve)
        mlflow.log_metrics({key: float(value) for key, value in result.summary().items()
                            if isinstance(value, int | float) and value is not None})
        mlflow.log_metric("train_seconds", result.seconds)
        mlflow.log_artifact(str(model_path), "checkpoint")
        log_torch_model(model.cpu(), splits.test.x[:8].cpu())
        mlflow.log_artifact(str(metrics_path))
        write_timings(root, STAGE, {"train_seconds": result.seconds,
                                    "epoch_seconds": [record.seconds for record in result.history]})
    checkpoint.unlink(missing_ok=True)
    print(f"{STAGE}: {section.model} on {section.dataset}: epoch {result.final.epoch}, "
          f"test accuracy {result.final.test_acc:.4f}, {result.seconds:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
