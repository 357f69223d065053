"""The batch-size study end to end (`dvc repro batch_landscapes` in a temporary repository: the sweep on a
real journal file, the surfaces, the verdict, a real SQLite MLflow store), and the verdict's arithmetic
(`lossviz.sharpness`) on examples whose answers are known."""

from __future__ import annotations

import itertools
import json
import math
import subprocess

import h5py
import numpy as np
import optuna
import pytest
import yaml
from helpers_batch import EPOCHS, GRID, assert_offline_page, make_project, mlflow_client, stage_env, tiny_params
from optuna.trial import TrialState

from lossviz.figures import verdict_figure
from lossviz.sharpness import (
    SHARPNESS_MEASURES,
    correlation_table,
    generalization_gap,
    sharpness_measures,
    spearman_p_value,
)
from lossviz.stats import spearman


def test_dvc_repro_runs_the_sweep_and_the_verdict(tmp_path):
    stages = make_project(tmp_path, tiny_params(), ("batch_sweep", "batch_landscapes"))
    assert {"lossviz/training.py", "data/prepared"} <= set(stages["batch_sweep"]["deps"])
    assert {"lossviz/sharpness.py", "models/batch_sweep"} <= set(stages["batch_landscapes"]["deps"])
    run = subprocess.run(["dvc", "repro", "batch_landscapes"], cwd=tmp_path, env=stage_env(), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    # the sweep: one trial per grid point, on a journal file the checkout keeps (no DVC output: it records times)
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    assert {o["path"] for o in lock["batch_sweep"]["outs"]} == {"models/batch_sweep"}
    assert "reports/batch_sweep" in {o["path"] for o in lock["batch_landscapes"]["outs"]}  # drawn there
    info = json.loads((tmp_path / "studies/batch_sweep/study.json").read_text())
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "studies/batch_sweep/journal.log")))
    study = optuna.load_study(study_name=info["study"], storage=storage)
    assert len(study.trials) == len(GRID) and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert sorted(t.params["batch_size"] for t in study.trials) == GRID
    for size in GRID:
        assert (tmp_path / f"models/batch_sweep/bs_{size:05d}/model.pt").is_file()

    # MLflow: a parent run per study, a child per trial with the same metric names, batch size numeric
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("batch_sweep")
    parents = client.search_runs([experiment.experiment_id], "tags.`lossviz.role` = 'study'")
    children = client.search_runs([experiment.experiment_id], "tags.`lossviz.role` = 'trial'")
    assert len(parents) == 1 and parents[0].info.run_id == study.user_attrs["lossviz.mlflow_parent_run_id"]
    assert len(children) == len(GRID)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert sorted(r.data.metrics["batch_size"] for r in children) == GRID
    names = {frozenset(r.data.metrics) for r in children}
    assert len(names) == 1 and {"train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"} <= set(
        next(iter(names)))
    for child in children:
        for metric in ("train_acc", "val_loss", "test_loss", "test_acc"):
            steps = [m.step for m in client.get_metric_history(child.info.run_id, metric)]
            assert sorted(steps) == list(range(1, EPOCHS + 1)), metric
        artifacts = {a.path for a in client.list_artifacts(child.info.run_id)}
        assert artifacts == {"checkpoint", "landscape"}  # the surface page went to the trial's own run
        page = client.list_artifacts(child.info.run_id, "landscape")[0].path
        assert page == f"landscape/bs_{int(child.data.metrics['batch_size']):05d}.html"
        assert child.data.metrics["landscape_hessian_trace"] > 0
    optuna_pages = {a.path for a in client.list_artifacts(parents[0].info.run_id, "optuna")}
    assert optuna_pages == {"optuna/history.html", "optuna/slice.html", "optuna/intermediate_values.html"}
    sweep_report = tmp_path / "reports/batch_sweep"  # drawn by batch_landscapes from the study's journal
    assert sorted(page.name for page in sweep_report.glob("*.html")) == [
        "history.html", "index.html", "intermediate_values.html", "slice.html"]
    assert info["study"] in (sweep_report / "history.html").read_text()
    assert parents[0].info.status == "FINISHED"

    # the landscapes and the verdict
    verdict = json.loads((tmp_path / "results/batch_sweep.json").read_text())
    rows = [verdict["per_batch_size"][str(size)] for size in GRID]
    sweep = json.loads((tmp_path / "models/batch_sweep/sweep.json").read_text())
    trials = {t["batch_size"]: t for t in sweep["trials"]}
    for row in rows:
        trial = trials[row["batch_size"]]
        assert row["test_acc"] == trial["final_test_acc"]
        assert row["gap_acc"] == pytest.approx(trial["final_train_acc"] - trial["final_test_acc"])
        assert row["gap_loss"] == pytest.approx(trial["final_test_loss"] - trial["final_train_loss"])
        assert set(SHARPNESS_MEASURES) <= set(row)
    for measure in SHARPNESS_MEASURES:
        for target in ("test_error", "gap_acc", "gap_loss"):
            expected = spearman([r[measure] for r in rows], [r[target] for r in rows])
            got = verdict["correlations"][measure][target]["spearman"]
            assert (got is None and math.isnan(expected)) or got == pytest.approx(expected)
    directions_seed = set()
    for size in GRID:
        with h5py.File(tmp_path / f"surfaces/batch_landscapes/bs_{size:05d}.h5") as f:
            meta = json.loads(f.attrs["meta"])
            directions_seed.add(meta["direction_seed"])
            assert f["test_loss"].shape == (5, 5) and np.isfinite(f["test_loss"][()]).all()
    assert directions_seed == {0}
    report = tmp_path / "reports/batch_landscapes"
    compare = (report / "compare.html").read_text()
    for size in GRID:
        assert f"batch size {size} · test acc {100 * trials[size]['final_test_acc']:.2f}%" in compare
    for page in ("compare.html", "verdict.html", "bs_00008.html"):
        assert_offline_page(report / page)
    assert "hessian_top_eigenvalue" in (report / "verdict.html").read_text()

    again = subprocess.run(["dvc", "repro", "batch_landscapes"], cwd=tmp_path, env=stage_env(),
                           capture_output=True, text=True, timeout=300)
    # validate, batch_sweep and batch_landscapes: nothing reruns
    assert again.returncode == 0 and again.stdout.count("didn't change") == 3, again.stdout + again.stderr


