"""dvc.yaml itself: every stage depends on all of the package code it runs (so editing the library reruns
it), and on the params sections it reads."""

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

STAGES = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]


def own_module_file(module: str) -> Path | None:
    if module.split(".")[0] not in ("lossviz", "pipelines"):
        return None
    path = REPO_ROOT / Path(*module.split("."))
    if path.with_suffix(".py").is_file():
        return path.with_suffix(".py")
    return None  # a package: its __init__ holds no stage logic (lossviz's only lazy public names)


def imported_files(path: Path, seen: set[Path] | None = None) -> set[Path]:
    """Our modules that `path` imports, followed transitively (imports inside functions included)."""
    seen = set() if seen is None else seen
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            found = own_module_file(name)
            if found and found not in seen:
                seen.add(found)
                imported_files(found, seen)
    return seen


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_depends_on_all_the_code_it_runs(stage):
    definition = STAGES[stage]
    module = definition["cmd"].split("python -m ")[1].split()[0]
    entry = own_module_file(module)
    assert entry is not None, definition["cmd"]
    needed = {str(p.relative_to(REPO_ROOT)) for p in imported_files(entry) | {entry}}
    deps = set(definition.get("deps", []))
    assert not needed - deps, f"{stage} runs code that is not among its deps: {sorted(needed - deps)}"


def test_dependency_scan_follows_imports_transitively():
    files = {str(p.relative_to(REPO_ROOT)) for p in imported_files(REPO_ROOT / "pipelines/train.py")}
    assert {"lossviz/training.py", "lossviz/checkpoints.py", "pipelines/tracking.py", "pipelines/common.py",
            "lossviz/runtime.py"} <= files
