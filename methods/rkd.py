"""``rkd``: Park, Kim, Lu, Cho, "Relational Knowledge Distillation", CVPR 2019.

The student's embedding is trained to reproduce the *relations* between the teacher's
embeddings of the samples of a batch: pairwise distances (RKD-D) and the angles formed by
triplets (RKD-A). With ``e`` the pooled pre-logit embedding (B×D; student and teacher
dimensions may differ) and ``ℓ`` the Huber / smooth-L1 loss with δ = 1
(``ℓ(x) = ½x²`` for ``|x| < 1``, ``|x| − ½`` otherwise)::

    d_ij       = ‖e_i − e_j‖₂ / μ,     μ = mean of ‖e_i − e_j‖₂ over the pairs where it is > 0
    distance   = (1/B²)  Σ_{i,j}   ℓ(d^s_ij − d^t_ij)                    (all B² pairs, i = j too)
    cos_ijk    = ⟨n(e_j − e_i), n(e_k − e_i)⟩,   n(v) = v / max(‖v‖₂, 1e-12)
    angle      = (1/B³)  Σ_{i,j,k} ℓ(cos^s_ijk − cos^t_ijk)               (all B³ triplets)
    loss_rkd_distance = feat_weight · distance_weight · distance
    loss_rkd_angle    = feat_weight · angle_weight · angle

Degenerate triplets (``j = i`` or ``k = i``) have ``n(0) = 0``, so their cosine is 0 on both
sides and they contribute ``ℓ(0) = 0`` (they still count in the 1/B³). The pair i = j has
distance 0 on both sides and contributes 0 (it counts in the 1/B²). Teacher relations are
computed without gradient; the student's μ is part of its graph (as in the references).

Reference implementation followed: RepDistiller (``RKDLoss``, CRD authors' suite) with its
CIFAR-100 setting: ce 1, outer weight (``feat_weight``) 1, inner weights 25 (distance) and 50
(angle). mdistiller has the same loss and inner weights.

Choices and deviations:

* Weights: the paper's λ_D = 1 and λ_A = 2 (ratio 1:2) are the reference's 25 and 50
  (same ratio, ×25). Both are Config fields; ``feat_weight`` multiplies both terms.
* Embedding: the pooled pre-logit vector (``Outputs.embedding``, RepDistiller's
  ``feat[-1]``), no projection head, as in the reference suites.
* A term whose inner weight is 0 is not computed (and not logged), so ``angle_weight=0``
  gives RKD-D alone and ``distance_weight=0`` RKD-A alone, as in the paper's ablations.
* Distances as in the reference: ``‖a‖² + ‖b‖² − 2⟨a, b⟩`` clamped at 1e-12 before the
  square root, then the diagonal set to 0. Off-diagonal pairs are therefore always > 0
  (≥ 1e-6) and μ is the mean over the B² − B off-diagonal pairs; the count of nonzero pairs
  is taken as a tensor (no host sync; the reference's boolean indexing syncs). μ is
  clamped at 1e-12 so a batch of one sample gives 0, not 0/0.
* Angles are computed from the B×B×D difference tensor ``e_j − e_i`` and one batched
  matmul (B×B×B cosines) exactly as the reference does; memory is O(B²·D + B³) floats
  per side (B = 64, D = 2048: 8.4 M + 0.26 M floats). The Gram-matrix shortcut (O(B³),
  no D factor) was not used because it loses precision by cancellation for nearby samples.
* Computed in float32 with autocast disabled.
* Like the reference: two *exactly coincident* student embeddings (i ≠ j) hit the 1e-12
  floor of ``n(·)`` and give a very large angle gradient. This needs bit-identical
  embeddings of different samples and is left as is.

Defaults: ``ce_weight=1``, ``feat_weight=1``, ``distance_weight=25``, ``angle_weight=50``.
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


def pairwise_distances(e: Tensor) -> Tensor:
    """Euclidean distances between the rows of ``e`` (B×D, float32): B×B, zero diagonal.

    ``sqrt(clamp(‖e_i‖² + ‖e_j‖² − 2⟨e_i, e_j⟩, 1e-12))`` as in the reference."""
    sq = (e * e).sum(dim=1)
    d2 = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2.0 * (e @ e.t())).clamp(min=1e-12)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    return d2.sqrt().masked_fill(eye, 0.0)


def normalised_distances(e: Tensor) -> Tensor:
    """Pairwise distances divided by their mean over the nonzero pairs (no host sync)."""
    d = pairwise_distances(e)
    count = (d > 0).sum().clamp(min=1)
    mean = (d.sum() / count).clamp(min=1e-12)
    return d / mean


def triplet_cosines(e: Tensor) -> Tensor:
    """``c[i, j, k] = ⟨n(e_j − e_i), n(e_k − e_i)⟩`` (B×B×B); 0 where ``j = i`` or ``k = i``."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2, eps=1e-12)  # [i, j] = n(e_j − e_i)
    return torch.bmm(unit, unit.transpose(1, 2))


def rkd_distance_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Unweighted RKD-D: smooth-L1 between mean-normalised distance matrices, mean over B²."""
    e_s = e_s.float().flatten(1)
    with torch.autocast(device_type=e_s.device.type, enabled=False):
        with torch.no_grad():
            d_t = normalised_distances(e_t.float().flatten(1))
        return F.smooth_l1_loss(normalised_distances(e_s), d_t, reduction="mean", beta=1.0)


def rkd_angle_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """Unweighted RKD-A: smooth-L1 between triplet-angle cosines, mean over B³."""
    e_s = e_s.float().flatten(1)
    with torch.autocast(device_type=e_s.device.type, enabled=False):
        with torch.no_grad():
            c_t = triplet_cosines(e_t.float().flatten(1))
        return F.smooth_l1_loss(triplet_cosines(e_s), c_t, reduction="mean", beta=1.0)


@register_method("rkd")
class RKD(Method):
    """Relational KD: distance- and angle-wise relations of the batch embeddings."""

    name = "rkd"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        feat_weight: float = 1.0  # outer weight of both terms (RepDistiller's -b)
        distance_weight: float = 25.0  # the paper's λ_D (= 1 there)
        angle_weight: float = 50.0  # the paper's λ_A (= 2 there)

    needs = Needs(teacher=True, logits=True, embedding=True)

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        terms: dict[str, Tensor] = {}
        if self.cfg.distance_weight:
            terms["loss_rkd_distance"] = (self.cfg.feat_weight * self.cfg.distance_weight
                                          * rkd_distance_loss(s.embedding, t.embedding))
        if self.cfg.angle_weight:
            terms["loss_rkd_angle"] = (self.cfg.feat_weight * self.cfg.angle_weight
                                       * rkd_angle_loss(s.embedding, t.embedding))
        return terms
