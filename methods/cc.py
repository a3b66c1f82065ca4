"""``cc``: Peng et al., "Correlation Congruence for Knowledge Distillation", ICCV 2019.

Reference implementation followed: RepDistiller (``distiller_zoo/CC.py``: ``Correlation``, the
code the CC authors shared with the RepDistiller authors; ``models/util.py``: ``LinearEmbed``;
``train_student.py --distill correlation -a 0 -b 0.02``), also the HKD paper's CC+KD row
(``cc+kd``, see :mod:`kdbench.compose`).

``mode=code`` (default), RepDistiller's ``Correlation``: both pooled embeddings (the
penultimate features) go through a trained linear head to ``feat_dim=128`` (``LinearEmbed``:
``Linear``, no normalisation), ``e_s = W_s f_s + b_s``, ``e_t = W_t f_t + b_t``; with
``Δ = |e_s − e_t|`` (``B × 128``)::

    loss_cc = feat_weight · mean_{b=1..B−1} Σ_d Δ[b, d] · Δ[b+1, d]      (consecutive batch rows)

This is not the paper's correlation-matrix loss; it is what the suites run and what the HKD
table's CC+KD row used. Both heads are trained (RepDistiller puts ``embed_t`` in its trainable
list); the teacher itself gets no gradient.

``mode=paper``: the paper's Eq. (the correlation congruence with a Gaussian RBF kernel and
its P-order Taylor approximation) on the L2-normalised pooled embeddings themselves (no
heads; student and teacher widths may differ, the matrices are ``B × B``)::

    C(F)_ij = Σ_{p=0..P} exp(−2γ) (2γ)^p / p! · (F̂_i · F̂_j)^p
    loss_cc = feat_weight · 1/B² Σ_ij (C(F_t)_ij − C(F_s)_ij)²

``γ = 0.4``, ``P = 2`` (``gamma``, ``taylor_order``: the values of the CC implementation in
the widely used Knowledge-Distillation-Zoo; the paper's kernel with ``‖F̂_i − F̂_j‖² = 2 −
2F̂_i·F̂_j`` expanded). ``feat_weight`` 0.02 is the code mode's weight; the suites give none
for this mode.

Defaults: ``ce_weight 1``, ``feat_weight 0.02``, ``feat_dim 128``, ``mode code``.
Deviations from RepDistiller: none in ``mode=code``; ``mode=paper`` is not in RepDistiller.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, MethodContext, Needs, StepInfo
from kdbench.registry import register_method
from kdbench.taps import Outputs, TapInfo


def consecutive_congruence(e_s: Tensor, e_t: Tensor) -> Tensor:
    """RepDistiller's ``Correlation``: ``mean_b Σ_d |e_s−e_t|[b, d] · |e_s−e_t|[b+1, d]``."""
    delta = (e_s - e_t).abs()
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


def taylor_rbf_correlation(f: Tensor, gamma: float, order: int) -> Tensor:
    """``B × B``: ``Σ_{p≤P} exp(−2γ)(2γ)^p/p! · (f̂_i·f̂_j)^p`` of the L2-normalised rows ``f̂``."""
    f = F.normalize(f.flatten(1), dim=1)
    sim = f @ f.t()
    return sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * sim.pow(p) for p in range(order + 1))


@register_method("cc")
class CC(Method):
    """Correlation congruence on linear embeddings (RepDistiller's ``Correlation``)."""

    name = "cc"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        #: weight of the CC term (RepDistiller's ``-b``)
        feat_weight: float = 0.02
        #: width of both linear heads (``mode=code``)
        feat_dim: int = 128
        #: "code": RepDistiller's consecutive-row loss; "paper": the Taylor-RBF correlation matrices
        mode: Literal["code", "paper"] = "code"
        #: γ of the Gaussian RBF (``mode=paper``)
        gamma: float = 0.4
        #: P, order of its Taylor series (``mode=paper``)
        taylor_order: int = 2

        def __post_init__(self) -> None:
            if self.feat_dim < 1 or self.taylor_order < 0:
                raise ValueError("feat_dim must be >= 1 and taylor_order >= 0")

    needs = Needs(teacher=True, logits=True, embedding=True)

    def __init__(self, cfg: Config, teacher_info: TapInfo, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        if cfg.mode == "code":
            self.embed_s = nn.Linear(student_info.embedding_dim, cfg.feat_dim)
            self.embed_t = nn.Linear(teacher_info.embedding_dim, cfg.feat_dim)

    def loss(self, s: Outputs, t: Outputs, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        f_s, f_t = s.embedding.float().flatten(1), t.embedding.float().flatten(1)
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            if self.cfg.mode == "code":
                value = consecutive_congruence(self.embed_s(f_s), self.embed_t(f_t))
            else:
                c_s = taylor_rbf_correlation(f_s, self.cfg.gamma, self.cfg.taylor_order)
                c_t = taylor_rbf_correlation(f_t, self.cfg.gamma, self.cfg.taylor_order)
                value = (c_t - c_s).pow(2).mean()
        return {"loss_cc": self.cfg.feat_weight * value}
