"""Your own model, data and loss (issue 15): the evaluation contract (classification, regression, language
modelling, tuple/dict outputs), data of any shape (tuples, dicts, Datasets, DataLoaders, iterable datasets),
which parameters move, and the fast path's fallback. Every path is checked against the naive loop."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from lossviz.directions import random_directions
from lossviz.engine import compute_surface
from lossviz.fused import FastPathFallback
from lossviz.tasks import Task, language_modelling, regression

XS = np.linspace(-1.0, 1.0, 3)
YS = np.linspace(-0.5, 0.5, 3)


def _surfaces(model, inputs, targets, methods=("naive", "fast", "vmap"), **kwargs):
    directions = kwargs.pop("directions", None) or random_directions(model, seed=3, ignore="none")
    return {method: compute_surface(model, inputs, targets, directions, XS, YS, method=method, progress=False,
                                    **kwargs) for method in methods}


def _assert_same(surfaces):
    reference = surfaces["naive"]
    assert np.isfinite(reference.loss).all()
    for method, surface in surfaces.items():
        np.testing.assert_allclose(surface.loss, reference.loss, rtol=1e-5, err_msg=method)
        np.testing.assert_array_equal(np.isnan(surface.acc), np.isnan(reference.acc), err_msg=method)
        np.testing.assert_allclose(surface.acc, reference.acc, rtol=1e-6, err_msg=method)


class TwoInputNet(nn.Module):
    """A classifier of (image, extra features), returning a tuple (logits, embedding)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU())
        self.extra = nn.Linear(3, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, image, features):
        hidden = self.body(image) + self.extra(features)
        return self.head(hidden), hidden


class TinyTokenModel(nn.Module):
    """A causal-LM-shaped model of token ids: embedding, mixing with the attention mask, a dict output."""

    def __init__(self, vocab: int = 11, width: int = 8):
        super().__init__()
        torch.manual_seed(1)
        self.embed = nn.Embedding(vocab, width)
        self.mix = nn.Linear(width, width)
        self.out = nn.Linear(width, vocab)

    def forward(self, input_ids, attention_mask):
        hidden = torch.tanh(self.mix(self.embed(input_ids))) * attention_mask.unsqueeze(-1)
        return {"logits": self.out(hidden), "hidden": hidden}


def _token_batch(n: int = 12, length: int = 6, vocab: int = 11):
    generator = torch.Generator().manual_seed(2)
    ids = torch.randint(0, vocab, (n, length), generator=generator)
    mask = torch.ones(n, length, dtype=torch.long)
    mask[::3, -2:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def test_tuple_inputs_and_tuple_outputs_classify_like_naive():
    generator = torch.Generator().manual_seed(0)
    inputs = (torch.rand(20, 1, 4, 4, generator=generator), torch.rand(20, 3, generator=generator))
    targets = torch.randint(0, 4, (20,), generator=generator)
    surfaces = _surfaces(TwoInputNet().eval(), inputs, targets, n_examples=15, batch_size=7)
    _assert_same(surfaces)
    assert np.isfinite(surfaces["naive"].acc).all() and surfaces["naive"].meta["task"] == "classification"


def test_language_modelling_on_dict_batches_keeps_token_ids_integer():
    batch = _token_batch()
    model = TinyTokenModel().eval()
    seen = []
    model.embed.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    surfaces = _surfaces(model, batch, None, task=language_modelling(), n_examples=10, batch_size=4)
    _assert_same(surfaces)
    assert set(seen) == {torch.int64}
    naive = surfaces["naive"]
    assert naive.meta["task"] == "language_modelling" and naive.meta["loss"] == "token_cross_entropy"
    # The centre point by hand: per-sequence mean of shifted token cross-entropy, then the mean over sequences.
    index = torch.from_numpy(naive.example_indices)
    with torch.no_grad():
        logits = model(batch["input_ids"][index], batch["attention_mask"][index])["logits"][:, :-1]
    labels = batch["labels"][index][:, 1:]
    tokens = nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    per_sequence = tokens.sum(1) / labels.ne(-100).sum(1)
    assert naive.loss[1, 1] == pytest.approx(float(per_sequence.double().mean()), rel=1e-5)
    scored = labels.ne(-100)
    accuracy = 100 * float((logits.argmax(-1).eq(labels) & scored).sum()) / float(scored.sum())
    assert naive.acc[1, 1] == pytest.approx(accuracy)


def test_regression_has_no_accuracy_and_takes_n_by_1_outputs():
    generator = torch.Generator().manual_seed(4)
    inputs = torch.rand(30, 5, generator=generator)
    targets = inputs.sum(1) + 0.1 * torch.randn(30, generator=generator)  # (N,) against an (N, 1) output
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 1)).eval()
    surfaces = _surfaces(model, inputs, targets, task=regression(), n_examples=20)
    _assert_same(surfaces)
    assert np.isnan(surfaces["naive"].acc).all()  # absent, never 0 %
    with torch.no_grad():
        index = torch.from_numpy(surfaces["naive"].example_indices)
        mse = ((model(inputs[index]).squeeze(1) - targets[index]) ** 2).double().mean()
    assert surfaces["naive"].loss[1, 1] == pytest.approx(float(mse), rel=1e-5)
    # A regression through the default task gets no accuracy either (float targets are no class indices).
    default = compute_surface(model, inputs, targets, random_directions(model), XS, YS, n_examples=5,
                              loss_fn=regression().loss, progress=False)
    assert np.isnan(default.acc).all()
    # n_examples="auto" takes the task and a Dataset too.
    from torch.utils.data import TensorDataset

    import lossviz

    auto = lossviz.compute_surface(model, TensorDataset(inputs, targets), None, random_directions(model), XS, YS,
                                   n_examples=lossviz.AutoExamples(tolerance=10.0, candidates=(4, 8), pilot_points=3),
                                   task="regression", progress=False)
    assert auto.meta["n_examples"] == 4 and auto.meta["task"] == "regression" and np.isnan(auto.acc).all()


