"""DVC stage `batch_landscapes` (the seed paper's Figure 4, and its verdict in numbers): for every batch size
the `batch_sweep` stage trained, a loss surface around the checkpoint (filter-normalized random directions
drawn with ONE seed for all), its shape metrics (`lossviz.shape.surface_metrics`) and the Hessian's top
eigenvalue and trace (`lossviz.curvature.hessian_metrics`) on the surface's test examples; then Spearman
correlations, with exact permutation p-values, of each sharpness measure with test error and with the
generalization gap across batch sizes (`lossviz.sharpness`).

Outputs (DVC): `surfaces/batch_landscapes/bs_XXXXX.h5`, `reports/batch_landscapes/` (compare.html in the
style of Figure 4, subtitles batch size and test accuracy; verdict.html, the table; one page per surface;
index.html), `metrics/batch_sweep.json` (the verdict), and the sweep's own pages, `reports/batch_sweep/`
(Optuna's history, slice and intermediate-values figures of the study, read back from the sweep's storage:
the sweep stage only trains). MLflow: a run in experiment "batch_landscapes" with everything; each surface
page plus its measures logged to the sweep's child run of that batch size, found by its tags
(`lossviz.study`, `lossviz.batch_size`, `optuna.trial_state` = COMPLETE); the Optuna pages to the study's
parent run.

Protocols (`--protocol`): `fixed` measures the `batch_sweep` stage's models into the paths above; `converged`
(stage `batch_landscapes_converged`) those of `batch_sweep_converged`, into the same paths with `_converged`
added (`Outputs`).

Resume: surfaces are flushed point by point, and Hessian measures saved per batch size, under
`tmp/resume/batch_landscapes-<digest>/` (named by the params and the sweep's summary), so a killed run
continues where it stopped; the directory goes once the outputs are written.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import optuna
from mlflow.tracking import MlflowClient

from lossviz.checkpoints import CheckpointError, load_model_weights
from lossviz.curvature import surface_examples
from lossviz.data import DataError, Splits, load_splits
from lossviz.directions import random_directions
from lossviz.engine import compute_surface
from lossviz.figures import compare_figure, surface_figure, verdict_figure
from lossviz.models import build_model
from lossviz.pages import self_contained_copies, write_gallery, write_report_page
from lossviz.params import BatchLandscapesParams, Params
from lossviz.runtime import resolve_device, seed_everything
from lossviz.shape import surface_metrics
from lossviz.sharpness import MEASURES, TARGETS, generalization_gap, measure_minimizer, sharpness_measures, verdict
from lossviz.surface import Surface
from pipelines.common import data_root, repo_root, resume_path, stage_params, write_json, write_plot_table
from pipelines.sweep.layout import EXPERIMENT as SWEEP_EXPERIMENT
from pipelines.sweep.layout import PARENT_ATTR, PROTOCOLS, Protocol
from pipelines.sweep.pages import load_finished_study, write_sweep_pages
from pipelines.sweep.settings import SweepError
from pipelines.sweep.storage import storage_url
from pipelines.tracking import ensure_store, log_inputs, split_inputs, stage_run


@dataclass(frozen=True)
class Outputs:
    """Where the stage of one training protocol (`pipelines.sweep.layout.PROTOCOLS`) writes: the fixed
    protocol's names below, the converged protocol's with `_converged` added."""
    protocol: Protocol
    stage: str
    surfaces: Path
    report: Path
    metrics: Path  # headline numbers (`dvc metrics show`)
    results: Path  # the verdict in full: every row, every correlation
    plot: Path  # accuracy, gaps and sharpness vs batch size

    @classmethod
    def of(cls, protocol: Protocol) -> Outputs:
        suffix = protocol.suffix
        return cls(protocol, f"batch_landscapes{suffix}", Path(f"surfaces/batch_landscapes{suffix}"),
                   Path(f"reports/batch_landscapes{suffix}"), Path(f"metrics/batch_sweep{suffix}.json"),
                   Path(f"results/batch_sweep{suffix}.json"), Path(f"metrics/batch_sweep{suffix}.csv"))


OUTPUTS = {name: Outputs.of(protocol) for name, protocol in PROTOCOLS.items()}
STAGE_MODULE = "batch_landscapes"  # pipelines.<this>: every protocol's stage runs it
PLOT_COLUMNS = ("batch_size", "test_acc", "train_acc", "gap_acc", "gap_loss", "depth", "flatness",
                "centre_curvature", "convex_fraction", "hessian_top_eigenvalue", "hessian_trace")
ROW_COLUMNS = ("batch_size", "test_acc", "train_acc", "gap_acc", "gap_loss", *MEASURES)  # verdict.html
LOGGED_MEASURES = (*MEASURES, "gap_acc", "gap_loss")  # on each trial's run, as landscape_<name>


class LandscapeError(RuntimeError):
    """The stage cannot run as asked; the message says why and what to do."""


def read_sweep(root: Path, out: Outputs) -> dict[str, Any]:
    path = root / out.protocol.summary_path
    if not path.is_file():
        raise LandscapeError(f"{path}: not found; run the `{out.protocol.stage}` stage first")
    summary = json.loads(path.read_text())
    if not summary.get("trials"):
        raise LandscapeError(f"{path}: the sweep has no completed trial")
    return summary


def read_inputs(root: Path, params: Params, out: Outputs) -> tuple[dict[str, Any], Splits, optuna.Study]:
    """The sweep's summary, its test set (checked against `n_examples`) and its finished Optuna study."""
    summary = read_sweep(root, out)
    splits = load_splits(data_root(root), summary["dataset"], 0, summary["seed"], summary["normalize"])
    n_examples = params.batch_landscapes.n_examples
    if n_examples > len(splits.test):
        raise LandscapeError(f"invalid params\n  batch_landscapes.n_examples: got {n_examples}; allowed: 2 … "
                             f"{len(splits.test)} (the test-set size)")
    return summary, splits, load_finished_study(storage_url(params, root), summary["study"], root)


