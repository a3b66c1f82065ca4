"""``crd``: Tian, Krishnan, Isola, "Contrastive Representation Distillation", ICLR 2020.

Reference implementation followed: RepDistiller (the CRD authors' suite; ``crd/criterion.py``,
``crd/memory.py``, ``dataset/cifar100.py``: ``CIFAR100InstanceSample``, mode ``exact``).

What it does
------------
Both pooled embeddings (the pre-logit vectors, ``Outputs.embedding``) are projected by a
trained head ``g(x) = normalise(W x + b)`` (``Linear(C → feat_dim=128)`` then L2
normalisation), one head per side: ``v_s = g_s(f_s)``, ``v_t = g_t(f_t)``. Two memory banks of
``N × feat_dim`` (``N`` = training-set size) hold one vector per training sample: ``M_s``
(student side) and ``M_t`` (teacher side). For each sample ``i`` of the batch the data side
supplies ``K + 1`` indices ``idx[i] = (i, n_1 … n_K)``: the sample itself and ``K`` negatives
drawn from OTHER classes. Scores ("the student embedding is scored against the teacher memory
and vice versa")::

    P_s[i, j] = exp(M_t[idx[i, j]] · v_s[i] / τ) / Z_s      (student as anchor)
    P_t[i, j] = exp(M_s[idx[i, j]] · v_t[i] / τ) / Z_t      (teacher as anchor)

``Z`` is fixed once, on the first batch, to ``mean(exp(·)) · N`` over that batch's
``B × (K+1)`` scores (which are computed against the freshly initialised memory), then kept
constant; it lives in buffers (``z_student``, ``z_teacher``; −1 = not yet set) so a resumed
run keeps it. NCE loss (paper Eq. 18, noise distribution ``P_n = 1/N``, ``K`` noise samples
per positive; ``ε = 1e-7`` added to the denominators as in the reference)::

    nce(P) = −1/B Σ_i [ log(P[i,0] / (P[i,0] + K/N + ε))
                        + Σ_{j=1..K} log((K/N) / (P[i,j] + K/N + ε)) ]

    loss_crd = feat_weight · (nce(P_s) + nce(P_t))
    loss_kd  = kd_weight · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))      (only if kd_weight > 0)

and the trainer adds ``ce_weight · CE``. After the loss is computed, without gradient, the
rows of the batch's own samples are updated: ``M[i] ← normalise(momentum · M[i] + (1 −
momentum) · v[i])`` for both banks (``M_s`` with ``v_s``, ``M_t`` with ``v_t``), momentum 0.5.
The banks are initialised uniform in ``±1/√(feat_dim/3)`` (not normalised), from the global
torch RNG at construction, student bank first (as the reference). Both projection heads
are trained (they are submodules); the memories are buffers (no gradient, checkpointed).

Defaults (RepDistiller's CIFAR-100 CRD: ``--distill crd -r 1 -a 0 -b 0.8``, ``nce_k 16384``,
``nce_t 0.07``, ``nce_m 0.5``, ``feat_dim 128``): ``ce_weight 1``, ``feat_weight 0.8``,
``num_negatives 16384``, ``nce_temperature 0.07``, ``momentum 0.5``, ``feat_dim 128``. The KD
term is OFF by default (``kd_weight 0``); the paper's "CRD+KD" row is RepDistiller's
``-r 1 -a 1 -b 0.8``, i.e. here ``kd_weight=1`` (with ``temperature`` 4, the reference's
``kd_T``).

Choices and deviations (each documented, none changes the loss formula)
-----------------------------------------------------------------------
* Negatives on the data side: :class:`ContrastSampleData` (returned by
  :meth:`CRD.wrap_train_dataset`) adds ``batch.extras["contrast_idx"]`` (``B × (K+1)``
  int64 on the device; column 0 = the sample's own index, the reference's ``exact`` mode;
  the ``relax`` mode is not offered). By default the ``K`` negatives are drawn uniformly over
  the samples of the other classes WITHOUT replacement, as RepDistiller does
  (``np.random.choice(..., replace=False)`` whenever ``K`` ≤ the pool): random keys over the
  other-class samples, the ``K`` smallest kept (a ``B × N`` key tensor per batch, ≈ 50 ms
  per step at CIFAR-100 scale on CPU). ``negatives_without_replacement=False`` draws WITH
  replacement instead (vectorised per-class offsets into a class-sorted index; cheaper, but
  at CIFAR-100 scale, 16384 of 49,500, about 15% of the draws repeat an index already drawn
  for that row). Draws use the method's own generator
  (:func:`kdbench.data.member_generator` of seed, epoch and method name; version 2 — version
  1 drew them from the shared epoch stream after the crops), so runs are deterministic and
  resume exactly, and every batch's order and crops equal those of every other method at
  the same seed (which lets a fused column build the batch once).
* ``K`` scales down for small training sets: ``K_eff = min(num_negatives, N − size of the
  largest class)`` (logged at INFO), so every row can draw its negatives from its pool
  (without replacement too). The reference keeps ``K`` and switches to drawing with
  replacement when a pool is smaller. The noise ratio in the loss is ``K_eff / N`` (``K`` is
  read from ``contrast_idx``' width).
* Device-agnostic (the reference calls ``.cuda()`` unconditionally); index sampling runs on
  the CPU generator and only the index tensor crosses to the device.
* Scoring: mathematically the reference's ``index_select`` of ``B·(K+1)`` memory rows + ``bmm``
  (``64 × 16385 × 128`` floats ≈ 537 MB per side at CIFAR-100 scale, memory-bound). When
  ``N ≤ 32·(K+1)`` (CIFAR: always) we instead compute the ``B × N`` dot products with the whole
  bank as one GEMM and gather the ``B × (K+1)`` needed columns: identical values and
  gradients, a ``B × N`` intermediate (12.8 MB at N=50,000) and ~20× less time on CPU. The
  memory update after a dense scoring is out of place (the GEMM keeps the pre-update bank for
  its backward; a ``N × feat_dim`` copy, 25.6 MB), in place after the gather path.
* The NCE loss is evaluated from the log-scores ``s = m·v/τ`` in one fused pass (see
  :func:`nce_loss`: ``softplus`` of ``s − log(Z·(K/N + ε))``), which equals the reference's
  ``log(P/(P + K/N + ε))`` terms exactly (ε included) but never forms ``exp(s)`` (fewer
  passes over the ``B × (K+1)`` scores, no overflow); ``1/τ`` is folded into the ``B × 128``
  anchor before the product. ``Z = mean(exp(s))·N`` is taken with a log-sum-exp.
* Z is not re-tested every step: whether the buffers already hold it (a resumed run) is
  learnt with one host sync per process (and again after ``load_state_dict``); no ``.item()``
  in the hot path otherwise. Z is logged at INFO when set or restored (the reference prints
  it).
* L2 normalisations use ``F.normalize`` (divides by ``max(‖x‖, 1e-12)``; the reference divides
  by ``‖x‖``: identical except for an exactly-zero vector). The CRD computation runs in
  float32 with autocast disabled (bf16 dot products at τ=0.07 would be too coarse).

Cost (measured: resnet32x4→resnet8x4, batch 64, 2 CPU threads, N = 50,000, 100 classes,
interleaved with KD): K=16384 with the default draw without replacement ≈ 1.09× KD's step
time (CRD loss + memory update ≈ 35 ms, negatives ≈ 60 ms, of a ≈ 850 ms KD step; the
reference's gather form would be ≈ 1.6×); drawing with replacement ≈ 1.02–1.05× (negatives
≈ 10 ms); K=4096 ≈ 1.0–1.03× (gather ≈ 1.15×). Peak memory of a step ≈ +150 MB over KD
(gather form: +1.07 GB, the two 537 MB row copies). Memory banks: 2 × N × 128 floats (51 MB at N = 50,000) in
the checkpoint.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch, TrainData, TrainDataWrapper
from kdbench.method import Method, MethodConfig, MethodContext, Needs, StepInfo
from kdbench.methods._common import kl_div_t
from kdbench.registry import register_method
from kdbench.taps import Outputs, TapInfo

log = logging.getLogger(__name__)

#: added to the NCE denominators, as in the reference
NCE_EPS = 1e-7
#: score against the whole bank (one GEMM) when N <= this × (K+1); otherwise gather rows
DENSE_SCORING_RATIO = 32


def nce_loss(scores: Tensor, log_z: Tensor | float, num_data: int, eps: float = NCE_EPS) -> Tensor:
    """The reference's NCE loss of ``P = exp(scores − log Z)`` (``B × (K+1)``, column 0 the
    positive) with noise ``1/num_data`` and ``K`` noise samples per positive::

        −1/B Σ_i [log(P_i0/(P_i0 + c + ε)) + Σ_{j≥1} log(c/(P_ij + c + ε))],   c = K/N

    evaluated exactly, but in one fused pass: with ``c' = c + ε`` and ``x = scores − log Z −
    log c'`` (so ``P/c' = eˣ``), ``−log(P/(P + c')) = softplus(−x) = softplus(x) − x`` and
    ``−log(c/(P + c')) = softplus(x) + log(c'/c)``, hence
    ``loss = (Σ_ij softplus(x_ij) − Σ_i x_i0)/B + K·log(c'/c)``.
    """
    b, k = scores.shape[0], scores.shape[1] - 1
    if k < 1:
        raise ValueError("nce_loss needs at least one negative per row")
    c = k / num_data
    x = scores - (log_z + math.log(c + eps))
    return (F.softplus(x).sum() - x[:, 0].sum()) / b + k * math.log((c + eps) / c)


def memory_rows_update(old: Tensor, v: Tensor, momentum: float) -> Tensor:
    """``normalise(momentum · old + (1 − momentum) · v)`` row by row."""
    return F.normalize(old * momentum + v * (1.0 - momentum), dim=1)


class Embed(nn.Module):
    """CRD's projection head: ``Linear(dim_in → dim_out)`` then L2 normalisation of rows."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


class ContrastSampleData(TrainDataWrapper):
    """Adds ``batch.extras["contrast_idx"]`` (``B × (K+1)``, column 0 = own index, columns
    1..K = indices of samples from other classes) to every training batch; with
    ``own_index=False`` only the ``B × K`` negatives (HKD's mode ``hkd``).

    ``K = min(num_negatives, N − largest class size)``. Sampling is vectorised: the training
    indices sorted by class, each class's start and size; an offset ``u`` uniform in
    ``[0, N − n_c)`` for a sample of class ``c`` skips class ``c``'s block of the sorted index.
    """

    def __init__(self, inner: TrainData, num_negatives: int, without_replacement: bool = False,
                 own_index: bool = True):
        super().__init__(inner)
        self.own_index = bool(own_index)
        labels = self.labels_cpu.to(torch.int64)
        self.num_samples = int(labels.numel())
        num_classes = max(int(self.num_classes), int(labels.max()) + 1 if self.num_samples else 0)
        self.class_count = torch.bincount(labels, minlength=num_classes)
        self.class_start = torch.cumsum(self.class_count, 0) - self.class_count
        self.order = torch.argsort(labels, stable=True)
        self.largest_class = int(self.class_count.max()) if self.num_samples else 0
        self.k = min(int(num_negatives), self.num_samples - self.largest_class)
        self.without_replacement = bool(without_replacement)
        if self.k < 1:
            raise ValueError(f"contrastive negatives need samples of at least two classes; the training set has "
                             f"{self.num_samples} samples, {self.largest_class} of them in its largest class")

    @classmethod
    def for_bank(cls, method: str, data: TrainData, bank_rows: int, num_negatives: int, without_replacement: bool,
                 own_index: bool = True) -> "ContrastSampleData":
        """``data`` wrapped for ``method``'s memory bank of ``bank_rows`` rows (one per training
        sample: checked), the effective K logged."""
        wrapped = cls(data, num_negatives, without_replacement, own_index)
        if len(wrapped) != bank_rows:
            raise ValueError(f"{method}: memory bank has {bank_rows} rows but the training set has {len(wrapped)}")
        log.info("%s: K = %d negatives per sample (requested %d; N = %d, largest class %d; %s replacement)", method,
                 wrapped.k, num_negatives, wrapped.num_samples, wrapped.largest_class,
                 "without" if wrapped.without_replacement else "with")
        return wrapped

    def negatives(self, idx_cpu: Tensor, gen: torch.Generator) -> Tensor:
        """``B × K`` indices drawn uniformly from the other classes' samples (CPU int64)."""
        y = self.labels_cpu[idx_cpu]
        b, k = y.shape[0], self.k
        if self.without_replacement:
            keys = torch.rand(b, self.num_samples, generator=gen, dtype=torch.float64)
            keys.masked_fill_(self.labels_cpu.unsqueeze(0) == y.unsqueeze(1), 2.0)
            return keys.topk(k, dim=1, largest=False, sorted=True).indices
        own = self.class_count[y].unsqueeze(1)
        pool = self.num_samples - own
        u = torch.rand(b, k, generator=gen, dtype=torch.float64)
        off = torch.minimum((u * pool.to(torch.float64)).to(torch.int64), pool - 1)
        pos = off + (off >= self.class_start[y].unsqueeze(1)).to(torch.int64) * own
        return self.order[pos]

    def contrast_indices(self, idx_cpu: Tensor, gen: torch.Generator) -> Tensor:
        """``B × (K+1)``: own index, then :meth:`negatives` (CPU int64); ``B × K`` negatives
        alone without ``own_index``."""
        idx_cpu = idx_cpu.to(torch.int64)
        if not self.own_index:
            return self.negatives(idx_cpu, gen)
        return torch.cat([idx_cpu.unsqueeze(1), self.negatives(idx_cpu, gen)], dim=1)

    def extend(self, batch: Batch, own: torch.Generator) -> Batch:
        batch = self.inner.extend(batch, own)
        batch.extras["contrast_idx"] = self.contrast_indices(batch.index_cpu, own).to(self.device, non_blocking=True)
        return batch


@register_method("crd")
class CRD(Method):
    """Contrastive representation distillation with memory banks and NCE (see module doc)."""

    name = "crd"
    version = 2

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        #: weight of the CRD term (RepDistiller's ``-b``)
        feat_weight: float = 0.8
        #: weight of Hinton's KD term (RepDistiller's ``-a``): 0 = plain CRD, 1 = the paper's CRD+KD
        kd_weight: float = 0.0
        #: KD temperature (used only when kd_weight > 0)
        temperature: float = 4.0
        #: projection dimension of both embedding heads
        feat_dim: int = 128
        #: K, negatives per sample (scaled down to N − largest class size on small data)
        num_negatives: int = 16384
        #: τ of exp(m·v/τ)
        nce_temperature: float = 0.07
        #: memory update m ← normalise(momentum·m + (1−momentum)·v)
        momentum: float = 0.5
        #: the reference's draw (no repeated negative within a row); False: with replacement
        negatives_without_replacement: bool = True

    needs = Needs(teacher=True, logits=True, embedding=True)

    def __init__(self, cfg: Config, teacher_info: TapInfo, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        n, d = int(ctx.num_train_samples), int(cfg.feat_dim)
        self.num_data = n
        self.embed_s = Embed(student_info.embedding_dim, d)
        self.embed_t = Embed(teacher_info.embedding_dim, d)
        stdv = 1.0 / math.sqrt(d / 3.0)
        self.register_buffer("memory_student", torch.rand(n, d).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_teacher", torch.rand(n, d).mul_(2 * stdv).add_(-stdv))
        # normalisation constants: z_student for the student-anchored scores (vs the teacher
        # memory), z_teacher for the teacher-anchored ones; -1 = set on the next batch
        self.register_buffer("z_student", torch.tensor(-1.0))
        self.register_buffer("z_teacher", torch.tensor(-1.0))
        #: "auto" (dense when N <= DENSE_SCORING_RATIO·(K+1)), "dense" or "gather"; same result
        self.scoring: Literal["auto", "dense", "gather"] = "auto"
        self.k_effective: int | None = None
        self._z_ready: bool | None = None  # unknown until checked (see _log_z)

    @classmethod
    def check_pair(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        for role, info in (("teacher", teacher_info), ("student", student_info)):
            if info is None or info.embedding_dim < 1:
                return f"crd projects the pooled embedding; the {role} has none"
        return None

    def wrap_train_dataset(self, data: TrainData) -> TrainData:
        wrapped = ContrastSampleData.for_bank("crd", data, self.num_data, self.cfg.num_negatives,
                                              self.cfg.negatives_without_replacement)
        self.k_effective = wrapped.k
        return wrapped

    # -- the loss -------------------------------------------------------------------------
    def _dense(self, k_plus_1: int) -> bool:
        if self.scoring == "auto":
            return self.num_data <= DENSE_SCORING_RATIO * k_plus_1
        return self.scoring == "dense"

    def _scores(self, anchor: Tensor, memory: Tensor, idx: Tensor, dense: bool) -> Tensor:
        """``memory[idx[i, j]] · anchor[i] / τ`` as ``B × (K+1)`` (no gradient to memory)."""
        anchor = anchor / self.cfg.nce_temperature
        if dense:
            return (anchor @ memory.t()).gather(1, idx)
        b, kp1 = idx.shape
        rows = memory.index_select(0, idx.reshape(-1)).view(b, kp1, -1)
        return torch.bmm(rows, anchor.unsqueeze(2)).squeeze(2)

    def _log_z(self, s_student: Tensor, s_teacher: Tensor) -> tuple[Tensor, Tensor]:
        """``log Z`` of both sides. On a run's first batch (Z unset: -1) ``Z = mean(exp(s))·N``
        over the batch's ``B × (K+1)`` scores is stored in the buffers; afterwards the buffers
        are used as they are. Whether Z is set is learnt with one host sync per process (or
        after a ``load_state_dict``), never per step."""
        if self._z_ready is None:
            self._z_ready = bool((self.z_student > 0).all() & (self.z_teacher > 0).all())
            if self._z_ready:
                log.info("crd: normalisation constants restored: Z_student = %.1f, Z_teacher = %.1f",
                         self.z_student.item(), self.z_teacher.item())
        if not self._z_ready:
            with torch.no_grad():
                for scores, buf in ((s_student, self.z_student), (s_teacher, self.z_teacher)):
                    mean_exp = torch.exp(torch.logsumexp(scores.flatten(), 0) - math.log(scores.numel()))
                    buf.copy_(mean_exp * self.num_data)
            self._z_ready = True
            log.info("crd: normalisation constants set on the first batch: Z_student = %.1f, Z_teacher = %.1f",
                     self.z_student.item(), self.z_teacher.item())
        return torch.log(self.z_student), torch.log(self.z_teacher)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003 - torch hook
        self._z_ready = None  # Z may change with the loaded buffers
        super()._load_from_state_dict(*args, **kwargs)

    def _update_memory(self, name: str, idx: Tensor, v: Tensor, in_place: bool) -> None:
        with torch.no_grad():
            memory = getattr(self, name)
            new_rows = memory_rows_update(memory.index_select(0, idx), v, self.cfg.momentum)
            if in_place:
                memory.index_copy_(0, idx, new_rows)
            else:  # the dense scoring's GEMM saved the pre-update bank for its backward
                setattr(self, name, memory.index_copy(0, idx, new_rows))

    def crd_loss(self, f_s: Tensor, f_t: Tensor, index: Tensor, contrast_idx: Tensor) -> Tensor:
        """``nce(P_s) + nce(P_t)`` (unweighted); updates both memories afterwards."""
        with torch.autocast(device_type=f_s.device.type, enabled=False):
            v_s = self.embed_s(f_s.float())
            v_t = self.embed_t(f_t.float())
            dense = self._dense(contrast_idx.shape[1])
            s_s = self._scores(v_s, self.memory_teacher, contrast_idx, dense)  # student anchor, teacher memory
            s_t = self._scores(v_t, self.memory_student, contrast_idx, dense)  # teacher anchor, student memory
            log_z_s, log_z_t = self._log_z(s_s, s_t)
            loss = nce_loss(s_s, log_z_s, self.num_data) + nce_loss(s_t, log_z_t, self.num_data)
            self._update_memory("memory_student", index, v_s.detach(), in_place=not dense)
            self._update_memory("memory_teacher", index, v_t.detach(), in_place=not dense)
        return loss

    def loss(self, s: Outputs, t: Outputs, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        contrast_idx = batch.extras.get("contrast_idx")
        if contrast_idx is None:
            raise ValueError("crd: the batch has no 'contrast_idx'; train on the dataset returned by "
                             "CRD.wrap_train_dataset")
        terms = {"loss_crd": self.cfg.feat_weight * self.crd_loss(s.embedding, t.embedding, batch.index, contrast_idx)}
        if self.cfg.kd_weight:
            terms["loss_kd"] = self.cfg.kd_weight * kl_div_t(s.logits, t.logits, self.cfg.temperature)
        return terms