def test_converged_protocol_is_its_own_study_early_stopped_beside_the_fixed_one(tmp_path):
    """`dvc repro` of both protocols: the converged one early-stops every batch size (its own study in the same
    journal, its own outputs), the fixed study keeps the name it had before protocols existed, and the report
    sets the two verdicts side by side."""
    grid = [8, 64]
    params = tiny_params(batch_sizes=grid, epochs=1, converged_max_epochs=8, converged_patience=1)
    make_project(tmp_path, params, ("batch_sweep", "batch_landscapes", "batch_sweep_converged",
                                    "batch_landscapes_converged"))
    run = subprocess.run(["dvc", "repro"], cwd=tmp_path, env=stage_env(), capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(
        str(tmp_path / "studies/batch_sweep/journal.log")))
    names = {protocol: json.loads((tmp_path / path).read_text())["study"] for protocol, path in
             (("fixed", "studies/batch_sweep/study.json"), ("converged", "studies/batch_sweep/study_converged.json"))}
    assert names["fixed"] != names["converged"]
    settings = {protocol: optuna.load_study(study_name=name, storage=storage).user_attrs["lossviz.settings"]
                for protocol, name in names.items()}
    assert "protocol" not in settings["fixed"] and settings["fixed"]["train"]["epochs"] == 1
    assert settings["converged"]["protocol"] == "converged"
    assert {key: settings["converged"]["train"][key] for key in ("epochs", "early_stopping", "patience")} == {
        "epochs": 8, "early_stopping": True, "patience": 1}

    fixed = json.loads((tmp_path / "results/batch_sweep.json").read_text())
    converged = json.loads((tmp_path / "results/batch_sweep_converged.json").read_text())
    assert (fixed["protocol"], converged["protocol"]) == ("fixed", "converged")
    for size in grid:
        row = converged["per_batch_size"][str(size)]
        trial = json.loads((tmp_path / f"models/batch_sweep_converged/bs_{size:05d}/trial.json").read_text())
        assert row["stopped_epoch"] == trial["stopped_epoch"] and row["test_acc"] == trial["final_test_acc"]
        # early stopping: ended by patience (best epoch + 1) or by the cap, the best epoch's weights kept
        assert row["stopped_early"] == (row["stopped_epoch"] < 8)
        assert row["stopped_early"] is False or row["stopped_epoch"] == row["best_epoch"] + 1
        assert fixed["per_batch_size"][str(size)]["stopped_epoch"] == 1
        assert (tmp_path / f"surfaces/batch_landscapes_converged/bs_{size:05d}.h5").is_file()
    assert "early-stopped on validation loss, ≤ 8 epochs" in (
        tmp_path / "reports/batch_landscapes_converged/compare.html").read_text()
    assert (tmp_path / "reports/batch_sweep_converged/history.html").is_file()

    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name("batch_sweep")
    trials = client.search_runs([experiment.experiment_id], "tags.`lossviz.role` = 'trial'")
    assert sorted((r.data.tags["lossviz.protocol"], r.data.tags["lossviz.batch_size"]) for r in trials) == sorted(
        (protocol, str(size)) for protocol in ("fixed", "converged") for size in grid)

    from pipelines import report

    claims = report.batch_claims(fixed) + report.batch_claims(converged)
    assert sum("[the paper's protocol: 1 epochs" in row[0] for row in claims) == 2
    assert sum("[converged: early-stopped" in row[0] for row in claims) == 2
    (comparison,) = report.protocol_comparison(fixed, converged)
    best = [" and ".join(map(str, report.best_batch_sizes(m["per_batch_size"]))) for m in (fixed, converged)]
    assert f"best batch size {best[0]} vs {best[1]}" in comparison[2]
    assert comparison[3] in ("survives", "partly", "does not survive")


