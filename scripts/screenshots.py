"""Render the README screenshots (docs/surface.png, docs/compare.png) from viewer pages in headless Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs]

The surfaces are synthetic (tests/helpers_browser.bowl_surface), so the pictures need no trained model
and come out the same on every run: one surface page, and a comparison of winning and random tickets at
four sparsities whose minima sharpen and roughen as pruning goes on.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the CDP helper the browser tests use

from helpers_browser import Browser, bowl_surface  # noqa: E402

from lossviz import plots  # noqa: E402

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


def shoot(browser: Browser, page_path: Path, png_path: Path, width: int, height: int) -> None:
    page = browser.new_page()
    try:
        page.resize(width, height)
        page.goto(page_path.as_uri(), ready=READY, timeout=120)
        time.sleep(1.0)  # let WebGL finish its last frame
        if page.errors:
            raise RuntimeError(f"{page_path.name}: console errors {page.errors}")
        png_path.write_bytes(page.screenshot())
        print(png_path)
    finally:
        page.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    surface = bowl_surface(81, seed=3, sharpness=1.2, roughness=0.45, method="IMP", remaining=26.2,
                           test_acc=90.2, model="lenet5")
    surfaces, titles = comparison_surfaces()
    with tempfile.TemporaryDirectory() as folder, Browser() as browser:
        pages = Path(folder)
        plots.write_html(plots.surface_figure(surface, title="LeNet-5 on Fashion-MNIST, IMP ticket "
                                                             "(26.2% weights): ln(loss)"),
                         pages / "surface.html")
        plots.write_html(plots.compare_figure(surfaces, titles, shared_z=True,
                                              title="Winning (IMP) vs random tickets"),
                         pages / "compare.html")
        shoot(browser, pages / "surface.html", args.out / "surface.png", 1200, 860)
        shoot(browser, pages / "compare.html", args.out / "compare.png", 1600, 1640)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