def resume_dir(root: Path, params: Params, summary: dict[str, Any]) -> Path:
    """Named by everything that shapes the surfaces: this stage's params, the sweep and its checkpoints."""
    return resume_path(root, STAGE_MODULE, {"landscapes": params.batch_landscapes.model_dump(), "sweep": summary},
                       [root / trial["checkpoint"] for trial in summary["trials"]])


def protocol_label(summary: dict[str, Any]) -> str:
    """How the compared models were trained, for titles: `3 epochs each` or `early-stopped, ≤ 10 epochs`."""
    if summary.get("early_stopping"):
        return f"early-stopped on validation loss, ≤ {summary['epochs']} epochs"
    return f"{summary['epochs']} epochs each"


def trial_title(trial: dict[str, Any]) -> str:
    return f"batch size {trial['batch_size']} · test acc {100 * trial['final_test_acc']:.2f}%"


def measure_trial(trial: dict[str, Any], summary: dict[str, Any], params: Params, splits: Splits,
                  xs: np.ndarray, work: Path, root: Path) -> tuple[Surface, dict[str, Any]]:
    """The surface and every measure of one trained batch size (resumed from `work`)."""
    section = params.batch_landscapes
    batch_size = trial["batch_size"]
    test = splits.test
    model = build_model(summary["model"], splits.input_shape, splits.num_classes)
    load_model_weights(model, root / trial["checkpoint"])
    model.eval()
    directions = random_directions(model, seed=section.direction_seed, norm=section.norm, ignore=section.ignore)
    surface = compute_surface(
        model, test.x, test.y, directions, xs, xs, n_examples=section.n_examples, seed=section.direction_seed,
        device=params.device, out=work / f"bs_{batch_size:05d}.h5", method=section.method,
        meta={"model": summary["model"], "dataset": summary["dataset"], "train_batch_size": batch_size,
              "test_acc": trial["final_test_acc"], "checkpoint": trial["checkpoint"],
              "title": trial_title(trial)})
    shape = surface_metrics(surface, flat_tolerance=section.flat_tolerance)
    hessian_file = work / f"bs_{batch_size:05d}.hessian.json"
    if hessian_file.is_file():
        hessian = json.loads(hessian_file.read_text())
    else:
        device = resolve_device(params.device)
        x, y = surface_examples(surface, test.x, test.y)
        model.to(device)
        hessian = measure_minimizer(model, x.to(device), y.to(device), seed=section.direction_seed,
                                    norm=section.norm, ignore=section.ignore,
                                    lanczos_steps=section.hessian_iterations, trace_samples=section.trace_samples)
        hessian_file.write_text(json.dumps(hessian))
    nan = math.nan
    gap = generalization_gap(trial.get("final_train_acc", nan), trial["final_test_acc"],
                             trial.get("final_train_loss", nan), trial["final_test_loss"])
    row = {"batch_size": batch_size, "trial": trial["trial"], "test_acc": trial["final_test_acc"],
           "test_error": 1 - trial["final_test_acc"], "test_loss": trial["final_test_loss"],
           "train_acc": trial.get("final_train_acc", nan), "train_loss": trial.get("final_train_loss", nan),
           "val_acc": trial["final_val_acc"], **gap, **sharpness_measures(shape, hessian),
           "hessian_trace_se": hessian["hessian_trace_se"], "centre_loss": shape["centre_loss"],
           # how far training went: whether a compared model converged (early stopping ended it) or ran out
           **{key: trial.get(key) for key in ("stopped_epoch", "stopped_early", "best_epoch", "iterations")}}
    return surface, row


