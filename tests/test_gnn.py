"""Golden tests of the CNN2GNN student's building blocks (students/gnn.py).

Expected values come from naive code written here (plain Python loops over rows, Python's
stable ``sorted``, the formulas of REFERENCE.md §2 by hand), never from the functions under
test.
"""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kdbench.models import classifier_parameters
from kdbench.taps import Outputs, measure
from kdbench.students.gnn import (GCN, GNNStudent, GraphConv, GraphHead, euclidean_distances, graph_from_conditional,
                          inner_product_distances, make_gnn_student, sparse_conditional)

EPS = 1e-10  # sparse_conditional's default relative tie weight


# ------------------------------------------------------------------ naive references

def naive_eq3(rows, k, exclude_self=False, tie_rule=False, eps=EPS):
    """Eq. 3 per row with Python lists. Candidates sorted by a stable sort (ties: lower
    column first); k_eff = min(k, c - 1) for c >= 2 candidates, p = 1 on a single
    candidate, zeros without candidates. With ``tie_rule`` the documented tie rule:
    weights (g_j + δ) with δ = eps·D/k, and 1/k each when D == 0."""
    out = []
    for i, row in enumerate(rows):
        res = [0.0] * len(row)
        cands = sorted(((v, j) for j, v in enumerate(row) if not (exclude_self and j == i)), key=lambda t: t[0])
        c = len(cands)
        if c == 1:
            res[cands[0][1]] = 1.0
        elif c >= 2:
            ke = min(k, c - 1)
            dk1 = cands[ke][0]
            denom = ke * dk1 - sum(v for v, _ in cands[:ke])
            if not tie_rule:
                for v, j in cands[:ke]:
                    res[j] = max(dk1 - v, 0.0) / denom
            elif denom == 0:
                for _, j in cands[:ke]:
                    res[j] = 1.0 / ke
            else:
                delta = eps * denom / ke
                for v, j in cands[:ke]:
                    res[j] = (dk1 - v + delta) / (denom + ke * delta)
        out.append(res)
    return out


def naive_matmul(a, b):
    return [[sum(a[i][t] * b[t][j] for t in range(len(b))) for j in range(len(b[0]))] for i in range(len(a))]


def as_lists(t):
    return t.detach().cpu().double().tolist()


def assert_close_lists(got, want, atol):
    assert len(got) == len(want)
    for r_got, r_want in zip(got, want):
        assert len(r_got) == len(r_want)
        for a, b in zip(r_got, r_want):
            assert abs(a - b) <= atol, (got, want)


def finite_grad(d, p):
    """Backward a random linear function of p into d; return d.grad (checked finite)."""
    w = torch.randn(p.shape, generator=torch.Generator().manual_seed(3), dtype=p.dtype)
    (p * w).sum().backward()
    assert d.grad is not None
    assert torch.isfinite(d.grad).all(), d.grad
    return d.grad


# ------------------------------------------------------------------ Eq. 3

@pytest.mark.parametrize("m,n,k,exclude", [(5, 12, 3, False), (7, 7, 2, True), (4, 30, 10, False),
                                           (9, 9, 1, True), (3, 6, 5, False), (16, 16, 15, True)])
def test_eq3_matches_naive_on_random_distances(m, n, k, exclude):
    g = torch.Generator().manual_seed(m * 100 + n + k)
    d = torch.randn(m, n, generator=g, dtype=torch.float64) * 3.0  # any real distances
    p = sparse_conditional(d, k, exclude_self=exclude)
    want = naive_eq3(d.tolist(), k, exclude)
    assert_close_lists(as_lists(p), want, atol=1e-9)
    c = n - 1 if exclude else n
    ke = min(k, c - 1)
    assert (p != 0).sum(1).tolist() == [ke] * m
    assert torch.allclose(p.sum(1), torch.ones(m, dtype=torch.float64), atol=1e-12)
    assert (p >= 0).all()
    if exclude:
        assert (torch.diagonal(p) == 0).all()


