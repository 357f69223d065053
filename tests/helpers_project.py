"""Temporary git + DVC projects for the stage tests: the real stage definitions from dvc.yaml, the package
code, tiny params and a tiny prepared dataset; and the environment the stages' subprocesses run in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from lossviz.data import RawSplit, write_prepared

REPO = Path(__file__).resolve().parent.parent


def stage_env() -> dict[str, str]:
    """The test's environment less what a run inside DVC or a team set-up would add, with one torch thread
    per process (tests run beside each other's subprocesses) and this venv's tools first on PATH."""
    env = {key: value for key, value in os.environ.items()
           if key not in ("DVC_ROOT", "MLFLOW_TRACKING_URI", "DVC_STAGE", "DVC_EXP_NAME")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", DVC_NO_ANALYTICS="1", LOSSVIZ_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}")
    return env


def write_tiny_dataset(root: Path) -> None:
    """A prepared Fashion-MNIST-shaped dataset (400 train, 100 test) whose labels show in the pixels."""
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> RawSplit:
        labels = torch.randint(0, 10, (count,), generator=generator)
        images = (labels.view(-1, 1, 1, 1) * 20 + torch.randint(0, 60, (count, 1, 28, 28), generator=generator))
        return RawSplit(images.to(torch.uint8), labels)

    write_prepared({"train": split(400), "test": split(100)}, root / "data" / "prepared" / "fashion_mnist",
                   {"dataset": "fashion_mnist", "source": "test", "verified_checksums": False})


def make_project(root: Path, params: dict, stages: tuple[str, ...], *, dvc: bool = True,
                 tiny_data: bool = True) -> dict:
    """A project at `root` with the real definitions of `stages`, the package code, `params` and (with
    `tiny_data`) the tiny prepared dataset; a git + DVC repository when `dvc`. Returns the stages."""
    root.mkdir(parents=True, exist_ok=True)
    defined = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    # `validate` comes along: every stage depends on its check of params.yaml.
    chosen = {name: defined[name] for name in ("validate", *stages)}
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": chosen}, sort_keys=False))
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    if tiny_data:
        write_tiny_dataset(root)
    if dvc:
        # `python -m pipelines.X` in the project runs this copy; `user` is the users' code, a dep of some stages
        for package in ("lossviz", "pipelines", "user"):
            shutil.copytree(REPO / package, root / package, ignore=shutil.ignore_patterns("__pycache__"),
                            dirs_exist_ok=True)
        shutil.copy2(REPO / ".dvcignore", root / ".dvcignore")
        for command in (["git", "init", "-q"], ["dvc", "init", "-q"]):
            subprocess.run(command, cwd=root, check=True, env=stage_env())
    return chosen


def mlflow_client(root: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
