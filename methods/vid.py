"""``vid``: Ahn, Hu, Damianou, Lawrence, Dai, "Variational Information Distillation for
Knowledge Transfer", CVPR 2019.

VID maximises a variational lower bound on the mutual information between teacher and
student features: for every stage, the teacher map ``t`` is modelled by a Gaussian whose
mean ``μ(s)`` is regressed from the student map ``s`` and whose variance ``σ²_c`` is a
learned constant per teacher channel (the paper's form for intermediate layers, VID-I).
The loss is the negative log-likelihood without its constant::

    σ²_c       = softplus(θ_c) + ε,     ε = 1e-5,     θ_c initialised so σ²_c = 5
    nll_stage  = mean_{b,c,h,w} ½ · ((μ(s)_bchw − t_bchw)² / σ²_c + log σ²_c)
    loss_vid   = feat_weight · Σ_stages nll_stage

``μ`` is a per-stage regressor ``1×1 conv → ReLU → 1×1 conv → ReLU → 1×1 conv`` without
biases, from the student's channels to the teacher's, with hidden width = the teacher
stage's channel count (``VIDLoss(s, t, t)`` in RepDistiller; mdistiller builds the same).
``θ`` (the paper's α) and the regressors are submodules of the method, so both are trained.
(mdistiller keeps its ``log_scales`` in a plain Python list, so they are never registered
and never trained; here ``θ`` is an ``nn.ParameterList`` and a test asserts it receives
gradients and is among the method's parameters.)

Reference implementation followed: RepDistiller (``VIDLoss``, CRD authors' suite, itself
taken from the VID authors' code), CIFAR-100 setting ce 1, feat 1, on every stage output
(RepDistiller's ``feat[1:-1]``).

Choices and deviations:

* Stages: all stage outputs, stage i of the student with stage i of the teacher. Pairs with
  different stage counts are declined by the default :meth:`Method.check` (the reference
  would silently ``zip`` them to the shorter list).
* Spatial mismatch: as in the reference, the larger map is adaptive-average-pooled to the
  smaller *before* the regressor (the student map when it is larger, otherwise the teacher
  map). The reference compares heights only and pools to a square; we pool each dimension
  to the smaller of the two (identical for the square maps of every kdbench model).
  Any size ratio is accepted (adaptive pooling), as in the reference.
* Mean, not sum: the paper's likelihood sums over channels and positions; the reference
  takes the mean over all B·C·H·W elements, which ``feat_weight = 1`` is calibrated for.
* ``softplus`` is ``F.softplus`` (linear above 20) instead of the reference's literal
  ``log(1 + exp(θ))``: the same value, but no overflow for large θ.
  θ₀ = softplus⁻¹(5 − ε) = log(expm1(5 − ε)) ≈ 4.9932.
* Regressor weights use PyTorch's default ``Conv2d`` initialisation, as the reference.
* Computed in float32 with autocast disabled (regressor included). The teacher side
  carries no gradient.

Defaults: ``ce_weight=1``, ``feat_weight=1``, ``init_var=5``, ``var_eps=1e-5``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, MethodContext, Needs, StepInfo
from kdbench.methods._common import pool_to_common
from kdbench.registry import register_method
from kdbench.taps import Outputs, TapInfo


def inverse_softplus(y: float) -> float:
    """θ with ``softplus(θ) = y`` (y > 0)."""
    return math.log(math.expm1(y))


def make_regressor(in_channels: int, hidden_channels: int, out_channels: int) -> nn.Sequential:
    """``1×1 conv → ReLU → 1×1 conv → ReLU → 1×1 conv``, no biases."""
    return nn.Sequential(
        nn.Conv2d(in_channels, hidden_channels, kernel_size=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(hidden_channels, hidden_channels, kernel_size=1, bias=False),
        nn.ReLU(),
        nn.Conv2d(hidden_channels, out_channels, kernel_size=1, bias=False),
    )


def vid_nll(mean: Tensor, target: Tensor, theta: Tensor, var_eps: float) -> Tensor:
    """``mean ½((mean − target)²/σ² + log σ²)`` with ``σ²_c = softplus(θ_c) + var_eps`` per channel."""
    var = (F.softplus(theta) + var_eps).view(1, -1, 1, 1)
    return (0.5 * ((mean - target) ** 2 / var + torch.log(var))).mean()


@register_method("vid")
class VID(Method):
    """Variational information distillation on every stage output."""

    name = "vid"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        feat_weight: float = 1.0
        init_var: float = 5.0  # σ² at initialisation
        var_eps: float = 1e-5  # floor added to softplus(θ)

        def __post_init__(self) -> None:
            if not self.init_var > self.var_eps >= 0:
                raise ValueError(f"vid: need init_var > var_eps >= 0, got init_var={self.init_var}, "
                                 f"var_eps={self.var_eps}")

    needs = Needs(teacher=True, logits=True, stages="all")

    def __init__(self, cfg: Config, teacher_info: TapInfo | None, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        assert teacher_info is not None
        theta0 = inverse_softplus(cfg.init_var - cfg.var_eps)
        self.regressors = nn.ModuleList()
        self.theta = nn.ParameterList()
        for c_s, c_t in zip(student_info.stage_channels, teacher_info.stage_channels):
            self.regressors.append(make_regressor(c_s, c_t, c_t))
            self.theta.append(nn.Parameter(torch.full((c_t,), theta0)))

    def variances(self) -> list[Tensor]:
        """Current σ²_c per stage (for inspection)."""
        return [F.softplus(th) + self.cfg.var_eps for th in self.theta]

    def stage_loss(self, i: int, f_s: Tensor, f_t: Tensor) -> Tensor:
        """Unweighted VID term of stage ``i``."""
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            f_s, f_t = pool_to_common(f_s.float(), f_t.float())
            return vid_nll(self.regressors[i](f_s), f_t, self.theta[i], self.cfg.var_eps)

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        total = sum(self.stage_loss(i, fs, ft) for i, (fs, ft) in enumerate(zip(s.stages, t.stages)))
        return {"loss_vid": self.cfg.feat_weight * total}
