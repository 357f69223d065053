"""Nothing lost on bad input: a rejected param stops `dvc repro` before any stage deletes its outputs, and
pages are written whole or not at all."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pytest
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
    `dvc repro` fails naming the key, and the model and both uncached metrics files are untouched."""
    make_project(tmp_path, TINY_PARAMS, ("train",))
    env = stage_env()
    subprocess.run(["dvc", "repro", "-q"], cwd=tmp_path, env=env, check=True, capture_output=True)
    outputs = ("models/train", "metrics/train.json", "metrics/train_history.csv")
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
