"""The model registry: every architecture a user can name in params, matching the paper's setups.

Names: `fashion_cnn` (the paper's "LeNet5 with dropout and BN" for the batch-size study), `lenet5`
(classic LeNet5, input-shape aware), `lenet_300_100`, `resnet20`/`resnet56` and their `_noshort`
variants (Li et al.'s CIFAR ResNets, with the official loss-landscape tool's state_dict keys so its
checkpoints load).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

InputShape = tuple[int, int, int]


class FashionCNN(nn.Module):
    """The author's Kaggle Fashion-MNIST CNN: two conv-BN-ReLU-pool blocks, then 2304→600→120→10 with
    dropout after the first linear layer and no activations between the linear layers (as in that
    script). The script's Dropout2d acts on a (N, 600) tensor, i.e. element-wise: nn.Dropout is the same."""

    def __init__(self, input_shape: InputShape = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = input_shape
        self.layer1 = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2)
        )
        self.layer2 = nn.Sequential(nn.Conv2d(32, 64, 3), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2))
        features = 64 * ((height // 2 - 2) // 2) * ((width // 2 - 2) // 2)
        self.fc1 = nn.Linear(features, 600)
        self.drop = nn.Dropout(0.25)
        self.fc2 = nn.Linear(600, 120)
        self.fc3 = nn.Linear(120, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(x)).flatten(1)
        return self.fc3(self.fc2(self.drop(self.fc1(x))))


class LeNet5(nn.Module):
    """Classic LeNet5: conv 6 k5, pool, conv 16 k5, pool, 400→120→84→classes with ReLU.
    For 28×28 inputs conv1 pads by 2 so the flattened features stay 16×5×5 = 400."""

    def __init__(self, input_shape: InputShape = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = input_shape
        padding = 2 if height == 28 else 0
        self.conv1 = nn.Conv2d(channels, 6, 5, padding=padding)
        self.conv2 = nn.Conv2d(6, 16, 5)
        rows, cols = (((side + 2 * padding - 4) // 2 - 4) // 2 for side in (height, width))
        if rows < 1 or cols < 1:
            raise ValueError(f"lenet5 needs inputs of at least 16×16 pixels, got input_shape={input_shape}")
        self.fc1 = nn.Linear(16 * rows * cols, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2).flatten(1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class LeNet300100(nn.Module):
    """Frankle & Carbin's fully connected LeNet-300-100."""

    def __init__(self, input_shape: InputShape = (1, 28, 28), num_classes: int = 10):
        super().__init__()
        channels, height, width = input_shape
        self.fc1 = nn.Linear(channels * height * width, 300)
        self.fc2 = nn.Linear(300, 100)
        self.fc3 = nn.Linear(100, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x.flatten(1))))))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN (+ shortcut), ReLU. Shortcut: identity, or 1×1 conv + BN when the shape
    changes ("option B"); none at all for the `noshort` variants."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.has_shortcut = shortcut
        if shortcut:
            self.shortcut = nn.Sequential()
            if stride != 1 or in_planes != planes:
                self.shortcut = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        if self.has_shortcut:
            out = out + self.shortcut(x)
        return F.relu(out)


class CifarResNet(nn.Module):
    """Li et al.'s CIFAR ResNet-(6n+2): 16/32/64 channels, n blocks per stage, global average pool."""

    def __init__(self, depth: int, shortcut: bool = True, input_shape: InputShape = (3, 32, 32),
                 num_classes: int = 10):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(input_shape[0], 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        stages = []
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            layers = []
            for i in range(blocks):
                layers.append(BasicBlock(in_planes, planes, stride if i == 0 else 1, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages
        self.linear = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


ModelFactory = Callable[[InputShape, int], nn.Module]

MODELS: dict[str, ModelFactory] = {
    "fashion_cnn": lambda shape, classes: FashionCNN(shape, classes),
    "lenet5": lambda shape, classes: LeNet5(shape, classes),
    "lenet_300_100": lambda shape, classes: LeNet300100(shape, classes),
    "resnet20": lambda shape, classes: CifarResNet(20, True, shape, classes),
    "resnet20_noshort": lambda shape, classes: CifarResNet(20, False, shape, classes),
    "resnet56": lambda shape, classes: CifarResNet(56, True, shape, classes),
    "resnet56_noshort": lambda shape, classes: CifarResNet(56, False, shape, classes),
}


def build_model(name: str, input_shape: InputShape = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    """Build a registered model by name; unknown names list the allowed ones."""
    try:
        factory = MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}") from None
    return factory(tuple(input_shape), num_classes)
