"""``ccd``: Wei Li, Shitong Shao et al., "What Role Does Data Augmentation Play in Knowledge
Distillation?", ACCV 2022 (LNCS 13842, doi:10.1007/978-3-031-26284-5_31) — Cosine Confidence
Distillation (CCD) with Joint Data Augmentation (JDA).

Reference implementation followed: the authors' code (released as github.com/liwei-group/CCD;
read here in its copy github.com/Klayand/PCKA,
``classification/losses/SingleCCD.py``, the CIFAR-100 JDA policy ``PolicyDatasetC100`` in
``classification/data/datasets.py`` and ``C100/train_student_singleccd.py``), as summarised
in REFERENCE.md §1.

Data (JDA): every training image gives two rows, its original view and an augmented view
(a chain of 14 AutoAugment operations, each applied with probability ``jda_prob``; see
:mod:`kdbench.methods._jda` for the operations, their magnitudes and levels). Rows are
interleaved as in the reference, ``[orig_0, aug_0, orig_1, aug_1, …]``: a batch of B images
is 2B rows through teacher and student, labels and indices repeated per view.

Loss, with z_s, z_t the student/teacher logits of all 2B rows, o(i) = 2i, a(i) = 2i+1 and
KL_i = KL(softmax(z_t,i/T) ‖ softmax(z_s,i/T)) summed over classes (no T² yet)::

    soft_orig = (1/B) Σ_i KL_o(i)
    w_i       = cos(z_t,o(i), z_t,a(i)) + 1                 (teacher confidence, in [0, 2])
    soft_aug  = (1/B) Σ_i w_i · KL_a(i)
    soft      = (soft_orig + soft_aug) / 2
    L         = kd_weight · (α · CE(z_s, y over all 2B rows) + (1 − α) · T² · soft)

T² is applied once, to the averaged soft term. kdbench's trainer adds ``ce_weight · CE``
over all rows of the batch, so this method returns ``loss_kd = kd_weight·(1−α)·T²·soft``
and its ``ce_weight`` is *derived*: ``ce_weight = kd_weight · α`` (the Config sets it in
``__post_init__``; an explicit ``ce_weight`` must equal that product or the Config raises,
so the coupling can never silently break). α is ``ce_fraction`` here (the reference's
``kd_alpha``); ``kd_weight`` is the reference's overall scale of the whole criterion
(``--kd_weight``), CE included.

Defaults (the reference's CIFAR-100 setting): T = 4, α = 0.5, kd_weight = 2 (so
ce_weight = 1 and loss_kd = 2·0.5·16·soft = 16·soft), JDA p = 0.3 with the reference's
per-operation levels.

Choices and deviations:

* Where the JDA view is made (``jda_on``). The reference applies the operation chain to the
  raw image and then gives *each* view its own random crop + flip (the dataset transform
  runs separately on both). ``jda_on="raw"`` (default) does exactly that: the original
  rows are the ordinary crop/flip batch (the same rows :class:`TrainData` would give for
  the same generator state), the augmented rows are the chain applied to the raw images,
  then an independent crop/flip. ``jda_on="cropped"`` builds the augmented view from the
  already cropped/flipped original (one shared crop; the border of zeros from the crop
  padding then takes part in autocontrast/equalize and is moved by the geometric ops).
* The JDA operations are batched tensor re-implementations of the Pillow operations the
  reference uses (identical on test images for all but shear, which agrees to ±1 grey
  level because it is computed in float32 instead of double); no PIL, no per-image loop.
* The teacher's cosine weight uses ``F.cosine_similarity`` (eps 1e-8), as the reference;
  the teacher runs without gradient, so the weight is a constant for the student.
* Training recipe: kdbench's (RepDistiller's batch 64 images → 128 rows, lr 0.05, wd 5e-4)
  rather than the reference script's (batch 128 → 256 rows, lr 0.1, wd 1e-4, Nesterov).
  Teacher and student both run on 2B rows per step, so a CCD step costs about twice a KD
  step of the same image batch.
* The teacher runs on the two views separately (B original rows, B augmented rows; the
  reference runs it once on the 2B interleaved rows — the same function, rounding aside):
  the original view is the standard batch, whose teacher outputs a fused column
  (``kdbench run --fuse``) computes once for every method, and splitting it the same way
  when CCD runs alone keeps fused and separate runs bit-identical (version 2).
* The reference's random draws use Python's ``random`` per image; here the decisions (and
  the second view's crop/flip) come from the method's own generator
  (:func:`kdbench.data.member_generator` of seed, epoch and method name: deterministic,
  exact on resume, same on CPU and CUDA). Version 2; version 1 drew them from the shared
  epoch stream after the original view's crops, so the next batches' crops differed from
  every other method's.
* The logged ``train_top1`` counts both views (2B rows), as the reference's does.

Cost (CPU, one thread, on a shared machine): the JDA chain runs at ~5,000 images/s at
p = 0.3 (~13 ms per 64-image batch; ~2,000 images/s at p = 1, shear being the dearest
operation); a whole CCD step on resnet32x4→resnet8x4 (64 images → 128 rows through both
networks) takes ~2.2× a KD step of the same 64 images, of which the augmentation is ~0.2 %:
the doubling of rows is the method's, not overhead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch, TrainData, TrainDataWrapper, random_crop_flip
from kdbench.method import Method, MethodConfig, Needs, StepInfo
from kdbench.methods import _jda
from kdbench.registry import register_method
from kdbench.taps import Outputs


def ccd_soft_terms(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> dict[str, Tensor]:
    """CCD's soft terms on interleaved rows (even = original, odd = augmented), without T²:
    ``soft_orig``, ``weights`` (w_i = cos + 1 per pair), ``soft_aug`` and ``soft``.
    Computed in float32."""
    rows = student_logits.shape[0]
    if rows % 2 or teacher_logits.shape[0] != rows:
        raise ValueError(
            f"CCD needs interleaved [original, augmented] rows (an even count, same for teacher and student); "
            f"got {rows} student and {teacher_logits.shape[0]} teacher rows — is the batch from CCD's data wrapper?")
    zs, zt = student_logits.float(), teacher_logits.float()
    log_ps = F.log_softmax(zs / temperature, dim=1)
    log_pt = F.log_softmax(zt / temperature, dim=1)
    kl_rows = F.kl_div(log_ps, log_pt, reduction="none", log_target=True).sum(dim=1)
    weights = F.cosine_similarity(zt[0::2], zt[1::2], dim=1) + 1.0
    soft_orig = kl_rows[0::2].mean()
    soft_aug = (weights * kl_rows[1::2]).mean()
    return {"soft_orig": soft_orig, "weights": weights, "soft_aug": soft_aug, "soft": 0.5 * (soft_orig + soft_aug)}


class JDATrainData(TrainDataWrapper):
    """Training batches of interleaved [original, JDA-augmented] rows (see the module doc)."""

    def __init__(self, inner: TrainData, prob: float, levels: tuple[int, ...], on: str):
        super().__init__(inner)
        channels = self.images.shape[1]
        if channels not in (1, 3):
            raise ValueError(f"CCD's joint augmentation handles 1- or 3-channel images, got {channels} channels")
        self.jda_prob = prob
        self.jda_levels = _jda.expand_levels(levels)
        self.jda_on = on

    def augmented_view(self, original: Tensor, idx_cpu: Tensor, own: torch.Generator) -> Tensor:
        """The JDA view (uint8) of the rows ``idx_cpu``, whose standard view is ``original``,
        drawn from the method's own generator ``own``."""
        if self.jda_on == "raw":
            raw = self.images[idx_cpu.to(self.device)]
            augmented = _jda.jda(raw, own, self.jda_prob, self.jda_levels)
            return random_crop_flip(augmented, self.augment, own)
        return _jda.jda(original, own, self.jda_prob, self.jda_levels)

    def extend(self, batch: Batch, own: torch.Generator) -> Batch:
        batch = self.inner.extend(batch, own)
        original = batch.source
        augmented = self.augmented_view(original, batch.index_cpu, own)
        x_augmented = self.normalize(augmented, self.memory_format)
        x = _jda.interleave_views(batch.x, x_augmented).contiguous(memory_format=self.memory_format)
        idx = batch.index.repeat_interleave(2)
        extras = {**batch.extras, "x_original": batch.x, "x_augmented": x_augmented}
        return Batch(x=x, y=self.labels[idx], index=idx, extras=extras,
                     source=_jda.interleave_views(original, augmented), index_cpu=batch.index_cpu.repeat_interleave(2))


