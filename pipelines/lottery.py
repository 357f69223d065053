"""DVC stage `lottery`: iterative magnitude pruning (lossviz.lottery) with the random-ticket control, on the
model and dataset of params `lottery`; MLflow experiment "lottery" (a parent run per kind, a child run per
level with its per-epoch curves and its mask as an artifact; the parents get test accuracy, P_m and the
early-stop iteration with step=level). Outputs: `models/lottery/` (theta0.pt and, per kind and level,
mask.pt, model.pt, result.json) and `metrics/lottery.json`.

Resume: DVC deletes a stage's outputs before it runs, so the levels are not built in `models/lottery/`.
They are built in a work directory under `tmp/resume/` (git-ignored, unknown to DVC) named by a digest
of everything that shapes the run (the params used, the prepared data's manifest, the code), exactly as
pipelines/train.py keeps its checkpoint. A killed stage, restarted (by `dvc repro` or by hand), finds its
finished levels there untouched (the library skips any level whose result.json exists) and the level in
progress in its per-epoch training checkpoint; the MLflow run ids are kept there too, so the same runs are
continued rather than duplicated. Once every level is done the directory is copied to `models/lottery/`
(files copied byte for byte) and deleted. We chose this over `persist: true`, which would also survive DVC's
deletion, because it keeps DVC's run-cache and needs no fingerprint check on the published outputs: a
changed run gets a different work directory by construction.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, RunStatus
from mlflow.tracking import MlflowClient

from lossviz.checkpoints import load_model_weights
from lossviz.data import DataError, Splits, load_splits
from lossviz.lottery import IMPConfig, LevelResult, LotteryCallbacks, level_name, run_lottery
from lossviz.models import build_model
from lossviz.params import Params
from lossviz.runtime import seed_everything
from lossviz.training import EpochRecord, TrainConfig
from pipelines.common import (
    data_root,
    drop_wall_times,
    repo_root,
    resume_path,
    stage_params,
    write_json,
    write_plot_table,
    write_timings,
)
from pipelines.tracking import (
    ensure_store,
    get_experiment_id,
    log_inputs,
    log_torch_model,
    reclaim_run,
    run_tags,
    split_inputs,
)

STAGE = "lottery"
EXPERIMENT = "lottery"
OUT_DIR = Path("models/lottery")
METRICS_PATH = Path("metrics/lottery.json")  # headline numbers (`dvc metrics show`)
RESULTS_PATH = Path("results/lottery.json")  # every kind and level
PLOT_PATH = Path("metrics/lottery.csv")  # test accuracy vs weights remaining, both kinds of ticket


def train_config(params: Params) -> TrainConfig:
    """The config of every level (early stopping is on: the section fixes it, see LotteryParams)."""
    return TrainConfig.from_settings(params.lottery, seed=params.seed, device=params.device)


def imp_config(params: Params) -> IMPConfig:
    section = params.lottery
    return IMPConfig(levels=section.levels, rate=section.rate, output_rate=section.output_rate,
                     scope=section.scope, rewind_epoch=section.rewind_epoch,
                     random_tickets=section.random_tickets, seed=params.seed)


def used_params(params: Params) -> dict[str, object]:
    """Every param this stage reads, flat, as logged to MLflow and hashed for the work directory."""
    return {"seed": params.seed, "device": params.device, "data.val_size": params.data.val_size,
            "data.normalize": params.data.normalize,
            **{f"lottery.{key}": value for key, value in params.lottery.model_dump().items()}}


def work_dir(root: Path, params: Params) -> Path:
    return resume_path(root, "lottery", used_params(params),
                       [data_root(root) / params.lottery.dataset / "manifest.json"])


def check_against_data(params: Params, splits: Splits) -> list[str]:
    section, problems = params.lottery, []
    if section.batch_size > len(splits.train):
        problems.append(f"lottery.batch_size: got {section.batch_size}; allowed: 1 … {len(splits.train)} "
                        "(the training-set size)")
    if splits.val is None:
        problems.append("data.val_size: got 0; the lottery stage early-stops on a validation split: set it > 0")
    return problems


class Tracker:
    """MLflow logging of the level loop, resumable: run ids and what was logged are kept in the work
    directory, so a restarted stage continues the same runs and never logs a level or an epoch twice."""

    def __init__(self, root: Path, work: Path, params: Params, run_prefix: str, splits: Splits | None = None,
                 make_model=None):
        ensure_store(root)
        self.inputs = split_inputs(splits) if splits is not None else []
        self.make_model, self.example = make_model, splits.test.x[:8] if splits is not None else None
        self.seconds: dict[str, float] = {}
        self.client = MlflowClient()
        self.experiment_id = get_experiment_id(EXPERIMENT, root)
        self.tags = run_tags(STAGE, root)
        self.reclaimed: set[str] = set()
        self.params = params
        self.run_prefix = run_prefix
        self.path = work / "mlflow.json"
        self.state: dict[str, Any] = (json.loads(self.path.read_text()) if self.path.exists()
                                      else {"parents": {}, "children": {}, "logged": []})
        self.logged_epochs: dict[str, set[int]] = {}

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.state, indent=1, sort_keys=True))

    def _existing(self, run_id: str | None) -> bool:
        """Whether `run_id` is a live run to continue (reclaimed for this process if so)."""
        if run_id is None:
            return False
        try:
            active = self.client.get_run(run_id).info.lifecycle_stage == "active"
        except mlflow.exceptions.MlflowException:
            return False
        if active and run_id not in self.reclaimed:
            reclaim_run(self.client, run_id)
            self.reclaimed.add(run_id)
        return active

    def parent(self, kind: str) -> str:
        run_id = self.state["parents"].get(kind)
        if self._existing(run_id):
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"{self.run_prefix}-{kind}",
                                     tags={**self.tags, "lottery.kind": kind})
        run_id = run.info.run_id
        section = self.params.lottery
        self.client.log_batch(run_id, params=[mlflow.entities.Param(key, str(value))
                                              for key, value in used_params(self.params).items()])
        log_inputs(self.inputs, run_id)
        knobs = {"batch_size": section.batch_size, "rate": section.rate, "levels": section.levels,
                 "epochs": section.epochs, "lr": section.lr, "rewind_epoch": section.rewind_epoch}
        self._metrics(run_id, knobs, step=0)
        self.state["parents"][kind] = run_id
        self._save()
        return run_id

    def child(self, kind: str, level: int) -> str:
        key = f"{kind}/{level_name(level)}"
        run_id = self.state["children"].get(key)
        if self._existing(run_id):
            if key not in self.logged_epochs:  # reopened after a kill: what did it already get?
                history = self.client.get_metric_history(run_id, "val_loss")
                self.logged_epochs[key] = {metric.step for metric in history}
            return run_id
        parent = self.parent(kind)
        run = self.client.create_run(self.experiment_id, run_name=f"{kind}-{level_name(level)}",
                                     tags={**self.tags, "mlflow.parentRunId": parent, "lottery.kind": kind,
                                           "lottery.level": str(level)})
        self.client.log_batch(run.info.run_id, params=[mlflow.entities.Param(key, str(value)) for key, value in {
            **used_params(self.params), "kind": kind, "level": level}.items()])
        log_inputs(self.inputs, run.info.run_id)
        self.state["children"][key] = run.info.run_id
        self.logged_epochs[key] = set()
        self._save()
        return run.info.run_id

    def _metrics(self, run_id: str, values: dict[str, float | None], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in values.items() if value is not None]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def epoch(self, kind: str, level: int, record: EpochRecord, replayed: bool) -> None:
        key = f"{kind}/{level_name(level)}"
        if not replayed:
            print(f"{STAGE}: {kind} {level_name(level)} epoch {record.epoch}: val_loss {record.val_loss:.4f}, "
                  f"test_acc {record.test_acc:.4f}", flush=True)
        if key in self.state["logged"]:
            return
        run_id = self.child(kind, level)
        if record.epoch in self.logged_epochs[key]:
            return
        self._metrics(run_id, record.metrics(), step=record.epoch)
        self.logged_epochs[key].add(record.epoch)

    def level_end(self, kind: str, level: int, result: LevelResult, directory: Path, replayed: bool) -> None:
        key = f"{kind}/{level_name(level)}"
        drop_wall_times(directory)  # at once: the finished level's files are final (a resumed run keeps them)
        print(f"{STAGE}: {kind} {level_name(level)} {'found finished' if replayed else 'done'}: "
              f"P_m {100 * result.remaining:.2f}%, test_acc {result.test_acc:.4f}, "
              f"early stop at iteration {result.early_stop_iteration}", flush=True)
        if key in self.state["logged"]:
            return
        run_id = self.child(kind, level)
        summary = {"test_acc": result.test_acc, "test_loss": result.test_loss, "val_loss": result.val_loss,
                   "val_acc": result.val_acc, "remaining": result.remaining, "alive": result.alive,
                   "early_stop_epoch": result.early_stop_epoch, "early_stop_iteration": result.early_stop_iteration,
                   "level": level, **{f"density.{name}": value for name, value in result.layer_density.items()}}
        self._metrics(run_id, {f"final_{k}" if k in ("test_acc", "test_loss", "val_loss", "val_acc") else k: v
                               for k, v in summary.items()}, step=level)
        if result.shared_with:
            self.client.set_tag(run_id, "lottery.shared_with", result.shared_with)
        self.client.log_artifact(run_id, str(directory / "mask.pt"), "mask")
        self.client.log_artifact(run_id, str(directory / "result.json"))
        self.seconds[key] = result.seconds
        if self.make_model is not None:  # the ticket as an MLflow model (its masked weights); ends the run
            ticket = load_model_weights(self.make_model(), directory / "model.pt")
            with mlflow.start_run(run_id=run_id):
                log_torch_model(ticket, self.example.cpu())
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
        parent = self.parent(kind)
        per_level = {"test_acc": result.test_acc, "remaining": result.remaining,
                     "early_stop_iteration": result.early_stop_iteration,
                     "early_stop_epoch": result.early_stop_epoch}
        if replayed:  # a kill may have come after these were logged and before the state was saved
            per_level = {k: v for k, v in per_level.items()
                         if level not in {m.step for m in self.client.get_metric_history(parent, k)}}
        self._metrics(parent, per_level, step=level)
        self.state["logged"].append(key)
        self._save()

    def finish(self, metrics_path: Path) -> None:
        for run_id in self.state["parents"].values():
            self.client.log_artifact(run_id, str(metrics_path))
            self.client.log_artifact(run_id, str(metrics_path.parent.parent / METRICS_PATH), "metrics")
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """metrics/lottery.json, what `dvc exp show` compares: the dense and the last level's test accuracy of each
    kind, P_m at the last level, the final gap (the full table: results/lottery.json)."""
    last = max(summary["winning"])
    values = {"last_remaining": summary["winning"][last]["remaining"],
              "dense_test_acc": summary["winning"][min(summary["winning"])]["test_acc"],
              "last_test_acc": {kind: summary[kind][last]["test_acc"] for kind in ("winning", "random")
                                if kind in summary}}
    if "final_gap" in summary:
        values["final_gap"] = summary["final_gap"]
    return values


def metrics_summary(params: Params, results: dict[str, list[LevelResult]]) -> dict[str, Any]:
    """results/lottery.json: per kind and level, P_m, test accuracy and the early-stop iteration."""
    section = params.lottery
    summary: dict[str, Any] = {"model": section.model, "dataset": section.dataset, "rate": section.rate,
                               "levels": section.levels}
    for kind, levels in results.items():
        summary[kind] = {level_name(r.level): {"remaining": r.remaining, "test_acc": r.test_acc,
                                                "early_stop_iteration": r.early_stop_iteration,
                                                "early_stop_epoch": r.early_stop_epoch} for r in levels}
    if "random" in results:
        last_w, last_r = results["winning"][-1], results["random"][-1]
        summary["final_gap"] = last_w.test_acc - last_r.test_acc
    return summary


def plot_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per level of the metrics summary: percent of weights remaining, each kind's test accuracy."""
    kinds = [kind for kind in ("winning", "random") if kind in summary]
    return [{"level": int(name.removeprefix("level_")),
             "percent_remaining": 100 * summary["winning"][name]["remaining"],
             **{f"{kind}_test_acc": summary[kind][name]["test_acc"] for kind in kinds}}
            for name in sorted(summary["winning"])]


