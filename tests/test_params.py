import subprocess
import sys
from dataclasses import fields

import pytest
import yaml

from lossviz.data import DATASETS
from lossviz.models import MODELS
from lossviz.options import IGNORES, METHODS, NORMS
from lossviz.params import (
    BatchSweepParams,
    DataParams,
    LotteryParams,
    Params,
    ParamsError,
    TrainingSettings,
    TrainParams,
    _ParamsLoader,
    load_params,
    parse_params,
)
from lossviz.training import OPTIMIZERS, TrainConfig
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
    (tmp_path / "external").mkdir()  # the preset's cifar10_dir: a user-supplied folder beside params.yaml
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


def test_medium_preset_is_valid_and_trains_every_model_to_convergence(tmp_path):
    """presets/medium.yaml (results/medium/) passes the stages' own checks; nothing of it is run here."""
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    result = run_apply(REPO_ROOT / "presets" / "medium.yaml", target)
    assert result.returncode == 0, result.stderr
    check = run_check(target)
    assert check.returncode == 0 and check.stdout.strip() == "ok", check.stdout + check.stderr
    params = parse_params(yaml.safe_load(target.read_text()))
    assert params.train.early_stopping and params.train.max_train_examples is None  # the full training set
    assert params.batch_sweep.max_train_examples is None and params.lottery.max_train_examples is None
    assert params.batch_landscapes.grid_points >= 61 and params.lottery_landscapes.grid_points >= 61
    assert params.sample_size.grid_points >= 61 and max(params.sample_size.n_examples) == 10_000
    assert 0.1 <= params.lottery.rate <= 0.2 and (1 - params.lottery.rate) ** (params.lottery.levels - 1) < 0.05


def test_a_bad_preset_writes_nothing(tmp_path):
    target = tmp_path / "params.yaml"
    target.write_text((REPO_ROOT / "params.yaml").read_text())
    original = target.read_text()
    preset = tmp_path / "bad.yaml"
    preset.write_text("lottery:\n  levles: 3\n")
    result = run_apply(preset, target)
    assert result.returncode != 0 and "lottery.levles" in result.stderr
    assert target.read_text() == original


# ------------------------------------------------------------------------------ one training schema

TRAINING_SECTIONS = {"train": TrainParams, "batch_sweep": BatchSweepParams, "lottery": LotteryParams}
# Where a section's default differs from TrainConfig's (every other training default is TrainConfig's).
OWN_DEFAULTS = {
    "train": {"lr_plateau": True},
    "batch_sweep": {"lr_plateau": True, "train_eval_examples": 2000},
    "lottery": {"lr": 2e-3, "batch_size": 128, "train_eval_examples": 1000, "early_stopping": True},
}


@pytest.mark.parametrize("name", sorted(TRAINING_SECTIONS))
def test_training_defaults_are_train_config_s_unless_the_section_says(name):
    section = TRAINING_SECTIONS[name]()
    assert isinstance(section, TrainingSettings)
    config_defaults = {f.name: f.default for f in fields(TrainConfig)}
    given = TrainConfig.fields_in(section)
    differing = {key: value for key, value in given.items() if value != config_defaults[key]}
    assert differing == OWN_DEFAULTS[name]
    assert TrainConfig.from_settings(section) == TrainConfig(**{**config_defaults, **OWN_DEFAULTS[name]})


def test_the_sweep_stores_the_same_training_keys_as_before():
    """The sweep's study name hashes `TrainConfig.fields_in(section)`: its keys must stay these (batch_size is
    the swept variable, not a key of the section)."""
    assert set(TrainConfig.fields_in(BatchSweepParams())) == {
        "optimizer", "lr", "momentum", "weight_decay", "epochs", "lr_plateau", "plateau_factor",
        "plateau_patience", "early_stopping", "patience", "train_eval_examples"}


@pytest.mark.parametrize("name", ["train", "batch_sweep"])
def test_patience_needs_early_stopping_in_every_section_that_has_the_choice(name):
    with pytest.raises(ParamsError) as info:
        parse_params({name: {"patience": 3, "early_stopping": False}})
    assert info.value.errors == [f"{name}.patience=3 is not valid; allowed: null unless early_stopping is true "
                                 "(patience is when early stopping ends training)"]
    assert getattr(parse_params({name: {"patience": 3, "early_stopping": True}}), name).patience == 3


def test_lottery_always_early_stops():
    params = parse_params({"lottery": {"patience": 2}})
    assert TrainConfig.from_settings(params.lottery).early_stopping is True
    with pytest.raises(ParamsError, match="lottery.early_stopping: unknown key"):
        parse_params({"lottery": {"early_stopping": False}})


