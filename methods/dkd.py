"""``dkd``: Zhao, Cui, Song, Qiu, Liang, "Decoupled Knowledge Distillation", CVPR 2022.

Hinton's KD loss splits into a *target-class* part (TCKD: how confident the teacher is in
the true class) and a *non-target-class* part (NCKD: how it ranks the other classes), with
NCKD implicitly down-weighted by (1 − p_gt of the teacher). DKD weights the two freely.

Reference implementation followed: mdistiller (the authors' suite), ``distillers/DKD.py``
and ``configs/cifar100/dkd/*.yaml`` (commit e8c5bb33).

Loss (y the label, T the temperature, B the batch)::

    TCKD = T² / B · Σ_b KL( [p_t,gt, 1 − p_t,gt] ‖ [p_s,gt, 1 − p_s,gt] ),   p = softmax(z/T)
    NCKD = T² / B · Σ_b KL( softmax(z_t,\\gt / T) ‖ softmax(z_s,\\gt / T) )    (non-target classes only)
    L    = ce_weight · CE(z_s, y) + min(epoch / warmup_epochs, 1) · (alpha · TCKD + beta · NCKD)

``epoch`` counts from 1 (``StepInfo.epoch``), so the distillation terms ramp up linearly
and reach full weight at epoch ``warmup_epochs``. The two terms are returned (and logged)
separately as ``loss_tckd`` and ``loss_nckd``, each already multiplied by its weight and the
warm-up factor; their sum is mdistiller's ``loss_kd``.

Defaults (mdistiller's CIFAR-100 ``CFG.DKD``): ``ce_weight=1``, ``alpha=1`` (TCKD weight),
``temperature=4``, ``warmup_epochs=None`` = 20 epochs of the 240-epoch schedule scaled to this
run's main epochs (:func:`kdbench.method.scaled_epochs`: 1 for 15 epochs, at least 1; an
explicit int is used as is). ``alpha``/``beta`` keep the paper's symbols, the names every
DKD user knows.

``beta`` (NCKD weight) ``None`` means the pair's preset from :data:`BETA_PRESETS` (mdistiller's
per-pair CIFAR-100 configs), else 8 (mdistiller's default ``CFG.DKD.BETA``). Confirmed in
mdistiller's ``configs/cifar100/dkd``: β=2 for resnet56→resnet20 and resnet110→resnet32;
β=6 for vgg13→vgg8, vgg13→mobilenetv2, wrn_40_2→wrn_16_2, wrn_40_2→wrn_40_1; the configs of
resnet32x4→resnet8x4, resnet32x4→shufflev1, resnet32x4→shufflev2, resnet50→mobilenetv2 and
wrn_40_2→shufflev1 set no β, i.e. the default 8. resnet110→resnet20 and resnet50→vgg8 have
no mdistiller config and get the default 8. The β used is stored in ``DKD.beta`` and logged
at INFO when the method is built. An explicit ``beta`` always wins.

Choices and deviations (documented; the values agree with mdistiller's in float32 except
where its formula overflows):

* NCKD excludes the target class exactly (the non-target logits are gathered into a
  B×(C−1) tensor) instead of mdistiller's ``z/T − 1000·mask`` sentinel; in float32 the
  sentinel's target probability is exactly 0, so the two agree whenever the target's
  scaled logit exceeds the others by less than ~900.
* TCKD uses log-probabilities computed with log-sum-exp: log p_gt = z_gt/T − LSE(z/T) and
  log(1 − p_gt) = LSE(z_\\gt/T) − LSE(z/T). mdistiller takes ``log`` of the summed
  probabilities, which is −inf (and a NaN gradient) once a very confident student's
  1 − p_gt underflows to 0.
* Computed in float32 whatever the autocast dtype.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, MethodContext, Needs, StepInfo, scaled_epochs
from kdbench.methods._common import kl_div_t
from kdbench.registry import register_method
from kdbench.taps import Outputs, TapInfo

log = logging.getLogger(__name__)

#: mdistiller's warm-up epochs for its 240-epoch CIFAR-100 schedule
REFERENCE_WARMUP_EPOCHS = 20
#: mdistiller's default NCKD weight (``CFG.DKD.BETA``)
DEFAULT_BETA = 8.0
#: β of mdistiller's CIFAR-100 configs that override the default (configs/cifar100/dkd/*.yaml)
BETA_PRESETS: dict[tuple[str, str], float] = {
    ("resnet56", "resnet20"): 2.0,
    ("resnet110", "resnet32"): 2.0,
    ("vgg13", "vgg8"): 6.0,
    ("vgg13", "mobilenetv2"): 6.0,
    ("wrn_40_2", "wrn_16_2"): 6.0,
    ("wrn_40_2", "wrn_40_1"): 6.0,
    # mdistiller configs without a BETA entry (the default 8), listed for the record:
    ("resnet32x4", "resnet8x4"): 8.0,
    ("resnet32x4", "shufflev1"): 8.0,
    ("resnet32x4", "shufflev2"): 8.0,
    ("resnet50", "mobilenetv2"): 8.0,
    ("wrn_40_2", "shufflev1"): 8.0,
}


def non_target_logits(z: Tensor, y: Tensor) -> Tensor:
    """The B×(C−1) logits of every class but ``y`` (order kept), gathered without a host sync."""
    b, c = z.shape
    cols = torch.arange(c - 1, device=z.device).expand(b, c - 1)
    cols = cols + (cols >= y.view(-1, 1)).long()
    return z.gather(1, cols)


def binary_log_probs(z: Tensor, y: Tensor, temperature: float) -> Tensor:
    """B×2 log-probabilities [log p_gt, log(1 − p_gt)] of softmax(z/T), computed stably."""
    z = z.float() / temperature
    lse_all = torch.logsumexp(z, dim=1)
    gt = z.gather(1, y.view(-1, 1)).squeeze(1)
    lse_other = torch.logsumexp(non_target_logits(z, y), dim=1)
    return torch.stack([gt - lse_all, lse_other - lse_all], dim=1)


def tckd_loss(zs: Tensor, zt: Tensor, y: Tensor, temperature: float) -> Tensor:
    """T² · batch mean of KL([p_t,gt, 1−p_t,gt] ‖ [p_s,gt, 1−p_s,gt])."""
    log_ps = binary_log_probs(zs, y, temperature)
    log_pt = binary_log_probs(zt, y, temperature)
    return F.kl_div(log_ps, log_pt, reduction="batchmean", log_target=True) * temperature**2


def nckd_loss(zs: Tensor, zt: Tensor, y: Tensor, temperature: float) -> Tensor:
    """T² · batch mean of KL_T over the non-target classes (target excluded exactly)."""
    return kl_div_t(non_target_logits(zs.float(), y), non_target_logits(zt.float(), y), temperature)


def warmup_factor(epoch: int, warmup_epochs: int) -> float:
    """min(epoch / warmup_epochs, 1) with ``epoch`` counted from 1 (mdistiller)."""
    return min(epoch / warmup_epochs, 1.0) if warmup_epochs > 0 else 1.0


def preset_beta(teacher_arch: str | None, student_arch: str | None) -> float:
    """The pair's β from :data:`BETA_PRESETS`, else :data:`DEFAULT_BETA`."""
    return BETA_PRESETS.get((teacher_arch or "", student_arch or ""), DEFAULT_BETA)