def test_eq3_float32_and_invariances():
    g = torch.Generator().manual_seed(0)
    d = torch.rand(6, 20, generator=g, dtype=torch.float64)
    want = naive_eq3(d.tolist(), 4)
    p32 = sparse_conditional(d.float(), 4)
    assert p32.dtype == torch.float32
    assert_close_lists(as_lists(p32), want, atol=2e-5)
    # Eq. 3 depends only on differences of distances (translation) and ratios of
    # differences (positive scaling).
    p = sparse_conditional(d, 4)
    assert torch.allclose(sparse_conditional(d + 1000.0, 4), p, atol=1e-9)
    assert torch.allclose(sparse_conditional(d - 7.5, 4), p, atol=1e-12)
    assert torch.allclose(sparse_conditional(d * 1e-6, 4), p, atol=1e-9)
    assert torch.allclose(sparse_conditional(d * 1e6, 4), p, atol=1e-9)


def test_eq3_hand_example():
    # Row [0.1, 0.4, 0.2, 0.9], k = 2: sorted 0.1 (c0), 0.2 (c2), 0.4 (c1) -> d(3) = 0.4,
    # denominator 2*0.4 - 0.1 - 0.2 = 0.5; p = [0.3/0.5, 0, 0.2/0.5, 0] = [0.6, 0, 0.4, 0].
    d = torch.tensor([[0.1, 0.4, 0.2, 0.9]], dtype=torch.float64)
    p = sparse_conditional(d, 2)
    assert_close_lists(as_lists(p), [[0.6, 0.0, 0.4, 0.0]], atol=1e-9)


@pytest.mark.parametrize("exclude", [False, True])
def test_eq3_gradcheck_without_ties(exclude):
    g = torch.Generator().manual_seed(1)
    n = 8
    # Rows are permutations of well separated values (gaps >= 0.09) so that the finite
    # differences (1e-6) never change the neighbour selection.
    rows = [torch.randperm(n, generator=g).double() * 0.1 + torch.rand(n, generator=g, dtype=torch.float64) * 0.01
            for _ in range(n)]
    d = torch.stack(rows).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sparse_conditional(t, 3, exclude_self=exclude), (d,),
                                    eps=1e-6, atol=1e-6)


def test_eq3_gradient_is_a_real_sensitivity():
    # For row [0.1, 0.4, 0.2, 0.9], k=2: p_0 = (d1 - d0)/(2 d1 - d0 - d2) with d1 = 0.4
    # the 3rd distance. dp_0/dd0 = (-(D) + (d1 - d0)) / D^2 with D = 0.5: (-0.5+0.3)/0.25 = -0.8.
    d = torch.tensor([[0.1, 0.4, 0.2, 0.9]], dtype=torch.float64, requires_grad=True)
    sparse_conditional(d, 2)[0, 0].backward()
    assert abs(d.grad[0, 0].item() - (-0.8)) < 1e-8
    # dp_0/dd2 = (d1 - d0)/D^2 = 0.3/0.25 = 1.2 ; dp_0/dd1 = (D - 2 (d1 - d0))/D^2 = -0.1/0.25 = -0.4
    assert abs(d.grad[0, 2].item() - 1.2) < 1e-8
    assert abs(d.grad[0, 1].item() - (-0.4)) < 1e-8
    assert d.grad[0, 3].item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eq3_ties_keep_k_nonzeros(dtype):
    d = torch.tensor([
        [3.0, 1.0, 2.0, 2.0, 2.0, 5.0],   # tie at the boundary: c1, c2 selected (stable), c3 is d(k+1)
        [2.0, 2.0, 1.0, 5.0, 6.0, 7.0],   # c2, c0 selected; c1 (tie with c0) is d(k+1)
        [1.0, 1.0, 3.0, 4.0, 4.0, 0.5],   # no boundary tie
        [4.0, 4.0, 4.0, 4.0, 4.0, 4.0],   # all equal -> exactly 1/k on c0, c1
        [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],   # all zero
        [-1.0, -1.0, -1.0, 9.0, 9.0, 9.0],  # all k+1 equal, negative
    ], dtype=dtype, requires_grad=True)
    p = sparse_conditional(d, 2)
    assert (p != 0).sum(1).tolist() == [2] * 6
    assert torch.allclose(p.sum(1), torch.ones(6, dtype=dtype), atol=1e-6)
    support = [sorted(torch.nonzero(r).flatten().tolist()) for r in p]
    assert support == [[1, 2], [0, 2], [0, 5], [0, 1], [0, 1], [0, 1]]
    assert_close_lists(as_lists(p), naive_eq3(d.tolist(), 2, tie_rule=True), atol=1e-6)
    third = torch.tensor(0.5, dtype=dtype)
    assert (p[3:, :2] == third).all()  # exactly 1/k on degenerate rows
    # Tied with d(k+1): tiny but positive weight (~eps/k).
    assert 0 < p[0, 2].item() < 1e-8 and 0 < p[1, 0].item() < 1e-8
    finite_grad(d, p)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_eq3_half_precision_ties(dtype):
    d = torch.tensor([[3.0, 1.0, 2.0, 2.0, 2.0, 5.0],
                      [4.0, 4.0, 4.0, 4.0, 4.0, 4.0],
                      [0.5, 0.25, 0.75, 1.0, 2.0, 0.0]], dtype=dtype, requires_grad=True)
    p = sparse_conditional(d, 2)
    assert p.dtype == dtype and torch.isfinite(p).all()
    assert (p != 0).sum(1).tolist() == [2, 2, 2]
    assert torch.allclose(p.float().sum(1), torch.ones(3), atol=1e-2)
    # row 2: sorted 0 (c5), 0.25 (c1), 0.5 (c0) -> p = [0.5/0.75, 0.25/0.75] on c5, c1
    assert abs(p[2, 5].item() - 2 / 3) < 1e-2 and abs(p[2, 1].item() - 1 / 3) < 1e-2
    finite_grad(d, p)


