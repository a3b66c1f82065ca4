"""Shared building blocks of the student/teacher zoo.

:class:`TappedNet` is the base of every native architecture: subclasses implement
``_run(x, want_preact)`` once, and both ``forward`` (logits only) and ``forward_taps``
(:class:`kdbench.taps.Outputs`) are views of that single pass. The final linear layer keeps
the name the reference implementation gives it (``fc``, ``linear``, ``classifier``,
``classifier.0``: the class attribute ``head_name``), so state dicts are interchangeable
with RepDistiller's / mdistiller's; :meth:`TappedNet.get_classifier` finds it by that name. Pre-activation maps are
references to tensors the pass computes anyway; nothing is recomputed (in particular no
BatchNorm is ever applied twice, which would update its running statistics twice).

:class:`PreactBlock` is a residual unit whose last non-linearity can be skipped on request:
``forward(x)`` returns the activated output, ``forward_pre(x)`` returns
``(activated, pre_activation)`` from the same computation. :func:`run_stage` runs a stage
(an ``nn.Sequential`` of such blocks) and keeps the last block's pre-activation.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.taps import Outputs


class PreactBlock(nn.Module):
    """A block ending in a ReLU, with an optional pre-activation output (see module
    docstring). Subclasses implement :meth:`pre_activation`, everything before that ReLU."""

    def pre_activation(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.pre_activation(x), inplace=True)

    def forward_pre(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # Not in place: the pre-activation tensor is returned too.
        pre = self.pre_activation(x)
        return F.relu(pre), pre


def run_stage(stage: nn.Sequential, x: Tensor, want_preact: bool) -> tuple[Tensor, Tensor | None]:
    """Run the blocks of ``stage``; with ``want_preact`` also return the last block's
    pre-activation (its :meth:`PreactBlock.forward_pre`), else ``None``."""
    last = len(stage) - 1
    for i, block in enumerate(stage):
        if i == last and want_preact:
            return block.forward_pre(x)
        x = block(x)
    return x, None


def run_stages(stages: tuple[nn.Sequential, ...], x: Tensor,
               want_preact: bool) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...] | None]:
    """Chain :func:`run_stage` over ``stages``: every stage's output, and with
    ``want_preact`` every stage's last pre-activation (else ``None``)."""
    feats, pres = [], []
    for stage in stages:
        x, pre = run_stage(stage, x, want_preact)
        feats.append(x)
        pres.append(pre)
    return tuple(feats), (tuple(pres) if want_preact else None)


def global_pool(x: Tensor) -> Tensor:
    """Adaptive average pooling to 1x1, flattened to (B, C)."""
    return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)


class TappedNet(nn.Module):
    """Base class: ``forward`` and ``forward_taps`` share one implementation.

    Subclasses register the final ``nn.Linear`` under the dotted name ``head_name`` (the
    reference implementation's: ``"fc"``, ``"linear"``, ``"classifier"`` or
    ``"classifier.0"``) and implement :meth:`_run` returning
    ``(stem, stages, preacts or None, embedding)``.
    """

    supports_preact: bool = True
    tap_kind: str = "cnn"
    head_name: str = "classifier"

    def _run(self, x: Tensor, want_preact: bool) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...] | None, Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: Tensor) -> Tensor:
        return self.get_classifier()(self._run(x, False)[3])

    def forward_taps(self, x: Tensor, preact: bool = False) -> Outputs:
        """Logits, embedding, stage maps, stem (and pre-activations) of one forward pass."""
        stem, stages, pre, emb = self._run(x, bool(preact) and self.supports_preact)
        return Outputs(logits=self.get_classifier()(emb), embedding=emb, stages=stages, preact=pre, stem=stem)

    def get_classifier(self) -> nn.Linear:
        """The final linear layer (timm convention), whatever ``head_name`` calls it."""
        return self.get_submodule(self.head_name)

    def get_bn_before_relu(self) -> tuple[nn.Module, ...]:
        """The BatchNorm layer feeding each stage's final non-linearity (OFD's margins);
        aligned with ``stages``. Override where the family defines them."""
        raise NotImplementedError(f"{type(self).__name__} does not define get_bn_before_relu()")


def init_kaiming_fan_out(model: nn.Module) -> None:
    """He-normal (fan_out, ReLU) convolutions, unit/zero BatchNorm affine, zero Linear bias:
    the initialisation of the ResNet/WRN reference implementations."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def init_normal_fan_out(model: nn.Module) -> None:
    """N(0, sqrt(2 / (k*k*out_channels))) convolutions with zero bias, unit/zero BatchNorm,
    N(0, 0.01) Linear weights with zero bias: the VGG / MobileNetV2 reference initialisation."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.zeros_(m.bias)


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias."""
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False, groups=groups)


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """ShuffleNet channel shuffle: (B, g*n, H, W) -> interleave the g groups."""
    if groups == 1:
        return x
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)
