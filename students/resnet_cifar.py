"""CIFAR ResNets with basic blocks (He et al., "Deep Residual Learning for Image
Recognition", CVPR 2016, §4.2).

Structure follows the CIFAR ResNets of the CRD authors' RepDistiller suite
(``models/resnet.py``, Tian et al. 2020): a 3x3 stem convolution, three stages of
``(depth - 2) / 6`` basic blocks with strides 1, 2, 2, 1x1-convolution + BN projection
shortcuts where the shape changes, global average pooling and one linear classifier.

* ``resnet8 ... resnet110``: filters 16/16/32/64 -> stem 16@32, stages 16@32, 32@16, 64@8,
  embedding 64 (32x32 input).
* ``resnet8x4``, ``resnet32x4``: filters 32/64/128/256 -> stem 32@32, stages 64@32, 128@16,
  256@8, embedding 256.

Module names are RepDistiller's (``conv1``, ``bn1``, ``layer1..3.<i>.conv1/bn1/conv2/bn2``,
``downsample.0/1``, ``fc``), so its checkpoints load as they are and ours load into its
code (model version 2; version 1 called the classifier ``classifier``).

Taps: ``stem`` = ReLU(BN(conv1(x))); ``stages`` = the post-ReLU stage outputs;
``preact`` = the last block's residual sum before its final ReLU (as RepDistiller's
``preact=True``). Deviation: the final pooling is adaptive (any input >= 32 px) instead
of ``AvgPool2d(8)`` (the same at 32 px); the stem convolution takes ``in_chans`` channels.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.registry import register_model

from ._common import PreactBlock, TappedNet, conv1x1, conv3x3, global_pool, init_kaiming_fan_out, run_stages

__all__ = ["BasicBlock", "CifarResNet"]


class BasicBlock(PreactBlock):
    """Two 3x3 conv-BN layers with a residual connection; ReLU after the sum."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(conv1x1(in_planes, planes, stride), nn.BatchNorm2d(planes))

    def pre_activation(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += x if self.downsample is None else self.downsample(x)
        return out


class CifarResNet(TappedNet):
    """ResNet-(6n+2) for small images; ``filters`` = (stem, stage1, stage2, stage3)."""

    supports_preact = True
    head_name = "fc"

    def __init__(
        self,
        depth: int,
        filters: tuple[int, int, int, int] = (16, 16, 32, 64),
        num_classes: int = 100,
        in_chans: int = 3,
    ):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(in_chans, filters[0])
        self.bn1 = nn.BatchNorm2d(filters[0])
        in_planes = filters[0]
        layers = []
        for i, (planes, stride) in enumerate(zip(filters[1:], (1, 2, 2))):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        init_kaiming_fan_out(self)

    def _run(self, x: Tensor, want_preact: bool):
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        feats, pre = run_stages((self.layer1, self.layer2, self.layer3), stem, want_preact)
        return stem, feats, pre, global_pool(feats[-1])

    def get_bn_before_relu(self) -> tuple[nn.Module, ...]:
        return tuple(layer[-1].bn2 for layer in (self.layer1, self.layer2, self.layer3))


_SMALL = (16, 16, 32, 64)
_X4 = (32, 64, 128, 256)


def _make(depth: int, filters: tuple[int, int, int, int], num_classes: int, in_chans: int) -> CifarResNet:
    return CifarResNet(depth, filters, num_classes=num_classes, in_chans=in_chans)


@register_model("resnet8", family="resnet_cifar", lightweight=False, version=2)
def resnet8(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(8, _SMALL, num_classes, in_chans)


@register_model("resnet14", family="resnet_cifar", lightweight=False, version=2)
def resnet14(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(14, _SMALL, num_classes, in_chans)


@register_model("resnet20", family="resnet_cifar", lightweight=False, version=2)
def resnet20(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(20, _SMALL, num_classes, in_chans)


@register_model("resnet32", family="resnet_cifar", lightweight=False, version=2)
def resnet32(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(32, _SMALL, num_classes, in_chans)


@register_model("resnet44", family="resnet_cifar", lightweight=False, version=2)
def resnet44(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(44, _SMALL, num_classes, in_chans)


@register_model("resnet56", family="resnet_cifar", lightweight=False, version=2)
def resnet56(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(56, _SMALL, num_classes, in_chans)


@register_model("resnet110", family="resnet_cifar", lightweight=False, version=2)
def resnet110(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(110, _SMALL, num_classes, in_chans)


@register_model("resnet8x4", family="resnet_cifar", lightweight=False, version=2)
def resnet8x4(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(8, _X4, num_classes, in_chans)


@register_model("resnet32x4", family="resnet_cifar", lightweight=False, version=2)
def resnet32x4(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> CifarResNet:
    return _make(32, _X4, num_classes, in_chans)
