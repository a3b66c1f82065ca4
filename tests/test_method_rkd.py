"""RKD (Park et al. 2019) golden values, computed with plain loops over pairs and triplets
from REFERENCE.md §1."""
import math

import torch

from kdbench.config import resolve_config
from kdbench.methods.rkd import RKD, rkd_angle_loss, rkd_distance_loss
from kdbench.taps import Outputs, TapInfo
from harness import CRD_GRID as CRD_PAIRS, cifar_info as info


def huber(x: float) -> float:
    """smooth-L1 with δ = 1."""
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def naive_distances(e):
    """Pairwise Euclidean distances, each divided by the mean over the nonzero pairs."""
    rows = e.tolist()
    b = len(rows)
    d = [[math.sqrt(sum((x - y) ** 2 for x, y in zip(rows[i], rows[j]))) for j in range(b)] for i in range(b)]
    nonzero = [d[i][j] for i in range(b) for j in range(b) if d[i][j] > 0]
    mu = sum(nonzero) / len(nonzero)
    return [[v / mu for v in row] for row in d]


def naive_distance_loss(es, et) -> float:
    ds, dt = naive_distances(es), naive_distances(et)
    b = len(ds)
    return sum(huber(ds[i][j] - dt[i][j]) for i in range(b) for j in range(b)) / (b * b)


def naive_cosines(e):
    """cos of the angle at i between j and k; 0 when j = i or k = i."""
    rows = e.tolist()
    b = len(rows)
    out = {}
    for i in range(b):
        for j in range(b):
            for k in range(b):
                if j == i or k == i:
                    out[i, j, k] = 0.0
                    continue
                u = [x - y for x, y in zip(rows[j], rows[i])]
                v = [x - y for x, y in zip(rows[k], rows[i])]
                nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
                out[i, j, k] = sum(x * y for x, y in zip(u, v)) / (nu * nv)
    return out


def naive_angle_loss(es, et) -> float:
    cs, ct = naive_cosines(es), naive_cosines(et)
    return sum(huber(cs[key] - ct[key]) for key in cs) / len(cs)


