"""DVC stage `sample_size` (the seed paper's Figures 2–3): how few test examples a faithful surface needs.

For one trained model (params `sample_size`: by default the `train` stage's model and checkpoint; or a
ResNet-56 `.t7` on CIFAR-10) and ONE pair of filter-normalized random directions, a surface at every n in
`sample_size.n_examples` (the engine's seeded, nested test subsets), each compared with the largest n
(`lossviz.sampling.compare_sample_sizes`), plus the adaptive choice of n at `sample_size.auto_tolerance`, and an
adaptive surface (`lossviz.adaptive`: evaluated where interpolation would miss `sample_size.adaptive_tolerance`,
interpolated elsewhere) on a finer grid, `adaptive_grid_points` per axis, shown beside the study's fully evaluated
surface at the same n. Its check: the certificate, a spot check (interpolated points evaluated for real) and
the agreement at the points both grids share; the full fine grid is not evaluated (too slow for the default run),
its time is estimated from the per-point timings.

The model may be the user's own (`package.module:factory` with `model_kwargs`, its module in `user/`, a dep of
this stage) and the data a user's dataset (`pipelines.user_data`). The train stage's checkpoint is rebuilt as
it records: its model spec and keyword arguments (which must be the study's), its input shape and classes.

Outputs (DVC): `surfaces/sample_size/` (n_XXXXX.h5, adaptive.h5 and directions.h5), `reports/sample_size/`
(compare.html in the style of Figure 2, fidelity.html: fidelity vs n, adaptive.html: the adaptive
surface beside the fully evaluated one), `results/sample_size.json` (every n's comparison) and the headline
numbers `metrics/sample_size.json`; all of it in an MLflow run of experiment "sample_size" (per-n metrics with
step = n, timings included).

Timings (wall and CPU time per surface, seconds per point in every round, the speed-ups) are a measurement of
this machine and this run, so they are in no versioned file: `timings/sample_size.json` and the page
`timings/sample_size.html` (speed-up vs n, the spread over rounds), both git-ignored, and the MLflow run. The
versioned pages stay byte-identical across runs; the report links the timing page.

Resume: surfaces are computed into `tmp/resume/sample_size-<digest>/` (named by everything that shapes
them), each flushed point by point, with the wall time of every finished surface; a killed run picks up
where it stopped. A surface resumed mid-way reports its time scaled from the points this run computed.
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from torch import nn

from lossviz.adaptive import certificate_of, common_points_agreement, spot_check
from lossviz.checkpoints import CheckpointError, load_checkpoint, load_model_weights
from lossviz.data import DATASETS, DataError, TensorSplit, load_splits
from lossviz.directions import Directions, random_directions
from lossviz.engine import compute_surface, point_function
from lossviz.figures import compare_figure, sample_size_figure, shape_metrics
from lossviz.pages import self_contained_copies, write_html, write_report_page
from lossviz.params import Params
from lossviz.runtime import seed_everything
from lossviz.sampling import (
    AutoExamples,
    choose_n_examples,
    compare_sample_sizes,
    time_per_point,
)
from lossviz.stats import finite_or_none
from lossviz.surface import Surface, outside_radius
from lossviz.user_specs import SpecError, build_user_model
from pipelines.code_deps import user_code_files
from pipelines.common import (
    TIMINGS_DIR,
    data_root,
    portable_path,
    repo_root,
    resume_path,
    stage_params,
    write_json,
    write_plot_table,
    write_timings,
)
from pipelines.tracking import dataset_input, log_inputs, stage_run
from pipelines.user_data import number_of_classes, user_split

STAGE = "sample_size"
SURFACE_DIR = Path("surfaces/sample_size")
REPORT_DIR = Path("reports/sample_size")
METRICS_PATH = Path("metrics/sample_size.json")  # headline numbers (`dvc metrics show`)
RESULTS_PATH = Path("results/sample_size.json")  # every n's comparison, the auto choice, the adaptive check
PLOT_PATH = Path("metrics/sample_size.csv")  # fidelity vs examples per point
PLOT_COLUMNS = ("n", "pearson_ln_loss", "rmse_ln_loss", "argmin_distance", "max_ln_loss_se")
TIMING_PAGE = TIMINGS_DIR / "sample_size.html"
# wall-clock numbers: MLflow and timings/ only, never a versioned file
TIMING_KEYS = frozenset({"seconds", "speedup", "cpu_seconds", "cpu_speedup", "point_seconds", "point_speedup",
                         "pilot_seconds", "every_point_seconds_estimated", "speedup_estimated"})
TRAIN_CHECKPOINT = Path("models/train/model.pt")
DIRECTIONS_FILE = "directions.h5"
ADAPTIVE_FILE = "adaptive.h5"


@dataclass(frozen=True)
class Study:
    """What the study runs on, with the params' nulls resolved."""
    model: str
    dataset: str
    checkpoint: Path
    normalize: bool
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def prepared(self) -> bool:
        """Whether the dataset is a prepared one (else the user's, `pipelines.user_data`)."""
        return self.dataset in DATASETS


