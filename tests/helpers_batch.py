"""Helpers for the batch-size study tests: a temporary git + DVC project holding the real `batch_sweep`
and `batch_landscapes` stages, tiny params and a tiny prepared Fashion-MNIST-like dataset."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml

from tests.helpers_project import REPO, make_project, mlflow_client, stage_env

GRID = [8, 32, 128]
EPOCHS = 3


def tiny_params(**sweep) -> dict:
    """The repository's params.yaml (DVC wants every key the stages list) with tiny settings: 300
    training examples, 100 validation, 100 test; fashion_cnn; a 3-point grid of 3 epochs."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params.update(seed=1, device="cpu")
    params["data"].update(datasets=["fashion_mnist"], download=False, val_size=100)
    params["batch_sweep"].update({"dataset": "fashion_mnist", "model": "fashion_cnn", "sampler": "grid",
                                  "batch_sizes": GRID, "epochs": EPOCHS, "max_train_examples": None,
                                  "train_eval_examples": 100, "storage": None, "study_name": None, **sweep})
    params["batch_landscapes"].update(grid_points=5, extent=1.0, n_examples=40, trace_samples=12,
                                      hessian_iterations=10)
    return params




def assert_offline_page(page: Path) -> None:
    """The page opens offline: plotly.js inlined, or the one `plotly.min.js` of its report folder (written
    once per folder) and nothing else loaded (no other src/href in script, link, img, iframe tags)."""
    text = page.read_text()
    tags = re.findall(r"<(?:script|link|img|iframe|source|embed)\b[^>]*>", text, re.I)
    loads = [tag for tag in tags if re.search(r"\b(src|href)\s*=", tag, re.I)]
    if "plotly.js v" in text:
        assert not loads, (page, loads)
    else:
        assert len(loads) == 1 and re.search(r'src="plotly\.min\.js"', loads[0]), (page, loads)
        assert "plotly.js v" in (page.parent / "plotly.min.js").read_text(), page


def stage_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", f"pipelines.{module}", *args]


def run_stage(root: Path, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a stage module from this checkout against the project at `root` (DVC_ROOT)."""
    return subprocess.run(stage_command(module, *args), cwd=REPO, env={**stage_env(), "DVC_ROOT": str(root)},
                          capture_output=True, text=True, timeout=timeout)




__all__ = ["EPOCHS", "GRID", "REPO", "assert_offline_page", "make_project", "mlflow_client", "run_stage",
           "stage_command", "stage_env", "tiny_params"]
