"""`lossviz surface` under torchrun: two gloo ranks on the CPU give the one-process surface, a job whose rank
is killed mid-run resumes and computes only the missing points, and ranks holding different data are refused."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import torch.distributed as dist
from helpers_engine import make_model, write_prepared_fashion_mnist

from lossviz.surface import COMPUTED, PENDING, Surface, point_checksums

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux") or not dist.is_available()
                       or not dist.is_gloo_available(), reason="needs Linux (/proc) and torch.distributed with gloo"),
]

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
# One thread per rank (2 ranks on 2 cores), and the same for the one-process reference.
ENV = {**os.environ, "LOSSVIZ_THREADS": "1", "OMP_NUM_THREADS": "1"}
GRID = ("-1:1:31", "-1:1:31")  # 961 points of a lenet5 on 500 examples: a few seconds on 2 ranks
TOTAL = 31 * 31
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """Data, checkpoint, the `lossviz surface` arguments (without --out) and the one-process surface."""
    root = tmp_path_factory.mktemp("distributed")
    data_root = write_prepared_fashion_mnist(root / "prepared", n_test=500)
    checkpoint = root / "lenet5.pt"
    torch.save(make_model("lenet5").state_dict(), checkpoint)
    args = ["surface", "--model", "lenet5", "--checkpoint", str(checkpoint), "--dataset", "fashion_mnist",
            "--data-root", str(data_root), "--x", GRID[0], "--y", GRID[1], "--examples", "500", "--seed", "3"]
    reference = root / "one-process.h5"
    result = _run([sys.executable, "-m", "lossviz.cli", *args, "--no-progress", "--out", str(reference)])
    assert result.returncode == 0, result.stderr
    return args, Surface.load(reference)


def _run(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, env=ENV, cwd=REPO_ROOT, timeout=300)


def _assert_same_values(surface: Surface, reference: Surface, where: np.ndarray | None = None) -> None:
    for name in ("loss", "acc", "loss_se"):
        ours, theirs = getattr(surface, name), getattr(reference, name)
        if where is not None:
            ours, theirs = ours[where], theirs[where]
        assert np.array_equal(ours, theirs), name


def test_two_gloo_ranks_give_the_one_process_surface(job, tmp_path):
    args, reference = job
    out = tmp_path / "two-ranks.h5"
    result = _run([*TORCHRUN, "-m", "lossviz.cli", *args, "--no-progress", "--out", str(out)])
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("wrote ") == 1 and f"{TOTAL} points computed" in result.stdout  # rank 0 alone
    surface = Surface.load(out)
    assert reference.meta["complete"] and surface.meta["complete"]
    assert np.isfinite(surface.loss).all()
    _assert_same_values(surface, reference)
    assert surface.meta == reference.meta and np.array_equal(surface.example_indices, reference.example_indices)


def _status(path: Path) -> np.ndarray:
    with h5py.File(path, "r", locking=False) as f:  # rank 0 holds the file open for writing
        return np.asarray(f["point_status"]).ravel()


def _ranks(launcher: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun (process `launcher`) started, from /proc."""
    workers = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != launcher:
                continue
            variables = dict(item.split("=", 1) for item in (entry / "environ").read_text().split("\0") if "=" in item)
        except (OSError, IndexError, ValueError):  # gone meanwhile
            continue
        if "RANK" in variables:
            workers[int(variables["RANK"])] = int(entry.name)
    return workers


def test_a_killed_rank_then_a_rerun_computes_only_the_missing_points(job, tmp_path):
    args, reference = job
    out = tmp_path / "killed.h5"
    command = [*TORCHRUN, "-m", "lossviz.cli", *args, "--dir-file", str(tmp_path / "dirs.h5"), "--out", str(out)]
    with open(tmp_path / "killed.log", "w") as log:  # a file, not a pipe nobody reads while we wait
        launcher = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=ENV, cwd=REPO_ROOT)
    try:
        deadline, done = time.monotonic() + 120, 0
        while time.monotonic() < deadline and launcher.poll() is None:
            time.sleep(0.05)
            try:
                done = int((_status(out) == COMPUTED).sum())
            except (OSError, KeyError):  # not there yet, or caught mid-creation
                continue
            if done:
                break
        assert 0 < done < TOTAL, f"no partial file to kill: {done} points; {(tmp_path / 'killed.log').read_text()}"
        ranks = _ranks(launcher.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        assert launcher.wait(timeout=60) != 0  # torchrun stops rank 0 and fails the job
    finally:
        if launcher.poll() is None:
            launcher.kill()
            launcher.wait()
    status = _status(out)
    kept = status == COMPUTED
    missing = int((status == PENDING).sum())
    assert kept.sum() + missing == TOTAL and 0 < missing < TOTAL

    # Mark the points already in the file: a rerun that computed them again would overwrite the marks.
    with h5py.File(out, "r+") as f:
        loss = np.asarray(f["test_loss"])
        loss.ravel()[kept] += 1000.0
        f["test_loss"][...] = loss
        # An edit on purpose: store its checksums, else the rerun (rightly) refuses the file as corrupted.
        f["point_crc32"][...] = point_checksums(f["point_status"][...], loss, f["test_acc"][...],
                                                f["test_loss_se"][...]).reshape(loss.shape)

    result = _run(command)
    assert result.returncode == 0, result.stderr
    first_frame = re.search(r"surface:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+) ", result.stderr)
    assert first_frame and (int(first_frame[1]), int(first_frame[2])) == (TOTAL - missing, TOTAL)  # resumed
    surface = Surface.load(out)
    assert surface.meta["complete"] and np.isfinite(surface.loss).all()
    flat_loss = surface.loss.ravel()
    assert np.array_equal(flat_loss[kept], reference.loss.ravel()[kept] + 1000.0)  # not computed again
    _assert_same_values(surface, reference, where=~kept.reshape(surface.shape))  # the missing ones, computed
    for name in ("acc", "loss_se"):
        assert np.array_equal(getattr(surface, name), getattr(reference, name)), name


REFUSED_JOB = """
import sys
from helpers_engine import make_examples, make_model
from lossviz import distributed
from lossviz.directions import random_directions
from lossviz.engine import compute_surface

with distributed.process_group("cpu"):
    model = make_model("lenet_300_100")
    inputs, targets = make_examples(20, seed=distributed.rank())  # each rank loaded other examples
    try:
        compute_surface(model, inputs, targets, random_directions(model, seed=0), [-1.0, 0.0, 1.0],
                        n_examples=10, device="cpu", progress=False)
    except ValueError as error:
        print(f"rank {distributed.rank()} refused: {error}", flush=True)
"""


def test_ranks_holding_different_examples_are_refused(tmp_path):
    script = tmp_path / "refused_job.py"
    script.write_text(REFUSED_JOB)
    result = subprocess.run([*TORCHRUN, str(script)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300,
                            env={**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(TESTS_DIR),
                                                                                   ENV.get("PYTHONPATH")]))})
    assert result.returncode == 0, result.stderr
    for rank in (0, 1):
        assert f"rank {rank} refused: ranks [1] hold a different model, directions, examples" in result.stdout
