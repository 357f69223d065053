"""The user's day, end to end, on the real pipeline with tiny params: `dvc repro` in a fresh git + DVC
project, a no-op second run, `dvc push` and a second clone's `dvc pull` restoring identical files,
`dvc exp run -S` tagging its MLflow runs, and the MLflow server answering REST calls and rendering the
runs in a real browser."""

from __future__ import annotations

import configparser
import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT, write_fashion_mnist_like
from tests.helpers_browser import Browser, network_urls
from tests.helpers_project import stage_env
from tests.helpers_servers import api
from tests.helpers_servers import mlflow_server as running_mlflow_server

BIN = Path(sys.executable).parent
STAGES = list(yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"])


def env() -> dict[str, str]:
    return {**stage_env(), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@t"}


def run(command: list[str], cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}: {result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def tiny_params(raw_dir: Path) -> dict:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    params.update(seed=3, device="cpu")
    params["data"].update(datasets=["fashion_mnist"], fashion_mnist_dir=str(raw_dir), download=False,
                          verify_checksums=False, val_size=100)
    params["train"].update(model="lenet5", epochs=1, batch_size=50, train_eval_examples=100)
    params["sample_size"].update(n_examples=[5, 20, 60], grid_points=5, auto_candidates=[5, 20, 60],
                                 auto_tolerance=0.5, auto_pilot_points=3, timing_points=2, timing_rounds=1,
                                 adaptive_grid_points=33, adaptive_n_examples=20, adaptive_spot_checks=10)
    params["batch_sweep"].update(batch_sizes=[25, 100], epochs=1, max_train_examples=None,
                                 train_eval_examples=100)
    params["batch_landscapes"].update(grid_points=5, n_examples=40, trace_samples=2, hessian_iterations=5)
    params["lottery"].update(epochs=1, batch_size=50, levels=2, rate=0.5, max_train_examples=None,
                             train_eval_examples=100)
    params["lottery_landscapes"].update(levels=[0, 1], grid_points=5, n_examples=40)
    params["lottery_stability"].update(levels=[0, 1], rewind_epochs=[0], n_examples=40, path_points=5,
                                       plane_grid_points=3, plane_n_examples=40)
    return params


def dvc_config(root: Path) -> configparser.ConfigParser:
    config = configparser.ConfigParser()
    config.read(root / ".dvc" / "config")
    return config


def output_digests(root: Path) -> dict[str, str]:
    """SHA-256 of every file of every DVC output (what `dvc pull` must restore)."""
    digests = {}
    for stage in yaml.safe_load((root / "dvc.yaml").read_text())["stages"].values():
        for out in stage.get("outs", []):
            path = root / (out if isinstance(out, str) else next(iter(out)))
            files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
            for file in files:
                digests[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A fresh clone-like project (git + DVC, a local remote) after a full `dvc repro` on tiny params."""
    base = tmp_path_factory.mktemp("e2e")
    root = base / "project"
    root.mkdir()
    for name in ("lossviz", "pipelines"):
        shutil.copytree(REPO_ROOT / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO_ROOT / name, root / name)
    (root / "mlruns").mkdir()
    raw = write_fashion_mnist_like(base / "raw", n_train=600, n_test=200)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params(raw), sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], root)
    run([str(BIN / "dvc"), "init", "-q"], root)
    run([str(BIN / "dvc"), "remote", "add", "-d", "local", str(base / "remote")], root)
    # The repository's offline plots template, configured as .dvc/config does it.
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", root / ".dvc" / "plots")
    html_template = dvc_config(REPO_ROOT)["plots"]["html_template"]
    run([str(BIN / "dvc"), "config", "plots.html_template", html_template], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "project"], root)
    started = time.perf_counter()
    first = run([str(BIN / "dvc"), "repro"], root)
    root.joinpath("repro.log").write_text(first.stdout + first.stderr + f"\n{time.perf_counter() - started:.1f} s")
    return root


def test_repro_runs_every_stage_and_a_second_repro_is_a_noop(project):
    log = (project / "repro.log").read_text()
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log, stage
    index = (project / "reports" / "index.html").read_text()
    assert "measured here" in index and "sample_size/compare.html" in index
    assert "lottery_landscapes/figure5.html" in index and "batch_landscapes/compare.html" in index
    started = time.perf_counter()
    second = run([str(BIN / "dvc"), "repro"], project)
    assert "Running stage" not in second.stdout
    assert time.perf_counter() - started < 30
    status = run([str(BIN / "dvc"), "status"], project)
    assert "up to date" in status.stdout


def test_push_then_pull_in_a_new_clone_restores_identical_outputs(project, tmp_path):
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "outputs"], project)
    run([str(BIN / "dvc"), "push"], project)
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(project), str(clone)], tmp_path)
    assert not (clone / "models" / "train" / "model.pt").exists()
    run([str(BIN / "dvc"), "pull"], clone)
    original, pulled = output_digests(project), output_digests(clone)
    assert len(original) > 40 and "models/train/model.pt" in original
    assert any(path.startswith("models/lottery/winning/level_01/") for path in original)
    assert pulled == original
    status = run([str(BIN / "dvc"), "status"], clone)
    assert "up to date" in status.stdout


def test_exp_run_with_a_param_reruns_dependants_and_tags_mlflow(project):
    result = run([str(BIN / "dvc"), "exp", "run", "-n", "longer-train", "-S", "train.epochs=2"], project)
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"validate", "train", "sample_size", "report"}  # validate reruns on any param, alone
    import sqlite3

    rows = sqlite3.connect(project / "mlruns" / "mlflow.db").execute(
        "select value from tags where key = 'dvc.exp'").fetchall()
    assert ("longer-train",) in rows


def plot_rows(plots: dict, plot_id: str) -> list[dict]:
    """The table rows of one plot of `dvc plots show --json` (with several y fields DVC repeats each row
    once per field, naming it in "field")."""
    values = plots[plot_id][0]["content"]["data"]["values"]
    first_field = values[0].get("field")
    return [row for row in values if row.get("field") == first_field]


def test_dvc_plots_show_the_metrics_figures_and_render_offline(project, tmp_path):
    (workspace,) = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout).values()
    metrics = {path.removeprefix("metrics/"): entry["data"] for path, entry in workspace["data"].items()}
    plots = json.loads(run([str(BIN / "dvc"), "plots", "show", "--json"], project).stdout)["data"]
    definitions = yaml.safe_load((project / "dvc.yaml").read_text())["plots"]
    assert set(plots) == {next(iter(d)) for d in definitions}

    train = plot_rows(plots, "train_curve")
    assert len(train) == metrics["train.json"]["stopped_epoch"]
    assert float(train[-1]["test_acc"]) == metrics["train.json"]["final_test_acc"]
    fidelity = {int(r["n"]): float(r["pearson_ln_loss"]) for r in plot_rows(plots, "sample_size_fidelity")}
    assert fidelity == {int(n): row["pearson_ln_loss"] for n, row in metrics["sample_size.json"]["by_n"].items()}
    accuracy = {int(r["batch_size"]): float(r["test_acc"]) for r in plot_rows(plots, "batch_size_accuracy")}
    assert accuracy == {int(b): row["test_acc"] for b, row in metrics["batch_sweep.json"]["per_batch_size"].items()}
    lottery = plot_rows(plots, "lottery_accuracy")
    for kind in ("winning", "random"):
        levels = metrics["lottery.json"][kind]
        assert {int(r["level"]): float(r[f"{kind}_test_acc"]) for r in lottery} == \
            {int(name.removeprefix("level_")): level["test_acc"] for name, level in levels.items()}

    out = tmp_path / "plots"
    run([str(BIN / "dvc"), "plots", "show", "-o", str(out)], project)
    page_html = (out / "index.html").read_text()
    assert not re.search(r"<script[^>]+src=", page_html), "the plots page loads a script from elsewhere"
    with Browser() as browser:
        page = browser.new_page()
        page.goto((out / "index.html").as_uri())
        # vega-embed draws each plot into a canvas of class "marks" once vega and vega-lite have run.
        drawn = page.wait_for(f"document.querySelectorAll('canvas.marks').length >= {len(definitions)} && "
                              "document.querySelectorAll('canvas.marks').length", timeout=60)
        assert drawn == len(definitions)
        assert page.errors == [] and network_urls(page.requests) == []


@pytest.fixture(scope="module")
def mlflow_server(project):
    with running_mlflow_server(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", project, env()) as url:
        yield url


def test_mlflow_server_serves_experiments_nested_runs_and_surface_pages(mlflow_server):
    experiments = api(mlflow_server, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    by_name = {e["name"]: e["experiment_id"] for e in experiments}
    assert {"train", "sample_size", "batch_sweep", "lottery"} <= set(by_name)
    runs = api(mlflow_server, "/api/2.0/mlflow/runs/search",
               {"experiment_ids": [by_name["batch_sweep"]], "max_results": 100})["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"].get("tags", [])} for r in runs]
    children = [(r, t) for r, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" in t]
    parents = {r["info"]["run_id"] for r, t in zip(runs, tags, strict=True) if "mlflow.parentRunId" not in t}
    assert len(children) == 2 and all(t["mlflow.parentRunId"] in parents for _, t in children)
    metrics = {m["key"]: m["value"] for m in children[0][0]["data"]["metrics"]}
    assert "batch_size" in metrics and "test_acc" in metrics
    pages = []
    for run_info, _ in children:
        run_id = run_info["info"]["run_id"]
        listing = api(mlflow_server, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}")
        stack = [f["path"] for f in listing.get("files", [])]
        while stack:
            path = stack.pop()
            if path.endswith(".html"):
                pages.append((run_id, path))
            elif "." not in path.rsplit("/", 1)[-1]:
                inner = api(mlflow_server, f"/api/2.0/mlflow/artifacts/list?run_id={run_id}"
                                           f"&path={urllib.parse.quote(path)}")
                stack += [f["path"] for f in inner.get("files", [])]
    assert pages, "no surface page logged to the trial runs"
    run_id, path = pages[0]
    query = urllib.parse.urlencode({"path": path, "run_uuid": run_id})
    with urllib.request.urlopen(f"{mlflow_server}/get-artifact?{query}", timeout=30) as response:
        page = response.read().decode()
    assert "<!DOCTYPE html>" in page and "Plotly" in page
    assert not re.search(r"<script[^>]+src=[\"']?(https?:)?//", page)  # plotly.js inlined, no CDN


def test_mlflow_ui_renders_the_run_names_in_a_browser(mlflow_server):
    experiments = api(mlflow_server, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
    experiment_id = next(e["experiment_id"] for e in experiments if e["name"] == "lottery")
    runs = api(mlflow_server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id]})["runs"]
    names = {r["info"]["run_name"] for r in runs}
    parent_names = {r["info"]["run_name"] for r in runs
                    if not any(t["key"] == "mlflow.parentRunId" for t in r["data"].get("tags", []))}
    assert parent_names
    with Browser() as browser:
        page = browser.new_page()
        # MLflow 3 opens the GenAI view by default; the runs table is the "machine learning" workflow.
        page.goto(f"{mlflow_server}/#/experiments/{experiment_id}/runs?workflowType=machine_learning")
        expression = " && ".join(f"document.body.innerText.includes({json.dumps(name)})" for name in parent_names)
        assert page.wait_for(expression, timeout=90), f"run names {parent_names} not rendered"
        text = page.evaluate("document.body.innerText")
    assert any(name in text for name in names)


def test_dvc_get_fetches_a_checkpoint_from_an_earlier_revision(project, tmp_path):
    """Last in this module: it commits the workspace and retrains, leaving later stages stale."""
    checkpoint = "models/train/model.pt"
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "checkpoint A", "--allow-empty"], project)
    run([str(BIN / "dvc"), "push"], project)
    revision_a = run(["git", "rev-parse", "HEAD"], project).stdout.strip()
    digest_a = hashlib.sha256((project / checkpoint).read_bytes()).hexdigest()

    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"]["epochs"] += 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([str(BIN / "dvc"), "repro", "train"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "checkpoint B"], project)
    assert hashlib.sha256((project / checkpoint).read_bytes()).hexdigest() != digest_a

    fetched = tmp_path / "model_a.pt"
    run([str(BIN / "dvc"), "get", str(project), checkpoint, "--rev", revision_a, "-o", str(fetched)], tmp_path)
    assert hashlib.sha256(fetched.read_bytes()).hexdigest() == digest_a
