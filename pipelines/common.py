"""What every stage shares: the repository root, validated params, the data directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from lossviz.params import Params, ParamsError, load_params

PACKAGE_ROOT = Path(__file__).resolve().parent.parent


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
