"""Every command-line error is one line naming the flag or file and what was expected, exit code 2, no
traceback (`--debug` shows it); every option has help and shows its default; start-up does no work the
command asked for does not need."""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
import torch
from helpers_engine import make_model, write_official_surface, write_prepared_fashion_mnist

from lossviz.cli import build_parser, main


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """Tiny prepared data, a lenet5 checkpoint and one finished 5×5 surface, shared by the module's tests."""
    root = tmp_path_factory.mktemp("cli")
    data_root = write_prepared_fashion_mnist(root / "prepared")
    checkpoint = root / "lenet5.pt"
    torch.save(make_model("lenet5").state_dict(), checkpoint)
    surface = root / "surface.h5"
    assert main(surface_args(data_root, checkpoint, surface)) == 0
    return root, data_root, checkpoint, surface


def surface_args(data_root, checkpoint, out, *extra: str) -> list[str]:
    return ["surface", "--model", "lenet5", "--checkpoint", str(checkpoint), "--dataset", "fashion_mnist",
            "--data-root", str(data_root), "--x", "-1:1:5", "--y", "-1:1:5", "--examples", "16", "--no-progress",
            "--out", str(out), *extra]


def bad_surface_files(directory) -> dict[str, tuple[object, str]]:
    """Files that are not usable surface files → the words the error must use."""
    directory.mkdir(exist_ok=True)
    files = {}
    (directory / "empty.h5").write_bytes(b"")
    files["empty"] = (directory / "empty.h5", "not a readable HDF5 file")
    with h5py.File(directory / "whole.h5", "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, 5)
        f["test_loss"] = np.ones(5)
    whole = (directory / "whole.h5").read_bytes()
    (directory / "truncated.h5").write_bytes(whole[: len(whole) // 2])
    files["truncated"] = (directory / "truncated.h5", "truncated")
    (directory / "foreign.h5").write_text("not hdf5 at all\n")
    files["foreign"] = (directory / "foreign.h5", "not a readable HDF5 file")
    with h5py.File(directory / "foreign_hdf5.h5", "w") as f:
        f["weights"] = np.ones(3)
    files["foreign HDF5"] = (directory / "foreign_hdf5.h5", "not a surface file")
    write_official_surface(directory / "mismatched.h5", np.linspace(-1, 1, 5), np.linspace(-1, 1, 4),
                           np.ones(20))
    with h5py.File(directory / "mismatched.h5", "r+") as f:  # a loss array of another grid
        del f["train_loss"]
        f["train_loss"] = np.ones((5, 5))
    files["shape-mismatched official"] = (directory / "mismatched.h5", "holds 25 values")
    files["missing"] = (directory / "missing.h5", "no such file")
    return files


def assert_clean_error(capsys, code: int, *words: str) -> str:
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("kind", ["empty", "truncated", "foreign", "foreign HDF5", "shape-mismatched official",
                                  "missing"])
def test_a_bad_surface_file_is_named_in_one_line_by_every_command(workspace, tmp_path, capsys, kind):
    _, data_root, checkpoint, surface = workspace
    path, words = bad_surface_files(tmp_path)[kind]
    commands = [["plot", str(path)], ["metrics", str(path)], ["compare", str(surface), str(path), "-o",
                                                              str(tmp_path / "c.html")]]
    if kind != "missing":  # a missing --out is simply created
        commands.append(surface_args(data_root, checkpoint, path))
    for command in commands:
        assert_clean_error(capsys, main(command), str(path), words)
    assert not list(tmp_path.glob("*.html"))


@contextlib.contextmanager
def read_only_directory(path):
    """A directory no one may write in: a read-only bind mount as root (root ignores permissions), else 0o555."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        yield path
        path.chmod(0o755)
        return
    subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True)
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_unwritable_or_missing_output_directories_are_named(workspace, tmp_path, capsys):
    _, data_root, checkpoint, surface = workspace
    assert_clean_error(capsys, main(surface_args(data_root, checkpoint, tmp_path / "nowhere" / "s.h5")),
                       "--out", "nowhere", "does not exist")
    with read_only_directory(tmp_path / "locked") as locked:
        assert_clean_error(capsys, main(surface_args(data_root, checkpoint, locked / "s.h5")),
                           "--out", "not writable")
        assert_clean_error(capsys, main(["plot", str(surface), "-o", str(locked / "p.html")]),
                           "--output", "not writable")


def test_a_second_process_on_the_same_out_is_told_the_file_is_busy(workspace, tmp_path, capsys):
    from lossviz.surface import Surface, SurfaceFile

    _, data_root, checkpoint, surface = workspace
    busy = tmp_path / "busy.h5"
    template = Surface.load(surface)
    with SurfaceFile.create(busy, template):  # another writer holds it
        assert_clean_error(capsys, main(surface_args(data_root, checkpoint, busy)), str(busy),
                           "being written by another process")
    assert not (tmp_path / ".busy.h5.lock").exists()  # released and removed on close


@pytest.mark.parametrize(("extra", "words"), [
    (["--clip-radius", "-1"], ["--clip-radius", "'-1'", "≥ 0"]),
    (["--batch-size", "-5"], ["--batch-size", "'-5'", "positive integer"]),
    (["--examples", "abc"], ["--examples", "positive integer or 'auto'"]),
])
def test_bad_numbers_are_refused_by_the_parser(workspace, tmp_path, capsys, extra, words):
    _, data_root, checkpoint, _ = workspace
    with pytest.raises(SystemExit) as stop:
        main(surface_args(data_root, checkpoint, tmp_path / "s.h5", *extra))
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert all(word in err for word in words), err
    assert not (tmp_path / "s.h5").exists()


def test_more_examples_than_the_split_holds_is_an_error(workspace, tmp_path, capsys):
    _, data_root, checkpoint, _ = workspace
    code = main(surface_args(data_root, checkpoint, tmp_path / "s.h5", "--examples", "20000"))
    assert_clean_error(capsys, code, "--examples 20000", "40 examples of the test split", "at most 40")
    assert not (tmp_path / "s.h5").exists()


def test_a_checkpoint_that_is_not_a_state_dict_is_named(workspace, tmp_path, capsys):
    _, data_root, _, _ = workspace
    listing, text = tmp_path / "list.pt", tmp_path / "text.pt"
    torch.save([1, 2, 3], listing)
    text.write_text("hello")
    assert_clean_error(capsys, main(surface_args(data_root, listing, tmp_path / "s.h5")), str(listing),
                       "expected a state_dict")
    assert_clean_error(capsys, main(surface_args(data_root, text, tmp_path / "s.h5")), str(text),
                       "not a readable weights-only checkpoint")


def test_debug_shows_the_traceback(tmp_path, capsys):
    from lossviz.surface import SurfaceFileError

    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    assert_clean_error(capsys, main(["plot", str(empty)]), "not a readable HDF5 file")
    for argv in (["plot", str(empty), "--debug"], ["--debug", "plot", str(empty)]):
        with pytest.raises(SurfaceFileError, match="not a readable HDF5 file"):
            main(argv)


def test_a_finished_rerun_says_nothing_was_left_to_compute(workspace, capsys):
    _, data_root, checkpoint, surface = workspace
    assert main(surface_args(data_root, checkpoint, surface)) == 0
    out = capsys.readouterr().out
    assert "nothing left to compute" in out and "points computed" not in out, out


def _parsers(parser: argparse.ArgumentParser, name: str = "lossviz"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                yield from _parsers(child, f"{name} {child_name}")


def test_every_option_has_help_its_default_and_every_command_a_description():
    for name, parser in _parsers(build_parser()):
        assert parser.description and not parser.description.startswith("`"), name
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction | argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            shown = action.default not in (None, False, argparse.SUPPRESS) and action.option_strings
            if shown:
                assert f"default: {action.default}" in text or "default" in action.help, \
                    f"{name} {action.option_strings}: default not shown"
            if action.choices and action.option_strings:
                assert "{" + ",".join(map(str, action.choices)) + "}" in text, f"{name}: choices not listed"


def test_the_cli_copies_of_slow_modules_constants_agree():
    from lossviz import cli_plots, cli_stability, cli_surface, figures, stability, tasks

    assert cli_plots.CONTOUR_STYLES == figures.CONTOUR_STYLES
    assert cli_surface.TASK_NAMES == tuple(tasks.TASKS)
    assert (cli_stability.PATH_POINTS, cli_stability.STABLE_THRESHOLD) == (stability.PATH_POINTS,
                                                                           stability.STABLE_THRESHOLD)


def test_start_up_imports_neither_torch_nor_plotly():
    """Help and argument errors run without importing torch, plotly or MLflow (seconds of start-up)."""
    code = """import sys
from lossviz.cli import main
for argv in (["--help"], ["surface", "--help"], ["plot", "--help"], ["interpolate", "--help"],
             ["surface", "--model", "m", "--dataset", "d", "--checkpoint", "c", "--out", "o", "--batch-size", "-5"],
             ["metrics", "missing.h5"], ["plot", "missing.h5"]):
    try:
        main(argv)
    except SystemExit:
        pass
print("heavy:", sorted(m for m in ("torch", "plotly", "mlflow") if m in sys.modules), file=sys.stderr)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert "heavy: []" in result.stderr, result.stderr[-2000:]


def test_a_busy_machine_gets_a_passive_openmp_wait_before_torch_loads_and_a_quiet_one_the_default():
    """A spinning OpenMP wait collapses throughput beside busy neighbours, a passive one halves quiet training
    (benchmarks/bench_contention.py): every stage (they import the `pipelines` package first) and the
    `lossviz` command choose by the load at start, before torch loads; a user's own setting wins."""
    from lossviz.runtime import machine_is_busy

    assert not machine_is_busy(others=1, cores=2) and machine_is_busy(others=2, cores=2)
    code = """import os, sys
import pipelines
assert "torch" not in sys.modules
import torch
print(os.environ.get("OMP_WAIT_POLICY"))
"""
    env = {key: value for key, value in os.environ.items() if key != "OMP_WAIT_POLICY"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def policy(environment: dict[str, str]) -> str:
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                env=environment, cwd=repo)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.stdout.strip()

    cores = len(os.sched_getaffinity(0))
    neighbours = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores + 1)]
    try:
        time.sleep(1.0)
        assert policy(env) == "PASSIVE"
        assert policy({**env, "OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE"
    finally:
        for neighbour in neighbours:
            neighbour.kill()
            neighbour.wait()
