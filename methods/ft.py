"""``ft``: Kim, Park, Kwak, "Paraphrasing Complex Network: Network Compression via Factor
Transfer", NeurIPS 2018.

A *paraphraser* (convolutional autoencoder, teacher side) is first trained to reconstruct
the teacher's last feature map; its encoder output is the teacher *factor*. A
*translator* (student side) maps the student's last feature map to a factor of the same
shape, and the student learns to make its factor match the teacher's.

Reference implementation followed: RepDistiller (``Paraphraser``, ``Translator``,
``FactorTransfer`` and its ``init`` phase), CIFAR-100 setting ce 1, feat 200, k = 0.5,
30 initialisation epochs per 240.

Modules (sized from the measured last stage shapes; ``C = C_t``, ``kC = int(k·C_t)``, k =
``paraphrase_rate``; every conv 3×3, stride 1, padding 1; LeakyReLU slope 0.1):

* paraphraser encoder: conv C→C, LeakyReLU, conv C→kC, LeakyReLU, conv kC→kC, LeakyReLU;
* paraphraser decoder: tconv kC→kC, LeakyReLU, tconv kC→C, LeakyReLU, tconv C→C, LeakyReLU
  (no BatchNorm in the paraphraser, as in the reference);
* translator: conv C_s→C_s, BN, LeakyReLU, conv C_s→kC, BN, LeakyReLU, conv kC→kC, BN,
  LeakyReLU.

Phase ``"paraphraser"`` (``init_epochs``; ``None`` = 30 per 240 main epochs scaled to this
run by :func:`kdbench.method.scaled_epochs`, at least 1; lr ``init_lr``, default 0.01)::

    loss_rec = mean_{b,c,h,w} (decoder(encoder(f_t)) − f_t)²            # rec_loss="mse"
    loss_rec = mean (decoder(encoder(f_t)) − f_t)² / mean(f_t²)         # rec_loss="relative_mse"

The student is not run (``Phase(student="none")``). In the main phase the paraphraser is
frozen (:meth:`FT.main_modules` returns only the translator, so it is in eval mode and
gets no gradient) and the teacher factor ``F_t = encoder(f_t)`` is computed without grad::

    L = ce_weight · CE(z_s, y) + feat_weight · factor_loss(translator(f_s), F_t)

``mode="code"`` (default, RepDistiller's ``FactorTransfer`` with p1=2, p2=1)::

    φ(F) = normalise_L2(vec(mean_c F²))            # B×HW
    factor_loss = mean_{b,hw} |φ(F_s) − φ(F_t)|

``mode="paper"`` (the paper's Eq. with p = 1 on the flattened factor)::

    factor_loss = mean_b ‖ vec(F_s)/‖vec(F_s)‖₂ − vec(F_t)/‖vec(F_t)‖₂ ‖₁   # vec over C·H·W

In both modes, when the student and teacher factors differ in spatial size the larger
factor map is adaptive-average-pooled to the smaller (per dimension) first, as in the
reference code; the paper mode needs equal C×H×W, which this pooling guarantees (the
channel counts are equal by construction). The paper itself only pairs equal sizes.

Defaults: ``ce_weight=1``, ``feat_weight=200``, ``paraphrase_rate=0.5``, ``init_epochs=None``
(scaled 30/240), ``init_lr=0.01``, ``rec_loss="mse"``, ``mode="code"``.

Deviations and choices (documented):

* ``feat_weight`` defaults to the reference's 200 in both modes. The paper-mode loss sums
  |·| over the C·H·W elements of each sample (the code mode averages over H·W), so its
  values are one to two orders of magnitude larger; lower ``feat_weight`` when using it.
* The last decoder layer ends with LeakyReLU (reference), so negative teacher activations
  (e.g. WRN's pre-activation stage outputs) are reconstructed through its 0.1 slope.
* ``init_lr`` defaults to 0.01: RepDistiller's initialisation loop hard-codes lr 0.01 for the
  paraphraser when the student is a CIFAR ResNet/WRN (and its lightweight students use 0.01
  anyway); only its VGG students get the recipe's 0.05. We use 0.01 for every pair (``None``
  = the recipe's lr). The unnormalised autoencoder is sensitive to it: on digits a trained
  resnet20 teacher diverges at 0.05 and trains stably at 0.01.
* ``rec_loss="relative_mse"`` is a kdbench addition, not in the paper or the reference:
  the reconstruction MSE divided by the batch's mean squared teacher activation (detached),
  which makes the phase's effective step size independent of the teacher's feature scale.
  Use it for teachers with large activations (e.g. a barely trained teacher whose
  eval-mode BN statistics are off: the plain MSE then diverges even at lr 0.01). It does
  not change the main-phase loss.
* Loss terms are computed in float32; the paper-mode norms use ``F.normalize`` (ε = 1e-12).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch
from kdbench.method import Method, MethodConfig, MethodContext, Needs, Phase, StepInfo, scaled_epochs
from kdbench.methods._common import pool_to_common
from kdbench.methods.at import attention_map
from kdbench.registry import register_method
from kdbench.taps import Outputs, TapInfo

LEAKY_SLOPE = 0.1


def _conv_block(cin: int, cout: int, transposed: bool = False, bn: bool = False) -> list[nn.Module]:
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(cin, cout, kernel_size=3, stride=1, padding=1)
    return [conv, *([nn.BatchNorm2d(cout)] if bn else []), nn.LeakyReLU(LEAKY_SLOPE)]


class Paraphraser(nn.Module):
    """Teacher-side autoencoder: ``encoder`` C→C→kC→kC, ``decoder`` kC→kC→C→C."""

    def __init__(self, channels: int, factor_channels: int):
        super().__init__()
        c, k = channels, factor_channels
        self.encoder = nn.Sequential(*_conv_block(c, c), *_conv_block(c, k), *_conv_block(k, k))
        self.decoder = nn.Sequential(*_conv_block(k, k, True), *_conv_block(k, c, True), *_conv_block(c, c, True))

    def forward(self, f: Tensor) -> tuple[Tensor, Tensor]:
        """(factor, reconstruction)."""
        factor = self.encoder(f)
        return factor, self.decoder(factor)


def make_translator(student_channels: int, factor_channels: int) -> nn.Sequential:
    """Student-side translator: C_s→C_s→kC→kC, each conv followed by BN and LeakyReLU."""
    c, k = student_channels, factor_channels
    return nn.Sequential(*_conv_block(c, c, bn=True), *_conv_block(c, k, bn=True), *_conv_block(k, k, bn=True))


def factor_loss(factor_s: Tensor, factor_t: Tensor, mode: str = "code") -> Tensor:
    """Unweighted FT factor loss (see the module docstring), in float32."""
    factor_s, factor_t = pool_to_common(factor_s.float(), factor_t.float())
    if mode == "code":
        return (attention_map(factor_s) - attention_map(factor_t)).abs().mean()
    if mode == "paper":
        diff = F.normalize(factor_s.flatten(1), dim=1) - F.normalize(factor_t.flatten(1), dim=1)
        return diff.abs().sum(dim=1).mean()
    raise ValueError(f"ft mode must be 'code' or 'paper', got {mode!r}")


@register_method("ft")
class FT(Method):
    """Factor transfer through a pre-trained, frozen paraphraser and a trained translator."""

    name = "ft"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        feat_weight: float = 200.0
        paraphrase_rate: float = 0.5  # k: factor channels = int(k · C_t)
        init_epochs: int | None = None  # paraphraser pre-training; None: 30 per 240 main epochs, scaled
        init_lr: float | None = 0.01  # lr of the paraphraser phase (reference); None: the recipe's lr
        rec_loss: Literal["mse", "relative_mse"] = "mse"
        mode: Literal["code", "paper"] = "code"

        def __post_init__(self) -> None:
            if self.init_epochs is not None and self.init_epochs < 0:
                raise ValueError(f"init_epochs must be >= 0 (or null: scaled from 30 of 240), got {self.init_epochs}")
            if not self.paraphrase_rate > 0:
                raise ValueError(f"paraphrase_rate must be > 0, got {self.paraphrase_rate}")

    needs = Needs(teacher=True, logits=True, stages=(-1,))

    @classmethod
    def check_pair(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        assert teacher_info is not None
        if int(cfg.paraphrase_rate * teacher_info.stage_channels[-1]) < 1:
            return (f"ft paraphrase_rate={cfg.paraphrase_rate} leaves no factor channel for the teacher's "
                    f"{teacher_info.stage_channels[-1]} channels")
        return None

    def __init__(self, cfg: Config, teacher_info: TapInfo | None, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        assert teacher_info is not None
        c_t = teacher_info.stage_channels[-1]
        k = int(cfg.paraphrase_rate * c_t)
        self.paraphraser = Paraphraser(c_t, k)
        self.translator = make_translator(student_info.stage_channels[-1], k)
        self.init_epochs = scaled_epochs(cfg.init_epochs, 30, ctx.epochs)

    def reconstruction_loss(self, s: Outputs | None, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        """Paraphraser phase: MSE (or relative MSE) between the reconstruction and the
        teacher's last map."""
        assert t is not None
        f_t = t.stages[-1]
        _, rec = self.paraphraser(f_t)
        f_t = f_t.float()
        mse = F.mse_loss(rec.float(), f_t)
        if self.cfg.rec_loss == "relative_mse":
            mse = mse / f_t.pow(2).mean().clamp_min(1e-12)
        return {"loss_rec": mse}

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        with torch.no_grad():
            factor_t = self.paraphraser.encoder(t.stages[-1])
        factor_s = self.translator(s.stages[-1])
        return {"loss_ft": self.cfg.feat_weight * factor_loss(factor_s, factor_t, self.cfg.mode)}

    def phases(self) -> list[Phase]:
        if self.init_epochs == 0:
            return []  # explicit init_epochs=0: the paraphraser stays at its random initialisation
        return [Phase(name="paraphraser", epochs=self.init_epochs, loss=self.reconstruction_loss,
                      modules=(self.paraphraser,), student="none", lr=self.cfg.init_lr, ce_weight=0.0,
                      needs_teacher=True)]

    def main_modules(self) -> list[nn.Module]:
        return [self.translator]
