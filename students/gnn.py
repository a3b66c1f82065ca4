"""Building blocks of the CNN2GNN GNN student.

Paper: Z. Jiao, H. Zhang, X. Li, "CNN2GNN: How to Bridge CNN with GNN", 2024 (§3.2
"Differentiable Sparse Graph Head", §3.3, Mechanisms 1-2). The sparse conditional
distribution of Eq. 3 is the closed form of the adaptive-neighbours problem of
F. Nie, X. Wang, H. Huang, "Clustering and Projected Clustering with Adaptive Neighbors",
KDD 2014. GCN layers and their normalisation follow T. N. Kipf, M. Welling,
"Semi-Supervised Classification with Graph Convolutional Networks", ICLR 2017.

No public code of CNN2GNN exists and the available paper text lost its equations and
numbers, so this is a reconstruction (kdbench REFERENCE.md §2). Choices marked
*inferred* below are ours, not the paper's, and every one of them is a constructor or
factory argument:

* *inferred* — the tie rule and degenerate-row handling of :func:`sparse_conditional`
  (Eq. 3 is undefined / has fewer than k nonzeros under ties);
* *inferred* — squared Euclidean distances for EucGNN (:func:`euclidean_distances`; the
  distance of Nie et al.'s line of work), negated inner products for InGNN;
* *inferred* — symmetrisation ``A = (P + Pᵀ)/2`` (the paper says "undirected") and
  self-loops before the Kipf-Welling normalisation (:func:`graph_from_conditional`,
  ``symmetric`` / ``self_loops``);
* *inferred* — the graph head's widths (``hidden_dims``, default one hidden layer of 512)
  and its output: raw, no activation (Eq. 3 is translation invariant, so the head's
  "distances" need not be non-negative);
* *inferred* — the GCN's hidden width (256 by default), its initialisation (Glorot
  weights, zero bias, as in Kipf & Welling's reference) and the bias being added after
  the aggregation (``Â X W + b``, Kipf & Welling's reference code);
* *inferred* — input features are flattened pixels by default (the caller may feed frozen
  teacher embeddings instead).

Nothing in this module builds an n x n matrix over the n training samples: the head's
output layer is hidden x n and a training batch only gathers the B rows it needs
(:meth:`GraphHead.distances_to`), so the batch graph costs B x B.
"""
from __future__ import annotations

import operator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.taps import Outputs

__all__ = [
    "sparse_conditional",
    "graph_from_conditional",
    "inner_product_distances",
    "euclidean_distances",
    "GraphConv",
    "GCN",
    "GraphHead",
    "GNNStudent",
    "make_gnn_student",
    "GraphKind",
]

GraphKind = Literal["head", "inner", "euclid"]
GRAPH_KINDS: tuple[str, ...] = ("head", "inner", "euclid")


# --------------------------------------------------------------------------------------
# Eq. 3: the sparse conditional distribution p(j|i)
# --------------------------------------------------------------------------------------