def measure_trials(trials: list[dict[str, Any]], summary: dict[str, Any], params: Params, splits: Splits,
                   work: Path, root: Path, out: Outputs) -> tuple[list[Surface], list[dict[str, Any]]]:
    """Every trained batch size's surface and row of measures, in the order of `trials`."""
    section = params.batch_landscapes
    xs = np.linspace(-section.extent, section.extent, section.grid_points)
    surfaces, rows = [], []
    for trial in trials:
        print(f"{out.stage}: batch size {trial['batch_size']}: surface {section.grid_points}² on "
              f"{section.n_examples} test examples, Hessian", flush=True)
        surface, row = measure_trial(trial, summary, params, splits, xs, work, root)
        surfaces.append(surface)
        rows.append(row)
    return surfaces, rows


def write_pages(report: Path, summary: dict[str, Any], trials: list[dict[str, Any]], surfaces: list[Surface],
                rows: list[dict[str, Any]], table: dict[str, Any]) -> tuple[dict[int, Path], list[Path]]:
    """One page per surface (by batch size), compare.html and verdict.html (returned second), index.html."""
    pages = {row["batch_size"]: write_report_page(surface_figure(surface), report / f"bs_{row['batch_size']:05d}.html")
             for surface, row in zip(surfaces, rows, strict=True)}
    table_metrics = [{key: row[key] for key in ("train_acc", "gap_acc", "gap_loss", *MEASURES)}
                     for row in rows]
    compare = write_report_page(compare_figure(surfaces, [trial_title(t) for t in trials], metrics=table_metrics,
                                        columns=min(len(surfaces), 5),
                                        title=f"Loss surfaces by batch size ({summary['model']}, "
                                              f"{summary['dataset']}; {protocol_label(summary)})"),
                         report / "compare.html")
    directions = {name: way for name, (_, way) in MEASURES.items()}
    verdict = write_report_page(verdict_figure(rows, ROW_COLUMNS, table, directions, list(TARGETS),
                                        title=f"Sharpness vs generalization across batch sizes "
                                              f"({protocol_label(summary)}; {summary['study']})"),
                         report / "verdict.html")
    write_gallery(report, title="Batch-size landscapes")
    return pages, [compare, verdict]


VERDICT_COUNTS = ("n_models", "n_tests", "smallest_attainable_p", "significant", "significant_after_holm",
                  "expected_by_chance")


def verdict_metrics(summary: dict[str, Any], section: BatchLandscapesParams, rows: list[dict[str, Any]],
                    result: dict[str, Any]) -> dict[str, Any]:
    """results/batch_sweep.json: every row, the correlations, the verdict's sentence and counts, and what was
    measured how."""
    best = max(rows, key=lambda row: row["test_acc"])
    return {"study": summary["study"], "model": summary["model"], "dataset": summary["dataset"],
            "protocol": summary.get("protocol", "fixed"), "epochs": summary.get("epochs"),
            "early_stopping": summary.get("early_stopping", False),
            "best_batch_size_by_test_acc": best["batch_size"],
            "per_batch_size": {str(row["batch_size"]): row for row in rows}, "correlations": result["table"],
            "verdict": {"sentence": result["sentence"], **{key: result.get(key) for key in VERDICT_COUNTS}},
            "measures": {name: f"{what} ({way})" for name, (what, way) in MEASURES.items()},
            "targets": TARGETS,
            "surface": {"grid_points": section.grid_points, "extent": section.extent,
                        "n_examples": section.n_examples, "direction_seed": section.direction_seed}}