def test_rules_across_keys_name_section_key_and_value():
    with pytest.raises(ParamsError) as info:
        parse_params({"lottery": {"epochs": 2, "rewind_epoch": 3}, "train": {"lr": float("inf")},
                      "batch_sweep": {"log2_batch_size_min": 5, "log2_batch_size_max": 2}})
    assert sorted(info.value.errors) == [
        "batch_sweep.log2_batch_size_min=5 is above log2_batch_size_max=2",
        "lottery.rewind_epoch=3 is above epochs=2; allowed: 0 … epochs",
        "train.lr: got inf; Input should be a finite number",
    ]


REGISTRIES = [  # (section, key, the registry its names come from)
    ("train", "dataset", DATASETS), ("train", "model", MODELS), ("train", "optimizer", OPTIMIZERS),
    ("lottery", "model", MODELS), ("batch_sweep", "optimizer", OPTIMIZERS),
    ("sample_size", "method", METHODS), ("batch_landscapes", "norm", NORMS),
    ("batch_landscapes", "ignore", IGNORES), ("lottery_landscapes", "method", METHODS),
]


@pytest.mark.parametrize(("section", "key", "registry"), REGISTRIES, ids=[f"{s}.{k}" for s, k, _ in REGISTRIES])
def test_allowed_names_are_the_registry_s(section, key, registry):
    all_datasets = {"data": {"datasets": list(DATASETS)}}
    for name in registry:
        assert getattr(getattr(parse_params({**all_datasets, section: {key: name}}), section), key) == name
    with pytest.raises(ParamsError) as info:
        parse_params({**all_datasets, section: {key: "no_such_name"}})
    (line,) = info.value.errors
    assert line.startswith(f"{section}.{key}: got 'no_such_name'")
    assert all(f"'{name}'" in line for name in registry), line


def test_every_dataset_is_a_choice_with_its_own_directory_key(tmp_path):
    assert parse_params({"data": {"datasets": list(DATASETS)}}).data.datasets == list(DATASETS)
    directory_keys = {key for key in DataParams.model_fields if key.endswith("_dir")}
    assert directory_keys == {f"{name}_dir" for name in DATASETS}
    assert DataParams(cifar10_dir=str(tmp_path)).directory_for("cifar10") == str(tmp_path)


def test_params_yaml_names_every_key_of_every_section():
    """params.yaml is the users' reference: each key of the schema appears there, and nothing else."""
    raw = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for name, field in Params.model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, TrainingSettings | DataParams):
            assert set(raw[name]) == set(field.annotation.model_fields), name


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda text: "", ["seed: missing", "data: missing", "lottery: missing"]),
        (lambda text: text + "\nseed: 1\n", ["'seed' is given twice"]),
        (lambda text: text.replace("seed: 0", "seed: 100000000000000000000000", 1), ["seed", "less than or equal"]),
        (lambda text: text.replace("  epochs: 10 ", "  epochs: true ", 1), ["train.epochs", "True", "integer"]),
        (lambda text: text.replace("  extent: 1.0", "  extent: .inf", 1), ["sample_size.extent", "finite"]),
    ],
)
def test_params_check_refuses_what_the_stages_would_misread(tmp_path, edit, expected):
    """Before: an empty file used the code's defaults, the last of two keys won, `true` was 1 epoch, and
    seed 1e23 and an infinite extent reached the stages."""
    path = tmp_path / "params.yaml"
    path.write_text(edit((REPO_ROOT / "params.yaml").read_text()))
    result = run_check(path)
    assert result.returncode != 0 and "ok" not in result.stdout
    for fragment in expected:
        assert fragment in result.stderr, (fragment, result.stderr)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda p: p["lottery_landscapes"].update(levels=[0, p["lottery"]["levels"]]),
         ["lottery_landscapes.levels", "allowed: 0 …"]),
        (lambda p: p["sample_size"].update(n_examples=[10, 20000]),
         ["sample_size.n_examples: got 20000", "1 … 10000"]),
        (lambda p: p["lottery_landscapes"].update(n_examples=10001), ["lottery_landscapes.n_examples", "10000"]),
        (lambda p: p["data"].update(fashion_mnist_dir="/no/such/directory"),
         ["data.fashion_mnist_dir", "/no/such/directory", "not a directory"]),
    ],
)
def test_rules_across_sections_and_the_data_are_checked_before_any_stage(tmp_path, mutate, expected):
    result = run_check(write_params(tmp_path, mutate))
    assert result.returncode != 0
    for fragment in expected:
        assert fragment in result.stderr, (fragment, result.stderr)


def test_scientific_notation_is_a_number():
    path = REPO_ROOT / "params.yaml"
    raw = path.read_text().replace("  lr: 0.001", "  lr: 1e-3", 1)
    assert "lr: 1e-3" in raw
    assert parse_params(yaml.load(raw, Loader=_ParamsLoader)).train.lr == pytest.approx(1e-3)