def test_eq3_all_equal_rows_exactly_one_over_k():
    for dtype in (torch.float32, torch.float64):
        d = torch.full((5, 9), 7.25, dtype=dtype, requires_grad=True)
        p = sparse_conditional(d, 3)
        assert (p[:, :3] == torch.tensor(1 / 3, dtype=dtype)).all() and (p[:, 3:] == 0).all()
        finite_grad(d, p)
        d2 = torch.full((5, 5), 7.25, dtype=dtype, requires_grad=True)
        p2 = sparse_conditional(d2, 3, exclude_self=True)
        for i in range(5):
            want = [j for j in range(5) if j != i][:3]
            assert torch.nonzero(p2[i]).flatten().tolist() == want
            assert (p2[i, want] == torch.tensor(1 / 3, dtype=dtype)).all()
        finite_grad(d2, p2)


def test_eq3_near_ties_at_float_resolution_are_finite():
    # float32 values ~1e4 whose gaps are a few ulps (or zero): no inf/NaN, exact counts.
    base = torch.tensor([1e4, 1e4, 1e4 + 1e-3, 1e4 + 2e-3, 1e4 + 1.0, 2e4], dtype=torch.float32)
    d = torch.stack([base, base.flip(0), base + 1e-30, torch.tensor([1e-40, 0.0, 2e-40, 3e-40, 6.0, 7.0])])
    d.requires_grad_(True)
    p = sparse_conditional(d, 3)
    assert torch.isfinite(p).all()
    assert (p != 0).sum(1).tolist() == [3] * 4
    assert torch.allclose(p.sum(1), torch.ones(4), atol=1e-6)
    finite_grad(d, p)