HEADLINE_MEASURES = ("depth", "flatness")  # the sharpness the surfaces show; the rest (Hessian too): results/


def headline(full: dict[str, Any], protocol: Protocol) -> dict[str, Any]:
    """metrics/batch_sweep.json, what `dvc exp show` compares: the best batch size, the surfaces' sharpness
    measures' Spearman correlation with test error, how many of all the tests are significant after Holm's
    correction. A protocol other than the paper's nests them under its name, so that every column of
    `dvc exp show` has a short name of its own (DVC prefixes names that two files share with the path)."""
    significant = full["verdict"]["significant_after_holm"]
    numbers = {"best_batch_size": full["best_batch_size_by_test_acc"],
               "spearman": {measure: targets["test_error"]["spearman"]
                            for measure, targets in full["correlations"].items() if measure in HEADLINE_MEASURES},
               "significant_after_holm": len(significant) if isinstance(significant, list) else significant}
    return numbers if not protocol.suffix else {protocol.name: numbers}


def write_outputs(root: Path, out: Outputs, work: Path, params: Params, summary: dict[str, Any],
                  trials: list[dict[str, Any]],
                  surfaces: list[Surface], rows: list[dict[str, Any]],
                  result: dict[str, Any]) -> tuple[dict[int, Path], list[Path], Path]:
    """The stage's DVC outputs afresh: surfaces, pages, the verdict's metrics and plot table. Returns the
    surface pages by batch size, the stage's summary pages and the metrics file."""
    surface_dir, report = root / out.surfaces, root / out.report
    for directory in (surface_dir, report):
        if directory.exists():
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
    for trial in trials:
        name = f"bs_{trial['batch_size']:05d}.h5"
        shutil.copy2(work / name, surface_dir / name)
    pages, summary_pages = write_pages(report, summary, trials, surfaces, rows, result["table"])
    full = verdict_metrics(summary, params.batch_landscapes, rows, result)
    metrics_path = write_json(root / out.results, full)
    write_json(root / out.metrics, headline(full, out.protocol))
    write_plot_table(root / out.plot, [{key: row[key] for key in PLOT_COLUMNS} for row in rows])
    return pages, summary_pages, metrics_path


def find_trial_run(client: MlflowClient, experiment_id: str, study: str, batch_size: int) -> str | None:
    """The sweep's child run of a completed trial, found by its tags."""
    runs = client.search_runs(
        [experiment_id], filter_string=f"tags.`lossviz.study` = '{study}' and tags.`lossviz.batch_size` = "
                                       f"'{batch_size}' and tags.`optuna.trial_state` = 'COMPLETE'",
        order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0].info.run_id if runs else None


def sweep_parent_run(client: MlflowClient, study: optuna.Study) -> str | None:
    """The study's MLflow parent run, as the sweep recorded it; None when this tracking store lacks it."""
    parent = study.user_attrs.get(PARENT_ATTR)
    try:
        return parent if parent is not None and client.get_run(parent) else None
    except mlflow.exceptions.MlflowException:
        return None


def log_stage_run(root: Path, out: Outputs, summary: dict[str, Any], section: BatchLandscapesParams,
                  rows: list[dict[str, Any]], inputs: list[Any],
                  table: dict[str, Any], artifacts: list[Path]) -> None:
    """This stage's MLflow run: params, every row's measures by batch size, the correlations, `artifacts`."""
    with stage_run("batch_landscapes", summary["study"], out.stage, root=root):  # one experiment, both protocols
        mlflow.set_tags({"lossviz.study": summary["study"], "lossviz.protocol": out.protocol.name})
        log_inputs(inputs)
        mlflow.log_params({f"batch_landscapes.{k}": v for k, v in section.model_dump().items()})
        for row in rows:
            mlflow.log_metrics({key: float(row[key]) for key in ("test_acc", "gap_acc", "gap_loss",
                                                                 *MEASURES)
                                if math.isfinite(float(row[key]))}, step=row["batch_size"])
        mlflow.log_metrics({f"spearman_{m}_vs_{t}": cell["spearman"] for m, targets in table.items()
                            for t, cell in targets.items() if math.isfinite(cell["spearman"])})
        with self_contained_copies(artifacts) as copies:  # MLflow shows each page alone: plotly.js inlined
            for artifact in copies:
                mlflow.log_artifact(str(artifact))


