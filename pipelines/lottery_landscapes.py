"""DVC stage `lottery_landscapes` (the seed paper's Figures 5–7): loss surfaces of the `lottery` stage's
tickets at the levels in params `lottery_landscapes.levels`, for each kind (winning, random), along ONE seeded
pair of random directions masked per ticket (d ⊙ m, then filter-normalized: pruned coordinates stay zero),
on the same seeded test examples.

Outputs (DVC): `surfaces/lottery_landscapes/<kind>_level_<NN>.h5`; `reports/lottery_landscapes/`:
winning.html (Figure 6), random.html (Figure 7), side_by_side.html (winning vs random per level), subplot
titles (method, P_m, test accuracy), and figure5.html (test accuracy and early-stop iteration vs weights
remaining for both kinds, and the per-level training curves); `metrics/lottery_landscapes.json` (shape
metrics per kind and level). All of it in an MLflow run of experiment "lottery_landscapes" (shape metrics
per kind with step = level, the pages and surfaces as artifacts).

Resume: surfaces are computed into `tmp/resume/lottery_landscapes-<digest>/` (named by the params used,
the tickets' files and the code), each flushed point by point; a killed run picks up where it stopped.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import mlflow
import numpy as np
import torch

from lossviz.checkpoints import load_model_weights
from lossviz.data import DataError, Splits, load_splits
from lossviz.directions import random_directions
from lossviz.engine import compute_surface
from lossviz.figures import compare_figure, lottery_figure, shape_metrics
from lossviz.lottery import LevelResult, level_dir, load_mask, load_results
from lossviz.models import build_model
from lossviz.pages import self_contained_copies, write_report_page
from lossviz.params import Params
from lossviz.stats import finite_or_none
from lossviz.surface import Surface
from pipelines.common import data_root, repo_root, resume_path, stage_params, write_json
from pipelines.tracking import log_splits, stage_run

STAGE = "lottery_landscapes"
TICKETS = Path("models/lottery")
SURFACE_DIR = Path("surfaces/lottery_landscapes")
REPORT_DIR = Path("reports/lottery_landscapes")
METRICS_PATH = Path("metrics/lottery_landscapes.json")  # headline numbers (`dvc metrics show`)
RESULTS_PATH = Path("results/lottery_landscapes.json")  # shape metrics of every kind and level
METHOD = {"winning": "IMP", "random": "random"}


def used_params(params: Params) -> dict[str, object]:
    return {"seed": params.seed, "device": params.device, "data.normalize": params.data.normalize,
            "lottery.model": params.lottery.model, "lottery.dataset": params.lottery.dataset,
            **{f"lottery_landscapes.{key}": value for key, value in params.lottery_landscapes.model_dump().items()}}


def check(params: Params, root: Path) -> list[str]:
    """Problems found before any output is touched (each names the key, the value and what is allowed)."""
    section, problems = params.lottery_landscapes, []
    too_high = [level for level in section.levels if level >= params.lottery.levels]
    if too_high:
        problems.append(f"lottery_landscapes.levels: got {too_high}; allowed: 0 … {params.lottery.levels - 1} "
                        "(below lottery.levels)")
    if "random" in section.kinds and not params.lottery.random_tickets:
        problems.append("lottery_landscapes.kinds: got 'random' but lottery.random_tickets is false")
    if not problems:
        missing = [str(level_dir(TICKETS, kind, level)) for kind in section.kinds for level in section.levels
                   if not (level_dir(root / TICKETS, kind, level) / "result.json").is_file()]
        if missing:
            problems.append(f"models/lottery lacks {', '.join(missing[:4])}: run the `lottery` stage first")
    return problems


def surface_name(kind: str, level: int) -> str:
    return f"{kind}_level_{level:02d}.h5"


def work_dir(root: Path, params: Params) -> Path:
    section = params.lottery_landscapes
    tickets = [level_dir(root / TICKETS, kind, level) / name
               for kind in section.kinds for level in section.levels for name in ("mask.pt", "model.pt")]
    return resume_path(root, STAGE, used_params(params), tickets)


def ticket_surface(params: Params, root: Path, work: Path, test, input_shape, num_classes, kind: str,
                   result: LevelResult) -> Surface:
    section = params.lottery_landscapes
    directory = level_dir(root / TICKETS, kind, result.level)
    model = load_model_weights(build_model(params.lottery.model, input_shape, num_classes), directory / "model.pt")
    model.eval()
    mask = load_mask(directory / "mask.pt")
    directions = random_directions(model, seed=section.direction_seed, norm=section.norm, ignore=section.ignore,
                                   mask=mask)
    grid = np.linspace(-section.extent, section.extent, section.grid_points)
    p_m = f"{100 * result.remaining:.1f}%"
    print(f"{STAGE}: {kind} level {result.level} (P_m {p_m}): {section.grid_points}×{section.grid_points}",
          flush=True)
    return compute_surface(
        model, test.x, test.y, directions, grid, grid, n_examples=section.n_examples, seed=params.seed,
        device=params.device, clip_radius=section.extent if section.clip else None, method=section.method,
        out=work / surface_name(kind, result.level),
        meta={"method": METHOD[kind], "p_m": p_m, "test_acc": 100 * result.test_acc, "kind": kind,
              "level": result.level, "fraction_remaining": result.remaining, "model": params.lottery.model,
              "dataset": params.lottery.dataset, "masked_directions": True})


def main() -> int:
    root = repo_root()
    params = stage_params(root)
    section = params.lottery_landscapes
    loaded = load_test_split(params, root)
    if isinstance(loaded, list):
        print(f"{STAGE}: invalid params\n" + "\n".join(f"  {line}" for line in loaded), file=sys.stderr)
        return 2
    splits = loaded
    results = load_results(root / TICKETS)
    by_level = {kind: {r.level: r for r in results[kind]} for kind in results}
    work = work_dir(root, params)
    work.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(params.seed)

    run_name = f"{params.lottery.model}-{params.lottery.dataset}-grid{section.grid_points}"
    with stage_run(STAGE, run_name, STAGE, root=root):
        mlflow.log_params(used_params(params))
        log_splits(splits, only=("test",))
        mlflow.log_metrics({"grid_points": section.grid_points, "n_examples": section.n_examples,
                            "extent": section.extent})
        surfaces = {(kind, level): ticket_surface(params, root, work, splits.test, splits.input_shape,
                                                  splits.num_classes, kind, by_level[kind][level])
                    for kind in section.kinds for level in section.levels}
        metrics = {key: shape_metrics(surface) for key, surface in surfaces.items()}
        surface_dir = root / SURFACE_DIR
        surface_dir.mkdir(parents=True, exist_ok=True)
        for kind, level in surfaces:
            shutil.copy2(work / surface_name(kind, level), surface_dir / surface_name(kind, level))
        pages = write_pages(root / REPORT_DIR, params, surfaces, metrics, results)
        full = metrics_summary(params, by_level, metrics)
        metrics_path = write_json(root / RESULTS_PATH, full)
        write_json(root / METRICS_PATH, headline(full, section.kinds))
        for kind, level in surfaces:
            mlflow.log_metrics({f"{kind}_{key}": value for key, value in _plain(metrics[kind, level]).items()
                                if value is not None}, step=level)
        with self_contained_copies(pages) as copies:  # MLflow shows each page alone: plotly.js inlined
            for page in copies:
                mlflow.log_artifact(str(page), "reports")
        mlflow.log_artifact(str(metrics_path))
        mlflow.log_artifacts(str(surface_dir), "surfaces")
    shutil.rmtree(work, ignore_errors=True)
    for (kind, level), values in metrics.items():
        print(f"{STAGE}: {kind:8s} level {level:2d}: centre loss {values['centre_loss']:.4f}, depth "
              f"{values['depth']:.3f}, flatness {values['flatness']:.3f}, convex {values['convex_fraction']:.3f}")
    return 0


def load_test_split(params: Params, root: Path) -> Splits | list[str]:
    """The lottery's dataset (test split used), or every problem found with the params."""
    problems = check(params, root)
    if problems:
        return problems
    try:
        splits = load_splits(data_root(root), params.lottery.dataset, val_size=0, seed=params.seed,
                             normalize=params.data.normalize)
    except (ValueError, DataError) as error:
        return [str(error)]
    n_examples = params.lottery_landscapes.n_examples
    if n_examples > len(splits.test):
        return [f"lottery_landscapes.n_examples: got {n_examples}; allowed: 1 … {len(splits.test)} "
                "(the test-set size)"]
    return splits


