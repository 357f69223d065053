"""DVC stage `lottery_stability`: instability analysis of the `lottery` stage's tickets (Frankle, Dziugaite, Roy
& Carbin 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis") and planes through checkpoints
(Garipov et al. 2018), computed by lossviz.stability. Its pages are drawn by the next stage,
`lottery_stability_pages`, so that editing a figure or the viewer redraws them without retraining a copy.

For each level of params `lottery_stability.levels`, each kind (winning, random) and each rewind epoch k of
`rewind_epochs`, `pairs` pairs of copies start from m ⊙ θ_k, train the remaining lottery.epochs − k epochs under
the mask with their own data-order seeds, and the linear path between the two copies is evaluated at
`path_points` values of α on `n_examples` seeded test examples: error and loss with standard errors, and the
barriers (maximum along the path minus the mean of the endpoints).

Outputs (DVC): `models/lottery_stability/` (θ_k of the dense run, every copy's model.pt and result.json, each
pair's path.json, each plane's three points in planes/<name>.json); `surfaces/lottery_stability/` (paths/ and
planes/ as surface files); `metrics/lottery_stability.json` (barriers per kind, level and k) and
`metrics/lottery_stability.csv` (for `dvc plots`). MLflow experiment "lottery_stability": one run for the stage
(barriers per kind and k with step = level), a child run per pair (its path curves with step = point, its
barriers), and under it a child run per copy (its per-epoch curves).

Resume: as the `lottery` stage, the work happens in `tmp/resume/lottery_stability-<digest>/` (named by the params
used, the tickets and the code): finished copies, paths and planes are kept there, a killed run restarted finds
them, and the MLflow run ids are kept there so that the same runs are continued. Once everything is done the
results are copied to the outputs and the directory is deleted.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import mlflow
from mlflow.entities import Metric, Param, RunStatus
from mlflow.tracking import MlflowClient

from lossviz.data import DataError, Splits, load_splits
from lossviz.lottery import KINDS, level_dir
from lossviz.models import build_model
from lossviz.params import Params
from lossviz.stability import (
    CopyResult,
    Instability,
    InstabilityCallbacks,
    InstabilityConfig,
    PairKey,
    PairResult,
    summarize_barriers,
)
from lossviz.training import EpochRecord
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
from pipelines.lottery import train_config
from pipelines.tracking import ensure_store, get_experiment_id, log_inputs, run_tags, split_inputs

STAGE = "lottery_stability"
EXPERIMENT = "lottery_stability"
TICKETS = Path("models/lottery")
OUT_DIR = Path("models/lottery_stability")
SURFACE_DIR = Path("surfaces/lottery_stability")
METRICS_PATH = Path("metrics/lottery_stability.json")  # headline numbers (`dvc metrics show`)
RESULTS_PATH = Path("results/lottery_stability.json")  # barriers per kind, level and k (the pages read it)
PLOT_PATH = Path("metrics/lottery_stability.csv")  # barrier vs weights remaining, per kind and k


def settings(params: Params) -> InstabilityConfig:
    section = params.lottery_stability
    return InstabilityConfig(levels=tuple(section.levels), kinds=tuple(section.kinds),
                             rewind_epochs=tuple(section.rewind_epochs), pairs=section.pairs,
                             path_points=section.path_points, n_examples=section.n_examples, seed=params.seed,
                             method=section.method, planes=tuple(section.planes),
                             plane_grid_points=section.plane_grid_points, plane_margin=section.plane_margin,
                             plane_n_examples=section.plane_n_examples)


def used_params(params: Params) -> dict[str, object]:
    """Every param this stage reads, flat, as logged to MLflow and hashed for the work directory."""
    return {"seed": params.seed, "device": params.device, "data.val_size": params.data.val_size,
            "data.normalize": params.data.normalize,
            **{f"lottery.{key}": value for key, value in params.lottery.model_dump().items()},
            **{f"lottery_stability.{key}": value for key, value in params.lottery_stability.model_dump().items()}}


def check(params: Params, root: Path) -> list[str]:
    """Problems found before any output is touched (each names the key, the value and what is allowed)."""
    section, lottery, problems = params.lottery_stability, params.lottery, []
    # levels below lottery.levels and rewind epochs below lottery.epochs: checked with the params (lossviz.params)
    if "random" in section.kinds and not lottery.random_tickets:
        problems.append("lottery_stability.kinds: got 'random' but lottery.random_tickets is false")
    if not problems:
        missing = [str(level_dir(TICKETS, kind, level)) for kind in section.kinds for level in section.levels
                   if not (level_dir(root / TICKETS, kind, level) / "mask.pt").is_file()]
        if missing or not (root / TICKETS / "theta0.pt").is_file():
            problems.append(f"models/lottery lacks {', '.join(missing[:4]) or 'theta0.pt'}: run the `lottery` "
                            "stage first")
    return problems


def load_data(params: Params, root: Path, problems: list[str]) -> Splits | None:
    """The lottery's splits exactly (θ_k and the copies must train on its data), checked against the params."""
    lottery, section = params.lottery, params.lottery_stability
    try:
        splits = load_splits(data_root(root), lottery.dataset, params.data.val_size, params.seed,
                             params.data.normalize, lottery.max_train_examples)
    except (ValueError, DataError) as error:
        problems.append(str(error))
        return None
    for key in ("n_examples", "plane_n_examples"):
        if getattr(section, key) > len(splits.test):
            problems.append(f"lottery_stability.{key}: got {getattr(section, key)}; allowed: 2 … "
                            f"{len(splits.test)} (the test-set size)")
    return splits


