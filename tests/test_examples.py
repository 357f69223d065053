"""docs/examples/: every script runs end to end (surface, metrics, page), its fast path equals the naive loop,
and the regression writes no accuracy anywhere."""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from lossviz.surface import Surface

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
SCRIPTS = {"cnn": "cnn", "gpt_language_model": "gpt_lm", "bert_classifier": "bert", "regression_mlp": "regression",
           "frozen_backbone": "frozen_backbone"}


def _example(module: str):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(module)


def _page_accuracies(page: Path) -> list:
    """The accuracy of every point as the page holds it (the second entry of each hover's customdata)."""
    text = page.read_text()
    triples = re.findall(r"\[(-?[\d.e+-]+|NaN|null),(-?[\d.e+-]+|NaN|null|0),(-?[\d.e+-]+|NaN|null)\]",
                         text.split('"customdata":', 1)[1].split('"hovertemplate"', 1)[0])
    return [json.loads(acc) if acc != "NaN" else None for _, acc, _ in triples]


@pytest.mark.parametrize("module", list(SCRIPTS))
def test_example_runs_end_to_end_and_its_fast_path_matches_naive(module, tmp_path):
    example = _example(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the transformers models' fast-path fallback is tested elsewhere
        written = example.main(tmp_path / "fast", method="fast")
        naive = example.main(tmp_path / "naive", method="naive")
    name = SCRIPTS[module]
    surface = Surface.load(written["surface"])
    assert surface.meta["complete"] and np.isfinite(surface.loss).all() and surface.loss.shape == (5, 5)
    np.testing.assert_allclose(surface.loss, Surface.load(naive["surface"]).loss, rtol=1e-5)
    metrics = json.loads(written["metrics"].read_text())
    assert metrics["centre_loss"] == pytest.approx(float(surface.loss[2, 2]))
    assert metrics["n_points_in_disk"] > 0 and metrics["depth"] > 0
    page = written["page"].read_text()
    assert page.lower().startswith("<!doctype html>") and 'src="http' not in page  # offline
    assert written["page"].name == f"{name}.html" and "plotly.min.js" in page
    accuracies = _page_accuracies(written["page"])
    assert len(accuracies) == 25
    if module == "regression_mlp":
        assert surface.meta["task"] == "regression" and np.isnan(surface.acc).all()
        assert "centre_accuracy" not in metrics and not any(key.startswith("acc") for key in metrics)
        assert accuracies == [None] * 25  # the page holds no accuracy (never 0 %)
        assert "accuracy=" not in page  # nor a hover line or slice for it
    else:
        assert 0 <= metrics["centre_accuracy"] <= 100 and np.isfinite(surface.acc).all()
        assert accuracies == pytest.approx(list(np.asarray(surface.acc).ravel()))
        assert "accuracy=" in page
    if module == "frozen_backbone":
        assert surface.meta["params"] == "trainable"
    if module == "gpt_language_model":
        assert surface.meta["task"] == "language_modelling"


def test_an_example_runs_as_a_script(tmp_path):
    result = subprocess.run([sys.executable, str(EXAMPLES / "cnn.py"), str(tmp_path)], capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert {p.name for p in tmp_path.iterdir()} >= {"cnn.h5", "cnn.json", "cnn.html", "plotly.min.js"}
