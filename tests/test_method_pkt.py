"""PKT (Passalis & Tefas 2018) golden values, computed with plain loops from REFERENCE.md §1."""
import math

import torch

from kdbench.config import resolve_config
from kdbench.methods.pkt import PKT, pkt_loss, pkt_probabilities
from kdbench.taps import Outputs, TapInfo
from harness import CRD_GRID as CRD_PAIRS, cifar_info as info

EPS = 1e-7


def naive_probabilities(e):
    rows = e.tolist()
    b = len(rows)
    x = []
    for r in rows:
        norm = math.sqrt(sum(v * v for v in r))
        x.append([v / (norm + EPS) for v in r])
    k = [[(sum(a * c for a, c in zip(x[i], x[j])) + 1) / 2 for j in range(b)] for i in range(b)]
    return [[k[i][j] / sum(k[i]) for j in range(b)] for i in range(b)]


def naive_pkt(es, et) -> float:
    """Σ_{i,j} P_t log((P_t + ε)/(P_s + ε)), divided by B² — the mean over ALL B×B entries
    (diagonal included), i.e. the summed row KLs / B², not / B."""
    ps, pt = naive_probabilities(es), naive_probabilities(et)
    b = len(ps)
    total = 0.0
    for i in range(b):
        for j in range(b):
            total += pt[i][j] * math.log((pt[i][j] + EPS) / (ps[i][j] + EPS))
    return total / (b * b)


def test_probabilities_and_loss_match_naive_loops():
    g = torch.Generator().manual_seed(0)
    for b, ds, dt in ((6, 3, 5), (4, 8, 2)):
        es = torch.randn(b, ds, generator=g, dtype=torch.float64)
        et = torch.randn(b, dt, generator=g, dtype=torch.float64).relu()
        p = pkt_probabilities(es)
        assert torch.allclose(p.double(), torch.tensor(naive_probabilities(es), dtype=torch.float64), atol=1e-7)
        assert torch.allclose(p.sum(1), torch.ones(b))
        assert abs(pkt_loss(es, et).item() - naive_pkt(es, et)) < 1e-7


def test_hand_checkable_cases():
    e = torch.randn(5, 4)
    assert abs(pkt_loss(e, e).item()) < 1e-9
    assert abs(pkt_loss(7.0 * e, e).item()) < 1e-7  # cosine kernel: scale-free
    # B = 2: identical teacher rows -> K_t all 1 -> P_t all ½; orthogonal student rows ->
    # K_s = [[1, ½], [½, 1]] -> P_s = [[⅔, ⅓], [⅓, ⅔]].
    # Σ P_t log(P_t/P_s) = ½ log(¾)·2 + ½ log(3/2)·2 = log(9/8); mean over the 4 entries: log(9/8)/4.
    et = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    es = torch.tensor([[1.0, 0.0], [0.0, 5.0]])
    assert abs(pkt_loss(es, et).item() - math.log(9 / 8) / 4) < 1e-6


def test_zero_rows_give_finite_gradients_and_teacher_gets_none():
    es = torch.randn(4, 3)
    es[2] = 0.0  # a dead embedding: sqrt(Σx²) would give a NaN gradient here
    es.requires_grad_(True)
    et = torch.randn(4, 6).requires_grad_(True)
    loss = pkt_loss(es, et)
    loss.backward()
    assert math.isfinite(loss.item()) and torch.isfinite(es.grad).all()
    assert et.grad is None
    p = pkt_probabilities(torch.zeros(3, 2))
    assert torch.allclose(p, torch.full((3, 3), 1 / 3))  # all-zero rows: uniform


def test_autocast_is_off():
    g = torch.Generator().manual_seed(1)
    es, et = torch.randn(6, 5, generator=g), torch.randn(6, 9, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = pkt_loss(es, et)
    assert got.dtype == torch.float32 and abs(got.item() - naive_pkt(es, et)) < 1e-7


def test_pkt_method_weights_and_defaults():
    cfg = resolve_config(PKT, {})
    assert (cfg.ce_weight, cfg.feat_weight, cfg.eps) == (1.0, 30000.0, 1e-7)
    assert PKT.needs().embedding and not PKT.needs().spatial
    g = torch.Generator().manual_seed(2)
    es, et = torch.randn(5, 4, generator=g), torch.randn(5, 6, generator=g)
    s = Outputs(logits=torch.zeros(5, 3), embedding=es)
    t = Outputs(logits=torch.zeros(5, 3), embedding=et)
    for weight in (30000.0, 2.0):
        m = PKT(resolve_config(PKT, {"feat_weight": weight}), None, None, None)  # type: ignore[arg-type]
        terms = m.loss(s, t, None, None)  # type: ignore[arg-type]
        assert set(terms) == {"loss_pkt"}
        assert abs(terms["loss_pkt"].item() - weight * naive_pkt(es, et)) < 1e-6 * weight


def test_pkt_check_serves_the_crd_grid_and_any_embedding_student():
    cfg = PKT.Config()
    for teacher, student in CRD_PAIRS:
        assert PKT.check(cfg, info(teacher), info(student)) is None, (teacher, student)
    gnn = TapInfo(num_classes=100, embedding_dim=64, stage_channels=(), stage_sizes=(), has_preact=False, kind="gnn")
    assert PKT.check(cfg, info("resnet20"), gnn) is None
    assert PKT.check(cfg, None, info("resnet8x4"))
