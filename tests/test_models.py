"""The model registry against the paper's architectures: output shapes, parameter counts computed by
formula (not by the code under test), and the official loss-landscape tool's state_dict keys."""

from __future__ import annotations

import pytest
import torch

from lossviz.models import MODELS, build_model


def conv(c_in: int, c_out: int, k: int, bias: bool = True) -> int:
    return c_in * c_out * k * k + (c_out if bias else 0)


def linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def batchnorm(channels: int) -> int:
    return 2 * channels  # weight and bias; running statistics are buffers


def fashion_cnn_count() -> int:
    # 28 → conv pad 1 → 28 → pool 14 → conv k3 → 12 → pool 6: 64·6·6 = 2304 features
    return (conv(1, 32, 3) + batchnorm(32) + conv(32, 64, 3) + batchnorm(64)
            + linear(2304, 600) + linear(600, 120) + linear(120, 10))


def lenet5_count(channels: int) -> int:
    return conv(channels, 6, 5) + conv(6, 16, 5) + linear(400, 120) + linear(120, 84) + linear(84, 10)


def cifar_resnet_count(depth: int, shortcut: bool) -> int:
    blocks = (depth - 2) // 6
    total = conv(3, 16, 3, bias=False) + batchnorm(16) + linear(64, 10)
    c_in = 16
    for planes in (16, 32, 64):
        for _ in range(blocks):
            total += conv(c_in, planes, 3, False) + batchnorm(planes) + conv(planes, planes, 3, False)
            total += batchnorm(planes)
            if shortcut and c_in != planes:  # option B: 1×1 projection + BN where the shape changes
                total += conv(c_in, planes, 1, False) + batchnorm(planes)
            c_in = planes
    return total


CASES = [
    ("fashion_cnn", (1, 28, 28), fashion_cnn_count()),
    ("lenet5", (1, 28, 28), lenet5_count(1)),
    ("lenet5", (3, 32, 32), lenet5_count(3)),
    ("lenet_300_100", (1, 28, 28), linear(784, 300) + linear(300, 100) + linear(100, 10)),
    ("resnet20", (3, 32, 32), cifar_resnet_count(20, True)),
    ("resnet20_noshort", (3, 32, 32), cifar_resnet_count(20, False)),
    ("resnet56", (3, 32, 32), cifar_resnet_count(56, True)),
    ("resnet56_noshort", (3, 32, 32), cifar_resnet_count(56, False)),
]


@pytest.mark.parametrize(("name", "shape", "expected"), CASES, ids=[f"{c[0]}-{c[1][0]}ch" for c in CASES])
def test_output_shape_and_parameter_count(name, shape, expected):
    model = build_model(name, shape, 10).eval()
    with torch.no_grad():
        out = model(torch.rand(3, *shape))
    assert out.shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_known_parameter_counts():
    # Published sizes: the 1.48M-parameter Kaggle CNN, LeNet-300-100's 266,610 weights, and Li et al.'s
    # option-B ResNet-20/56 (0.27M / 0.86M).
    assert fashion_cnn_count() == 1_475_338
    assert lenet5_count(1) == 61_706
    assert cifar_resnet_count(20, True) == 272_474
    assert cifar_resnet_count(56, True) == 855_770


def test_every_registered_model_is_covered():
    assert {case[0] for case in CASES} == set(MODELS)


def test_resnet56_uses_the_official_state_dict_keys():
    keys = set(build_model("resnet56", (3, 32, 32)).state_dict())
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer1.8.bn2.bias",
                "layer2.0.shortcut.0.weight", "layer2.0.shortcut.1.running_var", "layer3.8.conv2.weight",
                "linear.weight", "linear.bias"):
        assert key in keys
    assert not any(key.startswith("layer1.0.shortcut") for key in keys)  # identity where shapes agree
    noshort = set(build_model("resnet56_noshort", (3, 32, 32)).state_dict())
    assert not any("shortcut" in key for key in noshort)
    assert noshort < keys


def test_noshort_block_has_no_residual_path():
    # With conv2 of a block zeroed and its bn2 bias zero, a block with a shortcut passes its input on,
    # a block without one outputs relu(0) = 0.
    for name, passes in (("resnet20", True), ("resnet20_noshort", False)):
        block = build_model(name, (3, 32, 32)).layer1[1].eval()
        torch.nn.init.zeros_(block.conv2.weight)
        x = torch.rand(2, 16, 8, 8)
        with torch.no_grad():
            out = block(x)
        assert torch.equal(out, x) is passes
        assert (out.abs().sum() == 0).item() is not passes


def test_fashion_cnn_matches_the_kaggle_layout():
    model = build_model("fashion_cnn", (1, 28, 28))
    assert model.fc1.in_features == 2304 and model.fc2.in_features == 600 and model.fc3.in_features == 120
    assert model.drop.p == 0.25
    assert [type(m).__name__ for m in model.layer1] == ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"]
    assert model.layer2[0].padding == (0, 0) and model.layer1[0].padding == (1, 1)


def test_lenet5_pads_28_pixel_inputs_to_keep_400_features():
    assert build_model("lenet5", (1, 28, 28)).conv1.padding == (2, 2)
    assert build_model("lenet5", (3, 32, 32)).conv1.padding == (0, 0)


def test_unknown_model_names_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown model 'lenet7'; allowed: fashion_cnn, lenet5"):
        build_model("lenet7")
