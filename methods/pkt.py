"""``pkt``: Passalis & Tefas, "Learning Deep Representations with Probabilistic Knowledge
Transfer", ECCV 2018.

The batch embeddings of each network define a conditional probability distribution over
the samples through a cosine-similarity kernel; the student's distribution is trained to
match the teacher's by a KL divergence. With ``e`` the pooled pre-logit embedding (B×D;
student and teacher dimensions may differ) and ε = 1e-7::

    x_i    = e_i / (‖e_i‖₂ + ε)
    K_ij   = (⟨x_i, x_j⟩ + 1) / 2                  (cosine kernel, in [0, 1])
    P_ij   = K_ij / Σ_k K_ik                       (row-normalised, each row sums to 1)
    loss_pkt = feat_weight · (1/B²) Σ_{i,j} P^t_ij · log((P^t_ij + ε) / (P^s_ij + ε))

The "mean" is over ALL B×B entries of the matrix (diagonal included), i.e. the summed
row-wise KL divergences divided by B², not by B: this is what the reference suites compute
(``torch.mean`` of the B×B matrix), and ``feat_weight = 30000`` is calibrated for it.

Reference implementation followed: RepDistiller (``PKT`` loss, CRD authors' suite) with
its CIFAR-100 setting ce 1, feat 30000; mdistiller computes the same.

Choices and deviations (all from the paper, none from the reference's values):

* The paper's conditional probabilities exclude the self-similarity (``Σ_{k≠i}``, and the
  KL sums over ``j ≠ i``); the references include the diagonal ``K_ii`` (= 1 for a nonzero
  row) in both the normalisation and the loss. We follow the references.
* The norm is ``torch.linalg.vector_norm`` rather than ``sqrt(Σ x²)``: the same value, but
  the norm's gradient at an all-zero row is 0 instead of NaN, so the row's gradient stays
  finite (scale 1/ε) where the reference's becomes NaN (the reference zeroes NaNs of the
  *values*, which cannot occur with ε > 0, but not of the gradient). An all-zero row gives
  ``K_i· = ½``, a uniform row of ``P``.
* Embedding: the pooled pre-logit vector (``Outputs.embedding``, RepDistiller's
  ``feat[-1]``), no projection head, as in the references.
* Computed in float32 with autocast disabled. The teacher side carries no gradient.

Defaults: ``ce_weight=1``, ``feat_weight=30000``, ``eps=1e-7`` (both the norm and the
log-ratio ε, as in the reference).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, Needs, StepInfo
from kdbench.registry import register_method
from kdbench.taps import Outputs


def pkt_probabilities(e: Tensor, eps: float = 1e-7) -> Tensor:
    """Row-normalised cosine-kernel matrix ``P`` (B×B, float32) of the rows of ``e``."""
    e = e.float().flatten(1)
    with torch.autocast(device_type=e.device.type, enabled=False):
        x = e / (torch.linalg.vector_norm(e, ord=2, dim=1, keepdim=True) + eps)
        k = (x @ x.t() + 1.0) / 2.0
        return k / k.sum(dim=1, keepdim=True)


def pkt_loss(e_s: Tensor, e_t: Tensor, eps: float = 1e-7) -> Tensor:
    """Unweighted PKT term: ``mean over the B×B entries of P_t · log((P_t + ε)/(P_s + ε))``."""
    p_s = pkt_probabilities(e_s, eps)
    with torch.no_grad():
        p_t = pkt_probabilities(e_t, eps)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


@register_method("pkt")
class PKT(Method):
    """Probabilistic knowledge transfer on the batch embeddings (cosine kernel, KL)."""

    name = "pkt"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        feat_weight: float = 30000.0
        eps: float = 1e-7  # added to the norm and to both probabilities in the log-ratio

    needs = Needs(teacher=True, logits=True, embedding=True)

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        return {"loss_pkt": self.cfg.feat_weight * pkt_loss(s.embedding, t.embedding, self.cfg.eps)}
