"""Nothing lost on bad input: a rejected param stops `dvc repro` before any stage deletes its outputs, pages
are written whole or not at all, surface files appear whole, survive a full disk, record non-finite points
as such and detect flipped bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from tests.helpers_project import make_project, stage_env
from tests.test_train_stage import TINY_PARAMS


def tree_digests(root: Path, *outputs: str) -> dict[str, str]:
    found = {}
    for output in outputs:
        path = root / output
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        found.update({str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files})
    return found


@pytest.mark.slow
@pytest.mark.parametrize("section, key, bad", [("train", "epochs", -1), ("train", "lr", "fast"),
                                               ("sample_size", "extent", float("inf"))])
def test_a_rejected_param_leaves_every_output_byte_identical(tmp_path, section, key, bad):
    """`train` runs, then a bad value (in its own section, or in another stage's) goes into params.yaml:
    `dvc repro` fails naming the key, and the model, the results and the metrics files are untouched."""
    make_project(tmp_path, TINY_PARAMS, ("train",))
    env = stage_env()
    subprocess.run(["dvc", "repro", "-q"], cwd=tmp_path, env=env, check=True, capture_output=True)
    outputs = ("models/train", "results/train.json", "metrics/train.json", "metrics/train_history.csv")
    before = tree_digests(tmp_path, *outputs)
    assert len(before) >= 3

    bad_params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    bad_params[section][key] = bad
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(bad_params))
    failed = subprocess.run(["dvc", "repro"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert failed.returncode != 0
    assert f"{section}.{key}" in failed.stdout + failed.stderr
    assert tree_digests(tmp_path, *outputs) == before


def test_a_page_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A write that fails part-way (a full disk) leaves the previous page, and no partial file beside it."""
    from lossviz import figures, pages
    from lossviz.surface import Surface

    xs = np.linspace(-1, 1, 5)
    surface = Surface(xs, xs, np.ones((5, 5)), np.ones((5, 5)), np.zeros((5, 5)), np.arange(3), {})
    out = pages.write_html(figures.surface_figure(surface, title="first"), tmp_path / "page.html")
    first = out.read_bytes()

    def full_disk(descriptor):  # the data reached the temporary file; the disk fills before it is safe
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("lossviz.checkpoints.os.fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        pages.write_html(figures.surface_figure(surface, title="second"), out)
    monkeypatch.undo()
    assert out.read_bytes() == first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]


# -- surface files: atomic creation, full disks, non-finite points, checksums -----------------------------------
def _surface_command(data_root: Path, checkpoint: Path, out: Path, grid: str = "-1:1:5") -> list[str]:
    return [sys.executable, "-m", "lossviz.cli", "surface", "--model", "lenet5", "--checkpoint", str(checkpoint),
            "--dataset", "fashion_mnist", "--data-root", str(data_root), "--x", grid, "--y", grid, "--examples",
            "16", "--no-progress", "--out", str(out)]


@pytest.fixture(scope="module")
def tiny_inputs(tmp_path_factory):
    """Tiny prepared data and a lenet5 checkpoint."""
    from tests.helpers_engine import make_model, write_prepared_fashion_mnist

    root = tmp_path_factory.mktemp("reliability")
    data_root = write_prepared_fashion_mnist(root / "prepared")
    checkpoint = root / "lenet5.pt"
    torch.save(make_model("lenet5").state_dict(), checkpoint)
    return data_root, checkpoint


def _one_thread_env() -> dict[str, str]:
    return {**os.environ, "LOSSVIZ_THREADS": "1", "OMP_NUM_THREADS": "1"}


def _kill_when_an_entry_appears(command: list[str], directory: Path, names: tuple[str, ...]) -> None:
    """Start `command` and SIGKILL it the moment an entry whose name contains one of `names` appears in
    `directory` that was not there before (polled as fast as Python can)."""
    before = set(os.listdir(directory))
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_one_thread_env())
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and job.poll() is None:
        if any(any(part in name for part in names) for name in set(os.listdir(directory)) - before):
            break
    job.kill()
    job.wait()


def test_a_sigkill_when_the_surface_file_appears_never_breaks_the_rerun(tiny_inputs, tmp_path):
    """Killed as its lock file, its temporary file or the file itself appears (the first moments of a run): each
    rerun works, and the last ends with the surface of an uninterrupted run and nothing left beside it."""
    from lossviz.cli import main
    from lossviz.surface import Surface

    data_root, checkpoint = tiny_inputs
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    killed.mkdir()
    fresh.mkdir()
    command = _surface_command(data_root, checkpoint, killed / "s.h5")
    for moment in ((".s.h5.lock", ".partial", "s.h5"), (".partial", "s.h5"), ("s.h5",)):
        _kill_when_an_entry_appears(command, killed, moment)
    assert main(command[3:]) == 0
    assert main(_surface_command(data_root, checkpoint, fresh / "s.h5")[3:]) == 0
    resumed, whole = Surface.load(killed / "s.h5"), Surface.load(fresh / "s.h5")
    assert resumed.meta["complete"] and np.isfinite(resumed.loss).all()
    for name in ("loss", "acc", "loss_se", "example_indices"):
        assert np.array_equal(getattr(resumed, name), getattr(whole, name)), name
    assert sorted(os.listdir(killed)) == ["s.h5"]