def resolve(params: Params, root: Path) -> Study:
    section, train = params.sample_size, params.train
    checkpoint = Path(section.checkpoint) if section.checkpoint else TRAIN_CHECKPOINT
    return Study(model=section.model or train.model, dataset=section.dataset or train.dataset,
                 checkpoint=checkpoint if checkpoint.is_absolute() else root / checkpoint,
                 normalize=params.data.normalize if section.normalize is None else section.normalize,
                 model_kwargs=section.model_kwargs if section.model else train.model_kwargs,
                 dataset_kwargs=section.dataset_kwargs if section.dataset else train.dataset_kwargs)


def check_study(params: Params, study: Study, n_test: int | None) -> list[str]:
    """Problems found before any output is touched (each names the key, the value and what is allowed)."""
    section, train, problems = params.sample_size, params.train, []
    if section.checkpoint is None and ((study.model, study.model_kwargs, study.dataset, study.dataset_kwargs)
                                       != (train.model, train.model_kwargs, train.dataset, train.dataset_kwargs)):
        problems.append(f"sample_size.model/dataset ({study.model!r}, {study.dataset!r}) or their kwargs differ from "
                        f"the train stage's ({train.model!r}, {train.dataset!r}): set sample_size.checkpoint "
                        "to a checkpoint of that model, or leave model and dataset null")
    if not study.checkpoint.is_file():
        hint = "run the `train` stage first" if section.checkpoint is None else "a state_dict or official .t7"
        problems.append(f"sample_size.checkpoint: {study.checkpoint} does not exist ({hint})")
    if study.prepared and study.dataset not in params.data.datasets:
        problems.append(f"sample_size.dataset={study.dataset!r} is not in data.datasets {params.data.datasets}: "
                        "add it there so `prepare` makes it")
    if n_test is not None and max(section.n_examples) > n_test:
        problems.append(f"sample_size.n_examples: got {max(section.n_examples)}; allowed: 1 … {n_test} "
                        f"(the {study.dataset} test set)")
    return problems


def used_params(params: Params, study: Study, root: Path) -> dict[str, object]:
    """Every param the stage reads (resolved), flat: logged to MLflow and hashed for the resume directory (the
    checkpoint relative to the repository: a moved checkout resumes)."""
    return {"seed": params.seed, "device": params.device, "data.normalize": params.data.normalize,
            "train.model": params.train.model, "train.dataset": params.train.dataset,
            **{f"sample_size.{key}": value for key, value in params.sample_size.model_dump().items()},
            **{f"study.{key}": str(value) for key, value in asdict(study).items()},
            "study.checkpoint": portable_path(study.checkpoint, root)}


def without_timings(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if key not in TIMING_KEYS}