def test_a_users_own_task_is_a_few_lines():
    generator = torch.Generator().manual_seed(5)
    inputs, targets = torch.rand(16, 5, generator=generator), torch.rand(16, 2, generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 2)).eval()

    def mean_absolute_error(output, target):
        return (output - target).abs().mean(dim=1)

    task = Task("mae_regression", mean_absolute_error)
    surfaces = _surfaces(model, inputs, targets, task=task, n_examples=None)
    _assert_same(surfaces)
    assert surfaces["fast"].meta["loss"] == "mean_absolute_error"


class LazyDataset(Dataset):
    """100k synthetic examples made on demand from their index (nothing stored)."""

    def __len__(self):
        return 100_000

    def __getitem__(self, index):
        generator = torch.Generator().manual_seed(index)
        return torch.rand(1, 28, 28, generator=generator), int(index % 10)


def test_a_100k_dataset_gives_the_surface_of_the_same_examples_as_tensors():
    from helpers_engine import make_model

    model = make_model("lenet5")
    dataset = LazyDataset()
    directions = random_directions(model, seed=1)
    from_dataset = compute_surface(model, dataset, None, directions, XS, YS, n_examples=40, seed=7,
                                   progress=False)
    indices = from_dataset.example_indices
    assert len(indices) == 40 and indices.max() > 1000  # drawn from the whole 100k
    from lossviz.tasks import select_examples

    assert set(select_examples(100_000, 25, 7)) < set(indices)  # nested subsets, as for small datasets
    inputs = torch.stack([dataset[int(i)][0] for i in indices])
    targets = torch.tensor([dataset[int(i)][1] for i in indices])
    from_tensors = compute_surface(model, inputs, targets, directions, XS, YS, n_examples=None, progress=False)
    np.testing.assert_array_equal(from_dataset.loss, from_tensors.loss)
    np.testing.assert_array_equal(from_dataset.acc, from_tensors.acc)
    # A DataLoader stands for its dataset: the same subset, whatever its batching or shuffling.
    loader = DataLoader(dataset, batch_size=3, shuffle=True)
    from_loader = compute_surface(model, loader, None, directions, XS, YS, n_examples=40, seed=7, progress=False)
    np.testing.assert_array_equal(from_loader.loss, from_dataset.loss)