@contextlib.contextmanager
def full_filesystem(path: Path):
    """A directory on a 200 KB tmpfs (as root), else a directory where this test's child processes may not
    write more than 64 KB per file (RLIMIT_FSIZE: writes past it fail with EFBIG, SIGXFSZ ignored). Yields the
    directory and the child processes' preexec_fn."""
    path.mkdir()
    if os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(path)],
                                            capture_output=True).returncode == 0:
        try:
            yield path, None
        finally:
            subprocess.run(["umount", str(path)], check=True)
        return

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    yield path, limit_file_size


def test_a_full_disk_gives_a_clean_error_and_leaves_no_file(tiny_inputs, tmp_path, capsys):
    """A surface that does not fit, then a page that does not fit: exit code 2, one line naming the file and
    the reason, no "Exception ignored", no crash, and nothing a later run would trust."""
    from lossviz.cli import main

    data_root, checkpoint = tiny_inputs
    small = tmp_path / "small.h5"
    assert main(_surface_command(data_root, checkpoint, small)[3:]) == 0
    with full_filesystem(tmp_path / "full") as (full, preexec):
        failed = subprocess.run(_surface_command(data_root, checkpoint, full / "s.h5", "-1:1:101"),
                                capture_output=True, text=True, env=_one_thread_env(), preexec_fn=preexec)
        assert failed.returncode == 2, failed.stderr
        assert "full/s.h5: writing failed" in failed.stderr and "Traceback" not in failed.stderr
        assert "Exception ignored" not in failed.stderr
        assert any(reason in failed.stderr for reason in ("No space left on device", "File too large"))
        assert os.listdir(full) == []
        # A page inlines plotly.js (megabytes): it fits neither limit. (The size limit binds child processes only.)
        plot = ["plot", str(small), "-o", str(full / "p.html")]
        if preexec is None:
            code, err = main(plot), capsys.readouterr().err
        else:
            page = subprocess.run([sys.executable, "-m", "lossviz.cli", *plot], capture_output=True, text=True,
                                  env=_one_thread_env(), preexec_fn=preexec)
            code, err = page.returncode, page.stderr
        assert code == 2, err
        assert "--output" in err and "p.html: writing failed" in err and "Traceback" not in err
        assert not [name for name in os.listdir(full) if "p.html" in name]