def test_eq3_many_boundary_ties_match_stable_sort():
    # Integer distances on wide rows: many ties at the selection boundary; the selected
    # columns must be those of a stable sort, values the documented tie rule.
    g = torch.Generator().manual_seed(5)
    d = torch.randint(0, 6, (40, 300), generator=g).double()
    for k in (1, 4, 20):
        p = sparse_conditional(d, k)
        want = naive_eq3(d.tolist(), k, tie_rule=True)
        assert_close_lists(as_lists(p), want, atol=1e-9)
        assert [sorted(torch.nonzero(r).flatten().tolist()) for r in p] == \
            [[j for j, v in enumerate(r) if v != 0] for r in want]
        assert (p != 0).sum(1).tolist() == [k] * 40
    sq = d[:, :40].clone()
    p = sparse_conditional(sq, 4, exclude_self=True)
    assert_close_lists(as_lists(p), naive_eq3(sq.tolist(), 4, exclude_self=True, tie_rule=True), atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,k,exclude", [(1, 3, False), (1, 3, True), (2, 3, True), (2, 3, False), (2, 1, True),
                                         (3, 2, False), (3, 2, True), (4, 3, False), (4, 3, True), (5, 9, False),
                                         (5, 9, True), (6, 6, True)])
def test_eq3_tiny_inputs(dtype, n, k, exclude):
    g = torch.Generator().manual_seed(n * 10 + k)
    d = torch.rand(n, n, generator=g, dtype=torch.float64).to(dtype).requires_grad_(True)
    p = sparse_conditional(d, k, exclude_self=exclude)
    assert p.shape == (n, n) and p.dtype == dtype
    assert torch.isfinite(p).all()
    c = n - 1 if exclude else n
    want_nnz = 0 if c == 0 else (1 if c == 1 else min(k, c - 1))
    assert (p != 0).sum(1).tolist() == [want_nnz] * n
    want_sum = torch.zeros(n, dtype=dtype) if c == 0 else torch.ones(n, dtype=dtype)
    assert torch.allclose(p.sum(1), want_sum, atol=1e-6)
    if exclude:
        assert (torch.diagonal(p) == 0).all()
    assert_close_lists(as_lists(p), naive_eq3(d.tolist(), k, exclude), atol=1e-5)
    finite_grad(d, p)


def test_eq3_tiny_tied_inputs():
    for n, k in [(2, 1), (2, 5), (3, 2), (4, 3)]:
        for exclude in (False, True):
            d = torch.zeros(n, n, requires_grad=True)
            p = sparse_conditional(d, k, exclude_self=exclude)
            assert torch.isfinite(p).all()
            assert torch.allclose(p.sum(1), torch.ones(n), atol=1e-6)
            finite_grad(d, p)


def test_eq3_exclude_self_never_weights_the_diagonal():
    g = torch.Generator().manual_seed(2)
    n = 10
    d = torch.rand(n, n, generator=g, dtype=torch.float64)
    d.fill_diagonal_(-100.0)  # the diagonal would be every row's nearest
    p = sparse_conditional(d, 3, exclude_self=True)
    assert (torch.diagonal(p) == 0).all()
    assert_close_lists(as_lists(p), naive_eq3(d.tolist(), 3, exclude_self=True), atol=1e-9)
    with pytest.raises(ValueError):
        sparse_conditional(torch.rand(3, 4), 2, exclude_self=True)