def test_a_dataloader_brings_its_own_collate_fn_e_g_padding():
    lengths = [3, 6, 4, 5, 2, 6, 3]
    sequences = [list((torch.arange(n) * (i + 1)) % 11) for i, n in enumerate(lengths)]

    def pad(items):
        width = max(len(item) for item in items)
        ids = torch.tensor([item + [0] * (width - len(item)) for item in items])
        mask = torch.tensor([[1] * len(item) + [0] * (width - len(item)) for item in items])
        return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}

    model = TinyTokenModel().eval()
    directions = random_directions(model, seed=0)
    run = dict(xs=XS, ys=None, n_examples=None, task="language_modelling", progress=False)
    loader = DataLoader(sequences, batch_size=2, collate_fn=pad)
    from_loader = compute_surface(model, loader, None, directions, **run)
    from_tensors = compute_surface(model, pad(sequences), None, directions, **run)
    np.testing.assert_array_equal(from_loader.loss, from_tensors.loss)


class TokenStream(IterableDataset):
    def __iter__(self):
        for i in range(50):
            yield {"input_ids": torch.arange(i, i + 6) % 11, "attention_mask": torch.ones(6, dtype=torch.long)}


def test_an_iterable_dataset_takes_the_first_n_after_a_seeded_shuffle_or_is_refused():
    model = TinyTokenModel().eval()
    directions = random_directions(model, seed=0)
    first = compute_surface(model, TokenStream(), None, directions, XS, None, n_examples=8, seed=1,
                            task="language_modelling", progress=False)
    again = compute_surface(model, TokenStream(), None, directions, XS, None, n_examples=8, seed=1,
                            task="language_modelling", progress=False)
    other = compute_surface(model, TokenStream(), None, directions, XS, None, n_examples=8, seed=2,
                            task="language_modelling", progress=False)
    np.testing.assert_array_equal(first.loss, again.loss)
    assert not np.array_equal(first.loss, other.loss)
    with pytest.raises(ValueError, match="iterable dataset has no length"):
        compute_surface(model, TokenStream(), None, directions, XS, None, n_examples=None,
                        task="language_modelling", progress=False)


