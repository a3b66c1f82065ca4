"""``ab``: Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons", AAAI 2019.

The student learns where the teacher's hidden neurons switch on and off (their *activation
boundaries*), not their response values: for every neuron of every stage map, a squared
hinge on the student's pre-activation pushes it beyond a margin on the side of zero the
teacher's pre-activation is on (the paper's "alternative loss", a differentiable
surrogate of the activation-transfer loss).

Reference implementations followed: RepDistiller (Tian et al., the CRD suite: ``ABLoss``,
``Connector``, ``helper/pretrain.init``) and the authors' code (bhheo/AB_distillation),
which agree on the loss, the stage weights and the scale.

Loss of the initialisation stage, for stage maps i = 0 … n−1 (all stages, PRE-activation,
``Outputs.preact``)::

    L_AB = feat_weight / B · Σ_i 2^(i−n+1) · Σ_{b,c,h,w} [ (s+m)² · 1(s > −m ∧ t ≤ 0)
                                                         + (s−m)² · 1(s ≤ m ∧ t > 0) ]

with ``s = r_i(student preact_i)`` (``r_i`` the connector), ``t`` = teacher preact_i,
``m = margin``. The last stage has weight 1, the ones before ½, ¼, …; ``feat_weight = 3/1000``
is the references' ``/1000·3``. Equivalently, with σ = +1 where t > 0 and −1 where t ≤ 0, each
element contributes ``relu(m − σ·s)²`` (this is how it is computed: one fused expression).

Training (as RepDistiller's ``abound``, two phases):

1. ``"init"`` phase, ``init_epochs`` epochs: the connectors and the student's feature layers
   (``Phase.student="features"``: everything but the classifier, RepDistiller's
   ``get_feat_modules()``) are trained with ``L_AB`` only (no CE), SGD at ``init_lr``
   (default: the run's lr, as RepDistiller's ``init`` uses ``opt.learning_rate``).
2. ``"main"`` phase: plain CE (``ce_weight · CE``); :meth:`AB.loss` returns no term and the
   connectors are frozen (``main_modules() == []``: no gradient, eval mode). RepDistiller
   also sets the AB term of this phase to 0; the connectors are not used after the
   initialisation.

Connector ``r_i`` (student stage i → teacher stage i), sized from the measured shapes:

* identical (C, H, W): identity (both references);
* same spatial size, different channels: 1×1 conv (no bias) + BatchNorm — the authors'
  connector (RepDistiller's ``ConvReg`` with a 1×1 kernel is the same up to a conv bias
  that the BatchNorm cancels);
* different spatial sizes, ``spatial`` option:

  - ``"conv"`` (default, RepDistiller: its ``Connector`` uses ``ConvReg`` without ReLU for
    these, so its AB serves the cross-family pairs of the CRD grid, e.g.
    resnet32x4→shufflev1 whose student maps are half the teacher's): student 2× larger
    (H and W) → 3×3 conv stride 2 + BN; student 2× smaller → 4×4 transposed conv stride 2
    + BN; student larger otherwise → valid conv of kernel (1+H_s−H_t)×(1+W_s−W_t) + BN;
    any other ratio is declined by :meth:`AB.check`;
  - ``"pool"``: both maps are average-pooled (adaptive) to the smaller size per dimension,
    then the channel connector above. *Choice/caveat*: pooling the teacher's
    pre-activation moves its boundaries (the sign of a mean, not of each neuron);
  - ``"decline"``: pairs whose stage maps differ in spatial size are declined (the
    paper's experiments only pair networks with equal map sizes).

Defaults: ``ce_weight=1``, ``margin=1``, ``feat_weight=3/1000``, ``init_epochs=None`` (30 epochs
of RepDistiller's 240-epoch schedule, scaled to this run's main epochs with
:func:`kdbench.method.scaled_epochs`: 2 for 15 epochs, at least 1; an explicit int is used
as is), ``init_lr=None`` (the run's lr), ``spatial="conv"``.

Pairs are declined (with the reason) when the two models have different numbers of stages
(AB pairs stage i with stage i; RepDistiller asserts equal lengths), when a model gives no
pre-activation maps (base check), or for a spatial ratio the chosen ``spatial`` mode
cannot bridge.

Choices and deviations (documented):

* Connector convolutions are initialised as in the authors' code: normal(0, √(2/(k_h·k_w·C_t))),
  BatchNorm weight 1, bias 0 (RepDistiller leaves PyTorch's default init); no conv bias.
* Size comparisons use H and W separately (RepDistiller compares channels and H only).
* The loss is computed in float32 whatever the autocast dtype; the references' ``abs()`` of a
  sum of squares is a no-op and omitted.
* The init phase uses the recipe's momentum and weight decay (RepDistiller; the authors'
  script uses Nesterov momentum) and keeps the lr constant (RepDistiller).
* Pre-activation taps follow the model families (see ``kdbench.students``): for WRN the
  "pre-activation" of stage i is the next BatchNorm's output, as in the authors' WRN code.
* The main phase does not run the teacher at all (``uses_teacher_in_main`` is False): its
  loss is CE only, so the teacher's forward would be wasted work.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, MethodContext, Needs, Phase, StepInfo, scaled_epochs
from kdbench.methods._common import bridge_conv, bridge_kind
from kdbench.registry import register_method
from kdbench.taps import Outputs, TapInfo

log = logging.getLogger(__name__)

#: RepDistiller's initialisation epochs for its 240-epoch CIFAR-100 schedule
REFERENCE_INIT_EPOCHS = 30

Shape = tuple[int, int, int]


def connector_kind(s_shape: Shape, t_shape: Shape, spatial: str) -> str | None:
    """How student maps of ``s_shape`` (C, H, W) are mapped onto teacher maps of ``t_shape``.

    Returns ``"identity"``, ``"1x1"`` (1×1 conv + BN), ``"down2"`` (3×3 stride-2 conv + BN),
    ``"up2"`` (4×4 stride-2 transposed conv + BN), ``"valid"`` (valid conv + BN),
    ``"pool"`` (adaptive average pooling of the larger side, then identity or 1×1 + BN) or
    ``None`` when ``spatial`` cannot bridge the two sizes.
    """
    cs, hs, ws = s_shape
    ct, ht, wt = t_shape
    if (hs, ws) == (ht, wt):
        return "identity" if cs == ct else "1x1"
    if spatial == "pool":
        return "pool"
    if spatial == "conv":
        return bridge_kind((hs, ws), (ht, wt))
    return None


def _conv_bn(conv: nn.Module, out_channels: int) -> nn.Sequential:
    k_h, k_w = conv.kernel_size
    nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / (k_h * k_w * out_channels)))
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


class ABConnector(nn.Module):
    """Maps one student pre-activation map onto the teacher's shape (see module docstring).

    ``pool_to`` is the (H, W) both maps are pooled to in ``"pool"`` mode (``None``
    otherwise); the teacher side is pooled by :meth:`AB.ab_loss`.
    """

    def __init__(self, s_shape: Shape, t_shape: Shape, spatial: str):
        super().__init__()
        kind = connector_kind(s_shape, t_shape, spatial)
        if kind is None:
            raise ValueError(f"ab: cannot connect student map {s_shape} to teacher map {t_shape} (spatial={spatial!r})")
        cs, hs, ws = s_shape
        ct, ht, wt = t_shape
        self.kind = kind
        self.pool_to: tuple[int, int] | None = (min(hs, ht), min(ws, wt)) if kind == "pool" else None
        if kind == "identity" or (kind == "pool" and cs == ct):
            self.body: nn.Module = nn.Identity()
        elif kind in ("1x1", "pool"):
            self.body = _conv_bn(nn.Conv2d(cs, ct, 1, bias=False), ct)
        else:  # down2, up2, valid: the spatial bridge conv shared with FitNets' regressor
            self.body = _conv_bn(bridge_conv(cs, ct, (hs, ws), (ht, wt), bias=False), ct)

    def forward(self, x: Tensor) -> Tensor:
        if self.pool_to is not None and tuple(x.shape[-2:]) != self.pool_to:
            x = F.adaptive_avg_pool2d(x, self.pool_to)
        return self.body(x)


def ab_stage_loss(s: Tensor, t: Tensor, margin: float) -> Tensor:
    """Σ over all elements of (s+m)²·1(s>−m ∧ t≤0) + (s−m)²·1(s≤m ∧ t>0), in float32.

    Written as relu(m − σ·s)² with σ = +1 where t > 0, −1 where t ≤ 0 (the same function:
    for t > 0, relu(m − s)² is (s−m)² exactly when s ≤ m; for t ≤ 0, relu(m + s)² is
    (s+m)² exactly when s > −m).
    """
    s = s.float()
    sign = torch.where(t > 0, 1.0, -1.0).to(s.dtype)
    return (margin - sign * s).clamp_min(0.0).square().sum()


def stage_weights(n: int) -> list[float]:
    """2^(i−n+1) for stage i = 0 … n−1: the last stage 1, the ones before ½, ¼, …"""
    return [2.0 ** (i - n + 1) for i in range(n)]


@register_method("ab")
class AB(Method):
    """Activation-boundary distillation: an AB-only initialisation phase, then CE."""

    name = "ab"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0  # main phase (CE only)
        margin: float = 1.0  # m of the alternative loss
        feat_weight: float = 3.0 / 1000  # the references' "/ 1000 * 3" (after the / B)
        init_epochs: int | None = None  # None: 30 per 240 main epochs, scaled to this run
        init_lr: float | None = None  # None: the run's lr
        spatial: Literal["conv", "pool", "decline"] = "conv"  # maps of different spatial size

    needs = Needs(teacher=True, logits=True, stages="all", preact=True)

    def __init__(self, cfg: Config, teacher_info: TapInfo | None, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        assert teacher_info is not None
        n = student_info.num_stages
        self.connectors = nn.ModuleList(
            ABConnector(student_info.stage_shape(i), teacher_info.stage_shape(i), cfg.spatial) for i in range(n))
        self.teacher_pool: list[tuple[int, int] | None] = [c.pool_to for c in self.connectors]
        self.weights = stage_weights(n)
        self.init_epochs = scaled_epochs(cfg.init_epochs, REFERENCE_INIT_EPOCHS, ctx.epochs)
        log.info("ab: %d init epochs, connectors %s", self.init_epochs, [c.kind for c in self.connectors])

    @classmethod
    def check_pair(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        assert teacher_info is not None
        spatial = getattr(cfg, "spatial", "conv")
        for i in range(student_info.num_stages):
            s_shape, t_shape = student_info.stage_shape(i), teacher_info.stage_shape(i)
            if connector_kind(s_shape, t_shape, spatial) is None:
                hint = ("spatial=decline" if spatial == "decline"
                        else "only exact 2x ratios or a larger student map can be bridged by a conv connector")
                return (f"ab cannot connect student stage {i + 1} ({s_shape[1]}x{s_shape[2]}) to teacher stage "
                        f"{i + 1} ({t_shape[1]}x{t_shape[2]}): {hint}")
        return None

    # -- loss ---------------------------------------------------------------------------
    def ab_loss(self, s: Outputs, t: Outputs) -> Tensor:
        """``L_AB`` (module docstring) from the pre-activation maps of both models."""
        if s.preact is None or t.preact is None:
            raise ValueError("ab needs pre-activation maps (forward_taps(preact=True))")
        batch = s.preact[0].shape[0]
        total = s.preact[0].new_zeros((), dtype=torch.float32)
        for conn, w, pool, fs, ft in zip(self.connectors, self.weights, self.teacher_pool, s.preact, t.preact):
            if pool is not None and tuple(ft.shape[-2:]) != pool:
                ft = F.adaptive_avg_pool2d(ft.float(), pool)
            total = total + w * ab_stage_loss(conn(fs), ft, self.cfg.margin)
        return total * (self.cfg.feat_weight / batch)

    def init_loss(self, s: Outputs | None, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert s is not None and t is not None
        return {"loss_ab": self.ab_loss(s, t)}

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        """Main phase: CE only (added by the trainer); the connectors are frozen."""
        return {}

    # -- phases -------------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        return [Phase(name="init", epochs=self.init_epochs, loss=self.init_loss, modules=(self.connectors,),
                      student="features", lr=self.cfg.init_lr, ce_weight=0.0, needs_teacher=True)]

    def main_modules(self) -> list[nn.Module]:
        return []

    def uses_teacher_in_main(self) -> bool:
        return False