@register_method("dkd")
class DKD(Method):
    """Decoupled KD: separately weighted target-class and non-target-class KL terms."""

    name = "dkd"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        alpha: float = 1.0  # TCKD weight (the paper's α)
        beta: float | None = None  # NCKD weight (the paper's β); None: the pair's preset, else 8
        temperature: float = 4.0
        warmup_epochs: int | None = None  # None: 20 per 240 main epochs, scaled to this run

    needs = Needs(teacher=True, logits=True)

    def __init__(self, cfg: Config, teacher_info: TapInfo | None, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        if cfg.beta is not None:
            self.beta, source = float(cfg.beta), "explicit"
        else:
            self.beta = preset_beta(ctx.teacher_arch, ctx.student_arch)
            known = (ctx.teacher_arch, ctx.student_arch) in BETA_PRESETS
            source = "mdistiller preset" if known else "default"
        self.beta_source = source
        self.warmup_epochs = scaled_epochs(cfg.warmup_epochs, REFERENCE_WARMUP_EPOCHS, ctx.epochs)
        log.info("dkd %s->%s: beta=%g (%s), alpha=%g, T=%g, warm-up %d epoch(s)", ctx.teacher_arch,
                 ctx.student_arch, self.beta, source, cfg.alpha, cfg.temperature, self.warmup_epochs)

    def run_info(self) -> dict[str, float | int | str]:
        return {"beta": self.beta, "beta_source": self.beta_source, "warmup_epochs": self.warmup_epochs}

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        T = self.cfg.temperature
        scale = warmup_factor(step.epoch, self.warmup_epochs)
        return {
            "loss_tckd": (scale * self.cfg.alpha) * tckd_loss(s.logits, t.logits, batch.y, T),
            "loss_nckd": (scale * self.beta) * nckd_loss(s.logits, t.logits, batch.y, T),
        }
