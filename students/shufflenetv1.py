"""ShuffleNet (V1) with 3 groups (Zhang et al., "ShuffleNet: An Extremely Efficient
Convolutional Neural Network for Mobile Devices", CVPR 2018), small-input form.

Structure follows RepDistiller's ``models/ShuffleNetv1.py`` (``ShuffleV1``, after
kuangliu's CIFAR ShuffleNet): a 1x1 conv-BN-ReLU stem to 24 channels (no stride, no
max-pool), three stages of 4/8/4 units with 240/480/960 output channels, global average
pooling and a linear classifier. A unit is grouped 1x1 conv (mid = out/4; ungrouped when
its input is the 24-channel stem) - BN - ReLU - channel shuffle - 3x3 depthwise conv
(stride 2 in the first unit of a stage) - BN - ReLU - grouped 1x1 conv - BN; the first unit
of a stage concatenates a 3x3 stride-2 average-pooled shortcut (its residual branch
produces ``out - in`` channels), the others add the identity; ReLU at the end. (The ReLU
after the depthwise BN is the reference implementation's; the paper has none.)

Taps (32x32 input): ``stem`` 24@32; ``stages`` = post-ReLU stage outputs 240@16, 480@8,
960@4; ``preact`` = the last unit of each stage before its final ReLU; embedding 960.
Module names are the reference's (``conv1``, ``bn1``, ``layer1..3.<i>.conv1..3/bn1..3``,
``linear``), so RepDistiller's ``ShuffleV1`` checkpoints load as they are (model version 2;
version 1 called the classifier ``classifier``).

Deviations: adaptive final pooling (reference: ``avg_pool2d(4)``, the same at 32 px);
``in_chans`` configurable.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.registry import register_model

from ._common import PreactBlock, TappedNet, channel_shuffle, conv1x1, global_pool, run_stages

__all__ = ["ShuffleUnit", "ShuffleNetV1"]


class ShuffleUnit(PreactBlock):
    """ShuffleNet unit; ``forward_pre`` also returns the sum/concat before the final ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        mid = out_planes // 4
        self.stride = stride
        self.groups1 = first_groups
        self.conv1 = conv1x1(in_planes, mid, groups=first_groups)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, kernel_size=3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = conv1x1(mid, out_planes, groups=groups)
        self.bn3 = nn.BatchNorm2d(out_planes)

    def pre_activation(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = channel_shuffle(out, self.groups1)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1)
        out += x
        return out


class ShuffleNetV1(TappedNet):
    """ShuffleNet-V1 with ``groups`` groups; ``out_planes``/``num_blocks`` per stage."""

    supports_preact = True
    head_name = "linear"

    def __init__(
        self,
        out_planes: tuple[int, int, int] = (240, 480, 960),
        num_blocks: tuple[int, int, int] = (4, 8, 4),
        groups: int = 3,
        num_classes: int = 100,
        in_chans: int = 3,
    ):
        super().__init__()
        stem_planes = 24
        self.conv1 = conv1x1(in_chans, stem_planes)
        self.bn1 = nn.BatchNorm2d(stem_planes)
        in_planes = stem_planes
        layers = []
        for planes, n in zip(out_planes, num_blocks):
            units = []
            for i in range(n):
                # The first unit concatenates its (pooled) input, so its branch makes the rest.
                branch = planes - in_planes if i == 0 else planes
                g1 = 1 if in_planes == stem_planes else groups
                units.append(ShuffleUnit(in_planes, branch, 2 if i == 0 else 1, groups, g1))
                in_planes = planes
            layers.append(nn.Sequential(*units))
        self.layer1, self.layer2, self.layer3 = layers
        self.num_features = in_planes
        self.linear = nn.Linear(in_planes, num_classes)

    def _run(self, x: Tensor, want_preact: bool):
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        feats, pre = run_stages((self.layer1, self.layer2, self.layer3), stem, want_preact)
        return stem, feats, pre, global_pool(feats[-1])

    def get_bn_before_relu(self) -> tuple[nn.Module, ...]:
        return tuple(layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3))


@register_model("shufflev1", family="shufflenet", lightweight=True, version=2)
def shufflev1(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> ShuffleNetV1:
    """RepDistiller's ``ShuffleV1``: groups 3, 240/480/960 channels, 4/8/4 units."""
    return ShuffleNetV1(num_classes=num_classes, in_chans=in_chans)
