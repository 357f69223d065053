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

from pipelines.sweep.layout import PROTOCOLS
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
                                 train_eval_examples=100, converged_max_epochs=2, converged_patience=1)
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
    for name in ("lossviz", "pipelines", "user"):  # user/: the users' code, a dep of train and sample_size
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
    assert "batch_landscapes_converged/compare.html" in index and "[converged: early-stopped" in index
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


def file_states(root: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(root)): (path.stat().st_size, path.stat().st_mtime_ns)
            for path in root.rglob("*") if path.is_file()}


def test_a_rerun_in_a_moved_copy_writes_the_same_bytes_and_only_there(project, tmp_path):
    """Issue 17: the same code and params give the same bytes (every DVC output, metric and dvc.lock; git
    status stays clean), and a `cp -a` of the checkout keeps working: a full `dvc repro -f` there (every stage
    again, MLflow store and resume state included) writes nothing under the original and leaves no path of it
    in the copy's runs, surfaces, models or reports."""
    assert run(["git", "status", "--porcelain"], project).stdout == ""  # committed by the push test
    moved = tmp_path / "elsewhere" / "project"
    moved.parent.mkdir()
    run(["cp", "-a", str(project), str(moved)], tmp_path)
    before = file_states(project)
    run([str(BIN / "dvc"), "repro", "-f"], moved)
    status = run(["git", "status", "--porcelain"], moved).stdout
    assert status == "", f"a second run changed:\n{status}\n" + run(["git", "diff"], moved).stdout[-3000:]
    assert file_states(project) == before, "the run in the copy wrote under the original checkout"
    old = str(project).encode()
    for folder in ("mlruns", "surfaces", "models", "reports", "results", "metrics"):
        holding = [str(path.relative_to(moved)) for path in (moved / folder).rglob("*")
                   if path.is_file() and old in path.read_bytes()]
        assert holding == [], f"files holding the original checkout's path: {holding}"
    from tests.helpers_project import mlflow_client

    client = mlflow_client(moved)
    experiments = client.search_experiments()
    assert all(str(moved) in e.artifact_location for e in experiments if e.name != "Default")
    assert (moved / "timings" / "sample_size.json").is_file() and (moved / "timings" / "sample_size.html").is_file()
    timings = json.loads((moved / "timings" / "sample_size.json").read_text())
    assert len(timings["point_seconds_by_round"]["5"]["seconds_per_point"]) >= 1
    assert "timings/sample_size.html" in (moved / "reports" / "sample_size" / "fidelity.html").read_text()


def test_dvc_metrics_are_a_few_dozen_headline_numbers(project):
    """Issue 17: `dvc metrics show` and `dvc exp show` stay readable: a few dozen metric columns in all (the full
    tables are outputs, results/*.json)."""
    (workspace,) = json.loads(run([str(BIN / "dvc"), "metrics", "show", "--json"], project).stdout).values()

    def leaves(value, prefix="") -> list[str]:
        if not isinstance(value, dict):
            return [prefix]
        return [name for key, item in value.items() for name in leaves(item, f"{prefix}{key}.")]

    columns = {path: [name.rstrip(".") for name in leaves(entry["data"])] for path, entry in workspace["data"].items()}
    counts = {path: len(names) for path, names in columns.items()}
    assert sum(counts.values()) <= 32 and max(counts.values()) <= 5, counts
    names = [name for path_names in columns.values() for name in path_names]
    assert len(set(names)) == len(names), "a name two files share: DVC would prefix both columns with their paths"
    import optuna  # the sweep's objective is named (optuna-dashboard, the study's pages)

    journal = optuna.storages.journal.JournalFileBackend(str(project / "studies/batch_sweep/journal.log"))
    study_name = json.loads((project / "models/batch_sweep/sweep.json").read_text())["study"]
    study = optuna.load_study(study_name=study_name, storage=optuna.storages.JournalStorage(journal))
    assert study.metric_names == ["val_acc"] and study.direction == optuna.study.StudyDirection.MAXIMIZE