def test_eq3_rectangular_and_validation():
    g = torch.Generator().manual_seed(4)
    d = torch.rand(3, 1000, generator=g, dtype=torch.float64)  # test batch x training set
    p = sparse_conditional(d, 7)
    assert_close_lists(as_lists(p), naive_eq3(d.tolist(), 7), atol=1e-9)
    assert sparse_conditional(torch.rand(0, 5), 2).shape == (0, 5)
    with pytest.raises(ValueError):
        sparse_conditional(torch.rand(3, 4), 0)
    with pytest.raises(ValueError):
        sparse_conditional(torch.rand(4), 2)
    with pytest.raises(TypeError):
        sparse_conditional(torch.ones(3, 4, dtype=torch.long), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_eq3_on_cuda():
    d = torch.rand(8, 50, dtype=torch.float64)
    p = sparse_conditional(d.cuda(), 4).cpu()
    assert_close_lists(as_lists(p), naive_eq3(d.tolist(), 4), atol=1e-9)


# ------------------------------------------------------------------ graph normalisation

P3 = [[0.0, 1.0, 0.0],
      [0.5, 0.0, 0.5],
      [0.0, 1.0, 0.0]]


def test_graph_symmetric_with_self_loops_by_hand():
    # A = (P+Pᵀ)/2 = [[0,.75,0],[.75,0,.75],[0,.75,0]]; +I; degrees 1.75, 2.5, 1.75.
    a = graph_from_conditional(torch.tensor(P3, dtype=torch.float64))
    s = math.sqrt(1.75 * 2.5)
    want = [[1 / 1.75, 0.75 / s, 0.0],
            [0.75 / s, 1 / 2.5, 0.75 / s],
            [0.0, 0.75 / s, 1 / 1.75]]
    assert_close_lists(as_lists(a), want, atol=1e-12)


def test_graph_symmetric_without_self_loops_by_hand():
    # degrees 0.75, 1.5, 0.75
    a = graph_from_conditional(torch.tensor(P3, dtype=torch.float64), self_loops=False)
    s = math.sqrt(0.75 * 1.5)
    want = [[0.0, 0.75 / s, 0.0], [0.75 / s, 0.0, 0.75 / s], [0.0, 0.75 / s, 0.0]]
    assert_close_lists(as_lists(a), want, atol=1e-12)


def test_graph_directed_by_hand():
    # P + I = [[1,1,0],[.5,1,.5],[0,1,1]], every row sum 2 -> (P + I)/2.
    a = graph_from_conditional(torch.tensor(P3, dtype=torch.float64), symmetric=False)
    want = [[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]]
    assert_close_lists(as_lists(a), want, atol=1e-12)
    # rows of P sum to 1 -> D = I -> P itself
    a = graph_from_conditional(torch.tensor(P3, dtype=torch.float64), symmetric=False, self_loops=False)
    assert_close_lists(as_lists(a), P3, atol=1e-12)


def test_graph_isolated_node_no_nan():
    p = torch.tensor([[0.0, 1.0, 0.0, 0.0],
                      [1.0, 0.0, 0.0, 0.0],
                      [0.0, 1.0, 0.0, 0.0],
                      [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    a = graph_from_conditional(p, self_loops=False)
    # A = [[0,1,0,0],[1,0,.5,0],[0,.5,0,0],[0,0,0,0]], degrees 1, 1.5, 0.5, 0.
    want = [[0.0, 1 / math.sqrt(1.5), 0.0, 0.0],
            [1 / math.sqrt(1.5), 0.0, 0.5 / math.sqrt(1.5 * 0.5), 0.0],
            [0.0, 0.5 / math.sqrt(1.5 * 0.5), 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0]]
    assert_close_lists(as_lists(a), want, atol=1e-12)
    a.sum().backward()
    assert torch.isfinite(p.grad).all()
    with_loops = graph_from_conditional(p.detach())
    assert with_loops[3].tolist() == [0.0, 0.0, 0.0, 1.0]


# ------------------------------------------------------------------ distances

X3 = [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]


def test_inner_product_distances_by_hand():
    d = inner_product_distances(torch.tensor(X3, dtype=torch.float64))
    assert_close_lists(as_lists(d), [[-1.0, 0.0, -1.0], [0.0, -4.0, -2.0], [-1.0, -2.0, -2.0]], atol=1e-12)
    d2 = inner_product_distances(torch.tensor(X3), torch.tensor([[2.0, -1.0]]))
    assert_close_lists(as_lists(d2), [[-2.0], [2.0], [-1.0]], atol=1e-6)


def test_euclidean_distances_by_hand():
    d = euclidean_distances(torch.tensor(X3, dtype=torch.float64))
    # (0,1): 1+4 = 5; (0,2): 0+1 = 1; (1,2): 1+1 = 2
    assert_close_lists(as_lists(d), [[0.0, 5.0, 1.0], [5.0, 0.0, 2.0], [1.0, 2.0, 0.0]], atol=1e-12)
    d2 = euclidean_distances(torch.tensor(X3), torch.tensor([[0.0, 0.0], [1.0, 0.0]]))
    assert_close_lists(as_lists(d2), [[1.0, 0.0], [4.0, 5.0], [2.0, 1.0]], atol=1e-5)
    # images are flattened; a large common offset does not destroy precision (centring)
    x = torch.tensor(X3).reshape(3, 1, 2) + 1e4
    assert_close_lists(as_lists(euclidean_distances(x)), [[0.0, 5.0, 1.0], [5.0, 0.0, 2.0], [1.0, 2.0, 0.0]],
                       atol=1e-3)


def test_euclidean_gradient_finite_at_duplicates():
    x = torch.tensor([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], requires_grad=True)
    d = euclidean_distances(x)
    assert (d >= 0).all() and d[0, 1].item() == 0.0
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


# ------------------------------------------------------------------ GCN

def test_gcn_by_hand():
    x = [[1.0, 2.0], [0.0, -1.0], [3.0, 0.5]]
    adj = [[0.5, 0.5, 0.0], [0.25, 0.5, 0.25], [0.0, 0.5, 0.5]]
    w1 = [[1.0, -1.0, 0.5], [0.5, 2.0, -1.0]]  # in 2 -> hidden 3 (math orientation)
    b1 = [0.1, -0.2, 0.0]
    w2 = [[1.0, 0.0], [-1.0, 1.0], [2.0, 0.5]]  # hidden 3 -> classes 2
    b2 = [0.0, 1.0]
    gcn = GCN(2, 3, 2).double()
    with torch.no_grad():
        gcn.layer1.weight.copy_(torch.tensor(w1, dtype=torch.float64).T)
        gcn.layer1.bias.copy_(torch.tensor(b1, dtype=torch.float64))
        gcn.layer2.weight.copy_(torch.tensor(w2, dtype=torch.float64).T)
        gcn.layer2.bias.copy_(torch.tensor(b2, dtype=torch.float64))
    agg1 = naive_matmul(adj, naive_matmul(x, w1))
    h = [[max(v + b1[j], 0.0) for j, v in enumerate(r)] for r in agg1]
    agg2 = naive_matmul(adj, naive_matmul(h, w2))
    z = [[v + b2[j] for j, v in enumerate(r)] for r in agg2]
    logits, hidden = gcn(torch.tensor(x, dtype=torch.float64), torch.tensor(adj, dtype=torch.float64))
    assert_close_lists(as_lists(hidden), h, atol=1e-12)
    assert_close_lists(as_lists(logits), z, atol=1e-12)
    # identity graph == no graph (an MLP)
    hx = [[max(v + b1[j], 0.0) for j, v in enumerate(r)] for r in naive_matmul(x, w1)]
    zx = [[v + b2[j] for j, v in enumerate(r)] for r in naive_matmul(hx, w2)]
    logits0, _ = gcn(torch.tensor(x, dtype=torch.float64), None)
    logits_i, _ = gcn(torch.tensor(x, dtype=torch.float64), torch.eye(3, dtype=torch.float64))
    assert_close_lists(as_lists(logits0), zx, atol=1e-12)
    assert_close_lists(as_lists(logits_i), zx, atol=1e-12)


def test_gcn_dropout_only_in_training():
    torch.manual_seed(0)
    gcn = GCN(6, 5, 3, dropout=0.5)
    x, adj = torch.randn(4, 6), torch.eye(4)
    gcn.eval()
    assert torch.equal(gcn(x, adj)[0], gcn(x, adj)[0])
    gcn.train()
    outs = [gcn(x, adj)[0] for _ in range(3)]
    assert not all(torch.equal(outs[0], o) for o in outs[1:])
    assert isinstance(gcn.layer2, nn.Linear) and isinstance(gcn.layer2, GraphConv)


# ------------------------------------------------------------------ graph head

def test_head_distances_to_are_forward_columns():
    torch.manual_seed(0)
    head = GraphHead(12, 30, hidden_dims=(8, 6)).double()
    x = torch.randn(5, 3, 2, 2, dtype=torch.float64)  # flattened inside
    index = torch.tensor([3, 7, 0, 29, 3])
    full = head(x)
    assert full.shape == (5, 30)
    assert torch.allclose(head.distances_to(x, index), full[:, index], atol=1e-12)
    # hand check of one entry: out(relu(W2 relu(W1 x + b1) + b2))[7]
    xv = x[1].flatten()
    h1 = torch.relu(head.body[0].weight @ xv + head.body[0].bias)
    h2 = torch.relu(head.body[2].weight @ h1 + head.body[2].bias)
    want = sum(head.out.weight[7, t].item() * h2[t].item() for t in range(6)) + head.out.bias[7].item()
    assert abs(full[1, 7].item() - want) < 1e-12
    # no hidden layers: a linear head; raw outputs (negative values allowed)
    lin = GraphHead(4, 9, hidden_dims=())
    assert lin(torch.randn(2, 4)).shape == (2, 9) and len(lin.body) == 0


def test_head_gradient_reaches_only_gathered_rows():
    torch.manual_seed(1)
    head = GraphHead(10, 40, hidden_dims=(16,))
    index = torch.tensor([5, 11, 2, 39])
    head.distances_to(torch.randn(4, 10), index).pow(2).sum().backward()
    g = head.out.weight.grad
    rows = set(torch.nonzero(g.abs().sum(1)).flatten().tolist())
    assert rows == {5, 11, 2, 39}
    assert head.body[0].weight.grad.abs().sum() > 0


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.numel, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.numel:
                self.numel, self.op = t.numel(), func
        return out


def test_head_large_n_never_builds_n_by_n():
    n, b, hidden = 50_000, 64, 32
    torch.manual_seed(2)
    head = GraphHead(128, n, hidden_dims=(hidden,))
    x = torch.randn(b, 128)
    index = torch.randperm(n)[:b]
    t0 = time.perf_counter()
    with _LargestTensor() as largest:
        d = head.distances_to(x, index)
        p = sparse_conditional(d, 5, exclude_self=True)
        adj = graph_from_conditional(p)
        adj.sum().backward()
    elapsed = time.perf_counter() - t0
    assert d.shape == (b, b) and adj.shape == (b, b)
    assert elapsed < 20.0
    # The largest tensor of the whole step is the output layer's gradient (n x hidden):
    # no n x n, and not even B x n (what head(x)[:, index] would build).
    assert largest.numel <= n * hidden < b * n, (largest.numel, largest.op)
    assert head(x[:2]).shape == (2, n)


def test_head_memory_bytes():
    # 3072 -> 512 -> 50,000 with biases: 3072*512 + 512 + 512*50000 + 50000 parameters,
    # parameters and gradients in float32 (4 bytes each).
    params = 3072 * 512 + 512 + 512 * 50_000 + 50_000
    assert GraphHead.num_parameters(3072, (512,), 50_000) == params
    assert GraphHead.memory_bytes(3072, (512,), 50_000) == 2 * 4 * params
    assert GraphHead.memory_bytes(3072, (512,), 50_000, dtype=torch.float64) == 2 * 8 * params
    small = GraphHead(10, 13, hidden_dims=(7, 5))
    assert GraphHead.num_parameters(10, (7, 5), 13) == sum(p.numel() for p in small.parameters())


# ------------------------------------------------------------------ the student

def small_student(graph="head", **kw):
    torch.manual_seed(0)
    kw = {"hidden_dim": 16, "head_hidden_dims": (32,), "k": 3, "graph": graph, **kw}
    return make_gnn_student(3 * 8 * 8, 10, num_train=100 if graph == "head" else None, **kw)


def test_student_measure():
    model = small_student()
    assert model.tap_kind == "gnn" and model.arch_name == "gnn" and model.supports_preact is False
    info = measure(model, (3, 8, 8))
    assert info.kind == "gnn" and info.num_stages == 0 and info.embedding_dim == 16
    assert info.num_classes == 10 and info.has_preact is False
    assert info.num_params == sum(p.numel() for p in model.parameters())


def test_student_identity_graph_and_classifier():
    model = small_student().eval()
    x = torch.randn(5, 3, 8, 8)
    out = model.forward_taps(x)
    assert isinstance(out, Outputs) and out.stages == () and out.extras == {"adjacency": None}
    assert torch.allclose(model(x), out.logits)
    gcn = model.gcn
    h = torch.relu(x.flatten(1) @ gcn.layer1.weight.T + gcn.layer1.bias)
    assert torch.allclose(out.embedding, h, atol=1e-5)
    assert torch.allclose(out.logits, h @ gcn.layer2.weight.T + gcn.layer2.bias, atol=1e-5)
    clf = model.get_classifier()
    assert clf is gcn.layer2 and isinstance(clf, nn.Linear)
    assert classifier_parameters(model) == {id(gcn.layer2.weight), id(gcn.layer2.bias)}
    assert torch.allclose(clf(out.embedding), out.logits, atol=1e-6)


def test_student_backward_through_batch_adjacency_reaches_head():
    model = small_student()
    x = torch.randn(8, 3, 8, 8)
    index = torch.randperm(100, generator=torch.Generator().manual_seed(0))[:8]
    adj = model.batch_adjacency(x, index)
    assert adj.shape == (8, 8) and torch.allclose(adj, adj.T)
    out = model.forward_taps(x, adj=adj)
    assert out.extras["adjacency"] is adj
    loss = F.cross_entropy(out.logits, torch.arange(8) % 10)
    loss.backward()
    head = model.head
    g = head.out.weight.grad
    assert g is not None and torch.isfinite(g).all()
    assert set(torch.nonzero(g.abs().sum(1)).flatten().tolist()) <= set(index.tolist())
    assert g[index].abs().sum() > 0
    assert head.body[0].weight.grad.abs().sum() > 0
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_student_batch_adjacency_composition():
    model = small_student().double()
    x = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    index = torch.tensor([4, 9, 0, 33, 2, 71])
    d_full = model.head(x)[:, index]
    # Eq. 3 per row by hand (self excluded), then (P+Pᵀ)/2 + I and D^-1/2 Â D^-1/2 by hand.
    p = naive_eq3(d_full.tolist(), 3, exclude_self=True)
    n = 6
    a = [[0.5 * (p[i][j] + p[j][i]) + (1.0 if i == j else 0.0) for j in range(n)] for i in range(n)]
    deg = [sum(r) for r in a]
    want = [[a[i][j] / math.sqrt(deg[i] * deg[j]) for j in range(n)] for i in range(n)]
    assert_close_lists(as_lists(model.batch_adjacency(x, index)), want, atol=1e-8)
    with pytest.raises(ValueError):
        model.batch_adjacency(x)


@pytest.mark.parametrize("graph", ["inner", "euclid"])
def test_student_ablation_graphs(graph):
    model = small_student(graph)
    assert model.head is None and model.graph == graph
    x = torch.randn(7, 3, 8, 8, requires_grad=True)
    adj = model.batch_adjacency(x)
    assert adj.shape == (7, 7) and torch.isfinite(adj).all() and torch.allclose(adj, adj.T)
    model.forward_taps(x, adj=adj).logits.sum().backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_student_tiny_batches(b):
    model = small_student()
    x = torch.randn(b, 3, 8, 8)
    adj = model.batch_adjacency(x, torch.arange(b))
    assert torch.isfinite(adj).all()
    model.forward_taps(x, adj=adj).logits.sum().backward()
    for p in model.parameters():
        assert p.grad is None or torch.isfinite(p.grad).all()


def test_factory_validation_and_options():
    with pytest.raises(ValueError):
        make_gnn_student(12, 3, graph="head")  # no num_train
    with pytest.raises(ValueError):
        make_gnn_student(12, 3, 10, graph="cosine")
    with pytest.raises(ValueError):
        GNNStudent(GCN(12, 4, 3), None, graph="head")
    m = make_gnn_student(12, 3, 10, hidden_dim=4, head_hidden_dims=(6, 5), k=2, symmetric=False,
                         self_loops=False, dropout=0.25)
    assert (m.k, m.symmetric, m.self_loops, m.gcn.dropout) == (2, False, False, 0.25)
    assert m.head.hidden_dims == (6, 5) and m.head.num_train == 10 and m.embedding_dim == 4
    adj = m.batch_adjacency(torch.randn(4, 12), torch.arange(4))
    assert torch.isfinite(adj).all()