def _json_without_nan(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_nan_weights_exit_non_zero_and_their_points_are_not_computed(tiny_inputs, tmp_path, capsys):
    from lossviz.cli import main
    from lossviz.surface import NONFINITE

    data_root, checkpoint = tiny_inputs
    state = torch.load(checkpoint, weights_only=True)
    bias = next(name for name in state if name.endswith("bias"))
    state[bias] = state[bias] * float("nan")
    poisoned = tmp_path / "nan.pt"
    torch.save(state, poisoned)
    out = tmp_path / "nan.h5"
    assert main(_surface_command(data_root, poisoned, out)[3:]) == 1
    err = capsys.readouterr().err
    assert "all 25 evaluated points have a non-finite loss" in err and "Traceback" not in err
    with h5py.File(out, "r") as f:
        assert (np.asarray(f["point_status"]) == NONFINITE).all()
    assert main(["metrics", str(out)]) == 0
    metrics = _json_without_nan(capsys.readouterr().out)
    assert metrics["centre_loss"] is None and metrics["nonfinite_points"] == 25
    assert main(["plot", str(out), "-o", str(tmp_path / "blank.html")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert not (tmp_path / "blank.html").exists()


def test_flipped_bytes_are_detected_on_load_and_on_resume(tiny_inputs, tmp_path, capsys):
    from lossviz.cli import main
    from lossviz.surface import Surface, SurfaceFileError
    from tests.helpers_engine import write_official_surface

    data_root, checkpoint = tiny_inputs
    out = tmp_path / "s.h5"
    assert main(_surface_command(data_root, checkpoint, out)[3:]) == 0
    pristine = out.read_bytes()
    for dataset, index in (("test_loss", 7), ("point_status", 3), ("example_indices", 2)):
        with h5py.File(out, "r") as f:
            offset = f[dataset].id.get_offset() + index * f[dataset].dtype.itemsize
        damaged = bytearray(pristine)
        damaged[offset] ^= 0x10
        out.write_bytes(bytes(damaged))
        with pytest.raises(SurfaceFileError, match=f"{out} is corrupted"):
            Surface.load(out)
        assert main(_surface_command(data_root, checkpoint, out)[3:]) == 2  # resume refuses it too
        assert f"{out} is corrupted" in capsys.readouterr().err
    # The official tool's files (no checksums) still load.
    official = tmp_path / "official.h5"
    write_official_surface(official, np.linspace(-1, 1, 3), np.linspace(-1, 1, 3), np.arange(9.0))
    assert np.array_equal(Surface.load(official).loss.ravel(), np.arange(9.0))


def test_a_file_without_checksums_is_resumed_and_gains_them(tmp_path):
    from lossviz.surface import Surface, SurfaceFile

    xs = np.linspace(-1, 1, 3)
    template = Surface(xs, xs, np.full((3, 3), np.nan), np.full((3, 3), np.nan), np.full((3, 3), np.nan),
                       np.arange(4), {"seed": 0})
    path = tmp_path / "old.h5"
    with SurfaceFile.create(path, template) as handle:
        handle.record(0, 1.0, 50.0, 0.1)
    with h5py.File(path, "r+") as f:  # as written before checksums existed
        del f["point_crc32"]
        del f.attrs["header_crc32"]
    with SurfaceFile.open_or_create(path, template, ("seed",)) as handle:
        assert list(handle.pending()) == list(range(1, 9))
        handle.record(4, 2.0, 60.0, 0.2)
    resumed = Surface.load(path)
    assert resumed.loss[0, 0] == 1.0 and resumed.loss[1, 1] == 2.0
    with h5py.File(path, "r") as f:
        assert "point_crc32" in f


# -- make ui ------------------------------------------------------------------------------------------------
def _descendants(pid: int) -> set[int]:
    listing = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True, check=True).stdout
    pairs = [tuple(map(int, line.split())) for line in listing.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in pairs if parent in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _make_ui(checkout: Path, *make_args: str) -> Iterator[tuple[subprocess.Popen, int, set[int]]]:
    """`make ui ...` run in `checkout`, once it answers HTTP 200; afterwards none of its processes is left, those
    in the yielded set included (make's descendants no longer once make has exited)."""
    from tests.helpers_servers import free_port

    port = free_port()
    make = subprocess.Popen(["make", "-o", "setup", *make_args, "ui", f"UI_PORT={port}"], cwd=checkout,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                    if response.status == 200:
                        break
            assert make.poll() is None and time.monotonic() < deadline, "make ui did not serve the UI"
            time.sleep(0.5)
        processes = _descendants(make.pid)
        yield make, port, processes
    finally:
        for pid in processes | _descendants(make.pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            make.kill()
        make.wait()


@pytest.mark.slow
def test_make_ui_stops_every_process_on_sigterm(tmp_path):
    """`make ui` serves the UI (HTTP 200), and a SIGTERM to make leaves none of its processes (the server's
    workers included) running."""
    with _make_ui(REPO, f"UI_STORE=sqlite:///{tmp_path}/ui.db") as (make, _, processes):
        time.sleep(1)  # workers that start after the first answer
        processes |= _descendants(make.pid)
        assert len(processes) >= 3  # the script, mlflow, its server and workers
        make.send_signal(signal.SIGTERM)
        make.wait(timeout=60)
        deadline = time.monotonic() + 20
        while any(_alive(pid) for pid in processes) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = {pid: Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")[:120]
                     for pid in processes if _alive(pid)}
        assert not survivors


@pytest.mark.slow
def test_make_ui_in_a_moved_checkout_serves_its_artifacts(tmp_path, monkeypatch):
    """Issue 17: after a `mv` of the checkout, `make ui` run before any stage serves the runs' artifacts from
    the new place (the store is first pointed at it, as a stage would), not from the vanished old one."""
    import mlflow

    from pipelines import tracking

    old = tmp_path / "old"
    old.mkdir()
    monkeypatch.setenv("DVC_ROOT", str(old))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        with tracking.stage_run("demo", "kept", stage="demo") as run:
            mlflow.log_text("kept", "note.txt")
    finally:
        mlflow.set_tracking_uri(None)
    moved = tmp_path / "moved"
    old.rename(moved)  # nothing is left at the old path
    run_id = run.info.run_id
    with _make_ui(moved, "-f", str(REPO / "Makefile"), f"VENV={REPO / '.venv'}") as (_, port, _):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/artifacts/list?run_id={run_id}",
                                    timeout=30) as response:
            listing = json.load(response)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ajax-api/2.0/mlflow/experiments/get-by-name"
                                    "?experiment_name=demo", timeout=30) as response:
            experiment = json.load(response)["experiment"]
    assert [entry["path"] for entry in listing.get("files", [])] == ["note.txt"]
    assert experiment["artifact_location"] == (moved / "mlruns" / "artifacts" / "demo").as_uri()