def random_pair(b=6, ds=3, dt=5, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    es = scale * torch.randn(b, ds, generator=g, dtype=torch.float64)
    return es, torch.randn(b, dt, generator=g, dtype=torch.float64)


def test_distance_and_angle_match_naive_loops():
    for seed, scale in ((0, 1.0), (1, 0.1), (2, 4.0)):  # scale 4: distance differences beyond the Huber knee
        es, et = random_pair(seed=seed, scale=scale)
        assert abs(rkd_distance_loss(es, et).item() - naive_distance_loss(es, et)) < 1e-6
        assert abs(rkd_angle_loss(es, et).item() - naive_angle_loss(es, et)) < 1e-6


def test_distance_hand_checkable():
    e = torch.randn(5, 4)
    assert rkd_distance_loss(e, e).item() < 1e-10
    assert rkd_distance_loss(3.0 * e + 1.0, e).item() < 1e-10  # invariant to scale and translation
    # teacher on a line at 0, 1, 2; student an equilateral triangle of side 1.
    # teacher mean over the 6 ordered off-diagonal pairs: 4/3 -> 0.75, 0.75, 1.5; student all 1.
    # 4 entries differ by 0.25 (½·0.0625 each) and 2 by 0.5 (½·0.25 each): 0.375 / 9 = 1/24.
    et = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    es = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert abs(rkd_distance_loss(es, et).item() - 1 / 24) < 1e-6


def test_angle_hand_checkable():
    e = torch.randn(5, 4)
    assert rkd_angle_loss(e, e).item() < 1e-10
    assert rkd_angle_loss(0.2 * e - 3.0, e).item() < 1e-10
    # Same line vs triangle: at the middle point the teacher's cos is −1 for (0,2),(2,0), the
    # student's 0.5 -> difference 1.5 beyond the Huber knee: 1.0 each. At the end points the
    # teacher's cos is 1 for (j,k) = (1,2),(2,1) resp. (0,1),(1,0), the student's 0.5: ½·0.25 each.
    # (j,j) entries are 1 on both sides; degenerate ones 0 on both. Sum 2.5 over 27 triplets.
    et = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    es = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    assert abs(rkd_angle_loss(es, et).item() - 2.5 / 27) < 1e-6


def test_teacher_side_has_no_gradient_and_student_side_has_one():
    es, et = random_pair(seed=3)
    es, et = es.float().requires_grad_(True), et.float().requires_grad_(True)
    (rkd_distance_loss(es, et) + rkd_angle_loss(es, et)).backward()
    assert et.grad is None
    assert es.grad is not None and torch.isfinite(es.grad).all() and es.grad.abs().sum() > 0


def test_rkd_method_weights_and_defaults():
    cfg = resolve_config(RKD, {})
    assert (cfg.ce_weight, cfg.feat_weight, cfg.distance_weight, cfg.angle_weight) == (1.0, 1.0, 25.0, 50.0)
    assert RKD.needs().embedding and not RKD.needs().spatial
    es, et = random_pair(b=5, ds=4, dt=7, seed=4)
    s = Outputs(logits=torch.zeros(5, 3), embedding=es)
    t = Outputs(logits=torch.zeros(5, 3), embedding=et)
    d, a = naive_distance_loss(es, et), naive_angle_loss(es, et)
    terms = RKD(cfg, None, None, None).loss(s, t, None, None)  # type: ignore[arg-type]
    assert set(terms) == {"loss_rkd_distance", "loss_rkd_angle"}
    assert abs(terms["loss_rkd_distance"].item() - 25 * d) < 1e-5
    assert abs(terms["loss_rkd_angle"].item() - 50 * a) < 1e-5
    # outer weight multiplies both; the paper's λ (1, 2); a zero inner weight drops its term
    terms = RKD(resolve_config(RKD, {"feat_weight": 2, "distance_weight": 1, "angle_weight": 2}),
                None, None, None).loss(s, t, None, None)  # type: ignore[arg-type]
    assert abs(terms["loss_rkd_distance"].item() - 2 * d) < 1e-6 and abs(terms["loss_rkd_angle"].item() - 4 * a) < 1e-6
    def terms_with(**overrides):
        return RKD(resolve_config(RKD, overrides), None, None, None).loss(s, t, None, None)  # type: ignore[arg-type]

    only_d = terms_with(angle_weight=0)
    assert set(only_d) == {"loss_rkd_distance"}
    only_a = terms_with(distance_weight=0)
    assert set(only_a) == {"loss_rkd_angle"} and abs(only_a["loss_rkd_angle"].item() - 50 * a) < 1e-5


def test_edge_cases_stay_finite_and_autocast_is_off():
    one = torch.randn(1, 4)
    assert rkd_distance_loss(one, one + 1).item() == 0.0 and rkd_angle_loss(one, one).item() == 0.0
    es, et = random_pair(seed=5)
    es, et = es.float(), et.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d, a = rkd_distance_loss(es, et), rkd_angle_loss(es, et)
    assert d.dtype == a.dtype == torch.float32
    assert abs(d.item() - naive_distance_loss(es, et)) < 1e-6 and abs(a.item() - naive_angle_loss(es, et)) < 1e-6


def test_rkd_check_serves_the_crd_grid_and_any_embedding_student():
    cfg = RKD.Config()
    for teacher, student in CRD_PAIRS:
        assert RKD.check(cfg, info(teacher), info(student)) is None, (teacher, student)
    gnn = TapInfo(num_classes=100, embedding_dim=64, stage_channels=(), stage_sizes=(), has_preact=False, kind="gnn")
    assert RKD.check(cfg, info("resnet20"), gnn) is None  # relations of embeddings need no spatial maps
    assert RKD.check(cfg, None, info("resnet8x4"))  # but a teacher