def write_pages(report_dir: Path, params: Params, surfaces: dict[tuple[str, int], Surface],
                metrics: dict[tuple[str, int], dict], results: dict[str, list[LevelResult]]) -> list[Path]:
    """The seed paper's Figures 5-7: each kind's surfaces as pruning proceeds, both kinds level by level, and
    the tickets' accuracy curves."""
    section = params.lottery_landscapes
    model_name = f"{params.lottery.model} on {params.lottery.dataset}"
    clip = section.extent if section.clip else None
    figure_numbers = {"winning": 6, "random": 7}

    def compare(keys: list[tuple[str, int]], title: str, columns: int):  # a plotly figure
        return compare_figure([surfaces[k] for k in keys], columns=columns, clip_radius=clip,
                              shared_z=section.shared_z, metrics=[metrics[k] for k in keys], title=title)

    pages = [write_report_page(compare([(kind, level) for level in section.levels],
                                f"{METHOD[kind]} tickets of {model_name} as pruning proceeds (seed paper, Figure "
                                f"{figure_numbers[kind]}); subplot titles: method, P_m, test accuracy", 3),
                        report_dir / f"{kind}.html") for kind in section.kinds]
    if len(section.kinds) > 1:
        pages.append(write_report_page(compare([(kind, level) for level in section.levels for kind in section.kinds],
                                        f"{model_name}: winning vs random tickets at the same P_m, level by level",
                                        len(section.kinds)), report_dir / "side_by_side.html"))
    pages.append(write_report_page(lottery_figure(
        results, title=f"Lottery tickets of {model_name}: winning (IMP) vs random masks (seed paper, Figure 5)"),
        report_dir / "figure5.html"))
    return pages


