"""``hkd``: Zhou, Wang, Sun, Jin, "Distilling Holistic Knowledge with Graph Neural Networks",
ICCV 2021 (HKD).

Reference implementation followed: the authors' code (github.com/wyc-ruiker/HKD, a
RepDistiller fork built on DGL): ``distiller_zoo/GNN.py`` (``GNNLoss``, ``NCEAverage``,
``knn_graph``, ``Encoder``), ``dataset/cifar100.py`` (``CIFAR100InstanceSample``, mode ``hkd``),
``train_student.py`` and ``scripts/run_cifar_distill.sh`` (``--distill hkd -a 0 -b 3 --mode hkd``;
HKD+KD is ``-a 1``, here the composed method ``hkd+kd``, see :mod:`kdbench.compose`).

What it does
------------
Both pooled embeddings (``Outputs.embedding``, the penultimate features) go through a trained
head ``e = normalise(W f + b)`` (``Linear(C → feat_dim=128)`` + L2), one per side: ``e_s``,
``e_t``. Two memory banks of ``N × feat_dim`` (``N`` = training-set size) hold one row per
training sample: ``M_s`` (student) and ``M_t`` (teacher), initialised uniform in
``±1/√(feat_dim/3)`` (not normalised). The data side gives every sample ``K`` negatives
``n_1 … n_K`` drawn from OTHER classes; the sample itself is not among them (mode ``hkd``).
With ``nce(a; p; N) = mean_b −log softmax([a·p, a·N_1, …, a·N_K] / τ)[0]`` (InfoNCE, the positive
at index 0, τ = 0.07):

* instance level: ``nce(e_s; M_t[i]; M_s[neg]) + nce(e_t; M_s[i]; M_t[neg])``;
* holistic level, one graph per side over the batch: node ``i``'s ``k`` in-neighbours are the
  ``k`` nodes nearest to it by ``d_ij = 1 − p_i·p_j / max(‖p_i‖‖p_j‖, 1e-7)`` with
  ``p = softmax(z)`` of the DETACHED logits ``z`` of that side, the diagonal set to −1 so the
  node itself is always its first neighbour (the code's ``dist·(1−I) − I``). One graph layer
  (DGL's ``TAGConv`` with ``k=1`` — with every in-degree equal to ``k`` its symmetric
  normalisation is the plain mean) then L2: ``g_i = normalise(W [e_i ; mean_{j∈N(i)} e_j] + b)``;
  ``nce(g_s; normalise(0.75·M_t[i] + 0.25·g_t); M_s[neg]) + nce(g_t; normalise(0.75·M_s[i] +
  0.25·g_s); M_t[neg])`` — the blended positives are constants, never written back;
* ``loss = feat_weight · (instance + holistic)`` (``-b 3``), reported as the two terms
  ``loss_hkd_instance`` and ``loss_hkd_holistic``; the trainer adds ``ce_weight · CE``; no KD
  term (``hkd+kd`` adds it).

After the loss, without gradient: ``M_s[i] ← normalise(0.9·M_s[i] + 0.1·e_s[i])`` and
``M_t[i]`` likewise with ``e_t`` (the instance embeddings, not the graph ones). As in the
authors' code, a batch smaller than ``k`` gives the instance term only and leaves the banks
unchanged (their update sits after that early return); the holistic term is then 0.

Trained: the student, both heads and both graph layers; the teacher gets no gradient (its
logits and features come from the engine's ``no_grad`` forward; the teacher-side head and
graph layer train through the teacher-anchored terms, as in the reference's
``trainable_list``).

Defaults (``run_cifar_distill.sh``, ``train_student.py``, ``GNN.py``): ``ce_weight 1``,
``feat_weight 3``, ``feat_dim 128``, ``num_negatives 16384``, ``nce_temperature 0.07``,
``momentum 0.9``, ``smooth_momentum 0.75``, ``knn 8``, negatives drawn without replacement.

Deviations from the authors' code (none changes the loss formula)
-----------------------------------------------------------------
* No DGL: the batch graph is a dense ``B × B`` aggregation matrix (``1/k`` at each node's
  in-neighbours; batch-sized, so ``A e`` is cheap); the layer's weight is initialised as DGL's ``TAGConv`` does (Xavier normal,
  gain √2; bias as ``nn.Linear``).
* Ties in the kNN distances are broken towards the lower batch index (a stable sort); the
  reference's ``topk`` leaves the order of ties unspecified.
* Negatives come from CRD's data-side sampler (:class:`kdbench.methods.crd.ContrastSampleData`
  without the own-index column), so ``K = min(num_negatives, N − largest class size)``
  (logged, in ``method_info``) on small sets; the reference keeps ``K`` and draws with
  replacement when a class's pool is smaller. Draws use the method's own generator
  (:func:`kdbench.data.member_generator`; version 2, version 1 used the shared epoch
  stream), so runs resume exactly and the crops are every other method's.
* Device-agnostic (the reference calls ``.cuda()``); the HKD computation runs in float32 with
  autocast disabled; L2 normalisations use ``F.normalize`` (``max(‖x‖, 1e-12)`` instead of
  ``‖x‖``: differs only for an exactly zero vector).
* Scores against a bank: when ``N ≤ 32·K`` the anchors are multiplied with the whole bank
  (one GEMM) and the ``K`` needed columns gathered — the same values as the reference's
  row gather, as in CRD; the bank update after it is out of place (the GEMM keeps the
  pre-update bank for its backward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch, TrainData
from kdbench.method import Method, MethodConfig, MethodContext, Needs, StepInfo
from kdbench.methods.crd import DENSE_SCORING_RATIO, ContrastSampleData, Embed, memory_rows_update
from kdbench.registry import register_method
from kdbench.taps import Outputs, TapInfo


#: the clamp of the norm product in the reference's cosine distance
COS_EPS = 1e-7


def knn_in_neighbours(logits: Tensor, k: int) -> Tensor:
    """``B × k`` indices: row ``i`` lists the nodes node ``i`` receives from, nearest first,
    itself always first. Distance ``1 − cos(softmax(z_i), softmax(z_j))`` (norm product
    clamped at 1e-7), diagonal −1; ties go to the lower index. No gradient."""
    with torch.no_grad():
        p = F.softmax(logits.detach().float(), dim=1)
        w = p.norm(dim=1, keepdim=True)
        dist = 1.0 - (p @ p.t()) / (w @ w.t()).clamp_min(COS_EPS)
        dist.fill_diagonal_(-1.0)
        return torch.sort(dist, dim=1, stable=True).indices[:, :k]


def knn_graph(logits: Tensor, k: int) -> Tensor:
    """The batch graph as its ``B × B`` aggregation matrix: ``A[i, j] = 1/k`` for each of node
    ``i``'s in-neighbours ``j`` (:func:`knn_in_neighbours`), else 0 — a constant (no gradient)."""
    neighbours = knn_in_neighbours(logits, k)
    b = neighbours.shape[0]
    return torch.zeros(b, b, device=neighbours.device).scatter_(1, neighbours, 1.0 / k)


