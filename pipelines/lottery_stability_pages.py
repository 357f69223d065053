"""DVC stage `lottery_stability_pages`: the pages of the `lottery_stability` stage, drawn from its outputs alone
(a stage of their own, so that editing a figure or the viewer redraws them without retraining a copy).

Reads results/lottery_stability.json (the barriers and the settings they were measured with), each pair's
path.json under models/lottery_stability/, and the planes (surfaces/lottery_stability/planes/<name>.h5 with their
three points in models/lottery_stability/planes/<name>.json). Writes `reports/lottery_stability/`:

- barriers.html: error and loss barrier vs weights remaining, IMP vs random at each rewind epoch k (Frankle et
  al.'s instability plot), the stability threshold marked;
- paths_level_NN.html: per level, error and loss along each path with ± one-standard-error bands;
- planes_copies.html, planes_tickets.html: the planes side by side with their three checkpoints marked.

The pages are logged as artifacts of a run named "pages" in MLflow experiment "lottery_stability".
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import mlflow

from lossviz.figures import barrier_figure, path_curves_figure, planes_figure
from lossviz.lottery import KINDS, level_name
from lossviz.pages import self_contained_copies, write_report_page
from lossviz.stability import PairResult, PlanePoint, load_pair_results, load_plane_points
from lossviz.surface import Surface
from pipelines.common import repo_root
from pipelines.tracking import stage_run

STAGE = "lottery_stability_pages"
EXPERIMENT = "lottery_stability"
RESULTS = Path("models/lottery_stability")
PLANES = Path("surfaces/lottery_stability/planes")
METRICS_PATH = Path("results/lottery_stability.json")  # the full table (metrics/: its headline)
REPORT_DIR = Path("reports/lottery_stability")
LABEL = {"winning": "IMP", "random": "random"}
PLANE_KINDS = {"copies": "the start m ⊙ θ_k and the two copies",
               "tickets": "the winning, the random and the dense network's copy A"}


def barrier_series(summary: dict[str, Any]) -> dict[str, dict[str, list[float]]]:
    """One series per kind and rewind epoch k: barriers against the fraction of weights remaining."""
    series = {}
    for kind in [kind for kind in KINDS if kind in summary]:
        levels = [summary[kind][level] for level in sorted(summary[kind])]
        for k_key in sorted({key for entry in levels for key in entry if key.startswith("k_")},
                            key=lambda key: int(key.removeprefix("k_"))):
            entries = [entry for entry in levels if k_key in entry]
            series[f"{LABEL[kind]}, k={k_key.removeprefix('k_')}"] = {
                "remaining": [entry["remaining"] for entry in entries],
                "error": [entry[k_key]["error_barrier"] for entry in entries],
                "error_se": [entry[k_key]["error_barrier_se"] for entry in entries],
                "loss": [entry[k_key]["loss_barrier"] for entry in entries],
                "loss_se": [entry[k_key]["loss_barrier_se"] for entry in entries]}
    return series


def path_pages(summary: dict[str, Any], results: list[PairResult], report_dir: Path, model_name: str) -> list[Path]:
    """Per level: every unshared pair's path (a random level-0 pair is the winning one)."""
    threshold, pages = summary["stable_threshold"], []
    for level in sorted({result.level for result in results}):
        chosen = [r for r in results if r.level == level and r.shared_with is None]
        curves = {f"{LABEL[r.kind]}, k={r.rewind_epoch}" + (f", pair {r.pair}" if summary["pairs"] > 1 else ""):
                  r.curve.to_dict() for r in chosen}
        title = (f"{model_name}, level {level} (P_m {100 * chosen[0].remaining:.1f}%): error and loss along the linear "
                 f"path between two copies (± one standard error; dotted: the endpoints' mean + {threshold:g} points)")
        pages.append(write_report_page(path_curves_figure(curves, threshold=threshold, title=title),
                                report_dir / f"paths_{level_name(level)}.html"))
    return pages


def plane_pages(planes: dict[str, tuple[Surface, list[PlanePoint]]], report_dir: Path, model_name: str) -> list[Path]:
    pages = []
    for plane_kind, what in PLANE_KINDS.items():
        chosen = {name: plane for name, plane in planes.items() if name.startswith(f"{plane_kind}_")}
        if not chosen:
            continue
        examples = next(iter(chosen.values()))[0].meta.get("n_examples")
        figure = planes_figure([(surface, {p.name: (p.x, p.y, p.loss) for p in points})
                                for surface, points in chosen.values()], list(chosen),
                               title=f"{model_name}: planes through {what} (Garipov et al.); {examples} test examples")
        pages.append(write_report_page(figure, report_dir / f"planes_{plane_kind}.html"))
    return pages


def main() -> int:
    root = repo_root()
    missing = [str(path) for path in (METRICS_PATH, RESULTS) if not (root / path).exists()]
    if missing:
        print(f"{STAGE}: {', '.join(missing)} missing: run the `lottery_stability` stage first", file=sys.stderr)
        return 2
    summary = json.loads((root / METRICS_PATH).read_text())
    results = load_pair_results(root / RESULTS)
    planes = {path.stem: (Surface.load(path), load_plane_points(root / RESULTS / "planes" / f"{path.stem}.json"))
              for path in sorted((root / PLANES).glob("*.h5"))}
    model_name = f"{summary['model']} on {summary['dataset']}"
    report_dir = root / REPORT_DIR
    title = (f"Instability of {model_name} tickets: barrier between two copies trained from m ⊙ θ_k vs weights "
             f"remaining, IMP vs random (Frankle et al. 2020); {summary['n_examples']} test examples, "
             f"{summary['pairs']} pair(s) per point")
    barriers = barrier_figure(barrier_series(summary), threshold=summary["stable_threshold"], title=title)
    pages = [write_report_page(barriers, report_dir / "barriers.html"),
             *path_pages(summary, results, report_dir, model_name), *plane_pages(planes, report_dir, model_name)]
    with stage_run(EXPERIMENT, "pages", STAGE, root=root):
        mlflow.log_params({"results": METRICS_PATH.as_posix(), **{key: summary[key] for key in (
            "model", "dataset", "n_examples", "path_points", "pairs", "stable_threshold")}})
        with self_contained_copies(pages) as copies:  # MLflow shows each page alone: plotly.js inlined
            for page in copies:
                mlflow.log_artifact(str(page), "reports")
    print(f"{STAGE}: {len(pages)} pages in {REPORT_DIR}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