def work_dir(root: Path, params: Params, study: Study) -> Path:
    manifest = data_root(root) / study.dataset / "manifest.json"
    inputs = [study.checkpoint] + ([manifest] if study.prepared and manifest.is_file() else [])
    inputs += user_code_files(root)
    return resume_path(root, STAGE, used_params(params, study, root), inputs)


def surface_name(n: int) -> str:
    return f"n_{n:05d}.h5"


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _computed_points(path: Path) -> int:
    return int(np.isfinite(Surface.load(path).loss).sum()) if path.is_file() else 0


def timed_surface(path: Path, timings: dict, n: int, compute) -> tuple[Surface, dict[str, float]]:
    """The surface at `path` (computed or resumed by `compute()`) and its wall and process CPU times
    ({"seconds", "cpu_seconds"}): recorded once finished; for a surface resumed mid-way, this run's times
    scaled to all its points."""
    key = str(n)
    if path.is_file() and Surface.load(path).meta.get("complete"):
        if key in timings:
            return Surface.load(path), dict(timings[key])
        path.unlink()  # finished, but killed before its time was written: compute it again to time it
    before = _computed_points(path)
    start, cpu_start = time.perf_counter(), time.process_time()
    surface = compute()
    times = {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start}
    total = int(np.isfinite(surface.loss).sum())
    if 0 < before < total:
        times = {key: value * total / (total - before) for key, value in times.items()}
    return surface, times


