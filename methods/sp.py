"""``sp``: Tung & Mori, "Similarity-Preserving Knowledge Distillation", ICCV 2019.

The student is trained so that its batch similarity structure matches the teacher's: two
inputs that produce similar activations in the teacher should produce similar activations
in the student. For a feature map ``f`` (B×C×H×W) flattened to ``F`` (B×D, D = C·H·W)::

    G(f) = row_normalise_L2(F Fᵀ)                      (B×B)
    loss_sp = feat_weight · ‖G(f_t) − G(f_s)‖²_F / B²

(the paper's Eq. 2–4, with its γ as ``feat_weight``). Since ``G`` is B×B, the student and
teacher maps may differ in channels and spatial size; no connector is needed.

Reference implementation followed: RepDistiller (``Similarity`` loss, CRD authors' suite)
with its CIFAR-100 setting ce 1, feat 3000; mdistiller uses the same loss and weight.

Choices and deviations:

* Layer: the last stage map (``stages[-1]``, RepDistiller's ``feat[-2]``) only. The
  paper's Eq. 4 is written as a sum over a set of teacher/student layer pairs; the
  reference suites distil the last map only, and so do we.
* Row normalisation is ``F.normalize`` (``x / max(‖x‖₂, 1e-12)``), so an all-zero row of
  ``F Fᵀ`` (an all-zero feature map, e.g. a dead post-ReLU sample) stays zero instead of
  dividing by zero; identical otherwise.
* Computed in float32 with autocast disabled (``F Fᵀ`` of bf16 features would lose most
  of the precision of the small normalised entries).
* The teacher side carries no gradient (the teacher runs under ``no_grad``).

Defaults: ``ce_weight=1``, ``feat_weight=3000``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, Needs, StepInfo
from kdbench.registry import register_method
from kdbench.taps import Outputs


def similarity_matrix(f: Tensor) -> Tensor:
    """``row_normalise_L2(F Fᵀ)`` of a batch of maps ``f`` (B×…) flattened to B×D, float32."""
    flat = f.float().reshape(f.shape[0], -1)
    with torch.autocast(device_type=flat.device.type, enabled=False):
        return F.normalize(flat @ flat.t(), p=2, dim=1, eps=1e-12)


def sp_loss(f_s: Tensor, f_t: Tensor) -> Tensor:
    """Unweighted SP term ``‖G(f_t) − G(f_s)‖²_F / B²``."""
    b = f_s.shape[0]
    diff = similarity_matrix(f_t) - similarity_matrix(f_s)
    return (diff * diff).sum() / (b * b)


@register_method("sp")
class SP(Method):
    """Similarity-preserving KD on the last stage map (batch Gram matrices)."""

    name = "sp"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        feat_weight: float = 3000.0  # the paper's γ

    needs = Needs(teacher=True, logits=True, stages=(-1,))

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        return {"loss_sp": self.cfg.feat_weight * sp_loss(s.stages[-1], t.stages[-1])}
