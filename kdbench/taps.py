"""Uniform taps: every model gives logits, embedding and stage maps in one forward pass.

A *tapped* model is an ``nn.Module`` whose ``forward(x)`` returns logits and whose
``forward_taps(x, preact=False)`` returns :class:`Outputs`. kdbench's own architectures
implement ``forward_taps`` natively (pre-activation maps included where the family has
them, computed in the same pass, never by re-running a BatchNorm). Models from timm or
torchvision are wrapped by adapters in ``kdbench.students.external``.

:class:`TapInfo` (channels and spatial size per stage, embedding dim, ...) is measured once
by a dry run (:func:`measure`) and is what methods size their connectors from.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn


@dataclass
class Outputs:
    """Everything a method may read from one forward pass.

    ``stages`` are the outputs of the network stages in order (e.g. 3 for CIFAR ResNets);
    their meaning follows the family (post-ReLU for ResNet/VGG/ShuffleNet, the raw residual
    sum for the pre-activation WRN, linear bottleneck outputs for MobileNetV2).
    ``preact`` holds the same stages before their final non-linearity (``None`` unless
    requested and supported). ``stem`` is the first feature map (before stage 1).
    ``extras`` is free-form for non-CNN students (e.g. the GNN's graph).
    """

    logits: Tensor
    embedding: Tensor
    stages: tuple[Tensor, ...] = ()
    preact: tuple[Tensor, ...] | None = None
    stem: Tensor | None = None
    extras: dict = dataclasses.field(default_factory=dict)


@dataclass(frozen=True)
class TapInfo:
    """Measured shapes of a tapped model at one input size (from :func:`measure`)."""

    num_classes: int
    embedding_dim: int
    stage_channels: tuple[int, ...]
    stage_sizes: tuple[tuple[int, int], ...]
    has_preact: bool
    kind: str = "cnn"  # "cnn" for image networks with spatial stages; e.g. "gnn" otherwise
    input_size: tuple[int, int, int] = (3, 32, 32)
    stem_channels: int | None = None
    stem_size: tuple[int, int] | None = None
    num_params: int = 0

    @property
    def num_stages(self) -> int:
        return len(self.stage_channels)

    def stage_shape(self, i: int) -> tuple[int, int, int]:
        """(C, H, W) of stage ``i`` (negative indices allowed)."""
        h, w = self.stage_sizes[i]
        return (self.stage_channels[i], h, w)


@runtime_checkable
class Tapped(Protocol):
    def forward_taps(self, x: Tensor, preact: bool = False) -> Outputs: ...


def has_preact(model: nn.Module) -> bool:
    """Whether ``model`` declares pre-activation taps (attribute ``supports_preact``)."""
    return bool(getattr(model, "supports_preact", False))


@torch.no_grad()
def measure(model: nn.Module, input_size: tuple[int, int, int], device: torch.device | str = "cpu") -> TapInfo:
    """Dry-run ``model`` on a batch of 2 in eval mode and record the tap shapes.

    The model's train/eval mode is restored afterwards and BN statistics are untouched
    (eval mode), so measuring is side-effect free. A model whose inputs are not images
    (a GNN fed teacher embeddings) declares ``input_shape``, the shape of one input row.
    """
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(2, *getattr(model, "input_shape", input_size), device=device)
        out = model.forward_taps(x, preact=has_preact(model))
    finally:
        model.train(was_training)
    if out.logits.dim() != 2:
        raise ValueError(f"{type(model).__name__}.forward_taps returned logits of shape {tuple(out.logits.shape)}, expected (B, classes)")
    spatial = [s for s in out.stages if s.dim() == 4]
    return TapInfo(
        num_classes=out.logits.shape[1],
        embedding_dim=out.embedding.shape[1],
        stage_channels=tuple(s.shape[1] for s in spatial),
        stage_sizes=tuple((s.shape[2], s.shape[3]) for s in spatial),
        has_preact=out.preact is not None,
        kind=getattr(model, "tap_kind", "cnn"),
        input_size=tuple(input_size),
        stem_channels=None if out.stem is None else out.stem.shape[1],
        stem_size=None if out.stem is None else (out.stem.shape[2], out.stem.shape[3]),
        num_params=sum(p.numel() for p in model.parameters()),
    )
