"""``at``: Zagoruyko & Komodakis, "Paying More Attention to Attention: Improving the
Performance of Convolutional Neural Networks via Attention Transfer", ICLR 2017.

Activation-based attention transfer on every stage output. For a map ``f`` (B×C×H×W) the
spatial attention is ``a(f) = normalise_L2(vec(mean_c f^p))`` with ``p = 2`` (a B×HW
matrix, one unit vector per sample).

Reference implementation followed: the authors' code as reproduced in RepDistiller
(``Attention`` loss), CIFAR-100 setting ce 1, feat 1000.

``mode="code"`` (default; RepDistiller / the authors' code)::

    loss_at = feat_weight · Σ_stages mean_{b,hw} (a(f_s) − a(f_t))²

``mode="paper"`` (Eq. 2 of the paper with its β)::

    loss_at = (feat_weight / 2) · Σ_stages (1 / (H_j·W_j)) · mean_b ‖a(f_s)_b − a(f_t)_b‖₂

The paper writes ``β/2 · Σ_j ‖Q_s^j/‖Q_s^j‖₂ − Q_t^j/‖Q_t^j‖₂‖_2`` per sample (the norm,
not its square; ``Q = vec(Σ_c |A_c|²)``) and sets β = 10³ "divided by the number of
elements in the attention map and batch size for each layer". We read that as: per stage
j, β_j = feat_weight / (H_j·W_j·B), applied to the per-sample norms summed over the batch;
summing over the batch and dividing by B is the batch mean, so the per-stage factor left
is ``feat_weight / (2·H_j·W_j)`` on the batch-mean norm, with ``feat_weight = β = 1000`` by
default. ``H_j·W_j`` is the attention-map size after pooling (below). The code mode is the
same quantity squared (mean over HW elements = ‖·‖²/(H_j·W_j)), without the ½.
``Σ_c`` (paper) and ``mean_c`` (code) give the same map after L2 normalisation.

Both modes: where the student and teacher maps of a stage differ in spatial size, the
larger *feature map* is adaptive-average-pooled to the smaller one (per dimension) before
the attention is computed, as in the reference code (the paper only pairs equal sizes).
Computed in float32. ``F.normalize``'s ε = 1e-12 guards all-zero maps.

Pairs whose stage counts differ are declined by the default :meth:`Method.check` for
``stages="all"`` (stage j of one network is matched with stage j of the other; there is no
canonical mapping otherwise).

Other deviations: none. Defaults: ``ce_weight=1``, ``feat_weight=1000``, ``p=2``,
``mode="code"``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, Needs, StepInfo
from kdbench.methods._common import pool_to_common
from kdbench.registry import register_method
from kdbench.taps import Outputs


def attention_map(f: Tensor, p: float = 2.0) -> Tensor:
    """``normalise_L2(vec(mean_c |f|^p))``: B×C×H×W → B×(H·W), in float32.

    The paper's F^p_sum uses ``|A_i|^p``; the authors' code writes ``f.pow(p)``, which is
    the same for p = 2 but NaN for fractional p on signed (pre-activation) maps.
    """
    f = f.float()
    a = (f * f).mean(dim=1) if p == 2 else f.abs().pow(p).mean(dim=1)
    return F.normalize(a.flatten(1), dim=1)


def at_stage_loss(f_s: Tensor, f_t: Tensor, p: float = 2.0, mode: str = "code") -> Tensor:
    """Unweighted AT term of one stage: ``mean((a_s − a_t)²)`` (code) or
    ``mean_b ‖a_s − a_t‖₂ / (H·W)`` (paper, before the ½·β)."""
    f_s, f_t = pool_to_common(f_s, f_t)
    diff = attention_map(f_s, p) - attention_map(f_t, p)
    if mode == "code":
        return diff.pow(2).mean()
    if mode == "paper":
        return torch.linalg.vector_norm(diff, ord=2, dim=1).mean() / diff.shape[1]
    raise ValueError(f"at mode must be 'code' or 'paper', got {mode!r}")


@register_method("at")
class AT(Method):
    """Attention transfer on all stage outputs (spatial attention maps)."""

    name = "at"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        feat_weight: float = 1000.0  # the paper's β
        p: float = 2.0  # exponent of the attention map mean_c f^p
        mode: Literal["code", "paper"] = "code"

    needs = Needs(teacher=True, logits=True, stages="all")

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        total = sum(at_stage_loss(fs, ft, self.cfg.p, self.cfg.mode) for fs, ft in zip(s.stages, t.stages))
        scale = self.cfg.feat_weight if self.cfg.mode == "code" else self.cfg.feat_weight / 2
        return {"loss_at": scale * total}
