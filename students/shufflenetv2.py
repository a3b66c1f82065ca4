"""ShuffleNet V2, net size 1x (Ma et al., "ShuffleNet V2: Practical Guidelines for
Efficient CNN Architecture Design", ECCV 2018), small-input form.

Structure follows RepDistiller's ``models/ShuffleNetv2.py`` (``ShuffleV2``, after
kuangliu's CIFAR ShuffleNetV2): a 1x1 conv-BN-ReLU stem to 24 channels (the reference's
3x3 stem is commented out; no max-pool), three stages each made of one down-sampling unit
followed by 3/7/3 basic units (116/232/464 channels), a 1x1 conv-BN-ReLU to 1024
channels, global average pooling and a linear classifier. Basic unit: split channels in half; the right half goes 1x1 conv-BN-
ReLU, 3x3 depthwise conv-BN, 1x1 conv-BN-ReLU; concatenate with the left half; shuffle
(2 groups). Down-sampling unit: left = 3x3 depthwise stride-2 conv-BN, 1x1 conv-BN-ReLU;
right = 1x1 conv-BN-ReLU, 3x3 depthwise stride-2 conv-BN, 1x1 conv-BN-ReLU; concatenate;
shuffle.

Taps (32x32 input): ``stem`` 24@32; ``stages`` = stage outputs 116@16, 232@8, 464@4
(post-ReLU); ``preact`` = the last unit of each stage before its final ReLU; embedding
1024 (after the 1x1 conv, BN and ReLU).

Deviations: a basic unit applies its final ReLU *after* the concatenation and shuffle
(``out = relu(shuffle(cat(left, bn3(...))))``) instead of to the right branch before them.
The left half is an output of earlier ReLUs moved only by split/concat/shuffle, hence
non-negative, so forward values and gradients are identical; the benefit is that the
pre-activation tap is a tensor of the pass, in the same channel order as the stage
(RepDistiller returns ``cat(left, bn3(...))`` unshuffled, computed by an extra concat).
Adaptive final pooling (reference: ``avg_pool2d(4)``, the same at 32 px); ``in_chans``
configurable.

Module names are the reference's (``conv1``, ``bn1``, ``layer1..3.0.conv1..5/bn1..5`` for
the down-sampling unit, ``layer1..3.<i>.conv1..3/bn1..3``, ``conv2``, ``bn2``, ``linear``),
so RepDistiller's / mdistiller's ``ShuffleV2`` checkpoints load as they are and give the
same logits. Model version 2; version 1 had a 3x3 stem and called the classifier
``classifier``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.registry import register_model

from ._common import PreactBlock, TappedNet, channel_shuffle, conv1x1, global_pool, run_stages

__all__ = ["BasicUnit", "DownUnit", "ShuffleNetV2"]

CONFIGS: dict[float, tuple[tuple[int, int, int, int], tuple[int, int, int]]] = {
    0.5: ((48, 96, 192, 1024), (3, 7, 3)),
    1.0: ((116, 232, 464, 1024), (3, 7, 3)),
    1.5: ((176, 352, 704, 1024), (3, 7, 3)),
    2.0: ((224, 488, 976, 2048), (3, 7, 3)),
}


def _dwconv3x3(channels: int, stride: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, kernel_size=3, stride=stride, padding=1, groups=channels, bias=False)


class BasicUnit(PreactBlock):
    """Stride-1 ShuffleNetV2 unit (channel split, right branch, concat, shuffle)."""

    def __init__(self, channels: int):
        super().__init__()
        self.half = channels // 2
        c = channels - self.half
        self.conv1 = conv1x1(c, c)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = _dwconv3x3(c, 1)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = conv1x1(c, c)
        self.bn3 = nn.BatchNorm2d(c)

    def pre_activation(self, x: Tensor) -> Tensor:
        left, right = x[:, : self.half], x[:, self.half :]
        out = F.relu(self.bn1(self.conv1(right)), inplace=True)
        out = self.bn2(self.conv2(out))
        out = self.bn3(self.conv3(out))
        return channel_shuffle(torch.cat([left, out], 1), 2)


class DownUnit(nn.Module):
    """Stride-2 ShuffleNetV2 unit (both branches process the input; channels grow)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        # left branch
        self.conv1 = _dwconv3x3(in_channels, 2)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = conv1x1(in_channels, mid)
        self.bn2 = nn.BatchNorm2d(mid)
        # right branch
        self.conv3 = conv1x1(in_channels, mid)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = _dwconv3x3(mid, 2)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = conv1x1(mid, mid)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = self.bn1(self.conv1(x))
        left = F.relu(self.bn2(self.conv2(left)), inplace=True)
        right = F.relu(self.bn3(self.conv3(x)), inplace=True)
        right = self.bn4(self.conv4(right))
        right = F.relu(self.bn5(self.conv5(right)), inplace=True)
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(TappedNet):
    """ShuffleNetV2 of ``net_size`` (0.5, 1, 1.5, 2)."""

    supports_preact = True
    head_name = "linear"

    def __init__(self, net_size: float = 1.0, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        out_channels, num_blocks = CONFIGS[float(net_size)]
        self.conv1 = conv1x1(in_chans, 24)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        layers = []
        for c, n in zip(out_channels[:3], num_blocks):
            layers.append(nn.Sequential(DownUnit(in_channels, c), *[BasicUnit(c) for _ in range(n)]))
            in_channels = c
        self.layer1, self.layer2, self.layer3 = layers
        self.conv2 = conv1x1(in_channels, out_channels[3])
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.num_features = out_channels[3]
        self.linear = nn.Linear(out_channels[3], num_classes)

    def _run(self, x: Tensor, want_preact: bool):
        stem = F.relu(self.bn1(self.conv1(x)), inplace=True)
        feats, pre = run_stages((self.layer1, self.layer2, self.layer3), stem, want_preact)
        emb = global_pool(F.relu(self.bn2(self.conv2(feats[-1])), inplace=True))
        return stem, feats, pre, emb

    def get_bn_before_relu(self) -> tuple[nn.Module, ...]:
        """The last unit's bn3 per stage (it normalises the right half of the preact only)."""
        return tuple(layer[-1].bn3 for layer in (self.layer1, self.layer2, self.layer3))


@register_model("shufflev2", family="shufflenet", lightweight=True, version=2)
def shufflev2(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> ShuffleNetV2:
    """RepDistiller's ``ShuffleV2`` (net size 1): 116/232/464 channels, 1024 before the head."""
    return ShuffleNetV2(1.0, num_classes=num_classes, in_chans=in_chans)
