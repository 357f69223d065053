import subprocess
import sys

import pytest
import yaml

from lossviz.params import ParamsError, load_params, parse_params
from tests.conftest import REPO_ROOT


def run_check(path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lossviz.cli", "params", "check", str(path)],
                          capture_output=True, text=True, cwd=REPO_ROOT)


def write_params(tmp_path, mutate):
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    mutate(raw)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_default_params_are_valid():
    result = run_check(REPO_ROOT / "params.yaml")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
    assert load_params(REPO_ROOT / "params.yaml").data.datasets == ["fashion_mnist"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["train"].update(learning_rate=0.1), ["train.learning_rate", "unknown key", "lr"]),
        (lambda p: p.update(extra_section={}), ["extra_section", "unknown key", "train"]),
        (lambda p: p["train"].update(batch_size="big"), ["train.batch_size", "'big'", "integer"]),
        (lambda p: p["train"].update(batch_size=0), ["train.batch_size", "got 0", "greater than or equal to 1"]),
        (lambda p: p["train"].update(optimizer="rmsprop"), ["train.optimizer", "'rmsprop'", "'adam'", "'sgd'"]),
        (lambda p: p["train"].update(model="vgg16"), ["train.model", "'vgg16'", "fashion_cnn", "resnet56"]),
        (lambda p: p.update(device="tpu"), ["device", "'tpu'", "cuda:N"]),
        (lambda p: p["train"].update(dataset="cifar10"), ["train.dataset", "data.datasets"]),
        (lambda p: p["batch_sweep"].update(heartbeat_interval=10, grace_period=10),
         ["batch_sweep.grace_period=10", "must exceed heartbeat_interval=10", "allowed: > 10"]),
    ],
)
def test_bad_params_name_key_value_and_allowed(tmp_path, mutate, expected):
    result = run_check(write_params(tmp_path, mutate))
    assert result.returncode != 0
    assert "ok" not in result.stdout
    for fragment in expected:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_every_error_is_reported_at_once():
    with pytest.raises(ParamsError) as info:
        parse_params({"seed": -1, "train": {"lr": 0, "epochs": "x"}})
    keys = sorted(line.split(":")[0] for line in info.value.errors)
    assert keys == ["seed", "train.epochs", "train.lr"]


def test_missing_and_malformed_files(tmp_path):
    assert run_check(tmp_path / "nope.yaml").returncode != 0
    (tmp_path / "bad.yaml").write_text("train: [unclosed\n")
    result = run_check(tmp_path / "bad.yaml")
    assert result.returncode != 0 and "not valid YAML" in result.stderr
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    assert "expected a mapping" in run_check(tmp_path / "list.yaml").stderr


def run_apply(preset, params_file) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lossviz.cli", "params", "apply", str(preset),
                           "--params", str(params_file)], capture_output=True, text=True, cwd=REPO_ROOT)


def test_paper_preset_applies_keeping_comments_and_other_keys(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    before = yaml.safe_load(target.read_text())
    result = run_apply(REPO_ROOT / "presets" / "paper.yaml", target)
    assert result.returncode == 0, result.stderr
    after = yaml.safe_load(target.read_text())
    preset = yaml.safe_load((REPO_ROOT / "presets" / "paper.yaml").read_text())
    assert after["batch_sweep"]["batch_sizes"] == [2, 16, 160, 1600, 16000]
    assert after["lottery"]["levels"] == 35 and after["lottery"]["rate"] == 0.1
    for section, values in before.items():  # every key the preset does not name is untouched
        if isinstance(values, dict):
            untouched = {k: v for k, v in values.items() if k not in preset.get(section, {})}
            assert {k: after[section][k] for k in untouched} == untouched
    text = target.read_text()
    assert "# the paper: 40" in text and "max_train_examples: null" in text
    assert "batch_sizes: [2, 16, 160, 1600, 16000]" in text  # lists stay on one line
    assert run_check(target).returncode == 0


def test_a_bad_preset_writes_nothing(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    original = target.read_text()
    preset = tmp_path / "bad.yaml"
    preset.write_text("lottery:\n  levles: 3\n")
    result = run_apply(preset, target)
    assert result.returncode != 0 and "lottery.levles" in result.stderr
    assert target.read_text() == original