def log_to_sweep_runs(out: Outputs, summary: dict[str, Any], rows: list[dict[str, Any]], pages: dict[int, Path],
                      study: optuna.Study, sweep_pages: list[Path]) -> None:
    """Each surface page and its measures to the sweep's run of that batch size; the Optuna pages to the
    study's parent run. A run that cannot be found is named on stderr and skipped."""
    client = MlflowClient()
    sweep_experiment = client.get_experiment_by_name(SWEEP_EXPERIMENT)
    for row in rows:
        run_id = (find_trial_run(client, sweep_experiment.experiment_id, summary["study"], row["batch_size"])
                  if sweep_experiment is not None else None)
        if run_id is None:
            print(f"{out.stage}: no MLflow run of batch size {row['batch_size']} in study {summary['study']}; "
                  "its page is not logged there", file=sys.stderr)
            continue
        with self_contained_copies([pages[row["batch_size"]]]) as (page,):
            client.log_artifact(run_id, str(page), "landscape")
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(f"landscape_{key}", float(row[key]), 0, 0)
                                          for key in LOGGED_MEASURES if math.isfinite(float(row[key]))])
    parent = sweep_parent_run(client, study)
    if parent is None:
        print(f"{out.stage}: no MLflow parent run of study {summary['study']}; its Optuna pages are only in "
              f"{out.protocol.report_dir}", file=sys.stderr)
        return
    with self_contained_copies(sweep_pages) as copies:
        for page in copies:
            client.log_artifact(parent, str(page), "optuna")


def print_verdict(out: Outputs, rows: list[dict[str, Any]], table: dict[str, Any]) -> None:
    print(f"{out.stage}: {'batch':>6} {'test acc':>8} " + " ".join(f"{m:>22}" for m in MEASURES))
    for row in rows:
        print(f"{out.stage}: {row['batch_size']:>6} {row['test_acc']:>8.4f} "
              + " ".join(f"{row[m]:>22.4g}" for m in MEASURES))
    for measure, targets in table.items():
        print(f"{out.stage}: spearman {measure:>22}: " + ", ".join(
            f"{t} {cell['spearman']:+.2f} (p={cell['p_value']:.2f})" for t, cell in targets.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.batch_landscapes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", choices=list(OUTPUTS), default="fixed",
                        help="the sweep whose models to measure: fixed (stage batch_landscapes) or converged "
                             "(stage batch_landscapes_converged) (default: %(default)s)")
    out = OUTPUTS[parser.parse_args(argv).protocol]
    root = repo_root()
    params = stage_params(root)
    try:
        summary, splits, study = read_inputs(root, params, out)
        seed_everything(params.seed)
        work = resume_dir(root, params, summary)  # the summary names the protocol's study
        work.mkdir(parents=True, exist_ok=True)
        trials = sorted(summary["trials"], key=lambda t: t["batch_size"])
        surfaces, rows = measure_trials(trials, summary, params, splits, work, root, out)
    except (LandscapeError, SweepError, DataError, CheckpointError, OSError, ValueError) as error:
        print(f"{out.stage}: {error}", file=sys.stderr)
        return 2
    result = verdict(rows)
    table = result["table"]
    pages, summary_pages, metrics_path = write_outputs(root, out, work, params, summary, trials, surfaces, rows,
                                                       result)
    sweep_pages = write_sweep_pages(study, root / out.protocol.report_dir)
    ensure_store(root)
    log_stage_run(root, out, summary, params.batch_landscapes, rows, split_inputs(splits, only=("test",)), table,
                  [*summary_pages, metrics_path])
    log_to_sweep_runs(out, summary, rows, pages, study, sweep_pages)
    shutil.rmtree(work, ignore_errors=True)
    print_verdict(out, rows, table)
    print(f"{out.stage}: {result['sentence']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
