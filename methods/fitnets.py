"""``fitnets``: Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for Thin
Deep Nets", ICLR 2015.

The student's *guided* layer (the output of one middle stage) is mapped by a regressor to
the teacher's *hint* (the same stage of the teacher) and the two are matched by MSE.

Reference implementation followed: RepDistiller (Tian et al., CRD suite), ``HintLoss`` with
its ``ConvReg`` regressor, on CIFAR-100 with ce 1, feat 100 and the hint at stage 2.

Loss (main phase)::

    L = ce_weight · CE(z_s, y) + feat_weight · mean_{b,c,h,w} (r(f_s) − f_t)²

with ``f_s``/``f_t`` the outputs of stage ``hint_layer`` (1-based; default 2, i.e.
``Outputs.stages[1]``) and ``r`` the regressor ``conv → BatchNorm → ReLU`` sized from the
measured shapes (student ``C_s×H_s×W_s``, teacher ``C_t×H_t×W_t``):

* ``H_s = 2·H_t`` and ``W_s = 2·W_t``: 3×3 conv, stride 2, padding 1;
* ``2·H_s = H_t`` and ``2·W_s = W_t``: 4×4 transposed conv, stride 2, padding 1;
* otherwise, if ``H_s ≥ H_t`` and ``W_s ≥ W_t``: a conv with kernel
  ``(1 + H_s − H_t) × (1 + W_s − W_t)``, stride 1, no padding (1×1 when the sizes are equal);
* any other ratio (a student map smaller than the teacher's by other than exactly 2×):
  **declined** in :meth:`FitNets.check` with the reason. *Choice*: we decline rather than
  pool, because pooling the teacher's hint would change the target the paper defines.

Defaults: ``ce_weight=1``, ``feat_weight=100``, ``hint_layer=2``, ``hint_phase_epochs=0``.

The method taps only the network stage ``hint_layer`` names (``needs`` follows the Config).

Variants (``hint_phase_epochs``):

* ``0`` (default) — the reference suites' single phase: the regressor and the whole student
  train together on ``CE + feat_weight·MSE`` from the first epoch.
* ``> 0`` — the paper's two-phase scheme, first phase: a ``"hint"`` phase of that many
  epochs (lr ``hint_lr``, default the recipe's lr) trains the student's layers up to the
  guided layer and the regressor with ``feat_weight · MSE`` only (no CE). It is declared
  as ``Phase(student="all")``: the student runs its full forward pass, but the hint loss
  depends only on the layers up to the guided layer, so every later parameter (later
  stages, classifier) gets ``grad=None`` and SGD skips parameters without a gradient
  (no update, no weight decay, no momentum). This is exactly "train up to the hint".
  Then the main phase as above.

Deviations and choices (documented):

* The paper's second phase trains the student with Hinton's KD loss (annealed weight);
  here the main phase is the reference suites' ``CE + hint MSE`` in both variants, so the
  ``hint_phase_epochs > 0`` variant differs from the single-phase one only by the
  pre-phase (combine with ``kd`` ideas in another method if needed).
* In the hint phase the full student forward still runs in train mode, so the BatchNorm
  running statistics of the layers after the guided layer keep being updated although
  their weights are not (the paper's network would not run those layers).
* The hint loss is the mean over elements (RepDistiller's ``MSELoss``), not the paper's
  ``½‖·‖²`` sum; only the scale differs and ``feat_weight`` absorbs it.
* The regressor ends with ReLU as in the reference ``ConvReg``; for teachers whose stage
  outputs are pre-activation (WRN) the negative part of the hint cannot be matched — as in
  the reference.
* Size checks use H and W separately (the reference compares H only).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, MethodContext, Needs, Phase, StepInfo
from kdbench.methods._common import bridge_conv, bridge_kind
from kdbench.registry import register_method
from kdbench.taps import Outputs, TapInfo


def make_regressor(s_shape: tuple[int, int, int], t_shape: tuple[int, int, int]) -> nn.Sequential:
    """The FitNets regressor ``conv → BN → ReLU`` from student to teacher shape (the conv
    of :func:`~kdbench.methods._common.bridge_conv`; see the module docstring)."""
    cs, hs, ws = s_shape
    ct, ht, wt = t_shape
    return nn.Sequential(bridge_conv(cs, ct, (hs, ws), (ht, wt)), nn.BatchNorm2d(ct), nn.ReLU(inplace=True))


@register_method("fitnets")
class FitNets(Method):
    """Hint-based distillation of one middle stage through a conv regressor."""

    name = "fitnets"
    version = 2  # 2: hint_stage_epochs renamed hint_phase_epochs (same training)

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        feat_weight: float = 100.0
        hint_layer: int = 2  # 1-based stage index of the hint / guided layer
        hint_phase_epochs: int = 0  # 0: reference single phase; > 0: the paper's hint pre-phase
        hint_lr: float | None = None  # lr of the hint phase (None: the recipe's lr)

        def __post_init__(self) -> None:
            if self.hint_layer < 1:
                raise ValueError(f"hint_layer is the 1-based stage of the hint, >= 1; got {self.hint_layer}")
            if self.hint_phase_epochs < 0:
                raise ValueError(f"hint_phase_epochs must be >= 0, got {self.hint_phase_epochs}")
            if self.hint_lr is not None and not self.hint_lr > 0:
                raise ValueError(f"hint_lr must be > 0, got {self.hint_lr}")

    @classmethod
    def needs(cls, cfg: MethodConfig | None = None) -> Needs:
        """The stage ``hint_layer`` names (1-based) of both networks, and the logits."""
        hint_layer = (cfg or cls.Config()).hint_layer
        return Needs(teacher=True, logits=True, stages=(hint_layer - 1,))

    @classmethod
    def check_pair(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        assert teacher_info is not None
        k = cfg.hint_layer
        s_shape, t_shape = student_info.stage_shape(k - 1), teacher_info.stage_shape(k - 1)
        if bridge_kind(s_shape[1:], t_shape[1:]) is None:
            return (f"fitnets cannot bridge the stage-{k} maps: student {s_shape[1]}x{s_shape[2]} is smaller "
                    f"than teacher {t_shape[1]}x{t_shape[2]} by other than exactly 2x (the regressor "
                    f"handles 2x larger, 2x smaller, or larger-or-equal student maps)")
        return None

    def __init__(self, cfg: Config, teacher_info: TapInfo | None, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        assert teacher_info is not None
        self.hint_index = cfg.hint_layer - 1
        self.regressor = make_regressor(student_info.stage_shape(self.hint_index),
                                        teacher_info.stage_shape(self.hint_index))

    def hint_loss(self, f_s: Tensor, f_t: Tensor) -> Tensor:
        """``feat_weight · mean((r(f_s) − f_t)²)`` in float32."""
        return self.cfg.feat_weight * F.mse_loss(self.regressor(f_s).float(), f_t.float())

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        return {"loss_hint": self.hint_loss(s.stages[self.hint_index], t.stages[self.hint_index])}

    def phases(self) -> list[Phase]:
        if self.cfg.hint_phase_epochs <= 0:
            return []
        return [Phase(name="hint", epochs=self.cfg.hint_phase_epochs, loss=self.loss, modules=(self.regressor,),
                      student="all", lr=self.cfg.hint_lr, ce_weight=0.0, needs_teacher=True)]