# ------------------------------------------------------------------------------ the verdict's arithmetic

def brute_force_p(a, b) -> float:
    """Two-sided permutation p of Spearman's ρ by listing every ordering (no ties)."""
    def rho(x, y):
        rx, ry = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
        n = len(x)
        return 1 - 6 * float(((rx - ry) ** 2).sum()) / (n * (n * n - 1))

    observed = abs(rho(a, b))
    values = [abs(rho(a, [b[i] for i in order])) for order in itertools.permutations(range(len(b)))]
    return sum(v >= observed - 1e-12 for v in values) / len(values)


def test_correlations_on_a_known_example():
    # five batch sizes: depth rises with test error exactly; the trace follows it with two swaps (ρ = 0.8);
    # flatness runs the other way; convex fraction is constant (no correlation defined)
    rows = [
        {"test_error": 0.10, "gap_acc": 0.05, "gap_loss": 0.30, "depth": 1.0, "flatness": 0.9,
         "hessian_trace": 20.0, "convex_fraction": 0.5},
        {"test_error": 0.12, "gap_acc": 0.04, "gap_loss": 0.20, "depth": 2.0, "flatness": 0.7,
         "hessian_trace": 10.0, "convex_fraction": 0.5},
        {"test_error": 0.15, "gap_acc": 0.03, "gap_loss": 0.25, "depth": 3.0, "flatness": 0.5,
         "hessian_trace": 40.0, "convex_fraction": 0.5},
        {"test_error": 0.20, "gap_acc": 0.02, "gap_loss": 0.10, "depth": 4.0, "flatness": 0.3,
         "hessian_trace": 30.0, "convex_fraction": 0.5},
        {"test_error": 0.30, "gap_acc": 0.01, "gap_loss": 0.05, "depth": 5.0, "flatness": 0.1,
         "hessian_trace": 50.0, "convex_fraction": 0.5},
    ]
    table = correlation_table(rows, measures=["depth", "flatness", "hessian_trace", "convex_fraction"])
    assert table["depth"]["test_error"]["spearman"] == pytest.approx(1.0)
    assert table["depth"]["test_error"]["p_value"] == pytest.approx(2 / 120)  # identity and reversal
    assert table["flatness"]["test_error"]["spearman"] == pytest.approx(-1.0)
    assert table["depth"]["gap_acc"]["spearman"] == pytest.approx(-1.0)
    # trace ranks [2, 1, 4, 3, 5]: ρ = 1 − 6·4/(5·24) = 0.8; |ρ| ≥ 0.8 for 16 of the 120 orderings
    assert table["hessian_trace"]["test_error"]["spearman"] == pytest.approx(0.8)
    assert table["hessian_trace"]["test_error"]["p_value"] == pytest.approx(16 / 120)
    assert table["hessian_trace"]["test_error"]["p_value"] == pytest.approx(
        brute_force_p([r["hessian_trace"] for r in rows], [r["test_error"] for r in rows]))
    # gap_loss ranks [5, 3, 4, 2, 1] against depth [1..5]: Σd² = 16+1+1+4+16 = 38
    gap_loss = [r["gap_loss"] for r in rows]
    depth = [r["depth"] for r in rows]
    assert table["depth"]["gap_loss"]["spearman"] == pytest.approx(1 - 6 * 38 / 120)
    assert table["depth"]["gap_loss"]["p_value"] == pytest.approx(brute_force_p(depth, gap_loss))
    assert math.isnan(table["convex_fraction"]["test_error"]["spearman"])
    assert math.isnan(table["convex_fraction"]["test_error"]["p_value"])
    assert table["depth"]["test_error"]["n"] == 5


