"""What every stage shares: the repository root, validated params, the data directory."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lossviz.checkpoints import atomic_write
from lossviz.params import Params, ParamsError, load_params
from pipelines.code_deps import PACKAGE_ROOT, code_files


def repo_root() -> Path:
    """The repository the stage runs in: DVC_ROOT when DVC sets it (`dvc exp run --temp` runs in a copy),
    else the working directory when it is a repository, else this checkout."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents):
        if (candidate / "dvc.yaml").is_file() or (candidate / ".dvc").is_dir():
            return candidate
    return PACKAGE_ROOT


def stage_params(root: Path | None = None) -> Params:
    """Validate params.yaml before a stage touches any output; on error print every problem and exit 2."""
    root = root or repo_root()
    try:
        return load_params(root / "params.yaml")
    except ParamsError as error:
        print(error, file=sys.stderr)
        raise SystemExit(2) from None


def git_commit(root: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def data_root(root: Path | None = None) -> Path:
    return (root or repo_root()) / "data" / "prepared"


RESUME_DIR = Path("tmp/resume")


def resume_path(root: Path, stage: str, used_params: dict, inputs: Iterable[Path] = (), suffix: str = "") -> Path:
    """Where a stage keeps its resumable work: under `tmp/resume/` (git-ignored, unknown to DVC, which
    deletes a stage's outputs before running it), named by a digest of everything that shapes the run:
    the params it uses, its input files and the code the stage runs (`pipelines.code_deps`, the same files
    as its dvc.yaml deps: editing the viewer does not discard a half-trained ticket). A killed run restarted
    finds its work; a changed run starts afresh."""
    digest = hashlib.sha256(json.dumps(used_params, sort_keys=True, default=str).encode())
    for path in inputs:
        digest.update(Path(path).read_bytes())
    for source in code_files(f"pipelines.{stage}"):
        digest.update(source.encode() + b"\0" + (PACKAGE_ROOT / source).read_bytes())
    return root / RESUME_DIR / f"{stage}-{digest.hexdigest()[:16]}{suffix}"


def json_safe(value: Any) -> Any:
    """NaN and infinities as null (strict JSON has neither), recursively."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, value: Any) -> Path:
    """A stage's JSON file (metrics/*.json is what `dvc metrics show` reads), written atomically."""
    text = json.dumps(json_safe(value), indent=2, sort_keys=True, allow_nan=False) + "\n"
    return atomic_write(path, lambda stream: stream.write(text.encode()))


TIMINGS_DIR = Path("timings")


def write_timings(root: Path, stage: str, values: dict[str, Any]) -> Path:
    """`timings/<stage>.json`: this machine's wall times of the stage's last run (atomically). Git-ignored and no
    DVC output: every versioned file (metrics, outputs, dvc.lock) stays byte-identical across runs of the same
    code and params, while the times of each run live here and in its MLflow run."""
    record = {"stage": stage, "host": socket.gethostname(), "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              **values}
    return write_json(root / TIMINGS_DIR / f"{stage}.json", record)


def portable_path(path: str | Path, root: Path) -> str:
    """A path as recorded in outputs and runs: relative to the repository when inside it (a copied or moved
    checkout stays valid), as given otherwise."""
    path = Path(path)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


WALL_TIME_KEYS = frozenset({"seconds"})


def drop_wall_times(directory: Path, name: str = "result.json") -> None:
    """Every `name` under `directory` without wall times (the library's result files record them): the
    published copy of a run is then the same bytes each time. Times, top-level and per epoch, become null (the
    result and epoch classes still load, a resumed run replays them); they stay in MLflow and timings/."""
    for path in sorted(directory.rglob(name)):
        values = json.loads(path.read_text())
        changed = False
        for record in [values, *(values.get("history") or [])]:
            for key in WALL_TIME_KEYS & set(record):
                if record[key] is not None:
                    record[key], changed = None, True
        if changed:
            text = json.dumps(values, indent=2, sort_keys=True) + "\n"
            atomic_write(path, lambda stream, text=text: stream.write(text.encode()))


def write_plot_table(path: Path, rows: list[dict[str, Any]]) -> Path:
    """A CSV table that `dvc plots` draws (the plots of dvc.yaml). Stages build the rows from the same
    dicts they write to metrics/*.json, so the plots and `dvc metrics show` report the same numbers."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: "" if value is None else value for key, value in json_safe(row).items()})
    return atomic_write(path, lambda stream: stream.write(buffer.getvalue().encode()))
