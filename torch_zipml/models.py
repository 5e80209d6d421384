"""ResNet-20/32/56 for 32x32 inputs: the CIFAR variant of He, Zhang, Ren, Sun, "Deep Residual
Learning for Image Recognition" (CVPR 2016), Section 4.2.

A 3x3 convolution with 16 filters, then three stages of n basic blocks (two 3x3 convolutions each)
with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps (depth 6n + 2), global average pooling and
a fully connected layer. Every convolution is followed by batch norm; ReLU after each except the
second of a block, where it follows the addition. Shortcuts are option A of the paper, the one it
uses on CIFAR: identity, and where the map halves, the input subsampled by 2 and zero-padded with
the new channels (no parameters), so ResNet-20 has exactly 19 convolutions + 1 linear layer
(0.27 M parameters), all of them plain nn.Conv2d / nn.Linear for torch_zipml.convert to swap.

Initialisation: convolutions Kaiming-normal (fan_out, ReLU gain; He et al. 2015); batch norm
weight 1, bias 0; the linear layer keeps nn.Linear's default.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ResNetCifar", "resnet20", "resnet32", "resnet56", "MODELS"]


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.stride = stride
        self.pad_channels = planes - in_planes  # option A: zero channels appended to the shortcut

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.pad_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.pad_channels))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet of depth 6n + 2 for 32x32 images with `in_channels` channels."""

    def __init__(self, depth: int = 20, num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110, ...), got {depth}")
        n = (depth - 2) // 6
        self.depth = depth
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages, in_planes = [], 16
        for planes, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for i in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if i == 0 else 1))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def resnet20(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(20, num_classes, in_channels)


def resnet32(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(32, num_classes, in_channels)


def resnet56(num_classes: int = 10, in_channels: int = 3) -> ResNetCifar:
    return ResNetCifar(56, num_classes, in_channels)


MODELS = {"resnet20": resnet20, "resnet32": resnet32, "resnet56": resnet56}
