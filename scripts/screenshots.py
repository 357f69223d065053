"""Render the README screenshots (docs/surface.png, docs/compare.png, docs/index.png) from viewer pages in
headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs] [--report reports/index.html]
        [--mlflow-store mlruns/mlflow.db]

The surfaces are synthetic (tests/helpers_browser.bowl_surface), so the pictures need no trained model
and come out the same on every run: one surface page, and a comparison of winning and random tickets at
four sparsities whose minima sharpen and roughen as pruning goes on. With `--report` (a real run's
reports/index.html, never made-up numbers), also docs/report.png; with `--mlflow-store` (the store a
`dvc repro` wrote), also docs/mlflow.png: the MLflow UI comparing the batch sweep's trial runs, and
docs/mlflow_runs.png: its runs table, each trial with its datasets (`log_input`) and model (`log_model`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the CDP helper the browser tests use

from helpers_browser import Browser, CdpError, bowl_surface  # noqa: E402
from helpers_servers import api, mlflow_server  # noqa: E402

from lossviz import figures, pages  # noqa: E402

READY = "document.getElementById('plot') && document.getElementById('plot').dataset.ready === '1'"


def comparison_surfaces() -> tuple[list, list[str]]:
    surfaces, titles = [], []
    for level, remaining in enumerate((100.0, 51.2, 26.2, 13.4)):
        for method, roughness, accuracy_drop in (("IMP", 0.3, 0.2), ("random", 0.9, 1.1)):
            sharpness = 1.0 + (0.5 if method == "IMP" else 1.2) * level
            accuracy = 90.6 - accuracy_drop * level
            seed = level if method == "IMP" or level == 0 else 100 + level  # one dense network at 100%
            surfaces.append(bowl_surface(41, seed=seed, sharpness=sharpness,
                                         roughness=roughness, method=method, remaining=remaining,
                                         test_acc=accuracy, model="lenet5"))
            titles.append(f"{method} · {remaining:g}% weights · test acc {accuracy:.1f}%")
    order = [i for i in range(0, 8, 2)] + [i for i in range(1, 8, 2)]  # winning tickets on the top row
    return [surfaces[i] for i in order], [titles[i] for i in order]


def shoot(browser: Browser, page_path: Path, png_path: Path, width: int, height: int,
          ready: str | None = READY) -> None:
    page = browser.new_page()
    try:
        page.resize(width, height)
        page.goto(page_path.as_uri(), ready=ready, timeout=120)
        time.sleep(1.0)  # let WebGL finish its last frame
        if page.errors:
            raise RuntimeError(f"{page_path.name}: console errors {page.errors}")
        png_path.write_bytes(page.screenshot())
        print(png_path)
    finally:
        page.close()


def click(page, element_js: str) -> None:
    """A real mouse click at the centre of the element a JS expression finds."""
    x, y = page.evaluate(f"(() => {{ const r = ({element_js}).getBoundingClientRect(); "
                         "return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
        page.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                  buttons=1 if kind == "mousePressed" else 0, clickCount=1)
    time.sleep(0.6)


def selected_tag_remover(label: str) -> str:
    return (f"[...document.querySelectorAll('.du-bois-light-select-selection-item')].find(e => "
            f"e.textContent.trim() === {json.dumps(label)}).querySelector('[class*=item-remove]')")


def shoot_mlflow(browser: Browser, store: Path, png_path: Path) -> None:
    """MLflow's compare page for the batch sweep's trial runs (ticked in the runs table, then Compare): a
    parallel-coordinates plot of batch size against final test and train accuracy."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with mlflow_server(f"sqlite:///{store.resolve()}", store.parent, env) as url:
        experiments = api(url, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        experiment_id = next(e["experiment_id"] for e in experiments if e["name"] == "batch_sweep")
        runs = api(url, "/api/2.0/mlflow/runs/search", {"experiment_ids": [experiment_id],
                                                         "filter": "tags.`lossviz.role` = 'trial'"})["runs"]
        query = urllib.parse.urlencode({"runs": json.dumps([r["info"]["run_id"] for r in runs]),
                                        "experiments": json.dumps([experiment_id])})
        page = browser.new_page()
        try:
            page.resize(1400, 1000)
            page.goto(f"{url}/#/compare-runs?{query}", timeout=120)
            page.wait_for("document.getElementById('dubois-select-2') !== null", timeout=120)
            time.sleep(2)
            click(page, "document.querySelector('button[aria-label=Close]')")  # the assistant's side panel
            # batch_size alone on the parameter axes: which other params vary (trial_number, protocol, ...) depends
            # on the store
            params_select = "document.getElementById('dubois-select-1').closest('.du-bois-light-select')"
            for label in page.evaluate(f"[...{params_select}.querySelectorAll('.du-bois-light-select-selection-item')]"
                                       ".map(e => e.textContent.trim()).filter(label => label !== 'batch_size')"):
                click(page, selected_tag_remover(label))
            for metric in ("final_test_acc", "final_train_acc"):
                click(page, "document.getElementById('dubois-select-2')")
                page.send("Input.insertText", text=metric)
                time.sleep(0.8)
                press_key(page, "Enter", 13)
            click(page, "document.querySelector('h1, h2') || document.body")
            time.sleep(2)
            png_path.write_bytes(page.screenshot(clip={"x": 0, "y": 0, "width": 1400, "height": 640}))
            print(png_path)
        finally:
            page.close()


# The runs table's columns, keyed as MLflow's grid names them (its ag-grid `col-id`s) and as the Columns menu
# files them: (group in the menu, entry), and whether the picture shows them.
RUNS_COLUMNS = {
    "attributes.`Dataset`": (None, None, True),
    "attributes.`Models`": (None, None, True),
    "attributes.`Source`": ("Attributes", "Source", False),  # a script name, repeated on every row
    "metrics.`final_test_acc`": ("Metrics", "final_test_acc", True),
    "params.`batch_size`": ("Parameters", "batch_size", True),
}


def runs_cell(run_id: str, column: str) -> str:
    """JS for one run's cell in MLflow's runs table: ag-grid rows carry the run id, cells the column key."""
    return f"document.querySelector('.ag-row[row-id=\"{run_id}\"] .ag-cell[col-id=\"{column}\"]')"


def columns_menu_entry(group: str, entry: str) -> str:
    """JS for an entry of the runs table's Columns menu, under its group (a metric and a parameter can share a
    name, as batch_size does)."""
    return (f"(() => {{ const titles = [...document.querySelectorAll('.du-bois-light-tree-title')]; "
            f"const start = titles.findIndex(e => e.textContent.trim().startsWith({json.dumps(group)})); "
            f"return titles.slice(start + 1).find(e => e.textContent.trim() === {json.dumps(entry)}); }})()")


def button_labelled(text: str) -> str:
    return f"[...document.querySelectorAll('button')].find(e => e.textContent.trim() === {json.dumps(text)})"


def press_key(page, key: str, code: int) -> None:
    for kind in ("keyDown", "keyUp"):
        page.send("Input.dispatchKeyEvent", type=kind, key=key, code=key, windowsVirtualKeyCode=code)


def shoot_mlflow_runs(browser: Browser, store: Path, png_path: Path) -> None:
    """MLflow's runs table for the batch sweep's fixed-epoch study: the study run with its trial runs nested
    under it, each with its Dataset cell (every `log_input`: name, digest, context), its Models cell
    (`mlflow.pytorch.log_model`), final test accuracy and batch size. Raises if a cell does not show what the
    store holds."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with mlflow_server(f"sqlite:///{store.resolve()}", store.parent, env) as url:
        experiments = api(url, "/api/2.0/mlflow/experiments/search", {"max_results": 100})["experiments"]
        experiment_id = next((e["experiment_id"] for e in experiments if e["name"] == "batch_sweep"), None)
        if experiment_id is None:
            raise RuntimeError(f"{store}: no batch_sweep experiment (the store of a `dvc repro` has one)")
        studies = api(url, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment_id], "order_by": ["attributes.start_time DESC"],
            "filter": "tags.`lossviz.role` = 'study' and tags.`lossviz.protocol` = 'fixed'"}).get("runs", [])
        if not studies:
            raise RuntimeError(f"{store}: no fixed-protocol batch_sweep study run to show")
        study = studies[0]
        study_id = study["info"]["run_id"]
        trials = api(url, "/api/2.0/mlflow/runs/search", {
            "experiment_ids": [experiment_id], "filter": f"tags.`mlflow.parentRunId` = '{study_id}'"})["runs"]
        # What each trial's cells must show: every dataset as "name (digest)", and its logged models' names.
        expected = {}
        for trial in trials:
            datasets = [f"{d['dataset']['name']} ({d['dataset']['digest']})"
                        for d in trial.get("inputs", {}).get("dataset_inputs", [])]
            models = [api(url, f"/api/2.0/mlflow/logged-models/{m['model_id']}")["model"]["info"]["name"]
                      for m in trial.get("outputs", {}).get("model_outputs", [])]
            if not datasets or not models:
                raise RuntimeError(f"{store}: trial run {trial['info']['run_name']} has no logged "
                                   f"{'datasets' if not datasets else 'model'} to show")
            expected[trial["info"]["run_id"]] = {"datasets": datasets, "models": models}
        search = "tags.lossviz.protocol = 'fixed'"
        if len(studies) > 1:  # a store holding several fixed studies: the newest one
            study_name = next(t["value"] for t in study["data"]["tags"] if t["key"] == "lossviz.study")
            search += f" AND tags.lossviz.study = '{study_name}'"
        # MLflow 3 opens an experiment in its GenAI view; workflowType selects the runs table.
        query = urllib.parse.urlencode({"workflowType": "machine_learning", "searchFilter": search,
                                        "orderByKey": "attributes.start_time", "orderByAsc": "true"})
        # Collapsed rows show one dataset and a "+2" button (the others are in the text but cut off).
        cells_shown = "(() => { const want = " + json.dumps(expected) + "; " + (
            "const text = (id, col) => { const c = document.querySelector("
            "`.ag-row[row-id=\"${id}\"] .ag-cell[col-id=\"${col}\"]`); return c ? c.innerText : ''; }; "
            "return Object.entries(want).every(([id, w]) => { const datasets = text(id, 'attributes.`Dataset`'); "
            "return w.datasets.every(d => datasets.includes(d)) && !/^\\+\\d+$/m.test(datasets) && "
            "w.models.every(m => text(id, 'attributes.`Models`').includes(m)); }); })()")
        headers_as_wanted = " && ".join(
            f"(document.querySelector('.ag-header-cell[col-id=\"{column}\"]') !== null) === {json.dumps(shown)}"
            for column, (_, _, shown) in RUNS_COLUMNS.items())
        page = browser.new_page()
        try:
            page.resize(1400, 900)
            page.goto(f"{url}/#/experiments/{experiment_id}/runs?{query}", timeout=120)
            page.wait_for(f"{runs_cell(study_id, 'attributes.`Run Name`')} !== null", timeout=120)
            time.sleep(1)  # the assistant's side panel and the sidebar slide in after the table
            assistant_closer = "document.querySelector('button[aria-label=Close]')"
            if page.evaluate(f"{assistant_closer} !== null"):
                click(page, assistant_closer)
            if page.evaluate("document.body.innerText.includes('Model registry')"):  # the sidebar, not collapsed
                click(page, "document.querySelector('button[aria-label=\"Toggle sidebar\"]')")
            if not page.evaluate(headers_as_wanted):
                click(page, button_labelled("Columns"))
                menu_search = "document.querySelector('input[placeholder=\"Search columns\"]')"
                page.wait_for(f"{menu_search} !== null", timeout=30)
                for column, (group, entry, shown) in RUNS_COLUMNS.items():
                    header = f"document.querySelector('.ag-header-cell[col-id=\"{column}\"]') !== null"
                    if group is None or page.evaluate(header) == shown:
                        continue
                    click(page, menu_search)
                    page.evaluate(f"{menu_search}.select()")
                    page.send("Input.insertText", text=entry)
                    page.wait_for(f"{columns_menu_entry(group, entry)} !== undefined", timeout=30)
                    click(page, columns_menu_entry(group, entry))
                    page.wait_for(f"({header}) === {json.dumps(shown)}", timeout=30)
                press_key(page, "Escape", 27)
            trial_rows = " && ".join(f"{runs_cell(run_id, 'attributes.`Run Name`')} !== null" for run_id in expected)
            if not page.evaluate(trial_rows):  # the study's trials are nested, collapsed, under it
                click(page, f"{runs_cell(study_id, 'attributes.`Run Name`')}.querySelector('button')")
                page.wait_for(trial_rows, timeout=60)
            if not page.evaluate(cells_shown):
                click(page, button_labelled("Expand rows"))
            click(page, "document.querySelector('h2')")  # moves the grid's focus outline off the clicked cell
            try:
                page.wait_for(f"({headers_as_wanted}) && ({trial_rows}) && {cells_shown}", timeout=60)
            except CdpError as error:
                shown = page.evaluate(
                    "JSON.stringify([...document.querySelectorAll('.ag-header-cell')].map(e => e.getAttribute("
                    "'col-id')).concat([...document.querySelectorAll('.ag-cell[col-id=\"attributes.`Dataset`\"],"
                    " .ag-cell[col-id=\"attributes.`Models`\"]')].map(e => e.innerText)))")
                raise RuntimeError(f"MLflow's runs table at {page.evaluate('location.href')} does not show the "
                                   f"Dataset and Models columns with {expected}; it shows {shown}") from error
            bottom = page.evaluate("Math.max(...[...document.querySelectorAll('.ag-row')].map("
                                   "e => e.getBoundingClientRect().bottom))")
            png_path.write_bytes(page.screenshot(clip={"x": 0, "y": 0, "width": 1400, "height": min(900, bottom + 16)}))
            print(png_path)
        finally:
            page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--report", type=Path, default=None, help="a run's reports/index.html for docs/report.png")
    parser.add_argument("--mlflow-store", type=Path, default=None,
                        help="an MLflow SQLite store for docs/mlflow.png and docs/mlflow_runs.png")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    surface = bowl_surface(81, seed=3, sharpness=1.2, roughness=0.45, method="IMP", remaining=26.2,
                           test_acc=90.2, model="lenet5")
    surfaces, titles = comparison_surfaces()
    with tempfile.TemporaryDirectory() as temporary, Browser() as browser:
        folder = Path(temporary)
        pages.write_html(figures.surface_figure(surface, title="LeNet-5 on Fashion-MNIST, IMP ticket "
                                                             "(26.2% weights): ln(loss)"),
                         folder / "surface.html")
        pages.write_html(figures.compare_figure(surfaces, titles, title="Winning (IMP) vs random tickets"),
                         folder / "compare.html")
        shoot(browser, folder / "surface.html", args.out / "surface.png", 1200, 860)
        shoot(browser, folder / "compare.html", args.out / "compare.png", 1600, 1400)
        if args.report is not None:
            shoot(browser, args.report.resolve(), args.out / "report.png", 1400, 1300, ready=None)
        if args.mlflow_store is not None:
            shoot_mlflow(browser, args.mlflow_store, args.out / "mlflow.png")
            shoot_mlflow_runs(browser, args.mlflow_store, args.out / "mlflow_runs.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