@register_method("ccd")
class CCD(Method):
    """Cosine Confidence Distillation on original + jointly augmented views."""

    name = "ccd"
    version = 2

    @dataclass(frozen=True)
    class Config(MethodConfig):
        #: derived: kd_weight · ce_fraction (None → derived; an explicit value must agree)
        ce_weight: float | None = None
        #: the reference's overall scale of the criterion (CE and soft term)
        kd_weight: float = 2.0
        #: α: the CE share of the criterion (the reference's kd_alpha)
        ce_fraction: float = 0.5
        temperature: float = 4.0
        #: probability of each JDA operation
        jda_prob: float = _jda.CIFAR100_PROB
        #: JDA level (0–9) per operation in _jda.OPS order, or one level for all
        jda_levels: tuple[int, ...] = _jda.CIFAR100_LEVELS
        #: "raw": augment the raw image, then crop/flip each view independently (reference);
        #: "cropped": augment the cropped/flipped original view (one shared crop)
        jda_on: Literal["raw", "cropped"] = "raw"

        def __post_init__(self) -> None:
            if not 0.0 <= self.ce_fraction <= 1.0:
                raise ValueError(f"ccd.ce_fraction (α) must be in [0, 1], got {self.ce_fraction}")
            if self.temperature <= 0:
                raise ValueError(f"ccd.temperature must be > 0, got {self.temperature}")
            if not 0.0 <= self.jda_prob <= 1.0:
                raise ValueError(f"ccd.jda_prob must be in [0, 1], got {self.jda_prob}")
            if self.jda_on not in ("raw", "cropped"):
                raise ValueError(f"ccd.jda_on must be 'raw' or 'cropped', got {self.jda_on!r}")
            _jda.expand_levels(self.jda_levels)
            derived = self.kd_weight * self.ce_fraction
            if self.ce_weight is None:
                object.__setattr__(self, "ce_weight", derived)
            elif not math.isclose(self.ce_weight, derived, rel_tol=1e-9, abs_tol=1e-12):
                raise ValueError(
                    f"ccd.ce_weight is derived as kd_weight·ce_fraction = {self.kd_weight}·{self.ce_fraction} = "
                    f"{derived}; got ce_weight={self.ce_weight}. Set kd_weight / ce_fraction instead.")

    needs = Needs(teacher=True, logits=True)

    def wrap_train_dataset(self, data: TrainData) -> TrainData:
        cfg = self.cfg
        return JDATrainData(data, cfg.jda_prob, cfg.jda_levels, cfg.jda_on)

    teacher_on_standard_rows = True

    def teacher_forward(self, teacher: nn.Module, batch: Batch, preact: bool,
                        standard: Outputs | None = None) -> Outputs:
        """The teacher on the original view (the standard batch: ``standard`` when a fused
        column computed it) and on the augmented view, separately, interleaved as the batch."""
        original = standard if standard is not None else teacher.forward_taps(batch.extras["x_original"], preact)
        augmented = teacher.forward_taps(batch.extras["x_augmented"], preact)
        return Outputs(logits=_jda.interleave_views(original.logits, augmented.logits),
                       embedding=_jda.interleave_views(original.embedding, augmented.embedding))

    def loss(self, s: Outputs, t: Outputs, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        cfg = self.cfg
        soft = ccd_soft_terms(s.logits, t.logits, cfg.temperature)["soft"]
        return {"loss_kd": cfg.kd_weight * (1.0 - cfg.ce_fraction) * cfg.temperature ** 2 * soft}
