"""Wide residual networks (Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016).

Structure follows the WRN-d-k of the CRD authors' RepDistiller suite (``models/wrn.py``,
itself after the authors' reference code): a 3x3 stem convolution to 16 channels, three
groups of ``(d - 4) / 6`` pre-activation basic blocks (BN-ReLU-conv3x3-BN-ReLU-conv3x3)
with 16k/32k/64k channels and strides 1, 2, 2, a final BN-ReLU, global average pooling and
a linear classifier. Where a block changes the shape, its 1x1 projection shortcut takes
the *activated* input ReLU(BN1(x)) (as in the reference).

Taps (32x32 input): ``stem`` = conv1 output 16@32; ``stages`` = the raw group outputs
(residual sums; the design is pre-activation), e.g. wrn_40_2: 32@32, 64@16, 128@8;
embedding 64k. ``preact[i]`` = the output of the *next* BatchNorm applied to stage ``i``,
without its ReLU: group 1 -> bn1 of the first block of group 2, group 2 -> bn1 of the first
block of group 3, group 3 -> the final BN (RepDistiller's ``preact=True``). RepDistiller
obtains these by calling those BN layers a second time (updating their running statistics
twice per step); here the blocks return their bn1 output from the normal pass instead.

Module names are the reference's: ``conv1``, ``block1..3.layer.<i>`` (a
:class:`NetworkBlock` holding the ``nn.Sequential`` ``layer``) with ``bn1``, ``conv1``,
``bn2``, ``conv2`` and, where the channel count changes, ``convShortcut``; the final
``bn1`` and ``fc``. RepDistiller's WRN checkpoints load as they are (model version 2;
version 1 used ``block1.<i>``, ``shortcut``, ``bn`` and ``classifier``).

Deviations: adaptive final pooling (any input >= 32 px) instead of ``avg_pool2d(8)``;
``in_chans`` configurable; dropout (``drop_rate``, 0 in every registered model) is
supported but unused.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.registry import register_model

from ._common import TappedNet, conv1x1, conv3x3, global_pool, init_kaiming_fan_out

__all__ = ["NetworkBlock", "WideBasicBlock", "WideResNet"]


class WideBasicBlock(nn.Module):
    """Pre-activation block; :meth:`forward_bn` also returns the bn1 output (pre-ReLU).

    As in the reference, a block whose channel count changes has a 1x1 ``convShortcut``
    applied to the *activated* input; otherwise the shortcut is the raw input (the
    registered WRNs change stride only together with the channel count)."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = conv3x3(in_planes, out_planes, stride)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = conv3x3(out_planes, out_planes)
        self.drop_rate = drop_rate
        if stride != 1 and in_planes == out_planes:
            raise ValueError(f"WideBasicBlock: stride {stride} needs a channel change (as in the reference, only "
                             f"blocks with in_planes != out_planes have a projection), got {in_planes} -> {out_planes}")
        self.convShortcut: nn.Module | None = None
        if in_planes != out_planes:
            self.convShortcut = conv1x1(in_planes, out_planes, stride)

    def _body(self, x: Tensor, keep_bn: bool) -> tuple[Tensor, Tensor]:
        b = self.bn1(x)
        a = F.relu(b, inplace=not keep_bn)  # in-place would overwrite b
        out = F.relu(self.bn2(self.conv1(a)), inplace=True)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        out += x if self.convShortcut is None else self.convShortcut(a)
        return out, b

    def forward(self, x: Tensor) -> Tensor:
        return self._body(x, keep_bn=False)[0]

    def forward_bn(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(block output, bn1(x))`` from one pass."""
        return self._body(x, keep_bn=True)


class NetworkBlock(nn.Module):
    """One group of blocks, held as ``self.layer`` (the reference's module tree)."""

    def __init__(self, blocks: list[WideBasicBlock]):
        super().__init__()
        self.layer = nn.Sequential(*blocks)

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)

    def forward_keep_first_bn(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Run the group; also return the first block's bn1 output (the previous stage's preact)."""
        blocks = iter(self.layer)
        x, bn = next(blocks).forward_bn(x)
        for block in blocks:
            x = block(x)
        return x, bn


class WideResNet(TappedNet):
    """WRN-``depth``-``widen``."""

    supports_preact = True
    head_name = "fc"

    def __init__(self, depth: int, widen: int, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        channels = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = conv3x3(in_chans, channels[0])
        groups = []
        in_planes = channels[0]
        for out_planes, stride in zip(channels[1:], (1, 2, 2)):
            blocks = []
            for j in range(n):
                blocks.append(WideBasicBlock(in_planes, out_planes, stride if j == 0 else 1, drop_rate))
                in_planes = out_planes
            groups.append(NetworkBlock(blocks))
        self.block1, self.block2, self.block3 = groups
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.num_features = in_planes
        self.fc = nn.Linear(in_planes, num_classes)
        init_kaiming_fan_out(self)
        nn.init.zeros_(self.fc.bias)

    def _run(self, x: Tensor, want_preact: bool):
        stem = self.conv1(x)
        s1 = self.block1(stem)
        if want_preact:
            s2, p1 = self.block2.forward_keep_first_bn(s1)
            s3, p2 = self.block3.forward_keep_first_bn(s2)
            p3 = self.bn1(s3)
            feat = F.relu(p3)
            pre = (p1, p2, p3)
        else:
            s2 = self.block2(s1)
            s3 = self.block3(s2)
            feat = F.relu(self.bn1(s3), inplace=True)
            pre = None
        return stem, (s1, s2, s3), pre, global_pool(feat)

    def get_bn_before_relu(self) -> tuple[nn.Module, ...]:
        """The BatchNorm layers whose outputs are ``preact`` (aligned with ``stages``)."""
        return (self.block2.layer[0].bn1, self.block3.layer[0].bn1, self.bn1)


def _make(depth: int, widen: int, num_classes: int, in_chans: int) -> WideResNet:
    return WideResNet(depth, widen, num_classes=num_classes, in_chans=in_chans)


@register_model("wrn_16_1", family="wrn", lightweight=False, version=2)
def wrn_16_1(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> WideResNet:
    return _make(16, 1, num_classes, in_chans)


@register_model("wrn_16_2", family="wrn", lightweight=False, version=2)
def wrn_16_2(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> WideResNet:
    return _make(16, 2, num_classes, in_chans)


@register_model("wrn_40_1", family="wrn", lightweight=False, version=2)
def wrn_40_1(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> WideResNet:
    return _make(40, 1, num_classes, in_chans)


@register_model("wrn_40_2", family="wrn", lightweight=False, version=2)
def wrn_40_2(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> WideResNet:
    return _make(40, 2, num_classes, in_chans)
