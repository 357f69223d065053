"""The sweep's report pages, `reports/batch_sweep/`: Optuna's optimization history, intermediate values and
slice figures of the finished study as self-contained pages, and their gallery. The `batch_landscapes`
stage draws them, reading the study back from its storage, so that the `batch_sweep` stage only trains (and
DVC reruns it only when the training code changes, never for a figure)."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
import plotly.graph_objects as go
from optuna import visualization

from lossviz.pages import write_gallery, write_report_page
from pipelines.sweep.settings import SweepError
from pipelines.sweep.storage import open_storage, redact


def load_finished_study(url: str, study_name: str, root: Path) -> optuna.Study:
    """The study the sweep stage finished (read only: no sampler, no heartbeats)."""
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(url, root))
    except KeyError:
        raise SweepError(f"no study {study_name!r} in {redact(url)}: read the sweep's study from the storage "
                         "the `batch_sweep` stage used (LOSSVIZ_OPTUNA_STORAGE or params batch_sweep.storage)"
                         ) from None


def optuna_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """Optuna's own figures of the study, by page name."""
    figures = {"history": visualization.plot_optimization_history(study),
               "intermediate_values": visualization.plot_intermediate_values(study)}
    param = "batch_size" if any("batch_size" in t.params for t in study.trials) else "log2_batch_size"
    figures["slice"] = visualization.plot_slice(study, params=[param])
    return figures


def write_sweep_pages(study: optuna.Study, report: Path) -> list[Path]:
    """`report` afresh: one page per Optuna figure and an index. Returns the figure pages."""
    if report.exists():
        shutil.rmtree(report)
    pages = [write_report_page(figure, report / f"{name}.html", title=f"{study.study_name}: {name.replace('_', ' ')}")
             for name, figure in optuna_figures(study).items()]
    write_gallery(report, title=f"Batch-size sweep {study.study_name}")
    return pages