def publish(levels_dir: Path, out_dir: Path) -> None:
    """Copy the finished work directory to the DVC output (byte for byte), replacing it whole."""
    staging = out_dir.with_name(f".{out_dir.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(levels_dir, staging)
    drop_wall_times(staging)  # the published tickets are the same bytes on every run (times: MLflow, timings/)
    shutil.rmtree(out_dir, ignore_errors=True)
    staging.rename(out_dir)


def main() -> int:
    root = repo_root()
    params = stage_params(root)
    section = params.lottery
    try:
        config, imp = train_config(params), imp_config(params)
        splits = load_splits(data_root(root), section.dataset, params.data.val_size, params.seed,
                             params.data.normalize, section.max_train_examples)
    except (ValueError, DataError) as error:
        print(f"{STAGE}: {error}", file=sys.stderr)
        return 2
    problems = check_against_data(params, splits)
    if problems:
        print(f"{STAGE}: invalid params\n" + "\n".join(f"  {line}" for line in problems), file=sys.stderr)
        return 2

    work = work_dir(root, params)
    def make_model():
        return build_model(section.model, splits.input_shape, splits.num_classes)

    tracker = Tracker(root, work, params, f"{section.model}-{section.dataset}", splits, make_model)

    started = time.perf_counter()
    seed_everything(params.seed)  # θ0 is the first model built (and saved before any training)
    results = run_lottery(make_model, splits, config, imp, work / "levels", checkpoint_dir=work / "checkpoints",
                          callbacks=LotteryCallbacks(epoch=tracker.epoch, level_end=tracker.level_end))
    publish(work / "levels", root / OUT_DIR)
    summary = metrics_summary(params, results)
    metrics_path = write_json(root / RESULTS_PATH, summary)
    write_json(root / METRICS_PATH, headline(summary))
    write_plot_table(root / PLOT_PATH, plot_rows(summary))
    tracker.finish(metrics_path)
    write_timings(root, STAGE, {"seconds": time.perf_counter() - started, "level_seconds": tracker.seconds})
    shutil.rmtree(work)
    print(f"{STAGE}: {len(results['winning'])} levels of {', '.join(results)} tickets in "
          f"{time.perf_counter() - started:.0f} s")
    print(table(results))
    return 0


def table(results: dict[str, list[LevelResult]]) -> str:
    lines = ["level  P_m(%)   winning acc  random acc  early-stop it. (w / r)"]
    randoms = {r.level: r for r in results.get("random", [])}
    for w in results["winning"]:
        r = randoms.get(w.level)
        lines.append(f"{w.level:5d}  {100 * w.remaining:6.2f}   {100 * w.test_acc:10.2f}  "
                     f"{(100 * r.test_acc) if r else float('nan'):10.2f}  "
                     f"{w.early_stop_iteration} / {r.early_stop_iteration if r else '-'}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