def test_missing_values_drop_pairs_and_large_samples_use_monte_carlo():
    rows = [{"test_error": e, "gap_acc": 0.0, "gap_loss": 0.0, "depth": d}
            for e, d in [(0.1, 1.0), (0.2, math.nan), (0.3, 3.0), (0.4, 4.0)]]
    cell = correlation_table(rows, measures=["depth"], targets=["test_error"])["depth"]["test_error"]
    assert cell["n"] == 3 and cell["spearman"] == pytest.approx(1.0) and cell["p_value"] == pytest.approx(2 / 6)
    rng = np.random.default_rng(0)
    a = rng.normal(size=12)
    assert spearman_p_value(a, a + 0.01 * rng.normal(size=12), samples=2000) == pytest.approx(1 / 2001)
    assert 0.05 < spearman_p_value(a, rng.normal(size=12), samples=2000) <= 1


def test_gap_orientation_and_measure_selection():
    assert generalization_gap(train_acc=0.95, test_acc=0.90, train_loss=0.1, test_loss=0.3) == pytest.approx(
        {"gap_acc": 0.05, "gap_loss": 0.2})
    shape = {"depth": 3.0, "flatness": 0.2, "centre_curvature_mean": 7.0, "convex_fraction": 0.9, "other": 1}
    hessian = {"hessian_top_eigenvalue": 50.0, "hessian_trace": 400.0, "hessian_trace_se": 9.0}
    assert sharpness_measures(shape, hessian) == {
        "depth": 3.0, "flatness": 0.2, "centre_curvature": 7.0, "convex_fraction": 0.9,
        "hessian_top_eigenvalue": 50.0, "hessian_trace": 400.0}
    assert list(sharpness_measures(shape, hessian)) == list(SHARPNESS_MEASURES)


def test_verdict_figure_tables_rows_and_correlations():
    rows = [{"batch_size": 8, "test_acc": 0.91234567, "depth": 2.0}, {"batch_size": 64, "test_acc": 0.5, "depth": 1.0}]
    table = {"depth": {"test_error": {"spearman": 0.8, "p_value": 16 / 120}, "gap_acc": {"spearman": math.nan,
                                                                                          "p_value": math.nan}}}
    figure = verdict_figure(rows, ["batch_size", "test_acc", "depth"], table, {"depth": "larger is sharper"},
                            ["test_error", "gap_acc"], title="verdict <b>x</b>")
    per_row, per_measure = figure.data
    assert list(per_row.header.values) == ["batch_size", "test_acc", "depth"]
    assert [list(column) for column in per_row.cells.values] == [["8", "64"], ["0.9123", "0.5"], ["2", "1"]]
    assert list(per_measure.header.values) == ["measure", "which way", "vs test_error", "vs gap_acc"]
    assert [list(column) for column in per_measure.cells.values] == [
        ["depth"], ["larger is sharper"], ["+0.80 (p = 0.133)"], ["undefined (a constant side)"]]
    assert figure.layout.title.text == "verdict &lt;b&gt;x&lt;/b&gt;"  # text from files never renders as markup
