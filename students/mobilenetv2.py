"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks",
CVPR 2018), in the small-input "mobile_half" form used as a student by the CRD authors.

Structure follows RepDistiller's ``models/mobilenetv2.py`` (``mobile_half`` = expansion
T=6, width 0.5): a 3x3 stride-2 conv-BN-ReLU stem (16 channels), seven groups of inverted
residual blocks with settings (t, c, n, s) = [1,16,1,1], [T,24,2,1], [T,32,3,2],
[T,64,4,2], [T,96,3,1], [T,160,3,2], [T,320,1,1] (channels scaled by the width), a 1x1
conv-BN-ReLU to 1280 channels, global average pooling and a linear classifier. As in the
reference, every block has the 1x1 expansion convolution (also when t = 1), and the
identity shortcut is used when stride 1 and the channel count is unchanged.

Taps (32x32 input): ``stem`` = conv1 output 16@16; ``stages`` = the outputs after groups
(0,1), (2), (3,4), (5,6): 12@16, 16@8, 48@4, 160@2; embedding 1280. Stage outputs are
linear bottlenecks (no final non-linearity), so ``preact`` is the same tensors.
Module names are the reference's (``conv1.0/1``, ``blocks.<g>.<i>.conv.0..7``,
``conv2.0/1``, and the classifier ``nn.Linear`` wrapped in an ``nn.Sequential`` as
``classifier.0``), so RepDistiller's / mdistiller's ``mobile_half`` / ``MobileNetV2``
checkpoints load as they are (model version 2; version 1 had a bare ``classifier``).

Deviations: adaptive final pooling (RepDistiller uses ``AvgPool2d(input_size // 16,
ceil_mode=True)``: the same at 32 px, where the last map is 2x2); ``in_chans``
configurable.
"""
from __future__ import annotations

from torch import Tensor, nn

from kdbench.registry import register_model

from ._common import TappedNet, global_pool, init_normal_fan_out

__all__ = ["InvertedResidual", "MobileNetV2"]

SETTINGS: list[tuple[int | None, int, int, int]] = [
    # t (None = the network's expansion T), c, n, s
    (1, 16, 1, 1),
    (None, 24, 2, 1),
    (None, 32, 3, 2),
    (None, 64, 4, 2),
    (None, 96, 3, 1),
    (None, 160, 3, 2),
    (None, 320, 1, 1),
]
# Block groups whose last output is a stage tap.
STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))


def _conv_bn_relu(inp: int, oup: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(inp, oup, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(oup), nn.ReLU(inplace=True)
    )


class InvertedResidual(nn.Module):
    """1x1 expand - 3x3 depthwise - 1x1 linear projection (+ identity when shapes match)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_res_connect = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.use_res_connect:
            return x + self.conv(x)
        return self.conv(x)


class MobileNetV2(TappedNet):
    """MobileNetV2 with expansion ``expansion`` and width multiplier ``width``."""

    supports_preact = True  # linear bottlenecks: preact == stages
    head_name = "classifier.0"

    def __init__(self, expansion: int = 6, width: float = 0.5, num_classes: int = 100, in_chans: int = 3):
        super().__init__()
        input_channel = int(32 * width)
        self.conv1 = _conv_bn_relu(in_chans, input_channel, 3, 2)
        groups = []
        for t, c, n, s in SETTINGS:
            output_channel = int(c * width)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(input_channel, output_channel, s if i == 0 else 1, t or expansion))
                input_channel = output_channel
            groups.append(nn.Sequential(*layers))
        self.blocks = nn.ModuleList(groups)
        # As the reference: 1280 for width <= 1, int(1280 * width) above.
        self.last_channel = int(1280 * width) if width > 1.0 else 1280
        self.conv2 = _conv_bn_relu(input_channel, self.last_channel, 1, 1)
        self.num_features = self.last_channel
        self.classifier = nn.Sequential(nn.Linear(self.last_channel, num_classes))
        init_normal_fan_out(self)

    def _run(self, x: Tensor, want_preact: bool):
        stem = self.conv1(x)
        out = stem
        stages = []
        for group_ids in STAGE_GROUPS:
            for g in group_ids:
                out = self.blocks[g](out)
            stages.append(out)
        stages_t = tuple(stages)
        emb = global_pool(self.conv2(out))
        return stem, stages_t, (stages_t if want_preact else None), emb

    def get_bn_before_relu(self) -> tuple[nn.Module, ...]:
        """The last BatchNorm of each stage's last block (the stage output is linear)."""
        return tuple(self.blocks[ids[-1]][-1].conv[-1] for ids in STAGE_GROUPS)


@register_model("mobilenetv2", family="mobilenet", lightweight=True, version=2)
def mobilenetv2(num_classes: int = 100, in_chans: int = 3, image_size: int = 32) -> MobileNetV2:
    """RepDistiller's ``mobile_half``: expansion 6, width 0.5."""
    return MobileNetV2(expansion=6, width=0.5, num_classes=num_classes, in_chans=in_chans)
