"""VGG with BatchNorm for small images (Simonyan & Zisserman, "Very Deep Convolutional
Networks for Large-Scale Image Recognition", ICLR 2015; BN after every convolution).

Structure follows the CRD authors' RepDistiller suite (``models/vgg.py``, the ``*_bn``
variants that its model dictionary names ``vgg8`` ... ``vgg19``): five blocks of 3x3
conv(bias)-BN-ReLU layers separated by 2x2 max-pools, global average pooling and a single
``Linear(512, num_classes)``. Configurations (channels per block):

* ``vgg8``  'S': [64], [128], [256], [512], [512]
* ``vgg11`` 'A': [64], [128], [256, 256], [512, 512], [512, 512]
* ``vgg13`` 'B': [64, 64], [128, 128], [256, 256], [512, 512], [512, 512]
* ``vgg16`` 'D': [64, 64], [128, 128], [256]*3, [512]*3, [512]*3
* ``vgg19`` 'E': [64, 64], [128, 128], [256]*4, [512]*4, [512]*4

Taps: ``stem`` = block 0 after ReLU (64@32 at 32x32 input); ``stages`` = blocks 1..4 after
ReLU (128@16, 256@8, 512@4, 512@4); ``preact`` = the same before each block's final ReLU;
embedding 512. As in the reference there is no pool between blocks 3 and 4 for small
inputs; it is applied when the model is built for ``image_size >= 64`` (the reference does
it for exactly 64 px, decided per batch) so block 4 runs at >= 4x4 (32 px: blocks at
32/16/8/4/4; 64 px: 64/32/16/8/4; 84 px: 84/42/21/10/5; 96 px: 96/48/24/12/6). Deviations: the decision comes from the
construction-time ``image_size``; the final pooling is adaptive; ``in_chans``
configurable.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.registry import register_model

from ._common import TappedNet, global_pool, init_normal_fan_out

__all__ = ["VGG", "CFGS"]

CFGS: dict[str, list[list[int]]] = {
    "S": [[64], [128], [256], [512], [512]],
    "A": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "B": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "D": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
    "E": [[64, 64], [128, 128], [256, 256, 256, 256], [512, 512, 512, 512], [512, 512, 512, 512]],
}


def _block(channels: list[int], in_channels: int) -> nn.Sequential:
    """conv-BN-ReLU layers; the block ends with BN (its ReLU is applied by the caller)."""
    layers: list[nn.Module] = []
    for v in channels:
        layers += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
        in_channels = v
    return nn.Sequential(*layers[:-1])


class VGG(TappedNet):
    """VGG-BN with five blocks; see the module docstring."""

    supports_preact = True

    def __init__(self, cfg: list[list[int]], num_classes: int = 100, in_chans: int = 3, image_size: int = 32):
        super().__init__()
        blocks = []
        in_channels = in_chans
        for channels in cfg:
            blocks.append(_block(channels, in_channels))
            in_channels = channels[-1]
        self.block0, self.block1, self.block2, self.block3, self.block4 = blocks
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.pool3 = image_size >= 64
        self.num_features = in_channels
        self.classifier = nn.Linear(in_channels, num_classes)
        init_normal_fan_out(self)

    def _run(self, x: Tensor, want_preact: bool):
        keep = want_preact
        stem = F.relu(self.block0(x), inplace=True)
        x = self.pool(stem)
        p1 = self.block1(x)
        s1 = F.relu(p1, inplace=not keep)
        p2 = self.block2(self.pool(s1))
        s2 = F.relu(p2, inplace=not keep)
        p3 = self.block3(self.pool(s2))
        s3 = F.relu(p3, inplace=not keep)
        p4 = self.block4(self.pool(s3) if self.pool3 else s3)
        s4 = F.relu(p4, inplace=not keep)
        pre = (p1, p2, p3, p4) if keep else None
        return stem, (s1, s2, s3, s4), pre, global_pool(s4)

    def get_bn_before_relu(self) -> tuple[nn.Module, ...]:
        return (self.block1[-1], self.block2[-1], self.block3[-1], self.block4[-1])


def _make(cfg: str, num_classes: int, in_chans: int, image_size: int) -> VGG:
    return VGG(CFGS[cfg], num_classes=num_classes, in_chans=in_chans, image_size=image_size)


@register_model("vgg8", family="vgg", lightweight=False)
def vgg8(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> VGG:
    return _make("S", num_classes, in_chans, image_size)


@register_model("vgg11", family="vgg", lightweight=False)
def vgg11(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> VGG:
    return _make("A", num_classes, in_chans, image_size)


@register_model("vgg13", family="vgg", lightweight=False)
def vgg13(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> VGG:
    return _make("B", num_classes, in_chans, image_size)


@register_model("vgg16", family="vgg", lightweight=False)
def vgg16(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> VGG:
    return _make("D", num_classes, in_chans, image_size)


@register_model("vgg19", family="vgg", lightweight=False)
def vgg19(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> VGG:
    return _make("E", num_classes, in_chans, image_size)
