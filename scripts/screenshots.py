"""Render the README screenshots (docs/surface.png, docs/compare.png, docs/index.png) from viewer pages in
headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs] [--report reports/index.html]
        [--mlflow-store mlruns/mlflow.db]

The surfaces are synthetic (tests/helpers_browser.bowl_surface), so the pictures need no trained model
and come out the same on every run: one surface page, and a comparison of winning and random tickets at
four sparsities whose minima sharpen and roughen as pruning goes on. With `--report` (a real run's
reports/index.html, never made-up numbers), also docs/report.png; with `--mlflow-store` (the store a
`dvc repro` wrote), also docs/mlflow.png: the MLflow UI comparing the batch sweep's trial runs.
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

from helpers_browser import Browser, bowl_surface  # noqa: E402
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
            click(page, selected_tag_remover("trial_number"))
            for metric in ("final_test_acc", "final_train_acc"):
                click(page, "document.getElementById('dubois-select-2')")
                page.send("Input.insertText", text=metric)
                time.sleep(0.8)
                for kind in ("keyDown", "keyUp"):
                    page.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13)
            click(page, "document.querySelector('h1, h2') || document.body")
            time.sleep(2)
            png_path.write_bytes(page.screenshot(clip={"x": 0, "y": 0, "width": 1400, "height": 640}))
            print(png_path)
        finally:
            page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    parser.add_argument("--report", type=Path, default=None, help="a run's reports/index.html for docs/report.png")
    parser.add_argument("--mlflow-store", type=Path, default=None, help="an MLflow SQLite store for docs/mlflow.png")
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