def _select_smallest(dm: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """The ``count`` smallest values of every row (ascending) and their column indices,
    with ties broken as a *stable* ascending sort would (lower column index first).

    ``torch.topk`` is used for speed (Mechanism 2 calls this on B x 50,000 distances), but
    its order among equal values is unspecified. Only a tie at the selection boundary
    (the ``count-1``-th equal to the ``count``-th smallest, 0-based ``count-2`` and
    ``count-1``) can change *which* columns are selected among the first ``count-1``;
    those rows (and only those) are redone with a stable full sort. Ties inside the
    selection do not matter: equal values receive equal weights.
    """
    vals, idx = torch.topk(dm, count, dim=1, largest=False, sorted=True)
    if count >= 2:
        # Boundary of the k selected neighbours: positions count-2 (k-th) and count-1 ((k+1)-th).
        # A tie between the (k+1)-th and the (k+2)-th does not change the selected set.
        tie = vals[:, count - 2] == vals[:, count - 1]
        if bool(tie.any()):
            rows = tie.nonzero().squeeze(1)
            s, i = torch.sort(dm.index_select(0, rows), dim=1, stable=True)
            vals = vals.index_copy(0, rows, s[:, :count])
            idx = idx.index_copy(0, rows, i[:, :count])
    return vals, idx


def sparse_conditional(d: Tensor, k: int, *, exclude_self: bool = False, eps: float = 1e-10) -> Tensor:
    """Eq. 3 of CNN2GNN (Jiao, Zhang, Li 2024) — the adaptive-neighbours closed form of
    Nie, Wang, Huang (KDD 2014): for each row i of the distances ``d`` (m x n), with the
    candidate distances sorted ascending d_i(1) <= ... <= d_i(n),

        p(j|i) = (d_i(k+1) - d_ij)_+ / (k d_i(k+1) - sum_{h<=k} d_i(h)).

    Returns the m x n matrix ``p`` with exactly ``k_eff`` nonzeros per row summing to 1.
    Differentiable in ``d``: gradients flow through the gathered sorted values (the
    neighbour selection itself is piecewise constant). Cost: a top-(k+1) selection over
    the m x n input (a stable full sort only for rows with a tie at the selection
    boundary); nothing larger than m x n is built. float16/bfloat16 inputs (autocast) are
    computed in float32 and the result cast back. Eq. 3 only involves differences of
    distances, so any real distances work (raw head outputs, negated inner products).

    Tie rule (*inferred*; Eq. 3 gives zero weight to a neighbour tied with d_i(k+1), and
    0/0 when all k+1 are equal):

    * the k neighbours are the first k of a **stable** ascending sort (ties broken by the
      lower column index);
    * with gaps g_j = d_i(k+1) - d_i(j) >= 0 and D_i = sum_j g_j (Eq. 3's denominator),
      each selected neighbour gets weight g_j + δ_i with δ_i = ``eps`` · D_i / k, i.e.
      p_j = (g_j + δ_i) / (D_i + k δ_i). This is Eq. 3 up to an absolute error <= ``eps``
      (1e-10 by default: ~1e-6 relative even for values ~1e-4), and every selected
      neighbour keeps a positive weight (≈ eps/k when tied with the (k+1)-th; at least the
      output dtype's smallest normal number, so float16 keeps it), so there are exactly k
      nonzeros. ``eps=0`` is Eq. 3 verbatim (tied neighbours then get 0);
    * a row is *degenerate* when D_i is at or below the float resolution of its values,
      D_i <= max(k · finfo.eps · max(|d_i(1)|, |d_i(k+1)|), sqrt(finfo.tiny)): its k+1
      nearest are equal as far as the dtype can tell. It gets exactly 1/k on each selected
      neighbour (the adaptive-neighbours solution for equal distances) and zero gradient.
      This also bounds every gradient by ~1/sqrt(finfo.tiny): never inf/NaN.

    Small candidate sets: a node has ``c`` candidates (n, or n-1 with ``exclude_self``).
    With c <= k, Eq. 3 needs the (k+1)-th distance, so k_eff = c - 1 neighbours are used
    when c >= 2; with c == 1 the single candidate gets p = 1; with c == 0 (a 1-node batch
    with ``exclude_self``) the row is all zeros (an isolated node). Otherwise k_eff = k.

    Args:
        d: m x n real distances (float16/32/64, any device), finite.
        k: the sparsity (neighbours per node), >= 1.
        exclude_self: ``d`` is square and a node's distance to itself is not a candidate
            (batch graphs): the diagonal never receives weight.
        eps: the relative tie weight δ_i / (D_i / k) described above, >= 0.
    """
    if d.dim() != 2:
        raise ValueError(f"sparse_conditional expects an m x n distance matrix, got shape {tuple(d.shape)}")
    if not d.is_floating_point():
        raise TypeError(f"sparse_conditional expects floating-point distances, got {d.dtype}")
    k = operator.index(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    eps = float(eps)
    if not eps >= 0.0 or eps == float("inf"):
        raise ValueError(f"eps must be finite and >= 0, got {eps}")
    m, n = d.shape
    if exclude_self and m != n:
        raise ValueError(f"exclude_self needs a square distance matrix, got {m} x {n}")
    candidates = n - 1 if exclude_self else n
    # Every result below stays connected to d's autograd graph (zero gradient where the
    # result is constant), so a backward through p never fails for a tiny batch.
    if m == 0 or candidates <= 0:
        return d * 0.0
    out_dtype = d.dtype
    if torch.finfo(d.dtype).bits < 32:  # float16/bfloat16 (autocast): work in float32
        d = d.float()
    dm = d
    if exclude_self:
        eye = torch.eye(n, dtype=torch.bool, device=d.device)
        dm = d.masked_fill(eye, float("inf"))  # never among the k_eff+1 <= n-1 smallest
    ke = min(k, candidates - 1)
    if ke == 0:  # one candidate: p = 1 on it
        vals, idx = _select_smallest(dm, 1)
        ones = torch.ones_like(vals) + vals * 0.0  # candidate distances are finite
        return torch.zeros_like(d).scatter(1, idx, ones).to(out_dtype)
    vals, idx = _select_smallest(dm, ke + 1)
    kth1 = vals[:, ke:ke + 1]  # d_i(k+1)
    gaps = (kth1 - vals[:, :ke]).clamp_min(0.0)  # g_j >= 0 (sorted), m x k
    denom = gaps.sum(dim=1, keepdim=True)  # Eq. 3's denominator D_i
    fin = torch.finfo(d.dtype)
    mag = torch.maximum(vals[:, :1].abs(), kth1.abs()).detach()
    resolution = (ke * fin.eps * mag).clamp_min(fin.tiny ** 0.5)
    degenerate = denom <= resolution
    safe = torch.where(degenerate, torch.ones_like(denom), denom)
    # (g_j + δ) / D with δ = eps·D/k; the tie weight stays representable in the output dtype.
    tie = max(eps / ke, torch.finfo(out_dtype).tiny) if eps > 0 else 0.0
    w = gaps / safe + tie
    formula = w / w.sum(dim=1, keepdim=True)
    weights = torch.where(degenerate, torch.full_like(formula, 1.0 / ke), formula)
    return torch.zeros_like(d).scatter(1, idx[:, :ke], weights).to(out_dtype)


# --------------------------------------------------------------------------------------
# Graph normalisation and the ablation distances
# --------------------------------------------------------------------------------------

def graph_from_conditional(p: Tensor, *, symmetric: bool = True, self_loops: bool = True) -> Tensor:
    """The normalised batch graph of CNN2GNN from the conditional distribution ``p``
    (n x n, e.g. from :func:`sparse_conditional` with ``exclude_self=True``):

        A = (P + Pᵀ) / 2   (``symmetric``; *inferred* — the paper builds an undirected
                            graph; otherwise A = P)
        Â = A + I          (``self_loops``; *inferred*, Kipf & Welling's renormalisation)
        return D^{-1/2} Â D^{-1/2},  D = diag(row sums of Â)

    (Kipf & Welling 2017). For a non-symmetric A the degrees are the row sums. A node of
    degree 0 (possible without self loops) gets a row and column of zeros — no NaN, also
    in the gradient.
    """
    if p.dim() != 2 or p.shape[0] != p.shape[1]:
        raise ValueError(f"graph_from_conditional expects a square n x n matrix, got shape {tuple(p.shape)}")
    a = 0.5 * (p + p.transpose(0, 1)) if symmetric else p
    if self_loops:
        a = a + torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
    deg = a.sum(dim=1)
    pos = deg > 0
    inv_sqrt = torch.where(pos, torch.where(pos, deg, torch.ones_like(deg)).rsqrt(), torch.zeros_like(deg))
    return inv_sqrt[:, None] * a * inv_sqrt[None, :]


def inner_product_distances(x: Tensor, y: Tensor | None = None) -> Tensor:
    """InGNN ablation: d_ij = -x_i · y_j (``y`` defaults to ``x``; inputs flattened to
    rows), so that the most similar sample is the nearest. B x B (or B x len(y))."""
    x = x.flatten(1)
    y = x if y is None else y.flatten(1)
    return -(x @ y.transpose(0, 1))


def euclidean_distances(x: Tensor, y: Tensor | None = None) -> Tensor:
    """EucGNN ablation: squared Euclidean distances ‖x_i − y_j‖² (*inferred*: squared, as
    in the adaptive-neighbours line of work), ``y`` defaulting to ``x``; inputs flattened.

    Computed as ‖a‖² + ‖b‖² − 2 a·b on features centred by a common mean (distances are
    translation invariant; centring removes most of the cancellation), clamped >= 0; for
    ``y=None`` the diagonal is exactly 0. No square root, so the gradient is finite at
    coincident points.
    """
    x = x.flatten(1)
    same = y is None
    y = x if same else y.flatten(1)
    centre = (x.mean(0) if same else torch.cat([x, y]).mean(0)).detach()
    xc = x - centre
    yc = xc if same else y - centre
    d = (xc * xc).sum(1)[:, None] + (yc * yc).sum(1)[None, :] - 2.0 * (xc @ yc.transpose(0, 1))
    d = d.clamp_min(0.0)
    if same:
        d = d * (1.0 - torch.eye(d.shape[0], dtype=d.dtype, device=d.device))
    return d


# --------------------------------------------------------------------------------------
# GCN
# --------------------------------------------------------------------------------------

class GraphConv(nn.Linear):
    """One graph convolution ``Â X W + b`` (Kipf & Welling; the bias is added after the
    aggregation as in their reference code). A subclass of ``nn.Linear``: called without
    a graph (``adj=None``) it is the plain linear layer, i.e. the identity graph."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias=bias)
        nn.init.xavier_uniform_(self.weight)  # *inferred*: Glorot, Kipf & Welling's reference
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor, adj: Tensor | None = None) -> Tensor:  # type: ignore[override]
        if adj is None:
            return F.linear(x, self.weight, self.bias)
        out = adj @ F.linear(x, self.weight)
        return out if self.bias is None else out + self.bias


class GCN(nn.Module):
    """Two graph-convolution layers (the CNN2GNN student, "a two layers GNN"):

        H = ReLU(Â · dropout(X) W1 + b1),   Z = Â · dropout(H) W2 + b2

    ``dropout`` acts on the input of each layer (Kipf & Welling's reference).
    ``forward(x, adj) -> (logits Z, hidden H)``; ``adj=None`` is the identity graph.
    """

    def __init__(self, in_dim: int, hidden_dim: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.in_dim, self.hidden_dim, self.num_classes = int(in_dim), int(hidden_dim), int(num_classes)
        self.dropout = float(dropout)
        self.layer1 = GraphConv(self.in_dim, self.hidden_dim)
        self.layer2 = GraphConv(self.hidden_dim, self.num_classes)

    def forward(self, x: Tensor, adj: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = F.dropout(x.flatten(1), self.dropout, self.training)
        h = F.relu(self.layer1(x, adj))
        z = self.layer2(F.dropout(h, self.dropout, self.training), adj)
        return z, h


# --------------------------------------------------------------------------------------
# Graph head
# --------------------------------------------------------------------------------------

class GraphHead(nn.Module):
    """The differentiable sparse graph head (CNN2GNN §3.2): an MLP
    ``in_dim → hidden_dims... → num_train`` (ReLU between layers, *no* activation on the
    output — *inferred*) whose n outputs are the distances from an input to the n
    training samples; d_ij = head(x_i)[j]. Widths are *inferred* (the paper's numbers
    were lost): default one hidden layer of 512.

    The output layer is ``out`` (hidden x n weight). For a training batch with dataset
    indices ``index``, :meth:`distances_to` gathers only those rows of the output weight,
    so a batch costs B x B; :meth:`forward` gives all n columns (B x n; Mechanism 2).
    """

    def __init__(self, in_dim: int, num_train: int, hidden_dims: tuple[int, ...] = (512,)):
        super().__init__()
        self.in_dim, self.num_train = int(in_dim), int(num_train)
        self.hidden_dims = tuple(int(h) for h in hidden_dims)
        if self.num_train < 1:
            raise ValueError(f"num_train must be >= 1, got {num_train}")
        layers: list[nn.Module] = []
        prev = self.in_dim
        for h in self.hidden_dims:
            layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
            prev = h
        self.body = nn.Sequential(*layers)
        self.out = nn.Linear(prev, self.num_train)

    def features(self, x: Tensor) -> Tensor:
        """The last hidden layer (B x hidden) of flattened inputs."""
        return self.body(x.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        """Distances from every input to all n training samples, B x n."""
        return self.out(self.features(x))

    def distances_to(self, x: Tensor, index: Tensor) -> Tensor:
        """Distances from the inputs to the training samples ``index`` only,
        ``B x len(index)`` = ``h @ W[index]ᵀ + b[index]`` (the gradient reaches just
        those rows of the output layer)."""
        index = torch.as_tensor(index, device=self.out.weight.device).long()
        if index.dim() != 1:
            raise ValueError(f"index must be 1-D, got shape {tuple(index.shape)}")
        h = self.features(x)
        w = self.out.weight.index_select(0, index)
        b = None if self.out.bias is None else self.out.bias.index_select(0, index)
        return F.linear(h, w, b)

    @staticmethod
    def num_parameters(in_dim: int, hidden_dims: tuple[int, ...], num_train: int) -> int:
        """Parameter count of a head with these widths (weights and biases)."""
        total, prev = 0, int(in_dim)
        for h in list(hidden_dims) + [int(num_train)]:
            total += prev * int(h) + int(h)
            prev = int(h)
        return total

    @staticmethod
    def memory_bytes(in_dim: int, hidden_dims: tuple[int, ...], num_train: int,
                     dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the head's parameters plus their gradients (optimizer state excluded)."""
        itemsize = torch.empty((), dtype=dtype).element_size()
        return 2 * itemsize * GraphHead.num_parameters(in_dim, hidden_dims, num_train)


# --------------------------------------------------------------------------------------
# The student
# --------------------------------------------------------------------------------------

class GNNStudent(nn.Module):
    """The GNN student kdbench trains for CNN2GNN: an optional :class:`GraphHead` and a
    two-layer :class:`GCN` on batch graphs.

    ``graph`` chooses where distances come from: ``"head"`` (the paper's learned head),
    ``"inner"`` (InGNN: negated inner products of the input features) or ``"euclid"``
    (EucGNN: squared Euclidean distances); then Eq. 3 (:func:`sparse_conditional`, self
    excluded) and :func:`graph_from_conditional` with ``symmetric`` / ``self_loops``.

    Inputs are any ``B x ...`` tensor, flattened to ``B x in_dim`` (pixels by default, or
    frozen teacher embeddings). ``forward(x)`` and ``forward_taps(x)`` without ``adj``
    use the identity graph (each node alone: the GCN is then an MLP); training passes the
    batch graph from :meth:`batch_adjacency`. Taps: ``embedding`` = the hidden layer H, no
    stages, ``extras["adjacency"]`` = the graph used (``None`` = identity).
    """

    tap_kind = "gnn"
    supports_preact = False
    arch_name = "gnn"

    def __init__(self, gcn: GCN, head: GraphHead | None = None, *, graph: GraphKind = "head", k: int = 10,
                 symmetric: bool = True, self_loops: bool = True):
        super().__init__()
        if graph not in GRAPH_KINDS:
            raise ValueError(f"graph must be one of {GRAPH_KINDS}, got {graph!r}")
        if graph == "head" and head is None:
            raise ValueError("graph='head' needs a GraphHead")
        k = operator.index(k)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if head is not None and head.in_dim != gcn.in_dim:
            raise ValueError(f"head in_dim {head.in_dim} != GCN in_dim {gcn.in_dim}")
        self.gcn = gcn
        self.head = head
        self.graph = graph
        self.k = k
        self.symmetric = bool(symmetric)
        self.self_loops = bool(self_loops)

    @property
    def num_classes(self) -> int:
        return self.gcn.num_classes

    @property
    def embedding_dim(self) -> int:
        return self.gcn.hidden_dim

    @property
    def input_shape(self) -> tuple[int]:
        """The shape of one input row (flattened pixels or a teacher embedding); what
        :func:`kdbench.taps.measure` feeds instead of an image."""
        return (self.gcn.layer1.in_features,)

    def batch_distances(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """B x B distances of a training batch: head outputs at the batch's own dataset
        indices (``graph="head"``; ``index`` required), else inner/Euclidean distances of
        the flattened inputs."""
        feats = x.flatten(1)
        if self.graph == "head":
            if index is None:
                raise ValueError("graph='head' needs the batch's dataset indices (index)")
            return self.head.distances_to(feats, index)
        if self.graph == "inner":
            return inner_product_distances(feats)
        return euclidean_distances(feats)

    def adjacency_from_distances(self, d: Tensor, *, exclude_self: bool = True) -> Tensor:
        """Eq. 3 (k neighbours) then the normalised graph, with this student's options."""
        p = sparse_conditional(d, self.k, exclude_self=exclude_self)
        return graph_from_conditional(p, symmetric=self.symmetric, self_loops=self.self_loops)

    def batch_adjacency(self, x: Tensor, index: Tensor | None = None) -> Tensor:
        """The normalised B x B graph of a training batch (differentiable in the head)."""
        return self.adjacency_from_distances(self.batch_distances(x, index), exclude_self=True)

    def forward_taps(self, x: Tensor, preact: bool = False, adj: Tensor | None = None) -> Outputs:
        """Logits and hidden embedding of the GCN on graph ``adj`` (``None``: identity)."""
        logits, hidden = self.gcn(x.flatten(1), adj)
        return Outputs(logits=logits, embedding=hidden, stages=(), extras={"adjacency": adj})

    def forward(self, x: Tensor, adj: Tensor | None = None) -> Tensor:
        return self.gcn(x.flatten(1), adj)[0]

    def get_classifier(self) -> nn.Linear:
        """The last GCN layer (a :class:`GraphConv`, an ``nn.Linear``)."""
        return self.gcn.layer2


def make_gnn_student(in_dim: int, num_classes: int, num_train: int | None = None, *, hidden_dim: int = 256,
                     head_hidden_dims: tuple[int, ...] = (512,), k: int = 10, graph: GraphKind = "head",
                     symmetric: bool = True, self_loops: bool = True, dropout: float = 0.0) -> GNNStudent:
    """Build a :class:`GNNStudent`. ``num_train`` (the head's n outputs) is required for
    ``graph="head"`` and ignored otherwise (no head is built). Defaults *inferred*:
    GCN hidden 256, head one hidden layer of 512, k = 10, symmetric graph with self loops,
    no dropout."""
    if graph not in GRAPH_KINDS:
        raise ValueError(f"graph must be one of {GRAPH_KINDS}, got {graph!r}")
    head = None
    if graph == "head":
        if num_train is None:
            raise ValueError("graph='head' needs num_train (the number of training samples)")
        head = GraphHead(in_dim, num_train, tuple(head_hidden_dims))
    gcn = GCN(in_dim, hidden_dim, num_classes, dropout=dropout)
    return GNNStudent(gcn, head, graph=graph, k=k, symmetric=symmetric, self_loops=self_loops)