def work_dir(root: Path, params: Params) -> Path:
    section = params.lottery_stability
    tickets = [root / TICKETS / name for name in ("imp.json", "theta0.pt")] + [
        level_dir(root / TICKETS, kind, level) / "mask.pt" for kind in section.kinds for level in section.levels]
    return resume_path(root, STAGE, used_params(params), tickets)


class Tracker:
    """MLflow logging, resumable: run ids and what was logged are kept in the work directory, so a restarted
    stage continues the same runs and logs nothing twice. The stage run holds the barriers; a child
    per pair holds its path; a child of the pair per copy holds the copy's per-epoch curves."""

    def __init__(self, root: Path, work: Path, params: Params, splits: Splits | None = None):
        ensure_store(root)
        self.inputs = split_inputs(splits) if splits is not None else []
        self.seconds: dict[str, float] = {}
        self.client = MlflowClient()
        self.experiment_id = get_experiment_id(EXPERIMENT, root)
        self.tags = run_tags(STAGE, root)
        self.params = params
        self.path = work / "mlflow.json"
        self.state: dict[str, Any] = (json.loads(self.path.read_text()) if self.path.exists()
                                      else {"runs": {}, "logged": []})

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.state, indent=1, sort_keys=True))

    def _run(self, key: str, name: str, tags: dict[str, str], parent: str | None = None) -> str:
        run_id = self.state["runs"].get(key)
        if run_id is not None:
            try:
                if self.client.get_run(run_id).info.lifecycle_stage == "active":
                    return run_id
            except mlflow.exceptions.MlflowException:
                pass
        run_tags_ = {**self.tags, **tags, **({"mlflow.parentRunId": parent} if parent else {})}
        run_id = self.client.create_run(self.experiment_id, run_name=name, tags=run_tags_).info.run_id
        # every run with the params it ran with (its own tags too) and the data
        own = {tag.removeprefix("stability."): value for tag, value in tags.items()}
        self.client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in {**used_params(self.params),
                                                                                    **own}.items()])
        log_inputs(self.inputs, run_id)
        self.state["runs"][key] = run_id
        self._save()
        return run_id

    def stage(self) -> str:
        lottery = self.params.lottery
        return self._run("stage", f"{lottery.model}-{lottery.dataset}", {})

    def pair(self, key: PairKey) -> str:
        return self._run(key.name, key.name.replace("/", "-"),
                         {"stability.kind": key.kind, "stability.level": str(key.level),
                          "stability.rewind_epoch": str(key.rewind_epoch), "stability.pair": str(key.pair)},
                         self.stage())

    def _log(self, run_id: str, values: dict[str, float | None], step: int) -> None:
        stamp = int(time.time() * 1000)
        metrics = [Metric(name, float(value), stamp, step) for name, value in values.items() if value is not None]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def _once(self, key: str, log) -> None:
        """Log under `key` unless done before (a kill after logging and before saving the state: the metric
        history says so)."""
        if key in self.state["logged"]:
            return
        log()
        self.state["logged"].append(key)
        self._save()

    def epoch(self, key: PairKey, copy_name: str, record: EpochRecord, replayed: bool) -> None:
        if not replayed:
            print(f"{STAGE}: {key.name} copy {copy_name} epoch {record.epoch}: test_acc {record.test_acc:.4f}",
                  flush=True)

    def copy_end(self, key: PairKey, copy_name: str, result: CopyResult, directory: Path, replayed: bool) -> None:
        name = f"{key.name}/copy_{copy_name}"
        drop_wall_times(directory)  # at once: the finished copy's files are final (a resumed run keeps them)

        def log() -> None:
            run_id = self._run(name, name.replace("/", "-"), {"stability.kind": key.kind, "stability.copy": copy_name,
                                                              "stability.seed": str(result.seed)}, self.pair(key))
            if not self.client.get_metric_history(run_id, "test_acc"):
                for record in result.history:
                    self._log(run_id, {k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
            if result.shared_with:
                self.client.set_tag(run_id, "stability.shared_with", result.shared_with)
            self.client.log_artifact(run_id, str(directory / "result.json"))
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

        if result.seconds is not None:
            self.seconds[name] = result.seconds
        self._once(name, log)

    def pair_end(self, key: PairKey, result: PairResult, directory: Path, replayed: bool) -> None:
        barrier = result.barrier
        print(f"{STAGE}: {key.name} {'found finished' if replayed else 'done'}: P_m {100 * result.remaining:.1f}%, "
              f"error barrier {barrier.error:.2f} ± {barrier.error_se:.2f} points, loss barrier {barrier.loss:.4f}",
              flush=True)

        def log() -> None:
            run_id = self.pair(key)
            if not self.client.get_metric_history(run_id, "path_error"):
                curve = result.curve
                for step, alpha in enumerate(curve.alphas):
                    self._log(run_id, {"path_alpha": alpha, "path_error": curve.error[step],
                                       "path_error_se": curve.error_se[step], "path_loss": curve.loss[step],
                                       "path_loss_se": curve.loss_se[step]}, step=step)
            self._log(run_id, {"error_barrier": barrier.error, "error_barrier_se": barrier.error_se,
                               "loss_barrier": barrier.loss, "loss_barrier_se": barrier.loss_se,
                               "remaining": result.remaining}, step=0)
            self.client.log_artifact(run_id, str(directory / "path.json"))
            self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

        self._once(key.name, log)

    def finish(self, summary: dict[str, Any], metrics_path: Path) -> None:
        run_id = self.stage()
        for kind in KINDS:
            for level_key, entry in summary.get(kind, {}).items():
                for k_key, values in entry.items():
                    if k_key.startswith("k_"):
                        self._log(run_id, {f"{kind}_error_barrier_{k_key}": values["error_barrier"],
                                           f"{kind}_loss_barrier_{k_key}": values["loss_barrier"]},
                                  step=int(level_key.removeprefix("level_")))
        self.client.log_artifact(run_id, str(metrics_path))
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def callbacks(self) -> InstabilityCallbacks:
        return InstabilityCallbacks(epoch=self.epoch, copy_end=self.copy_end, pair_end=self.pair_end)


def metrics_summary(params: Params, results: list[PairResult]) -> dict[str, Any]:
    """metrics/lottery_stability.json: per kind, level and k, the barriers with standard errors and P_m."""
    section = params.lottery_stability
    return {"model": params.lottery.model, "dataset": params.lottery.dataset, "n_examples": section.n_examples,
            "path_points": section.path_points, "pairs": section.pairs, "stable_threshold": section.stable_threshold,
            **summarize_barriers(results, section.stable_threshold)}


def headline(summary: dict[str, Any], rewind_epochs: list[int]) -> dict[str, Any]:
    """metrics/lottery_stability.json, what `dvc exp show` compares: at the deepest level measured (its percent
    of weights remaining beside them), each kind's error barrier at each k (the full table:
    results/lottery_stability.json)."""
    kinds = [kind for kind in KINDS if kind in summary]
    deepest = max((level for kind in kinds for level in summary[kind]), default=None)
    if deepest is None:
        return {}
    return {"error_barrier": {"remaining": summary[kinds[0]][deepest]["remaining"],
                              **{f"{kind}_k{k}": summary[kind][deepest][f"k_{k}"]["error_barrier"]
                                 for kind in kinds for k in rewind_epochs
                                 if f"k_{k}" in summary[kind].get(deepest, {})}}}


def plot_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per level: percent of weights remaining, each kind's error barrier at each k."""
    kinds = [kind for kind in KINDS if kind in summary]
    levels = sorted({level for kind in kinds for level in summary[kind]})
    rows = []
    for level in levels:
        row: dict[str, Any] = {"level": int(level.removeprefix("level_"))}
        for kind in kinds:
            entry = summary[kind].get(level)
            if entry is None:
                continue
            row["percent_remaining"] = 100 * entry["remaining"]
            for k_key, values in entry.items():
                if k_key.startswith("k_"):
                    row[f"{kind}_error_barrier_k{k_key.removeprefix('k_')}"] = values["error_barrier"]
        rows.append(row)
    return rows


def publish(runs: Path, root: Path) -> None:
    """Copy the finished work to the DVC outputs, each replaced whole: surface files to surfaces/, the rest to
    models/."""
    for target in (root / OUT_DIR, root / SURFACE_DIR):
        shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(runs, root / OUT_DIR, ignore=shutil.ignore_patterns("*.h5"))
    drop_wall_times(root / OUT_DIR)  # the same bytes on every run (times: MLflow, timings/)
    for path in sorted(runs.rglob("*.h5")):
        relative = path.relative_to(runs)
        name = "planes/" + path.name if relative.parts[0] == "planes" else \
            "paths/" + "_".join(relative.parent.parts) + ".h5"
        (root / SURFACE_DIR / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, root / SURFACE_DIR / name)


def main() -> int:
    root = repo_root()
    params = stage_params(root)
    problems = check(params, root)
    splits = load_data(params, root, problems) if not problems else None
    if problems:
        print(f"{STAGE}: invalid params\n" + "\n".join(f"  {line}" for line in problems), file=sys.stderr)
        return 2
    lottery = params.lottery
    work = work_dir(root, params)
    started = time.perf_counter()

    def make_model():
        return build_model(lottery.model, splits.input_shape, splits.num_classes)

    try:
        analysis = Instability(make_model, splits, train_config(params), settings(params), root / TICKETS,
                               work / "runs", checkpoint_dir=work / "checkpoints")
    except ValueError as error:
        print(f"{STAGE}: {error}", file=sys.stderr)
        return 2
    tracker = Tracker(root, work, params, splits)
    analysis.callbacks = tracker.callbacks()
    results = analysis.run()
    planes = analysis.planes()
    summary = metrics_summary(params, results)
    publish(work / "runs", root)
    metrics_path = write_json(root / RESULTS_PATH, summary)
    write_json(root / METRICS_PATH, headline(summary, params.lottery_stability.rewind_epochs))
    write_plot_table(root / PLOT_PATH, plot_rows(summary))
    tracker.finish(summary, metrics_path)
    write_timings(root, STAGE, {"seconds": time.perf_counter() - started, "copy_seconds": tracker.seconds})
    shutil.rmtree(work)
    print(f"{STAGE}: {len(results)} pairs and {len(planes)} planes in {time.perf_counter() - started:.0f} s")
    print(table(summary, params.lottery_stability.rewind_epochs))
    return 0


def table(summary: dict[str, Any], rewind_epochs: list[int]) -> str:
    """The barriers as printed at the end of the stage: a line per kind and level, a column group per k."""
    def cell(values: dict[str, Any]) -> str:
        verdict = "stable  " if values["stable"] else "UNSTABLE"
        error = f"{values['error_barrier']:6.2f} ± {values['error_barrier_se']:4.2f}"
        return f"{error} {verdict} {values['loss_barrier']:8.4f}"

    header = "  ".join(f"k={k}: error barrier (points), loss barrier" for k in rewind_epochs)
    lines = [f"kind     level  P_m(%)  {header}"]
    for kind in [kind for kind in KINDS if kind in summary]:
        for level, entry in sorted(summary[kind].items()):
            lines.append(f"{kind:8s} {int(level.removeprefix('level_')):5d}  {100 * entry['remaining']:6.2f}  "
                         + "  ".join(cell(entry[f"k_{k}"]) for k in rewind_epochs))
    return "\n".join(lines)

if __name__ == "__main__":
    raise SystemExit(main())
