"""Publish a finished run of the pipeline into the repository: `results/<name>/` with the run's params, its
metrics and result tables (every number of the README below comes from one of them), static PNG figures of
its report pages, and a README.md that states the preset, the commit, the machine, the wall time and each of
the seed paper's claims with the paper's figure, ours and the verdict (`pipelines.report`, the same claims
as the run's reports/index.html).

    .venv/bin/python scripts/publish_results.py PROJECT --preset presets/medium.yaml --out results/medium \
        --wall-seconds 5400 [--note "the machine was shared ..."]

PROJECT is the checkout that ran `dvc repro` (its outputs are read, nothing in it is written).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import plotly.graph_objects as go  # noqa: E402
import torch  # noqa: E402

from lossviz import pages  # noqa: E402
from pipelines import report  # noqa: E402

# (report page, PNG name, caption, width, height): the figures a reader of the results looks at first
FIGURES = (
    ("sample_size/fidelity.html", "sample_size_fidelity.png",
     "Sample-size fidelity: Pearson r of ln(loss) against the full-test-set surface, vs examples per point", 1000, 700),
    ("sample_size/compare.html", "sample_size_surfaces.png",
     "The same directions evaluated on 1 … 10,000 test examples (Figure 2)", 1800, 700),
    ("batch_landscapes/compare.html", "batch_fixed.png",
     "Loss surfaces by batch size, the paper's protocol (the same epochs for every batch size)", 1800, 650),
    ("batch_landscapes_converged/compare.html", "batch_converged.png",
     "Loss surfaces by batch size, every model early-stopped on validation loss", 1800, 650),
    ("lottery_landscapes/figure5.html", "tickets_accuracy.png",
     "Winning vs random tickets: test accuracy vs weights remaining (Figure 5)", 1200, 900),
    ("lottery_landscapes/side_by_side.html", "tickets_surfaces.png",
     "Winning (IMP) vs random tickets of the same sparsity, level by level (Figures 6-7)", 1800, 1400),
    ("lottery_stability/barriers.html", "stability_barriers.png",
     "Instability analysis: error barrier between two copies of a ticket vs weights remaining", 1200, 700),
)
# timings/: this run's wall times, in no versioned file of the pipeline (they are a measurement of the machine),
# published here as what this run measured
COPIED = (("metrics", ("*.json", "*.csv")), ("results", ("*.json",)), ("timings", ("*.json",)))
DISCUSSION = "discussion.md"  # written by hand after reading the run; kept when the folder is published again


def git(project: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=project, capture_output=True, text=True, check=True).stdout.strip()


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown CPU")
    memory = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0) / 2**20
    return (f"{os.cpu_count()} cores of {model}, {memory:.0f} GiB, no GPU; Python {platform.python_version()}, "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads")


def render_figures(project: Path, out: Path) -> list[tuple[str, str]]:
    """The PNG of each figure whose page the run wrote; (file name, caption) of those rendered."""
    rendered = []
    for page, name, caption, width, height in FIGURES:
        path = project / "reports" / page
        figure = pages.page_figure(path) if path.is_file() else None
        if figure is None:
            continue
        figure = go.Figure(figure)
        figure.update_layout(width=width, height=height)
        pages.write_image(figure, out / "figures" / name, width=width, height=height)
        rendered.append((name, caption))
    return rendered


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    def cell(text: str) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def readme(name: str, preset: str, commit: str, dirty: list[str], wall_seconds: float | None, note: str,
           claims: list[report.Claim], tables: list[dict], warnings: list[str],
           figures: list[tuple[str, str]], discussion: str = "") -> str:
    hours, rest = divmod(int(wall_seconds or 0), 3600)
    wall = f"{hours} h {rest // 60:02d} min ({wall_seconds:.0f} s)" if wall_seconds else "not measured"
    changed = (f" (working tree: only {', '.join(dirty)} changed, by applying the preset)" if dirty else "")
    parts = [
        f"# Results: the `{name}` preset",
        "",
        f"One run of `{preset}` through the whole pipeline (`dvc repro`), published as it came out. Every number "
        "below is read from the files in this folder: `results/*.json` (the stages' full tables) and "
        "`metrics/*.json` (their headline numbers); `params.yaml` is the exact configuration.",
        "",
        f"- **Preset:** [`{preset}`](../../{preset})",
        f"- **Commit:** `{commit}`{changed}",
        f"- **Machine:** {machine()}",
        f"- **Wall time of `dvc repro`:** {wall}",
    ]
    if note:
        parts += [f"- **Note:** {note}"]
    parts += [
        "",
        "Reproduce (a fresh clone; the stages resume if the run is interrupted):",
        "",
        "```bash",
        "make setup",
        f".venv/bin/lossviz params apply {preset}",
        "make repro                    # dvc repro with the venv's python and dvc",
        "```",
        "",
        "## The paper's claims at this scale",
        "",
        "Verdicts come from `pipelines/report.py` (the thresholds are stated in each reason); \"confounded\" means "
        "the compared models are not comparable (one is far less trained), so the claim cannot be judged.",
        "",
        markdown_table(["claim", "the paper", "measured here", "verdict", "why"], [list(row) for row in claims]),
        "",
    ]
    if discussion:
        parts += ["## What is and is not reproduced, and why", "", discussion.strip(), ""]
    if warnings:
        parts += ["**Warnings**", ""] + [f"- {warning}" for warning in warnings] + [""]
    for table in tables:
        parts += [f"### {table['title'].capitalize()}", "",
                  markdown_table(["", *table["columns"]], [[label, *values] for label, values in table["rows"]
                                                           if label != "landscape"]), ""]  # pages: not published
    parts += ["## Figures", ""]
    for file_name, caption in figures:
        parts += [f"**{caption}**", "", f"![{caption}](figures/{file_name})", ""]
    return "\n".join(parts).rstrip() + "\n"


def publish(project: Path, out: Path, preset: str, wall_seconds: float | None, note: str = "") -> Path:
    project, out = project.resolve(), out.resolve()
    discussion = (out / DISCUSSION).read_text(encoding="utf-8") if (out / DISCUSSION).is_file() else ""
    if out.exists():
        shutil.rmtree(out)
    if discussion:
        out.mkdir(parents=True)
        (out / DISCUSSION).write_text(discussion, encoding="utf-8")
    for folder, patterns in COPIED:
        for pattern in patterns:
            for path in sorted((project / folder).glob(pattern)):
                (out / folder).mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, out / folder / path.name)
    shutil.copy2(project / "params.yaml", out / "params.yaml")
    commit = git(project, "rev-parse", "HEAD")
    # the run rewrites its own versioned outputs (dvc.lock, metrics/); any other change is an input's
    dirty = [path for path in (line[3:] for line in git(project, "status", "--porcelain",
                                                        "--untracked-files=no").splitlines())
             if path != "dvc.lock" and not path.startswith("metrics/") and not path.endswith(".gitignore")]
    figures = render_figures(project, out)
    tables, warnings = report.training_state(project)
    text = readme(out.name, preset, commit, dirty, wall_seconds, note, report.claims(project), tables, warnings,
                  figures, discussion)
    (out / "README.md").write_text(text, encoding="utf-8")
    return out / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path, help="the checkout that ran dvc repro")
    parser.add_argument("--preset", required=True, help="the preset applied before the run, e.g. presets/medium.yaml")
    parser.add_argument("--out", type=Path, required=True, help="e.g. results/medium (replaced)")
    parser.add_argument("--wall-seconds", type=float, default=None, help="the measured wall time of dvc repro")
    parser.add_argument("--note", default="", help="anything a reader should know about the run")
    args = parser.parse_args(argv)
    print(publish(args.project, args.out, args.preset, args.wall_seconds, args.note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
