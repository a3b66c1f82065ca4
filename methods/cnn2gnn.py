"""``cnn2gnn`` and ``gnn``: Jiao, Zhang, Li, "CNN2GNN: How to Bridge CNN with GNN" (2024).

A CNN teacher (from the teacher cache, like every method's) is distilled into a two-layer
GNN student that treats each image as a node of a graph. The graph is not given: a graph
head (an MLP ``d → hidden → n`` whose n outputs are the distances from an input to the n
training samples) is trained end to end through the loss, and Eq. 3 turns its distances
into a k-sparse conditional probability, hence a sparse batch graph
(:mod:`kdbench.students.gnn`). ``gnn`` is the same student trained without distillation
(the paper's "GNN" row). No public code exists; this is a reconstruction
(``REFERENCE.md`` §2) from a paper text whose equations and numbers were lost. Every
choice marked *inferred* is a Config option.

Training (a batch of training samples with dataset indices ``I``)::

    D      = head(X)[:, I]                      (B × B; only those columns are computed)
    P      = Eq3(D, k)  (self excluded)         k nonzeros per row, rows sum to 1
    Â      = D^-1/2 ((P + Pᵀ)/2 + I) D^-1/2      (symmetrisation, self-loops: options)
    z      = Â ReLU(Â X W1) W2                   the two GCN layers
    loss   = ce_weight · CE(y, z) + kd_weight · T² · KL(softmax(z_t/T) ‖ softmax(z/T))

``weighting="hinton"`` asks for the convex form (ce_weight + kd_weight = 1, checked).
``gnn`` drops the KD term. Defaults (*inferred*: the paper's values were lost):
k = 10 (the paper: "a median" k works), T = 4, kd_weight = 1, GCN hidden 256, head
``d → 512 → n``, no dropout.

GNN input X (``input``): flattened normalised pixels (default, *inferred*), or the frozen
teacher's embeddings (``teacher_embedding``): then the student needs the teacher at
inference too, which the result row records (``uses_teacher_at_inference``,
``inference_params`` includes the teacher).

Inductive inference (:meth:`GNN.predict`; every evaluation goes through it):

* Mechanism 2, batch by batch (``inference="batch"``, the paper's default): for a test
  batch, head distances to the candidates (``m2_candidates="train_set"``: all n training
  samples, as REFERENCE §2 reads it; ``"train_batch"``: one fixed random training batch,
  as the paper's sentence reads) give p(j|t) by Eq. 3; each test sample is replaced by
  its most probable candidate, the graph is built on that approximated batch from head
  distances, and the GCN runs on the *test* features with it. Predictions depend on
  which samples share a batch, not on their order (the graph is built in a canonical
  order: test samples sharing a surrogate tie in Eq. 3, and the tie rule would otherwise
  choose among them by batch position).
* Mechanism 1, one by one (``inference="one_by_one"``): each test sample is appended to a
  fixed random training batch (``support_size`` samples, default the recipe's batch size
  − 1, drawn once with ``support_seed``); the graph is built from head distances (test →
  training from the test sample's head outputs, used in both directions since the head
  has no output for a test sample), and the GCN reads the test node.
* Ablations (``graph="inner"`` InGNN, ``graph="euclid"`` EucGNN): the graph comes from
  inner products or squared Euclidean distances of the inputs instead of the head,
  in training and — needing no head — directly on each test batch at inference.

What inference consults is counted: the student's parameters (GCN + head, plus the
teacher's with teacher-embedding input) and the stored training samples it runs the head
on (``inference_stored_values``: n × d numbers for Mechanism 2 over the training set; the
support batch's ``support_size`` × d for Mechanism 1 and ``m2_candidates="train_batch"``).

Deviations and choices: an optional auxiliary regression of the head's outputs to the
true squared distances between inputs (``head_aux_weight``, default 0: the paper trains
the head through the task loss only, as we read it). The training batch's last tail
smaller than 2 samples is dropped by the engine, as for every method.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import Batch, TrainData
from kdbench.method import Method, MethodConfig, MethodContext, Needs, StepInfo
from kdbench.methods._common import kl_div_t
from kdbench.registry import register_method
from kdbench.students.gnn import (GNNStudent, euclidean_distances, inner_product_distances, make_gnn_student,
                                  sparse_conditional)
from kdbench.taps import Outputs, TapInfo


@dataclass(frozen=True)
class GNNConfig(MethodConfig):
    """Options of the GNN student and its inference (shared by ``gnn`` and ``cnn2gnn``)."""

    ce_weight: float = 1.0
    hidden_dim: int = 256  # GCN hidden width (inferred)
    head_hidden_dims: tuple[int, ...] = (512,)  # graph head d -> 512 -> n (inferred)
    k: int = 10  # Eq. 3 sparsity (inferred: "a median k")
    graph: Literal["head", "inner", "euclid"] = "head"  # head; InGNN, EucGNN ablations
    symmetric: bool = True  # A = (P + Pᵀ)/2 (inferred)
    self_loops: bool = True  # Â = A + I before normalisation (inferred)
    dropout: float = 0.0  # on the input of each GCN layer (inferred)
    input: Literal["pixels", "teacher_embedding"] = "pixels"  # GNN input X (inferred default)
    input_norm: Literal["none", "l2"] = "none"  # "l2": row-normalise X (Kipf & Welling's preprocessing)
    lr_scale: float = 0.1  # main-phase lr = lr_scale × the recipe's (inferred; see the docstring)
    inference: Literal["batch", "one_by_one"] = "batch"  # Mechanism 2 / Mechanism 1
    test_batch_size: int = 512  # Mechanism 2's test batch: its graph joins the samples of a batch
    m2_candidates: Literal["train_set", "train_batch"] = "train_set"
    support_size: int | None = None  # Mechanism 1's training batch (None: recipe batch size - 1)
    support_seed: int = 0  # draws the fixed training batch of Mechanism 1 / train_batch candidates
    head_aux_weight: float = 0.0  # optional MSE of head outputs to true squared input distances

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.hidden_dim < 1 or any(h < 1 for h in self.head_hidden_dims):
            raise ValueError("hidden_dim and head_hidden_dims must be positive widths")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.test_batch_size < 1:
            raise ValueError(f"test_batch_size must be >= 1, got {self.test_batch_size}")
        if self.support_size is not None and self.support_size < 1:
            raise ValueError(f"support_size must be >= 1, got {self.support_size}")
        if not self.lr_scale > 0:
            raise ValueError(f"lr_scale must be > 0, got {self.lr_scale}")
        if self.head_aux_weight < 0:
            raise ValueError(f"head_aux_weight must be >= 0, got {self.head_aux_weight}")


@register_method("gnn")
class GNN(Method):
    """A two-layer GNN student over a learned sparse batch graph, without distillation."""

    name = "gnn"
    version = 2  # 2: Mechanism 2 independent of test-batch order; float32 nearest-sample choice
    Config = GNNConfig

    @classmethod
    def needs(cls, cfg: MethodConfig | None = None) -> Needs:
        """The teacher only for teacher-embedding input (a frozen feature extractor)."""
        cfg = cfg or cls.Config()
        return Needs(teacher=cfg.input == "teacher_embedding", logits=True, embedding=True)

    @classmethod
    def student_name(cls, cfg: MethodConfig) -> str | None:
        return "gnn"

    @classmethod
    def make_student(cls, cfg: MethodConfig, ctx: MethodContext, teacher_info: TapInfo | None) -> nn.Module:
        if cfg.input == "teacher_embedding":
            assert teacher_info is not None
            in_dim = teacher_info.embedding_dim
        else:
            in_dim = math.prod(ctx.input_size)
        return make_gnn_student(in_dim, ctx.num_classes, ctx.num_train_samples if cfg.graph == "head" else None,
                                hidden_dim=cfg.hidden_dim, head_hidden_dims=tuple(cfg.head_hidden_dims), k=cfg.k,
                                graph=cfg.graph, symmetric=cfg.symmetric, self_loops=cfg.self_loops,
                                dropout=cfg.dropout)

    @classmethod
    def check_pair(cls, cfg: MethodConfig, teacher_info: TapInfo | None, student_info: TapInfo) -> str | None:
        if cfg.input == "teacher_embedding" and (teacher_info is None or teacher_info.embedding_dim < 1):
            return f"{cls.name} input=teacher_embedding needs a teacher with a pooled embedding"
        return None

    def __init__(self, cfg: GNNConfig, teacher_info: TapInfo | None, student_info: TapInfo, ctx: MethodContext):
        super().__init__(cfg, teacher_info, student_info, ctx)
        self.train_data: TrainData | None = None
        self._support: Tensor | None = None

    def eval_batch_size(self) -> int | None:
        """Mechanism 2 and the InGNN/EucGNN graphs join the samples of a test batch, so its
        size changes predictions: ``test_batch_size`` (Mechanism 1 reads one sample at a time)."""
        return self.cfg.test_batch_size

    def main_lr(self, recipe_lr: float) -> float:
        """``lr_scale`` × the recipe's lr (module docstring: the CNN recipes' lr diverges)."""
        return recipe_lr * self.cfg.lr_scale

    # -- data and features ----------------------------------------------------------------
    def wrap_train_dataset(self, data: TrainData) -> TrainData:
        """Keeps the training set: inference consults it (the head's distances refer to it)."""
        self.train_data = data
        return data

    def features(self, x: Tensor, teacher: nn.Module | None = None, teacher_out: Outputs | None = None) -> Tensor:
        """The GNN input of images ``x``: flattened pixels, or the frozen teacher's embedding."""
        if self.cfg.input == "pixels":
            feats = x.flatten(1).float()
        else:
            if teacher_out is None:
                assert teacher is not None, "teacher-embedding input needs the teacher"
                with torch.no_grad():
                    teacher_out = teacher.forward_taps(x)
            feats = teacher_out.embedding.detach().flatten(1).float()
        return F.normalize(feats, dim=1) if self.cfg.input_norm == "l2" else feats

    def train_features(self, index: Tensor, teacher: nn.Module | None) -> Tensor:
        """GNN inputs of stored training samples (normalised, not augmented)."""
        assert self.train_data is not None, "the method was not given its training data"
        data = self.train_data
        x = data.normalize(data.images[index.to(data.device)], data.memory_format)
        return self.features(x, teacher)

    # -- training ---------------------------------------------------------------------------
    def student_forward(self, student: GNNStudent, batch: Batch, teacher_out: Outputs | None,
                        preact: bool) -> Outputs:
        """The GCN over the batch graph of head distances at the batch's dataset indices."""
        x = self.features(batch.x, teacher_out=teacher_out)
        adj = student.batch_adjacency(x, batch.index)
        out = student.forward_taps(x, adj=adj)
        out.extras.update(features=x, index=batch.index, student=student)
        return out

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        return self.head_aux_terms(s)

    def head_aux_terms(self, s: Outputs) -> dict[str, Tensor]:
        """Optional: MSE of the head's batch distances to the true squared input distances."""
        if self.cfg.head_aux_weight <= 0 or self.cfg.graph != "head":
            return {}
        student = self._student_of(s)
        x, index = s.extras["features"], s.extras["index"]
        target = euclidean_distances(x).detach()
        return {"loss_head": self.cfg.head_aux_weight * F.mse_loss(student.head.distances_to(x, index), target)}

    def _student_of(self, s: Outputs) -> GNNStudent:
        student = s.extras.get("student")
        if student is None:
            raise ValueError("head_aux_weight needs the student in Outputs.extras")
        return student

    # -- inference ------------------------------------------------------------------------
    @property
    def uses_teacher_at_inference(self) -> bool:
        return self.cfg.input == "teacher_embedding"

    @torch.no_grad()
    def predict(self, student: GNNStudent, teacher: nn.Module | None, batch: Batch) -> Tensor:
        """Logits of a test batch by the configured mechanism (module docstring)."""
        x = self.features(batch.x, teacher)
        if self.cfg.graph != "head":
            d = inner_product_distances(x) if self.cfg.graph == "inner" else euclidean_distances(x)
            return student(x, adj=student.adjacency_from_distances(d, exclude_self=True))
        if self.cfg.inference == "one_by_one":
            return self.predict_one_by_one(student, teacher, x)
        return self.predict_batch(student, teacher, x)

    def candidates(self) -> Tensor | None:
        """Mechanism 2's candidate training indices: ``None`` for the whole training set."""
        return None if self.cfg.m2_candidates == "train_set" else self.support()

    def predict_batch(self, student: GNNStudent, teacher: nn.Module | None, x: Tensor) -> Tensor:
        """Mechanism 2: replace each test sample by its most probable training candidate,
        build the graph on that approximated batch, run the GCN on the test features."""
        cand = self.candidates()
        d = student.head(x) if cand is None else student.head.distances_to(x, cand)
        # float32 p: in bf16/fp16 (autocast) the two largest p(j|t) can round to the same
        # value and argmax would then take the lower index, not the nearest candidate.
        p = sparse_conditional(d.float(), student.k)
        nearest = p.argmax(dim=1)  # the highest p(j|t); Eq. 3 makes it the smallest distance
        surrogate = nearest if cand is None else cand[nearest]
        # Test samples sharing a surrogate have equal head distances in the approximated
        # batch, and Eq. 3's tie rule (lower column first) would pick among them by their
        # position in the test batch. Build the graph in a canonical order instead — by
        # surrogate, then by the test sample's distance to it (the best approximated
        # first) — and return the logits in the caller's order.
        closeness = d.float().gather(1, nearest[:, None]).squeeze(1)
        order = torch.sort(closeness, stable=True).indices
        order = order[torch.sort(surrogate[order], stable=True).indices]
        surrogate = surrogate[order]
        d_s = student.head.distances_to(self.train_features(surrogate, teacher), surrogate)
        logits = student(x[order], adj=student.adjacency_from_distances(d_s, exclude_self=True))
        return torch.empty_like(logits).index_copy_(0, order, logits)

    def support(self) -> Tensor:
        """The fixed random training batch Mechanism 1 appends test samples to (and the
        candidates of ``m2_candidates="train_batch"``), drawn once with ``support_seed``."""
        if self._support is None:
            assert self.train_data is not None
            n = len(self.train_data)
            size = min(n, self.cfg.support_size or max(1, self.train_data.batch_size - 1))
            gen = torch.Generator().manual_seed(self.cfg.support_seed)
            self._support = torch.randperm(n, generator=gen)[:size].to(self.train_data.device)
        return self._support

    def predict_one_by_one(self, student: GNNStudent, teacher: nn.Module | None, x: Tensor) -> Tensor:
        """Mechanism 1: each test sample joins the fixed training batch; the GCN reads its node."""
        support = self.support()
        x_s = self.train_features(support, teacher)
        d_ss = student.head.distances_to(x_s, support)  # among the training batch
        d_ts = student.head.distances_to(x, support)  # each test sample to the training batch
        m = len(support)
        logits = []
        for i in range(x.shape[0]):
            d = x.new_zeros(m + 1, m + 1)
            d[:m, :m] = d_ss
            d[m, :m] = d_ts[i]
            d[:m, m] = d_ts[i]  # the head has no output for a test sample: its row, both ways
            nodes = torch.cat([x_s, x[i:i + 1]])
            logits.append(student(nodes, adj=student.adjacency_from_distances(d, exclude_self=True))[m])
        return torch.stack(logits)

    def inference_cost(self, student: nn.Module, teacher: nn.Module | None) -> dict[str, int]:
        """Student (+ teacher for embedding input) parameters, and the stored training
        samples inference reads (× d values): all n for Mechanism 2 over the training set,
        only the support batch for Mechanism 1 and ``m2_candidates="train_batch"``; none for
        InGNN/EucGNN."""
        cost = super().inference_cost(student, teacher)
        if self.cfg.graph == "head" and self.train_data is not None:
            reads_support_only = self.cfg.inference == "one_by_one" or self.cfg.m2_candidates == "train_batch"
            n = len(self.support()) if reads_support_only else len(self.train_data)
            d = student.gcn.layer1.in_features if hasattr(student, "gcn") else 0
            cost["inference_stored_values"] = n * d
        return cost

    def run_info(self) -> dict[str, object]:
        return {"inference": self.cfg.inference, "graph": self.cfg.graph, "input": self.cfg.input}


@dataclass(frozen=True)
class CNN2GNNConfig(GNNConfig):
    """GNN options plus the response-based distillation from the CNN teacher."""

    kd_weight: float = 1.0  # λ of CE + λ·KL_T (inferred)
    temperature: float = 4.0  # T (inferred; the paper: higher T helps)
    weighting: Literal["additive", "hinton"] = "additive"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.weighting == "hinton" and abs(self.ce_weight + self.kd_weight - 1) > 1e-9:
            raise ValueError(f"weighting=hinton is (1-α)·CE + α·KL_T: ce_weight + kd_weight must be 1, "
                             f"got {self.ce_weight} + {self.kd_weight}")


@register_method("cnn2gnn")
class CNN2GNN(GNN):
    """A CNN teacher distilled into the two-layer GNN student (response-based KD)."""

    name = "cnn2gnn"
    version = 2  # 2: Mechanism 2 independent of test-batch order; float32 nearest-sample choice
    Config = CNN2GNNConfig

    @classmethod
    def needs(cls, cfg: MethodConfig | None = None) -> Needs:
        return Needs(teacher=True, logits=True, embedding=True)

    def loss(self, s: Outputs, t: Outputs | None, batch: Batch, step: StepInfo) -> dict[str, Tensor]:
        assert t is not None
        terms = {"loss_kd": self.cfg.kd_weight * kl_div_t(s.logits, t.logits, self.cfg.temperature)}
        return {**terms, **self.head_aux_terms(s)}