def test_frozen_parameters_are_never_perturbed_and_the_choice_is_recorded(tmp_path):
    from helpers_engine import make_examples, make_model

    model = make_model("lenet5")
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("fc3"))  # a frozen backbone, a trainable head
    inputs, targets = make_examples(20)
    frozen_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    frozen_seen = []  # the frozen weights as the forward sees them, at every point
    model.conv1.register_forward_pre_hook(lambda module, _: frozen_seen.append(module.weight.detach().clone()))
    directions = random_directions(model, seed=0, params="trainable")
    assert all(not directions.x[n].any() for n in frozen_before) and directions.x["fc3.weight"].any()
    everything = random_directions(model, seed=0)
    assert torch.equal(directions.x["fc3.weight"], everything.x["fc3.weight"])  # the same random stream
    surfaces = _surfaces(model, inputs, targets, directions=directions, methods=("naive", "vmap"),
                         out=None, n_examples=None)
    _assert_same(surfaces)
    assert len(frozen_seen) >= 9 and all(torch.equal(w, frozen_before["conv1.weight"]) for w in frozen_seen)
    for name, parameter in model.named_parameters():
        if name in frozen_before:
            assert torch.equal(parameter.detach(), frozen_before[name])
    saved = compute_surface(model, inputs, targets, directions, XS, YS, out=tmp_path / "s.h5", progress=False)
    from lossviz.surface import Surface

    assert Surface.load(tmp_path / "s.h5").meta["params"] == "trainable" == saved.meta["params"]
    by_name = random_directions(model, seed=0, params=["fc2.*", "fc3.weight"])
    assert by_name.meta["params"] == "filter: fc2.*, fc3.weight"
    assert by_name.x["fc2.weight"].any() and not by_name.x["conv1.weight"].any()
    with pytest.raises(ValueError, match="params=.*allowed: all, trainable"):
        random_directions(model, params=3)
    # A mask and a choice together: pruned coordinates stay zero, and only the chosen tensors move.
    mask = {"fc3.weight": (torch.rand(model.fc3.weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5)}
    masked = random_directions(model, seed=0, mask=mask, params="trainable")
    assert not masked.x["fc3.weight"][~mask["fc3.weight"]].any() and masked.x["fc3.weight"].any()
    assert not masked.x["fc1.weight"].any()


class Untraceable(nn.Module):
    """Data-dependent Python control flow: torch.fx cannot trace it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        hidden = self.a(x)
        if hidden.sum() > 0:
            hidden = hidden.relu()
        return self.b(hidden)


def test_the_fast_path_falls_back_with_one_warning_and_matches_naive():
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.randn(12, 6, generator=generator), torch.randint(0, 3, (12,), generator=generator)
    model = Untraceable().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        surfaces = _surfaces(model, inputs, targets, methods=("naive", "fast"))
        _surfaces(model, inputs, targets, methods=("fast",))
    said = [w for w in caught if issubclass(w.category, FastPathFallback)]
    assert len(said) == 1 and "Untraceable" in str(said[0].message) and "plain forward" in str(said[0].message)
    _assert_same(surfaces)


def test_a_rewrite_that_gets_a_model_wrong_is_caught_and_falls_back(monkeypatch):
    from lossviz import fused

    monkeypatch.setattr(fused, "_WARNED", set())
    monkeypatch.setattr(fused, "tiled_max_pool2d", lambda x, size: fused.F.max_pool2d(x, size) * 1.5)  # a bad rewrite
    generator = torch.Generator().manual_seed(0)
    inputs, targets = torch.rand(10, 1, 8, 8, generator=generator), torch.randint(0, 3, (10,), generator=generator)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 3)).eval()
    with pytest.warns(FastPathFallback, match="RewriteMismatch"):
        surfaces = _surfaces(model, inputs, targets, methods=("naive", "fast"))
    _assert_same(surfaces)


def test_bad_inputs_get_errors_naming_the_problem():
    batch = _token_batch()
    model = TinyTokenModel().eval()
    directions = random_directions(model)
    run = dict(xs=XS, ys=None, progress=False, n_examples=4)
    with pytest.raises(ValueError, match=r"batch keys \['token_type_ids'\] are not arguments of TinyTokenModel"):
        compute_surface(model, {**batch, "token_type_ids": batch["input_ids"]}, None, directions,
                        task="language_modelling", **run)
    with pytest.raises(ValueError, match=r"differ in length: inputs\['input_ids'\] \(12\), .*targets \(5\)"):
        compute_surface(model, {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]},
                        batch["labels"][:5], directions, task="language_modelling", **run)
    with pytest.raises(ValueError, match=r"returned \(\) for a batch of 4 examples; it must return one loss per"):
        compute_surface(model, batch, None, directions, task=Task("mean", lambda out, y: out.mean()), **run)
    with pytest.raises(ValueError, match="no targets"):
        compute_surface(model, {"input_ids": batch["input_ids"]}, None, directions, **run)
    with pytest.raises(ValueError, match="task='translation' is not valid; allowed: classification"):
        compute_surface(model, batch, None, directions, task="translation", **run)


# -- the command line: the user's model factory and datasets ---------------------------------------------------
USER_CODE = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset


def regressor(width=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, width), nn.Tanh(), nn.Linear(width, 1))


def classifier(input_shape, num_classes, width=4):
    torch.manual_seed(0)
    channels, height, w = input_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(channels * height * w, width), nn.ReLU(),
                         nn.Linear(width, num_classes))


def splits(n=30):
    generator = torch.Generator().manual_seed(0)
    make = lambda: TensorDataset(torch.rand(n, 3, generator=generator), torch.rand(n, generator=generator))
    return {"train": make(), "test": make()}


def not_datasets():
    return 42
'''


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    (tmp_path / "my_lossviz_code.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_lossviz_code"


def _cli(*args):
    from lossviz.cli import main

    return main(["surface", "--x", "-1:1:3", "--examples", "8", "--no-progress", *args])


def test_cli_factory_model_on_an_npz_and_a_factory_dataset(tmp_path, user_code, capsys):
    from lossviz.surface import Surface

    generator = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_test=generator.random((20, 3), dtype=np.float32),
             y_test=generator.random(20, dtype=np.float32))
    for dataset, name in ((str(tmp_path / "data.npz"), "npz.h5"), (f"{user_code}:splits", "factory.h5")):
        code = _cli("--model", f"{user_code}:regressor", "--model-kwargs", '{"width": 6}', "--dataset", dataset,
                    "--task", "regression", "--params", "2.*", "--out", str(tmp_path / name))
        assert code == 0, capsys.readouterr().err
        surface = Surface.load(tmp_path / name)
        assert surface.meta["task"] == "regression" and np.isnan(surface.acc).all()
        assert surface.meta["params"] == "filter: 2.*" and np.isfinite(surface.loss).all()
    # key=value kwargs reach the factory too (width 2 gives another model, so another surface)
    assert _cli("--model", f"{user_code}:regressor", "--model-kwargs", "width=2", "--dataset", f"{user_code}:splits",
                "--task", "regression", "--out", str(tmp_path / "narrow.h5")) == 0
    assert Surface.load(tmp_path / "narrow.h5").meta["model_hash"] != Surface.load(tmp_path / "factory.h5").meta[
        "model_hash"]


def test_cli_image_folder_and_torchvision_class_from_a_local_root(tmp_path, user_code, capsys):
    from conftest import write_fashion_mnist_like
    from PIL import Image

    from lossviz.models import build_model
    from lossviz.surface import Surface

    generator = np.random.default_rng(0)
    for label in ("boot", "shirt"):
        (tmp_path / "images" / "test" / label).mkdir(parents=True)
        for i in range(5):
            pixels = generator.integers(0, 255, (28, 28), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / "images" / "test" / label / f"{i}.png")
    checkpoint = tmp_path / "lenet5.pt"
    torch.save(build_model("lenet5", (3, 28, 28), 2).state_dict(), checkpoint)  # ImageFolder: RGB, 2 classes
    assert _cli("--model", "lenet5", "--checkpoint", str(checkpoint), "--dataset", f"folder:{tmp_path / 'images'}",
                "--out", str(tmp_path / "folder.h5")) == 0, capsys.readouterr().err
    folder = Surface.load(tmp_path / "folder.h5")
    assert folder.meta["n_examples"] == 8 and np.isfinite(folder.acc).all()
    write_fashion_mnist_like(tmp_path / "tv" / "FashionMNIST" / "raw", compress=False)
    assert _cli("--model", f"{user_code}:classifier", "--model-kwargs", "width=5", "--dataset",
                "torchvision:FashionMNIST", "--data-root", str(tmp_path / "tv"),
                "--out", str(tmp_path / "tv.h5")) == 0, capsys.readouterr().err
    assert Surface.load(tmp_path / "tv.h5").example_indices.max() < 40  # the 40-image test split


@pytest.mark.parametrize("flag_values, message", [
    (("--model", "no_such_module_xyz:make"), "--model 'no_such_module_xyz:make': module 'no_such_module_xyz' "
                                              "cannot be imported"),
    (("--model", "USER:missing"), "--model 'USER:missing': my_lossviz_code has no 'missing'; expected a registered "
                                  "name"),
    (("--model", "resnet_nope"), "--model 'resnet_nope' is not valid; expected a registered name"),
    (("--model-kwargs", "width"), "--model-kwargs 'width': 'width' is not key=value; expected a JSON object"),
    (("--model-kwargs", "{bad json"), "--model-kwargs '{bad json' is not valid JSON"),
    (("--model-kwargs", "depth=3"), "--model 'my_lossviz_code:regressor' with --model-kwargs {'depth': 3}: "),
    (("--dataset", "torchvision:NoSuchSet"), "torchvision.datasets has no dataset class 'NoSuchSet'"),
    (("--dataset", "missing.npz"), "--dataset 'missing.npz': no such file; expected a prepared dataset name"),
    (("--dataset", "USER:not_datasets"), "returned a int; expected (train, test) datasets"),
    (("--task", "translation"), "invalid choice: 'translation'"),
    (("--model", "lenet5"), "--checkpoint is required with a registered --model (lenet5)"),
])
def test_cli_bad_specs_name_the_flag_and_the_accepted_forms(tmp_path, user_code, capsys, flag_values, message):
    options = {"--model": f"{user_code}:regressor", "--dataset": f"{user_code}:splits", "--task": "regression"}
    flag, value = flag_values
    options[flag] = value.replace("USER", user_code)
    args = [part for pair in options.items() for part in pair] + ["--out", str(tmp_path / "s.h5")]
    try:
        code = _cli(*args)
    except SystemExit as exit_:  # argparse's own choices
        code = exit_.code
    assert code == 2
    assert message.replace("USER", user_code) in capsys.readouterr().err
    assert not (tmp_path / "s.h5").exists()
