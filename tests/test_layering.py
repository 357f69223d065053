"""The shape of the code: imports inside lossviz point one way, the library never imports the MLOps stack, and a
stage depends on the code it runs and nothing else, so editing the viewer never retrains a model."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.code_deps import USER_CODE_DIR, code_files, is_code_dep, stage_code_deps, stage_module
from tests.helpers_project import make_project, stage_env

REPO = Path(__file__).resolve().parent.parent
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
TRAINING_STAGES = ("train", "batch_sweep", "lottery")
MLOPS = ("mlflow", "optuna", "dvc", "psycopg", "sqlalchemy")
PLOTTING = ("plotly",)


def lossviz_imports() -> dict[str, set[str]]:
    """Module → every module it imports (top level or inside functions), for each module of lossviz."""
    graph = {}
    for path in sorted((REPO / "lossviz").rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = imported
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the graph's own modules, as a path that returns to its start; None if none."""
    edges = {module: sorted(target for target in targets if target in graph and target != module)
             for module, targets in graph.items()}
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in edges[module]:
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(edges):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_cycle_finder_finds_a_planted_cycle():
    planted = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(planted) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_lossviz_has_no_import_cycle():
    cycle = find_cycle(lossviz_imports())
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_library_never_imports_the_mlops_stack():
    offenders = {module: sorted(name for name in imported if name.split(".")[0] in MLOPS)
                 for module, imported in lossviz_imports().items()}
    offenders = {module: names for module, names in offenders.items()
                 if names and module not in ("lossviz.cli",)}  # `lossviz params` is the one MLOps-free exception
    assert not offenders, offenders


@pytest.mark.parametrize("module", ["lossviz.engine", "lossviz.sampling", "lossviz.lottery", "lossviz.training",
                                    "lossviz.shape", "lossviz.curvature", "lossviz.directions"])
def test_algorithm_modules_draw_nothing(module):
    """Figures live in lossviz.figures and pages in lossviz.pages: an algorithm never imports plotly."""
    closure = code_files(module)
    assert "lossviz/figures.py" not in closure and "lossviz/pages.py" not in closure, closure
    imported = lossviz_imports()[module]
    assert not {name for name in imported if name.split(".")[0] in PLOTTING}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_exactly_the_code_it_runs(stage):
    """dvc.yaml lists each stage's code deps as `python -m pipelines.code_deps --write` writes them: every file
    the stage imports (so an edit reruns it) and no other (so an unrelated edit does not); and the user's code
    folder for the stages that import the user's model or dataset (train, sample_size), only for them."""
    definition = STAGES[stage]
    code_deps = sorted(dep for dep in definition.get("deps", []) if is_code_dep(dep))
    assert code_deps == sorted(stage_code_deps(stage, definition["cmd"]))
    assert set(code_deps) - {USER_CODE_DIR} == set(code_files(stage_module(definition["cmd"])))
    assert (USER_CODE_DIR in code_deps) == (stage in ("train", "sample_size"))


@pytest.mark.parametrize("stage", TRAINING_STAGES)
def test_training_stages_run_no_engine_figures_or_viewer(stage):
    closure = code_files(f"pipelines.{stage}")
    for drawing in ("lossviz/engine.py", "lossviz/figures.py", "lossviz/pages.py", "lossviz/assets/viewer.js"):
        assert drawing not in closure, f"{stage} runs {drawing}"


def test_code_deps_follow_imports_transitively():
    files = code_files("pipelines.train")
    assert {"pipelines/train.py", "lossviz/training.py", "lossviz/checkpoints.py", "pipelines/tracking.py",
            "pipelines/common.py", "lossviz/runtime.py"} <= set(files)
    assert {"lossviz/assets/viewer.js", "lossviz/pages.py", "lossviz/figures.py"} <= set(
        code_files("pipelines.lottery_landscapes"))


def _status(root: Path, *stages: str) -> dict:
    out = subprocess.run(["dvc", "status", "--json", *stages], cwd=root, env=stage_env(), check=True,
                         capture_output=True, text=True).stdout
    return yaml.safe_load(out) or {}


def _resume_key(root: Path, stage: str) -> str:
    code = ("from pathlib import Path; from pipelines.common import resume_path; "
            f"print(resume_path(Path('.'), {stage!r}, {{}}))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, env=stage_env(), check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.mark.slow
def test_editing_the_viewer_or_figures_leaves_training_stages_up_to_date(tmp_path):
    """In a real DVC project with the real stage definitions: after the stages' state is recorded, an edit to
    the viewer's JS and to the figures module makes the drawing stages stale and leaves the training stages
    (and their resume folders) as they were; an edit to the training loop makes the training stages stale."""
    drawing = ("sample_size", "lottery_landscapes")
    stages = make_project(tmp_path, yaml.safe_load((REPO / "params.yaml").read_text()), TRAINING_STAGES + drawing)
    # Record the stages as run without running them: their outputs as placeholders, then `dvc commit`.
    for definition in stages.values():
        for out in [*definition.get("outs", []), *definition.get("metrics", [])]:
            path = tmp_path / (out if isinstance(out, str) else next(iter(out)))
            (path / "placeholder" if not path.suffix else path).parent.mkdir(parents=True, exist_ok=True)
            (path / "placeholder" if not path.suffix else path).write_text("placeholder\n")
    subprocess.run(["dvc", "commit", "-f", "-q", *stages], cwd=tmp_path, env=stage_env(), check=True)
    assert _status(tmp_path) == {}
    resume_before = {stage: _resume_key(tmp_path, stage) for stage in TRAINING_STAGES}

    viewer = tmp_path / "lossviz" / "assets" / "viewer.js"
    viewer.write_text(viewer.read_text() + "\n// an edit to the viewer\n")
    figures = tmp_path / "lossviz" / "figures.py"
    figures.write_text(figures.read_text() + "\n# an edit to the figures\n")
    stale = _status(tmp_path)
    assert set(drawing) <= set(stale), stale
    assert not set(TRAINING_STAGES) & set(stale), stale
    assert {stage: _resume_key(tmp_path, stage) for stage in TRAINING_STAGES} == resume_before

    training = tmp_path / "lossviz" / "training.py"
    training.write_text(training.read_text() + "\n# an edit to the training loop\n")
    assert set(TRAINING_STAGES) <= set(_status(tmp_path))
    assert all(_resume_key(tmp_path, stage) != resume_before[stage] for stage in TRAINING_STAGES)