def timing_points(axis: np.ndarray, clip_radius: float | None, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` grid points spread evenly over the computed part of the grid (inside the clip disk)."""
    alpha, beta = (grid.ravel() for grid in np.meshgrid(axis, axis, indexing="xy"))
    inside = np.ones(alpha.size, bool) if clip_radius is None else ~outside_radius(alpha, beta, clip_radius)
    chosen = np.flatnonzero(inside)[np.unique(np.linspace(0, inside.sum() - 1, count).round().astype(int))]
    return alpha[chosen], beta[chosen]


def main() -> int:
    root = repo_root()
    params = stage_params(root)
    study = resolve(params, root)
    loaded = load_study(params, study, root)
    if isinstance(loaded, list):
        print(f"{STAGE}: invalid params\n" + "\n".join(f"  {line}" for line in loaded), file=sys.stderr)
        return 2
    model, test = loaded
    seed_everything(params.seed)
    work = work_dir(root, params, study)
    work.mkdir(parents=True, exist_ok=True)
    grid = Grid(params)
    directions = load_or_draw_directions(work / DIRECTIONS_FILE, model, params.seed)

    with stage_run(STAGE, f"{study.model}-{study.dataset}-grid{grid.points}", STAGE, root=root):
        mlflow.log_params(used_params(params, study, root))
        log_inputs([dataset_input(test.x, test.y, f"{study.dataset}-test",
                                  f"data/prepared/{study.dataset}" if study.prepared else study.dataset, "evaluation")])
        mlflow.log_metrics({"grid_points": grid.points, "reference_n": max(params.sample_size.n_examples),
                            "auto_tolerance": params.sample_size.auto_tolerance, "test_examples": len(test)})
        surfaces, times = study_surfaces(params, study, model, test, directions, grid, work)
        auto = auto_choice(params, model, test, directions, grid, work)
        point_rounds = point_timings(params, model, test, directions, grid, work)
        point_seconds = {n: min(rounds) for n, rounds in point_rounds.items()}  # the best round
        adaptive = adaptive_study(params, study, model, test, directions, work, surfaces, point_seconds)
        rows = compare_sample_sizes(surfaces, {n: t["seconds"] for n, t in times.items()}, grid.clip_radius,
                                    cpu_seconds={n: t["cpu_seconds"] for n, t in times.items()},
                                    point_seconds=point_seconds or None)
        by_n = {row["n"]: row for row in rows}
        if auto["n"] in by_n:  # the achieved error of the chosen n on the whole grid
            auto["full_grid_max_ln_loss_se"] = by_n[auto["n"]]["max_ln_loss_se"]
        publish(root, params, study, surfaces, rows, auto, grid, work, adaptive)
        publish_timings(root, study, rows, auto, adaptive, point_rounds, params)
    shutil.rmtree(work, ignore_errors=True)
    for row in rows:
        print(f"{STAGE}: n={row['n']:>6}: pearson ln(loss) {_fmt(row['pearson_ln_loss'])}, rmse "
              f"{_fmt(row['rmse_ln_loss'])}, argmin distance {_fmt(row['argmin_distance'])}, "
              f"{row['seconds']:.2f} s, speed-up {_fmt(row['speedup'])} (CPU time: {_fmt(row['cpu_speedup'])}, "
              f"per point, best round: {_fmt(row.get('point_speedup'))})")
    print(f"{STAGE}: auto at tolerance {auto['tolerance']:g}: n={auto['n']} (met: {auto['met']})")
    if adaptive is not None:
        record = adaptive[1]
        print(f"{STAGE}: adaptive {record['grid_points']}×{record['grid_points']} at n={record['n']}: "
              f"{record['summary']}; spot check: largest measured error {_fmt(record['spot_max_abs_ln_loss_error'])} "
              f"on {record['spot_points']} interpolated points; {record['seconds']:.1f} s")
    return 0


def load_study(params: Params, study: Study, root: Path) -> tuple[nn.Module, TensorSplit] | list[str]:
    """The model (eval mode, the study's checkpoint loaded) and the test split, or the problems found."""
    problems = check_study(params, study, None)
    if problems:
        return problems
    key = "sample_size.dataset" if params.sample_size.dataset else "train.dataset"
    try:
        if study.prepared:
            splits = load_splits(data_root(root), study.dataset, val_size=0, seed=params.seed,
                                 normalize=study.normalize)
            test, input_shape, num_classes = splits.test, splits.input_shape, splits.num_classes
        else:
            user_test = user_split(study.dataset, "test", study.dataset_kwargs, data_root(root), key)
            test, input_shape, num_classes = user_test[0], tuple(user_test[0].x.shape[1:]), number_of_classes(user_test)
    except (ValueError, DataError) as error:  # SpecError included: one line naming the key
        return [str(error)]
    problems = check_study(params, study, len(test))
    if problems:
        return problems
    try:
        model = build_study_model(params, study, input_shape, num_classes)
        load_model_weights(model, study.checkpoint)
    except SpecError as error:
        return [str(error)]
    except (CheckpointError, RuntimeError) as error:
        return [f"sample_size.checkpoint {study.checkpoint} does not fit {study.model}: {error}"]
    return model.eval(), test


def build_study_model(params: Params, study: Study, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The study's model, untrained. From the train stage's checkpoint (sample_size.checkpoint null): as it
    records, its input shape and classes (a user's dataset's labels may not show every class in the test split),
    refused when its model or model kwargs are not the study's; else for the test data."""
    key = "sample_size.model" if params.sample_size.model else "train.model"
    if params.sample_size.checkpoint is None:
        record = load_checkpoint(study.checkpoint)
        record = record if isinstance(record, dict) else {}
        recorded = (record.get("model", study.model), record.get("model_kwargs", {}))
        if recorded != (study.model, study.model_kwargs):
            raise SpecError(f"{key} {study.model!r} with {key}_kwargs {study.model_kwargs}: the train stage's "
                            f"checkpoint {study.checkpoint} holds {recorded[0]!r} with {recorded[1]}; run the train "
                            "stage again (dvc repro train)")
        input_shape = tuple(record.get("input_shape", input_shape))
        num_classes = record.get("num_classes", num_classes)
    return build_user_model(study.model, study.model_kwargs, input_shape, num_classes, flag=key,
                            kwargs_flag=f"{key}_kwargs")


def load_or_draw_directions(path: Path, model: nn.Module, seed: int) -> Directions:
    """The study's directions: drawn once (filter-normalized, biasbn ignored), kept for a resumed run."""
    if path.is_file():
        return Directions.load(path, model)
    directions = random_directions(model, seed=seed)
    directions.save(path)
    return directions


class Grid:
    """The study's grid and the engine settings every surface of it shares."""

    def __init__(self, params: Params):
        section = params.sample_size
        self.points = section.grid_points
        self.axis = np.linspace(-section.extent, section.extent, section.grid_points)
        self.clip_radius = section.extent if section.clip else None
        self.engine_options = dict(seed=params.seed, batch_size=section.batch_size, device=params.device,
                                   clip_radius=self.clip_radius, method=section.method)


def study_surfaces(params: Params, study: Study, model: nn.Module, test: TensorSplit, directions: Directions,
                   grid: Grid, work: Path) -> tuple[dict[int, Surface], dict[int, dict[str, float]]]:
    """One surface per n, the same directions for all, with their wall and CPU times (resumable)."""
    meta = {"model": study.model, "dataset": study.dataset, "split": "test",
            "checkpoint": portable_path(study.checkpoint, repo_root()),
            "dir_file": str(SURFACE_DIR / DIRECTIONS_FILE)}
    timings_path = work / "timings.json"
    timings = _read_json(timings_path)
    surfaces, times = {}, {}
    for n in params.sample_size.n_examples:
        path = work / surface_name(n)
        print(f"{STAGE}: surface with n={n} examples ({grid.points}×{grid.points})", flush=True)
        surfaces[n], times[n] = timed_surface(path, timings, n, lambda n=n, path=path: compute_surface(
            model, test.x, test.y, directions, grid.axis, grid.axis, n_examples=n, out=path,
            meta={**meta, "name": f"n = {n}"}, **grid.engine_options))
        timings[str(n)] = times[n]
        write_json(timings_path, timings)
    return surfaces, times


def auto_choice(params: Params, model: nn.Module, test: TensorSplit, directions: Directions, grid: Grid,
                work: Path) -> dict[str, Any]:
    """What `n_examples="auto"` chooses at the params' tolerance (resumable)."""
    section, path = params.sample_size, work / "auto.json"
    auto = _read_json(path)
    if not auto:
        start = time.perf_counter()
        choice = choose_n_examples(model, test.x, test.y, directions, grid.axis, grid.axis, auto=AutoExamples(
            section.auto_tolerance, tuple(section.auto_candidates), section.auto_pilot_points), **grid.engine_options)
        auto = {"tolerance": choice.tolerance, "n": choice.n_examples, "met": choice.met,
                "pilot_max_ln_loss_se": finite_or_none(choice.max_ln_loss_se),
                "pilot_seconds": time.perf_counter() - start,
                "trials": {str(n): finite_or_none(se) for n, se in choice.trials}}
        write_json(path, auto)
    return auto


def point_timings(params: Params, model: nn.Module, test: TensorSplit, directions: Directions, grid: Grid,
                  work: Path) -> dict[int, list[float]]:
    """Seconds per point at every n in each of the params' rounds, as a benchmark (every n timed in each round
    in turn; resumable). The best round is the least disturbed by other work; the spread is reported."""
    section, path = params.sample_size, work / "point_seconds.json"
    point_rounds = {int(n): value for n, value in _read_json(path).items()}
    if section.timing_points and not point_rounds:
        print(f"{STAGE}: timing {section.timing_points} points at every n, {section.timing_rounds} rounds", flush=True)
        alphas, betas = timing_points(grid.axis, grid.clip_radius, section.timing_points)
        point_rounds = {n: [] for n in section.n_examples}
        for _ in range(section.timing_rounds):
            measured = time_per_point(model, test.x, test.y, directions, section.n_examples, alphas, betas, rounds=1,
                                      seed=params.seed, batch_size=section.batch_size, device=params.device,
                                      method=section.method)
            for n, seconds in measured.items():
                point_rounds[n].append(seconds)
        write_json(path, {str(n): value for n, value in point_rounds.items()})
    return point_rounds


def adaptive_study(params: Params, study: Study, model: nn.Module, test: TensorSplit, directions: Directions,
                   work: Path, surfaces: dict[int, Surface], point_seconds: dict[int, float]
                   ) -> tuple[Surface, dict[str, Any]] | None:
    """The adaptive surface on `adaptive_grid_points`² (resumable) and what checks it: its certificate, a spot
    check, the agreement with the study's fully evaluated surface at the same n (else the reference n) at the
    points both grids share, its time and the estimated time of every point (from the per-point timings)."""
    section = params.sample_size
    if not section.adaptive_grid_points:
        return None
    n = min(section.adaptive_n_examples, len(test))
    size = section.adaptive_grid_points
    axis = np.linspace(-section.extent, section.extent, size)
    path, record_path = work / ADAPTIVE_FILE, work / "adaptive.json"
    record = _read_json(record_path)
    options = dict(seed=params.seed, batch_size=section.batch_size, device=params.device, method=section.method,
                   clip_radius=section.extent if section.clip else None)
    print(f"{STAGE}: adaptive surface with n={n} examples ({size}×{size}, tolerance {section.adaptive_tolerance:g})",
          flush=True)
    if record and path.is_file():
        return Surface.load(path), record
    if path.is_file() and Surface.load(path).meta.get("complete"):
        path.unlink()  # finished, but killed before its time was written: compute it again to time it
    before = _computed_points(path)
    start = time.perf_counter()
    surface = compute_surface(model, test.x, test.y, directions, axis, axis, n_examples=n, out=path,
                              adaptive=section.adaptive_tolerance, meta={
                                  "model": study.model, "dataset": study.dataset, "split": "test",
                                  "checkpoint": portable_path(study.checkpoint, repo_root()),
                                  "dir_file": str(SURFACE_DIR / DIRECTIONS_FILE),
                                  "name": f"adaptive, n = {n}"}, **options)
    certificate = certificate_of(surface)
    seconds = time.perf_counter() - start
    if before:  # resumed mid-way: this run's time scaled to all the evaluations
        seconds *= certificate.evaluations / max(certificate.evaluations - before, 1)
    full = surfaces.get(n, surfaces[max(surfaces)])
    check = {}
    if section.adaptive_spot_checks and certificate.interpolated:
        with point_function(model, test.x, test.y, directions, surface.example_indices, method=section.method,
                            batch_size=section.batch_size, device=params.device) as evaluate:
            check = spot_check(surface, evaluate, section.adaptive_spot_checks, seed=params.seed)
    every_point = point_seconds.get(n, 0.0) * certificate.drawn
    record = {**{key.removeprefix("adaptive_"): value for key, value in certificate.meta().items()},
              "grid_points_total": certificate.grid_points, "grid_points": size,  # per axis, as the params say
              "n": n, "tolerance": section.adaptive_tolerance,
              "evaluations": certificate.evaluations, "evaluated_fraction": certificate.evaluated_fraction,
              "summary": certificate.summary(), "seconds": seconds,
              "every_point_seconds_estimated": every_point or None,
              "speedup_estimated": every_point / seconds if every_point else None,
              "spot_points": check.get("points", 0), "spot_max_abs_ln_loss_error": check.get("max_abs_ln_loss_error"),
              "spot_mean_abs_ln_loss_error": check.get("mean_abs_ln_loss_error"),
              "spot_within_certificate": check.get("within_certificate"),
              "compared_with_n": int(full.meta["n_examples"]), "compared_with_grid_points": len(full.xs),
              **{f"common_{key.removeprefix('common_')}": value
                 for key, value in common_points_agreement(surface, full).items()}}
    write_json(record_path, record)
    return surface, record


def publish_adaptive(root: Path, study: Study, adaptive: tuple[Surface, dict[str, Any]],
                     surfaces: dict[int, Surface], grid: Grid, work: Path) -> Path:
    """The adaptive surface's file and its page beside the fully evaluated surface it was compared with."""
    surface, record = adaptive
    shutil.copy2(work / ADAPTIVE_FILE, root / SURFACE_DIR / ADAPTIVE_FILE)
    full = surfaces.get(record["compared_with_n"], surfaces[max(surfaces)])
    size, full_size = record["grid_points"], record["compared_with_grid_points"]
    checks = {key: record[key] for key in ("evaluations", "interpolated", "max_error", "spot_max_abs_ln_loss_error",
                                           "common_points", "common_max_abs_ln_loss_diff")}
    titles = [f"every point: {full_size}×{full_size}, n = {record['compared_with_n']}",
              f"adaptive: {size}×{size}, n = {record['n']}, tolerance {record['tolerance']:g}"]
    figure = compare_figure([full, surface], titles, columns=2, clip_radius=grid.clip_radius,
                            metrics=[shape_metrics(full), {**shape_metrics(surface), **checks}],
                            title=f"{study.model} on {study.dataset}: an adaptive surface beside a fully evaluated one "
                                  "(\"evaluated points only\" shows where it evaluated)")
    return write_report_page(figure, root / REPORT_DIR / "adaptive.html")


def publish(root: Path, params: Params, study: Study, surfaces: dict[int, Surface], rows: list[dict[str, Any]],
            auto: dict[str, Any], grid: Grid, work: Path,
            adaptive: tuple[Surface, dict[str, Any]] | None = None) -> None:
    """The stage's outputs (surfaces, pages, metrics) and their MLflow copies."""
    ns = params.sample_size.n_examples
    by_n = {row["n"]: row for row in rows}
    surface_dir, report_dir = root / SURFACE_DIR, root / REPORT_DIR
    surface_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(work / DIRECTIONS_FILE, surface_dir / DIRECTIONS_FILE)
    for n in ns:
        shutil.copy2(work / surface_name(n), surface_dir / surface_name(n))
    table = [{**shape_metrics(surfaces[n]),
              **{k: v for k, v in without_timings(by_n[n]).items() if k != "n" and v is not None}} for n in ns]
    title = (f"{study.model} on {study.dataset}: the same directions, n test examples per point "
             f"(fidelity against n = {max(ns)})")
    compare_page = write_report_page(compare_figure([surfaces[n] for n in ns], [f"n = {n}" for n in ns], columns=3,
                                             clip_radius=grid.clip_radius, metrics=table, title=title),
                              report_dir / "compare.html")
    fidelity_page = write_report_page(sample_size_figure([without_timings(row) for row in rows],
                                                         tolerance=params.sample_size.auto_tolerance,
                                                         title=f"{study.model} on {study.dataset}: fidelity vs number "
                                                               f"of examples (speed-ups: {TIMING_PAGE}, measured "
                                                               "on each run's machine)"),
                               report_dir / "fidelity.html")
    summary = {"model": study.model, "dataset": study.dataset, "grid_points": grid.points, "reference_n": max(ns),
               "by_n": {str(row["n"]): without_timings(row) for row in rows}, "auto": without_timings(auto)}
    pages = [compare_page, fidelity_page]
    if adaptive is not None:
        pages.append(publish_adaptive(root, study, adaptive, surfaces, grid, work))
        summary["adaptive"] = without_timings(adaptive[1])
        mlflow.log_metrics({f"adaptive_{key}": float(value) for key, value in adaptive[1].items()
                            if isinstance(value, int | float) and value is not None})
    write_json(root / RESULTS_PATH, summary)
    write_json(root / METRICS_PATH, headline(summary))
    write_plot_table(root / PLOT_PATH, [{key: row[key] for key in PLOT_COLUMNS} for row in rows])

    for row in rows:
        mlflow.log_metrics({key: value for key, value in row.items() if key != "n" and value is not None},
                           step=row["n"])
    mlflow.log_metrics({f"auto_{key}": float(value) for key, value in auto.items()
                        if isinstance(value, int | float) and value is not None})
    with self_contained_copies(pages) as copies:  # MLflow shows each page alone: plotly.js inlined
        for page in copies:
            mlflow.log_artifact(str(page), "reports")
    mlflow.log_artifact(str(root / METRICS_PATH))
    mlflow.log_artifact(str(root / RESULTS_PATH), "results")
    mlflow.log_artifacts(str(surface_dir), "surfaces")


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """metrics/sample_size.json, what `dvc exp show` compares: the smallest n whose surface reaches Pearson r
    0.99 of ln(loss) against the reference, the auto choice, the adaptive surface's checks. The r at every n is
    the full table (results/sample_size.json) and the fidelity plot."""
    by_n = {int(n): row for n, row in summary["by_n"].items()}
    reference = summary["reference_n"]
    settled = [n for n, row in sorted(by_n.items()) if n != reference and (row["pearson_ln_loss"] or 0) >= 0.99]
    values = {"settled_n": settled[0] if settled else None, "auto_n": summary["auto"]["n"]}
    adaptive = summary.get("adaptive")
    if adaptive:
        # short names: each is a column of `dvc exp show` (the full ones are in results/sample_size.json)
        values["adaptive"] = {"evaluated": adaptive["evaluated_fraction"],
                              "max_error": adaptive["spot_max_abs_ln_loss_error"]}
    return values


def publish_timings(root: Path, study: Study, rows: list[dict[str, Any]], auto: dict[str, Any],
                    adaptive: tuple[Surface, dict[str, Any]] | None, point_rounds: dict[int, list[float]],
                    params: Params) -> None:
    """This machine's timings of this run: timings/sample_size.json and .html (speed-up vs n, with the spread of
    the per-point time over rounds), also logged to the MLflow run. Never versioned: see the module's doc."""
    reference = max(point_rounds) if point_rounds else None
    spread = {}
    for n, values in point_rounds.items():
        speedups = [ref / value for ref, value in zip(point_rounds[reference], values, strict=True) if value > 0]
        spread[str(n)] = {"seconds_per_point": values, "min": min(values), "median": float(np.median(values)),
                          "max": max(values), "speedup_per_round": speedups,
                          "speedup_min": min(speedups, default=None), "speedup_max": max(speedups, default=None)}
    path = write_timings(root, STAGE, {
        "what": "seconds per surface (wall, CPU) and per point (each round) at each n; speed-ups against the "
                "largest n; measured on this machine in this run",
        "by_n": {str(row["n"]): {key: row[key] for key in TIMING_KEYS if key in row} for row in rows},
        "point_seconds_by_round": spread, "auto_pilot_seconds": auto.get("pilot_seconds"),
        "adaptive": {key: adaptive[1].get(key) for key in ("seconds", "every_point_seconds_estimated",
                                                           "speedup_estimated")} if adaptive else None})
    rounds = len(next(iter(point_rounds.values()), []))
    page = write_html(sample_size_figure(rows, tolerance=params.sample_size.auto_tolerance, title=(
        f"{study.model} on {study.dataset}: fidelity and speed-up vs number of examples, MEASURED ON THIS MACHINE "
        f"IN THIS RUN ({socket.gethostname()}, {time.strftime('%Y-%m-%d %H:%M')}); per point: best of {rounds} "
        f"round(s), every round in {path.name}")), root / TIMING_PAGE)
    mlflow.log_artifact(str(path), "timings")
    mlflow.log_artifact(str(page), "timings")

def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


if __name__ == "__main__":
    raise SystemExit(main())