class GraphLayer(nn.Module):
    """One TAGConv-like layer with one hop, then L2: ``normalise(W [x_i ; (A x)_i] + b)``, with
    ``A`` from :func:`knn_graph` (``(A x)_i`` = the mean of ``x`` over node ``i``'s in-neighbours)."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(2 * dim, dim)
        nn.init.xavier_normal_(self.linear.weight, gain=nn.init.calculate_gain("relu"))

    def forward(self, x: Tensor, adjacency: Tensor) -> Tensor:
        return F.normalize(self.linear(torch.cat([x, adjacency @ x], dim=1)), dim=1)


def info_nce(pos: Tensor, neg: Tensor, tau: float) -> Tensor:
    """``mean_b −log softmax([pos_b, neg_b1 … neg_bK] / τ)[0]`` from dot products
    ``pos`` (``B``) and ``neg`` (``B × K``)."""
    logits = torch.cat([pos.unsqueeze(1), neg], dim=1) / tau
    return (torch.logsumexp(logits, dim=1) - logits[:, 0]).mean()


def rowdot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=1)


@register_method("hkd")
class HKD(Method):
    """Holistic KD: instance and kNN-graph InfoNCE against memory banks (see module doc)."""

    name = "hkd"
    version = 2

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0
        #: weight of the HKD term, instance + holistic (the authors' ``-b``)
        feat_weight: float = 3.0
        #: dimension of both embedding heads and graph layers
        feat_dim: int = 128
        #: K, negatives per sample, from other classes (scaled down to N − largest class size)
        num_negatives: int = 16384
        #: τ of the InfoNCE logits
        nce_temperature: float = 0.07
        #: bank update M ← normalise(momentum·M + (1−momentum)·e)
        momentum: float = 0.9
        #: holistic positives normalise(smooth_momentum·M + (1−smooth_momentum)·g), not stored
        smooth_momentum: float = 0.75
        #: in-neighbours per node, the node itself included; batches smaller than this skip the graph
        knn: int = 8
        #: the reference's draw (no repeated negative within a row); False: with replacement
        negatives_without_replacement: bool = True

        def __post_init__(self) -> None:
            if self.feat_dim < 1 or self.num_negatives < 1 or self.knn < 1:
                raise ValueError("feat_dim, num_negatives and knn must be >= 1")
            if not self.nce_temperature > 0:
                raise ValueError(f"nce_temperature must be > 0, got {self.nce_temperature}")
            if not (0 <= self.momentum < 1 and 0 <= self.smooth_momentum <= 1):
                raise ValueError("momentum must be in [0, 1) and smooth_momentum in [0, 1]")

    needs = Needs(teacher=True, logits=True, embedding=True)

    def __init__(self, cfg: Config, teacher_info: TapInfo, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        n, d = int(ctx.num_train_samples), int(cfg.feat_dim)
        self.num_data = n
        self.embed_s = Embed(student_info.embedding_dim, d)
        self.embed_t = Embed(teacher_info.embedding_dim, d)
        self.graph_s = GraphLayer(d)
        self.graph_t = GraphLayer(d)
        stdv = 1.0 / math.sqrt(d / 3.0)
        self.register_buffer("memory_student", torch.rand(n, d).mul_(2 * stdv).add_(-stdv))
        self.register_buffer("memory_teacher", torch.rand(n, d).mul_(2 * stdv).add_(-stdv))
        self.k_effective: int | None = None

    @classmethod
    def check_pair(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        for role, info in (("teacher", teacher_info), ("student", student_info)):
            if info is None or info.embedding_dim < 1:
                return f"hkd projects the pooled embedding; the {role} has none"
        return None

    def wrap_train_dataset(self, data: TrainData) -> TrainData:
        wrapped = ContrastSampleData.for_bank("hkd", data, self.num_data, self.cfg.num_negatives,
                                              self.cfg.negatives_without_replacement, own_index=False)
        self.k_effective = wrapped.k
        return wrapped

    def run_info(self) -> dict[str, int]:
        return {"num_negatives": self.k_effective} if self.k_effective is not None else {}

    # -- the loss -------------------------------------------------------------------------
    def _negative_scores(self, anchors: Tensor, memory: Tensor, neg: Tensor) -> Tensor:
        """``A × B × K``: ``memory[neg[b, j]] · anchors[a, b]`` for ``A`` anchor kinds."""
        a, b, d = anchors.shape
        k = neg.shape[1]
        if self.num_data <= DENSE_SCORING_RATIO * k:
            full = (anchors.reshape(a * b, d) @ memory.t()).view(a, b, -1)
            return full.gather(2, neg.unsqueeze(0).expand(a, -1, -1))
        rows = memory.index_select(0, neg.reshape(-1)).view(b, k, d)
        return torch.einsum("bkd,abd->abk", rows, anchors)

    def _update_memory(self, name: str, index: Tensor, v: Tensor) -> None:
        with torch.no_grad():
            memory = getattr(self, name)
            rows = memory_rows_update(memory.index_select(0, index), v, self.cfg.momentum)
            setattr(self, name, memory.index_copy(0, index, rows))  # out of place: the GEMM saved it

    def hkd_terms(self, s: Outputs, t: Outputs, index: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
        """Unweighted (instance, holistic) InfoNCE sums; updates both banks afterwards."""
        cfg, tau = self.cfg, self.cfg.nce_temperature
        with torch.autocast(device_type=s.embedding.device.type, enabled=False):
            e_s = self.embed_s(s.embedding.float())
            e_t = self.embed_t(t.embedding.float())
            mem_s, mem_t = self.memory_student, self.memory_teacher
            pos_s, pos_t = mem_s.index_select(0, index), mem_t.index_select(0, index)
            anchors_s, anchors_t = [e_s], [e_t]
            holistic = e_s.new_zeros(())
            graph = e_s.shape[0] >= cfg.knn
            if graph:
                g_s = self.graph_s(e_s, knn_graph(s.logits, cfg.knn))
                g_t = self.graph_t(e_t, knn_graph(t.logits, cfg.knn))
                anchors_s.append(g_s)
                anchors_t.append(g_t)
            neg_s = self._negative_scores(torch.stack(anchors_s), mem_s, neg)  # student anchors, student bank
            neg_t = self._negative_scores(torch.stack(anchors_t), mem_t, neg)  # teacher anchors, teacher bank
            instance = info_nce(rowdot(e_s, pos_t), neg_s[0], tau) + info_nce(rowdot(e_t, pos_s), neg_t[0], tau)
            if graph:
                smooth_t = memory_rows_update(pos_t, g_t.detach(), cfg.smooth_momentum)
                smooth_s = memory_rows_update(pos_s, g_s.detach(), cfg.smooth_momentum)
                holistic = info_nce(rowdot(g_s, smooth_t), neg_s[1], tau) + info_nce(rowdot(g_t, smooth_s), neg_t[1], tau)
                self._update_memory("memory_student", index, e_s.detach())
                self._update_memory("memory_teacher", index, e_t.detach())
        return instance, holistic

    def loss(self, s: Outputs, t: Outputs, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        neg = batch.extras.get("contrast_idx")
        if neg is None:
            raise ValueError("hkd: the batch has no 'contrast_idx'; train on the dataset returned by "
                             "HKD.wrap_train_dataset")
        instance, holistic = self.hkd_terms(s, t, batch.index, neg)
        w = self.cfg.feat_weight
        return {"loss_hkd_instance": w * instance, "loss_hkd_holistic": w * holistic}