def metrics_summary(params: Params, by_level: dict[str, dict[int, LevelResult]],
                    metrics: dict[tuple[str, int], dict]) -> dict:
    section = params.lottery_landscapes
    summary = {"model": params.lottery.model, "dataset": params.lottery.dataset, "grid_points": section.grid_points}
    for kind in section.kinds:
        summary[kind] = {f"level_{level:02d}": {"remaining": by_level[kind][level].remaining,
                                                 "test_acc": by_level[kind][level].test_acc,
                                                 **_plain(metrics[kind, level])} for level in section.levels}
    return summary


def headline(full: dict, kinds: list[str]) -> dict:
    """metrics/lottery_landscapes.json, what `dvc exp show` compares: each kind's depth and convex fraction at
    the deepest level drawn (the full table: results/lottery_landscapes.json)."""
    deepest = max(full[kinds[0]])
    return {"deepest_remaining": full[kinds[0]][deepest]["remaining"],
            **{key: {kind: full[kind][deepest].get(key) for kind in kinds} for key in ("depth", "convex_fraction")}}


def _plain(values: dict) -> dict[str, float | None]:
    """JSON-safe floats (NaN → None)."""
    return {key: finite_or_none(value) for key, value in values.items() if isinstance(value, int | float | np.number)}


if __name__ == "__main__":
    raise SystemExit(main())
