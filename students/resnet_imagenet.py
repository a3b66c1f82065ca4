"""ImageNet-depth ResNets with a small-input stem (He et al., "Deep Residual Learning for
Image Recognition", CVPR 2016, Table 1 depths 18/34/50/101/152).

Structure follows RepDistiller's ``models/resnetv2.py`` (the CRD authors' "ResNet50"
student/teacher for CIFAR-100, after kuangliu's pytorch-cifar): the 7x7 stride-2
convolution and max-pool of the ImageNet stem are replaced by a 3x3 stride-1 convolution
to 64 channels + BN + ReLU; then four stages (64/128/256/512 planes, strides 1/2/2/2) of
basic blocks (resnet18: 2-2-2-2, resnet34: 3-4-6-3) or bottleneck blocks with expansion 4
(resnet50: 3-4-6-3, resnet101: 3-4-23-3, resnet152: 3-8-36-3), 1x1-conv + BN projection
shortcuts where the shape changes, global average pooling and a linear classifier.

Taps (32x32 input): ``stem`` 64@32; ``stages`` = post-ReLU outputs of layer1..4: 64@32,
128@16, 256@8, 512@4 (basic) or 256@32, 512@16, 1024@8, 2048@4 (bottleneck); ``preact`` =
each stage's last residual sum before its ReLU. Deviations: ``in_chans`` configurable
(the pooling is adaptive, as in the reference).

Module names are ``resnetv2.py``'s (``conv1``, ``bn1``, ``layer1..4.<i>.conv1..3/bn1..3``,
``shortcut.0/1``, ``linear``), so RepDistiller's ``ResNet50`` (and ``ResNet18``... of the
same file) checkpoints load as they are (model version 2; version 1 called the classifier
``classifier``).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.registry import register_model

from ._common import PreactBlock, TappedNet, conv1x1, conv3x3, global_pool, init_kaiming_fan_out, run_stages

__all__ = ["BasicBlock", "Bottleneck", "ResNet"]


class _Residual(PreactBlock):
    expansion = 1
    shortcut: nn.Module | None

    def _make_shortcut(self, in_planes: int, out_planes: int, stride: int) -> None:
        self.shortcut = None
        if stride != 1 or in_planes != out_planes:
            self.shortcut = nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))

    def _branch(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def pre_activation(self, x: Tensor) -> Tensor:
        out = self._branch(x)
        out += x if self.shortcut is None else self.shortcut(x)
        return out


class BasicBlock(_Residual):
    """3x3 - 3x3 residual block."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self._make_shortcut(in_planes, planes, stride)

    def _branch(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return self.bn2(self.conv2(out))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(_Residual):
    """1x1 - 3x3 (strided) - 1x1 residual block with expansion 4."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv1x1(in_planes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self._make_shortcut(in_planes, planes * self.expansion, stride)

    def _branch(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        return self.bn3(self.conv3(out))

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class ResNet(TappedNet):
    """Four-stage ResNet with a 3x3 stride-1 stem (no max-pool)."""

    supports_preact = True
    head_name = "linear"

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        num_blocks: tuple[int, int, int, int],
        num_classes: int = 100,
        in_chans: int = 3,
    ):
        super().__init__()
        self.conv1 = conv3x3(in_chans, 64)
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        layers = []
        for planes, n, stride in zip((64, 128, 256, 512), num_blocks, (1, 2, 2, 2)):
            blocks = []
            for j in range(n):
                blocks.append(block(in_planes, planes, stride if j == 0 else 1))
                in_planes = planes * block.expansion
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.num_features = in_planes
        self.linear = nn.Linear(in_planes, num_classes)
        init_kaiming_fan_out(self)

    def _run(self, x: Tensor, want_preact: bool):
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        feats, pre = run_stages((self.layer1, self.layer2, self.layer3, self.layer4), stem, want_preact)
        return stem, feats, pre, global_pool(feats[-1])

    def get_bn_before_relu(self) -> tuple[nn.Module, ...]:
        return tuple(layer[-1].last_bn for layer in (self.layer1, self.layer2, self.layer3, self.layer4))


@register_model("resnet18", family="resnet_imagenet", lightweight=False, version=2)
def resnet18(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, in_chans=in_chans)


@register_model("resnet34", family="resnet_imagenet", lightweight=False, version=2)
def resnet34(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans)


@register_model("resnet50", family="resnet_imagenet", lightweight=False, version=2)
def resnet50(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, in_chans=in_chans)


@register_model("resnet101", family="resnet_imagenet", lightweight=False, version=2)
def resnet101(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(Bottleneck, (3, 4, 23, 3), num_classes=num_classes, in_chans=in_chans)


@register_model("resnet152", family="resnet_imagenet", lightweight=False, version=2)
def resnet152(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> ResNet:
    return ResNet(Bottleneck, (3, 8, 36, 3), num_classes=num_classes, in_chans=in_chans)
