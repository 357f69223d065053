"""The code a stage runs: its module and every lossviz/pipelines module it imports, followed transitively.

One answer used in three places: the `deps` of each stage in dvc.yaml (so DVC reruns a stage when, and only
when, code it runs changes), the key of a stage's resume folder (`pipelines.common.resume_path`), and the test
that checks both. Package data a module reads at run time (the viewer's JS and CSS) is listed beside the
module that reads it. The stages that build the user's own model or dataset from params (`train`, `sample_size`)
also depend on the user's code folder, `user/` (`USER_CODE_DIR`): put your model's module there and DVC
reruns them when it changes.

    python -m pipelines.code_deps          # print each stage's code deps
    python -m pipelines.code_deps --write  # rewrite the code deps in dvc.yaml (other deps, comments kept)
"""

from __future__ import annotations

import argparse
import ast
import sys
from functools import cache
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
OWN_PACKAGES = ("lossviz", "pipelines")
# Files a module reads as package data, not through an import.
PACKAGE_DATA = {"lossviz/pages.py": ("lossviz/assets/viewer.css", "lossviz/assets/viewer.js")}
# The user's code (`user.mymodule:factory` in params), a dep of the stages that import it: its modules are
# named only at run time, so the whole folder counts.
USER_CODE_DIR = "user"
USER_CODE_STAGES = ("train", "sample_size")


def module_file(module: str, root: Path = PACKAGE_ROOT) -> Path | None:
    """The .py file of one of our modules (None for a package's __init__, which holds no stage logic, and for
    anything that is not ours)."""
    if module.split(".")[0] not in OWN_PACKAGES:
        return None
    path = (root / Path(*module.split("."))).with_suffix(".py")
    return path if path.is_file() else None


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)  # `from lossviz import engine`
    return names


@cache
def code_files(module: str, root: Path = PACKAGE_ROOT) -> tuple[str, ...]:
    """Repository-relative paths of the code `module` runs, sorted: its file, the files of every module of
    ours it imports (imports inside functions included), transitively, and their package data."""
    entry = module_file(module, root)
    if entry is None:
        raise ValueError(f"{module!r} is not a module of {', '.join(OWN_PACKAGES)} under {root}")
    seen = {entry}
    queue = [entry]
    while queue:
        for name in _imported_modules(queue.pop()):
            found = module_file(name, root)
            if found is not None and found not in seen:
                seen.add(found)
                queue.append(found)
    files = {str(path.relative_to(root)) for path in seen}
    files.update(data for path in list(files) for data in PACKAGE_DATA.get(path, ()))
    return tuple(sorted(files))


def stage_code_deps(stage: str, command: str, root: Path = PACKAGE_ROOT) -> list[str]:
    """A stage's code deps in dvc.yaml: `code_files` of the module its `command` runs, and the user's code
    folder for the stages that import the user's model or dataset."""
    return [*code_files(stage_module(command), root), *([USER_CODE_DIR] if stage in USER_CODE_STAGES else [])]


def user_code_files(root: Path) -> list[Path]:
    """The files of the user's code folder under `root` (caches left out, as .dvcignore does), sorted: part of
    the resume key of the stages that depend on it."""
    folder = root / USER_CODE_DIR
    return sorted(path for path in folder.rglob("*") if path.is_file() and "__pycache__" not in path.parts
                  and path.suffix != ".pyc")


def stage_module(command: str) -> str:
    """The module a stage's `cmd` runs (`python -m pipelines.train` → pipelines.train)."""
    try:
        return command.split("python -m ", 1)[1].split()[0]
    except IndexError:
        raise ValueError(f"stage command {command!r} does not run `python -m <module>`") from None


def is_code_dep(dep: str) -> bool:
    """Whether a dvc.yaml dep is code (ours, or the user's folder) rather than data."""
    return dep.split("/")[0] in OWN_PACKAGES or dep.rstrip("/") == USER_CODE_DIR


def write_dvc_yaml(path: Path) -> list[str]:
    """Replace each stage's code deps in dvc.yaml with `code_files` of its module; data deps and comments
    stay. Returns the names of the stages that changed."""
    from ruamel.yaml import YAML  # only this maintenance command needs it

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=4, offset=2)
    document = yaml.load(path.read_text(encoding="utf-8"))
    changed = []
    for name, stage in document["stages"].items():
        wanted = stage_code_deps(name, stage["cmd"], path.parent)
        deps = stage.get("deps", [])
        current = [dep for dep in deps if isinstance(dep, str) and is_code_dep(dep)]
        if current == wanted:
            continue
        others = [dep for dep in deps if not (isinstance(dep, str) and is_code_dep(dep))]
        deps.clear()
        deps.extend(wanted + others)
        changed.append(name)
    if changed:
        with path.open("w", encoding="utf-8") as handle:
            yaml.dump(document, handle)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.code_deps", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the code deps of every stage in dvc.yaml")
    parser.add_argument("--dvc-yaml", type=Path, default=PACKAGE_ROOT / "dvc.yaml", help="default: %(default)s")
    args = parser.parse_args(argv)
    if args.write:
        changed = write_dvc_yaml(args.dvc_yaml)
        print(f"updated: {', '.join(changed)}" if changed else "dvc.yaml code deps are up to date")
        return 0
    import yaml

    for name, stage in yaml.safe_load(args.dvc_yaml.read_text(encoding="utf-8"))["stages"].items():
        print(f"{name}:", *stage_code_deps(name, stage["cmd"], args.dvc_yaml.parent), sep="\n  ")
    return 0


if __name__ == "__main__":
    sys.exit(main())