def test_published_results_read_only_their_own_files(project, tmp_path):
    """Issue 22: scripts/publish_results.py turns a finished run into results/<name>/: its params, metrics and
    tables, PNG figures of its report pages and a README whose claims are recomputed from the published files
    alone (every number traceable to a file in the folder)."""
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    try:
        import publish_results
    finally:
        sys.path.remove(str(REPO_ROOT / "scripts"))
    from pipelines import report

    readme = publish_results.publish(project, tmp_path / "tiny", "presets/medium.yaml", 4321.0, note="a test")
    text = readme.read_text()
    out = readme.parent
    assert {path.name for path in (out / "results").glob("*.json")} >= {"batch_sweep.json",
                                                                       "batch_sweep_converged.json", "lottery.json"}
    assert (out / "params.yaml").read_text() == (project / "params.yaml").read_text()
    claims = report.claims(out)  # from the published copies, not from the project
    assert claims == report.claims(project) and len(claims) >= 8
    for _claim, _paper, ours, verdict, _why in claims:
        assert f"| {verdict} |" in text and ours.replace("|", "\\|") in text
    assert "1 h 12 min (4321 s)" in text and subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip() in text
    figures = sorted(path.name for path in (out / "figures").glob("*.png"))
    assert {"batch_fixed.png", "batch_converged.png", "tickets_accuracy.png", "sample_size_fidelity.png"} <= set(
        figures)
    for name in figures:
        data = (out / "figures" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 10_000 < len(data) < 1_500_000, name
        assert f"(figures/{name})" in text


def test_every_run_has_params_and_data_and_logged_models_load(project):
    """Issue 17: every MLflow run a stage made has its params, and every run that trained or evaluated its
    dataset inputs; the reference model, each sweep trial and each ticket load with `mlflow.pytorch.load_model`
    and give their checkpoint's outputs."""
    import mlflow
    import torch

    from lossviz.checkpoints import load_model_weights
    from lossviz.models import build_model
    from tests.helpers_project import mlflow_client

    client = mlflow_client(project)
    experiments = [e.experiment_id for e in client.search_experiments() if e.name != "Default"]
    runs = client.search_runs(experiments, max_results=1000)
    assert len(runs) > 10
    for logged in runs:
        name = f"{logged.info.run_name} ({logged.data.tags.get('dvc.stage')})"
        assert logged.data.params, f"{name}: no params"
        if logged.data.tags.get("dvc.stage") != "lottery_stability_pages":  # draws pages, reads no data
            assert logged.inputs.dataset_inputs, f"{name}: no dataset inputs"
            assert all(d.dataset.digest and "features_size" in d.dataset.profile for d in logged.inputs.dataset_inputs)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    try:
        models = mlflow.search_logged_models(experiment_ids=experiments, output_format="list")
        by_run = {model.source_run_id: model for model in models}

        def checkpoint(tags: dict[str, str], params: dict[str, str]) -> tuple[str, Path, str] | None:
            """The DVC checkpoint a run's logged model was made from and its architecture, by the kind of run."""
            if tags.get("dvc.stage") == "train":
                return "train", project / "models/train/model.pt", params["train.model"]
            if tags.get("lossviz.role") == "trial":
                size = int(tags["lossviz.batch_size"])
                models = PROTOCOLS[tags.get("lossviz.protocol", "fixed")].models_dir  # fixed or converged
                return "trial", project / models / f"bs_{size:05d}" / "model.pt", params["model"]
            if "lottery.level" in tags:
                level = f"level_{int(tags['lottery.level']):02d}"
                path = project / "models/lottery" / tags["lottery.kind"] / level / "model.pt"
                return "ticket", path, params["lottery.model"]
            return None

        found = {}
        for logged in runs:
            if logged.info.run_id in by_run and (kind := checkpoint(logged.data.tags, logged.data.params)):
                found.setdefault(kind[0], (by_run[logged.info.run_id], *kind[1:]))
        assert set(found) == {"train", "trial", "ticket"}
        inputs = torch.rand(3, 1, 28, 28)
        for kind, (model_info, path, architecture) in found.items():
            assert mlflow.models.get_model_info(model_info.model_uri).signature is not None, kind
            loaded = mlflow.pytorch.load_model(model_info.model_uri).eval()
            reference = load_model_weights(build_model(architecture, (1, 28, 28)), path).eval()
            with torch.no_grad():
                assert torch.equal(loaded(inputs), reference(inputs)), kind
    finally:
        mlflow.set_tracking_uri(None)


def test_exp_run_with_a_param_reruns_dependants_and_tags_mlflow(project):
    run(["git", "add", "-A"], project)  # the baseline: the pipeline's outputs committed
    run(["git", "commit", "-qm", "outputs", "--allow-empty"], project)
    result = run([str(BIN / "dvc"), "exp", "run", "-n", "longer-train", "-S", "train.epochs=2"], project)
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"validate", "train", "sample_size", "report"}  # validate reruns on any param, alone
    import sqlite3

    rows = sqlite3.connect(project / "mlruns" / "mlflow.db").execute(
        "select value from tags where key = 'dvc.exp'").fetchall()
    assert ("longer-train",) in rows

    # Comparing it with the baseline fits a terminal: `make exps` (the params and headline metrics that differ,
    # no dependency hashes) in 200 columns without a column folded away, and `dvc exp diff` (a row per number).
    terminal = {**env(), "COLUMNS": "200"}
    table = subprocess.run(["make", "-s", "-f", str(REPO_ROOT / "Makefile"), f"VENV={BIN.parent}", "exps"],
                           cwd=project, env=terminal, capture_output=True, text=True, timeout=300)
    assert table.returncode == 0, table.stdout + table.stderr
    lines = table.stdout.splitlines()
    assert max(map(len, lines)) <= 200 and "…" not in table.stdout, table.stdout
    assert "longer-train" in table.stdout and "train.epochs" in table.stdout and "final_test_acc" in table.stdout
    assert "models/train" not in table.stdout and "pipelines/" not in table.stdout  # no dependency columns
    diff = run([str(BIN / "dvc"), "exp", "diff", "HEAD", "longer-train"], project).stdout
    assert max(map(len, diff.splitlines())) <= 100 and "train.epochs" in diff and "final_test_acc" in diff, diff


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
    results = {path.name: json.loads(path.read_text()) for path in (project / "results").glob("*.json")}
    fidelity = {int(r["n"]): float(r["pearson_ln_loss"]) for r in plot_rows(plots, "sample_size_fidelity")}
    assert fidelity == {int(n): row["pearson_ln_loss"] for n, row in results["sample_size.json"]["by_n"].items()}
    accuracy = {(int(r["batch_size"]), float(r["test_acc"])) for r in plot_rows(plots, "batch_size_accuracy")}
    assert accuracy == {(int(b), row["test_acc"]) for name in ("batch_sweep.json", "batch_sweep_converged.json")
                        for b, row in results[name]["per_batch_size"].items()}  # both protocols drawn
    lottery = plot_rows(plots, "lottery_accuracy")
    for kind in ("winning", "random"):
        levels = results["lottery.json"][kind]
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
    assert len(children) == 4 and all(t["mlflow.parentRunId"] in parents for _, t in children)  # 2 sizes × 2 protocols
    assert sorted(t["lossviz.protocol"] for _, t in children) == ["converged", "converged", "fixed", "fixed"]
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
