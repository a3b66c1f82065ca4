"""CRD (Tian et al. 2020): golden values from plain loops over the paper's formulas, the data-side
negatives, the memory bank, Z and checkpointing."""
import math
from collections import Counter

import pytest
import torch

from kdbench.data import Batch, TrainData, epoch_generator, replace
from kdbench.method import MethodContext
from kdbench.config import resolve_config
from kdbench.taps import Outputs, TapInfo

from kdbench.methods import crd

from harness import build, random_image_data
from harness import CRD_GRID, cifar_info as measured


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors and batch-2 dry runs: one thread is ~20x faster than two on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# naive references, written from the formulas (REFERENCE.md §1, paper Eq. 18)
# ---------------------------------------------------------------------------------------------

def naive_nce(p, n_data, eps=1e-7):
    """NCE with noise P_n = 1/N and K noise samples per positive, P(D=1|x) = x/(x + K·P_n):
    −1/B Σ_i [log(x_i0/(x_i0 + K/N + ε)) + Σ_{j=1..K} log((K/N)/(x_ij + K/N + ε))]."""
    total = 0.0
    for row in p:
        k = len(row) - 1
        kpn = k * (1.0 / n_data)
        total += math.log(row[0] / (row[0] + kpn + eps))
        for j in range(1, k + 1):
            total += math.log(kpn / (row[j] + kpn + eps))
    return -total / len(p)


def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def unit(a):
    n = math.sqrt(sum(x * x for x in a))
    return [x / n for x in a]


def naive_project(x, weight, bias):
    return unit([dot(w, x) + b for w, b in zip(weight, bias)])


def naive_crd(f_s, f_t, head_s, head_t, mem_s, mem_t, cidx, n_data, tau, z_s=None, z_t=None):
    """Unweighted nce(P_s) + nce(P_t): the student embedding is scored against the TEACHER
    memory and vice versa; Z = mean(exp)·N on the first batch. Returns loss, Z's, v_s, v_t."""
    v_s = [naive_project(x, *head_s) for x in f_s]
    v_t = [naive_project(x, *head_t) for x in f_t]
    e_s = [[math.exp(dot(mem_t[j], v_s[i]) / tau) for j in cidx[i]] for i in range(len(cidx))]
    e_t = [[math.exp(dot(mem_s[j], v_t[i]) / tau) for j in cidx[i]] for i in range(len(cidx))]
    if z_s is None:
        z_s = sum(sum(r) for r in e_s) / sum(len(r) for r in e_s) * n_data
    if z_t is None:
        z_t = sum(sum(r) for r in e_t) / sum(len(r) for r in e_t) * n_data
    p_s = [[e / z_s for e in r] for r in e_s]
    p_t = [[e / z_t for e in r] for r in e_t]
    return naive_nce(p_s, n_data) + naive_nce(p_t, n_data), z_s, z_t, v_s, v_t


def naive_memory_update(mem, index, v, momentum):
    mem = [list(r) for r in mem]
    for i, row in enumerate(index):
        mem[row] = unit([momentum * a + (1 - momentum) * b for a, b in zip(mem[row], v[i])])
    return mem


def naive_kd(zs, zt, T):
    total = 0.0
    for a, b in zip(zs, zt):
        es, et = [math.exp(v / T) for v in a], [math.exp(v / T) for v in b]
        ps, pt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        total += sum(p * math.log(p / q) for p, q in zip(pt, ps))
    return T * T * total / len(zs)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

LABELS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])  # N = 8, 3 classes


def info(dim, classes=3):
    return TapInfo(num_classes=classes, embedding_dim=dim, stage_channels=(), stage_sizes=(), has_preact=False)


def make_crd(overrides=None, labels=LABELS, s_dim=5, t_dim=6, seed=0):
    torch.manual_seed(seed)
    cfg = resolve_config(crd.CRD, {"feat_dim": 4, **(overrides or {})})
    ctx = MethodContext(num_classes=3, num_train_samples=len(labels), device=torch.device("cpu"), epochs=1,
                        steps_per_epoch=1, teacher_arch="t", student_arch="s", dataset="x", input_size=(3, 8, 8),
                        train_labels=labels)
    return crd.CRD(cfg, info(t_dim), info(s_dim), ctx)


def outputs(emb, logits=None):
    emb = torch.tensor(emb, dtype=torch.float32)
    logits = torch.zeros(len(emb), 3) if logits is None else torch.tensor(logits)
    return Outputs(logits=logits, embedding=emb)


def head(embed):
    return embed.linear.weight.tolist(), embed.linear.bias.tolist()


def crd_batch(index, cidx):
    index = torch.tensor(index)
    return Batch(x=torch.zeros(len(index), 1), y=LABELS[index], index=index,
                 extras={"contrast_idx": torch.tensor(cidx)})


F_S1 = [[0.5, -1.0, 2.0, 0.0, 1.0], [1.5, 0.2, -0.3, 0.7, -1.1]]
F_T1 = [[1.0, 0.0, -2.0, 0.5, 0.3, 0.9], [-0.4, 1.2, 0.8, -0.6, 0.0, 2.0]]
IDX1 = [0, 1]
CIDX1 = [[0, 1, 2, 4], [1, 0, 5, 6]]  # own index, then negatives from other classes
F_S2 = [[0.1, 0.9, -0.5, 1.3, 0.4], [-1.0, -0.2, 0.6, 0.3, 0.8]]
F_T2 = [[0.7, -0.3, 0.2, 1.1, -0.9, 0.4], [0.3, 0.5, -1.2, 0.0, 0.6, -0.2]]
IDX2 = [2, 3]
CIDX2 = [[2, 0, 1, 3], [3, 1, 2, 2]]


# ---------------------------------------------------------------------------------------------
# the NCE loss
# ---------------------------------------------------------------------------------------------

def test_nce_loss_matches_naive_loop():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(3, 6, generator=g, dtype=torch.float64) * 3
    for n_data, log_z in ((7, 0.0), (50, 2.5), (50, -1.0)):
        p = [[math.exp(v - log_z) for v in row] for row in scores.tolist()]  # P = exp(s)/Z
        got = crd.nce_loss(scores, log_z, n_data).item()
        assert abs(got - naive_nce(p, n_data)) < 1e-10 * max(1.0, abs(got))
    # float32, at CRD's scale (|s| up to 1/τ ≈ 14, Z ~ 1e5, K/N ≈ 1/3), stays accurate
    scores = torch.rand(4, 200, generator=g) * 28 - 14
    p = [[math.exp(v - math.log(1.1e5)) for v in row] for row in scores.double().tolist()]
    got = crd.nce_loss(scores, torch.tensor(1.1e5).log(), 600).item()
    assert got == pytest.approx(naive_nce(p, 600), rel=1e-5)


def test_nce_loss_hand_checkable():
    # K = 1, N = 2: noise K/N = 1/2; P_pos = 1, P_neg = 1/2 (Z = 1) ->
    # −log(1/(1 + 1/2)) − log((1/2)/(1/2 + 1/2)) = log(3/2) + log 2 = log 3 (ε aside)
    got = crd.nce_loss(torch.tensor([[0.0, math.log(0.5)]], dtype=torch.float64), 0.0, 2, eps=0.0).item()
    assert abs(got - math.log(3)) < 1e-12
    # the same with Z = 4 and every score shifted by log 4
    got = crd.nce_loss(torch.tensor([[math.log(4), math.log(2)]], dtype=torch.float64), math.log(4), 2, eps=0.0)
    assert abs(got.item() - math.log(3)) < 1e-12
    # a very confident positive (P = 1e9) and negatives scored ~0: loss -> 0
    s = torch.tensor([[math.log(1e9), -69.0, -69.0]], dtype=torch.float64)
    assert abs(crd.nce_loss(s, 0.0, 4, eps=0.0).item()) < 1e-8
    # ε only enters the denominators: with ε the negatives' term is log((c+ε)/c) larger per negative
    d = crd.nce_loss(s, 0.0, 4, eps=0.1) - crd.nce_loss(s, 0.0, 4, eps=0.0)
    assert d.item() == pytest.approx(2 * math.log(0.6 / 0.5), rel=1e-6)


# ---------------------------------------------------------------------------------------------
# the whole CRD term, Z and the memory update
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("scoring", ["dense", "gather"])
def test_crd_loss_z_and_memory_update_match_naive_over_two_batches(scoring):
    m = make_crd()
    m.scoring = scoring
    cfg = m.cfg
    assert (m.z_student.item(), m.z_teacher.item()) == (-1.0, -1.0)  # not set yet
    mem_s0, mem_t0 = m.memory_student.tolist(), m.memory_teacher.tolist()
    hs, ht = head(m.embed_s), head(m.embed_t)

    # batch 1: Z is taken from it (scores against the freshly initialised memory)
    want, z_s, z_t, v_s, v_t = naive_crd(F_S1, F_T1, hs, ht, mem_s0, mem_t0, CIDX1, 8, 0.07)
    terms = m.loss(outputs(F_S1), outputs(F_T1), crd_batch(IDX1, CIDX1), None)
    assert set(terms) == {"loss_crd"}
    assert terms["loss_crd"].item() == pytest.approx(0.8 * want, rel=1e-5)
    assert m.z_student.item() == pytest.approx(z_s, rel=1e-5)
    assert m.z_teacher.item() == pytest.approx(z_t, rel=1e-5)
    mem_s1 = naive_memory_update(mem_s0, IDX1, v_s, 0.5)
    mem_t1 = naive_memory_update(mem_t0, IDX1, v_t, 0.5)
    assert torch.allclose(m.memory_student, torch.tensor(mem_s1), atol=1e-6)
    assert torch.allclose(m.memory_teacher, torch.tensor(mem_t1), atol=1e-6)
    assert torch.equal(m.memory_student[2:], torch.tensor(mem_s0)[2:])  # other rows untouched

    # batch 2: Z stays fixed, the updated memory is used
    want2, *_ = naive_crd(F_S2, F_T2, hs, ht, mem_s1, mem_t1, CIDX2, 8, 0.07, z_s, z_t)
    terms = m.loss(outputs(F_S2), outputs(F_T2), crd_batch(IDX2, CIDX2), None)
    assert terms["loss_crd"].item() == pytest.approx(cfg.feat_weight * want2, rel=1e-5)
    assert m.z_student.item() == pytest.approx(z_s, rel=1e-5)
    assert m.z_teacher.item() == pytest.approx(z_t, rel=1e-5)


def test_memory_initialisation_is_uniform_in_the_reference_range_and_not_normalised():
    m = make_crd({"feat_dim": 128}, labels=torch.arange(2000) % 10)
    bound = 1 / math.sqrt(128 / 3)
    for mem in (m.memory_student, m.memory_teacher):
        assert mem.shape == (2000, 128) and not mem.requires_grad
        assert mem.abs().max() <= bound and mem.abs().max() > 0.99 * bound
        assert abs(mem.mean().item()) < 0.01 * bound
        norms = mem.norm(dim=1)
        assert (norms - 1).abs().max() > 0.05  # rows are not unit vectors
        assert abs(norms.pow(2).mean().item() - 1) < 0.02  # E‖m‖² = d·stdv²/3 = 1
    assert not torch.equal(m.memory_student, m.memory_teacher)
    assert set(dict(m.named_buffers())) >= {"memory_student", "memory_teacher", "z_student", "z_teacher"}


def test_memory_update_rule_hand_checkable():
    new = crd.memory_rows_update(torch.tensor([[1.0, 0.0], [3.0, 4.0]]), torch.tensor([[0.0, 1.0], [0.0, 0.0]]), 0.5)
    s = 1 / math.sqrt(2)
    assert torch.allclose(new, torch.tensor([[s, s], [0.6, 0.8]]))
    # through the method: an unnormalised row (2, 0, 0, 0) meets v = (0, 1, 0, 0)
    m = make_crd()
    with torch.no_grad():
        m.embed_s.linear.weight.copy_(torch.eye(4, 5))
        m.embed_s.linear.bias.zero_()
        m.memory_student[3] = torch.tensor([2.0, 0.0, 0.0, 0.0])
    m.loss(outputs([[0.0, 5.0, 0.0, 0.0, 0.0]]), outputs([F_T1[0]]), crd_batch([3], [[3, 1, 2]]), None)
    assert torch.allclose(m.memory_student[3], torch.tensor([2.0, 1.0, 0.0, 0.0]) / math.sqrt(5))


def test_no_gradient_reaches_the_memory_and_both_heads_train():
    m = make_crd()
    f_s = torch.tensor(F_S1, requires_grad=True)
    terms = m.loss(Outputs(torch.zeros(2, 3), f_s), outputs(F_T1), crd_batch(IDX1, CIDX1), None)
    terms["loss_crd"].backward()
    assert f_s.grad is not None and f_s.grad.abs().sum() > 0
    for p in m.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(not b.requires_grad and b.grad is None for b in m.buffers())


def test_dense_and_gather_scoring_agree_in_loss_gradient_and_memory():
    results = []
    for scoring in ("dense", "gather"):
        m = make_crd({"feat_dim": 8}, labels=torch.arange(40) % 4)
        m.scoring = scoring
        g = torch.Generator().manual_seed(3)
        index = torch.tensor([0, 5, 10, 15, 21, 38])
        cidx = torch.cat([index[:, None], torch.randint(0, 40, (6, 20), generator=g)], 1)
        for step in range(2):
            f_s = torch.randn(6, 5, generator=g, requires_grad=True)
            f_t = torch.randn(6, 6, generator=g)
            batch = Batch(x=torch.zeros(6, 1), y=index % 4, index=index, extras={"contrast_idx": cidx})
            loss = m.loss(Outputs(torch.zeros(6, 3), f_s), Outputs(torch.zeros(6, 3), f_t), batch, None)["loss_crd"]
            loss.backward()
        results.append((loss.detach(), f_s.grad, m.embed_t.linear.weight.grad, m.memory_student.clone(),
                        m.memory_teacher.clone(), m.z_student.clone()))
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_crd_plus_kd_variant_adds_the_kd_term():
    zs, zt = [[0.3, -0.2, 1.5], [0.0, 1.0, -1.0]], [[1.0, 0.5, -0.5], [2.0, 0.0, 0.3]]
    plain, with_kd = make_crd(), make_crd({"kd_weight": 1.0})
    t_plain = plain.loss(outputs(F_S1, zs), outputs(F_T1, zt), crd_batch(IDX1, CIDX1), None)
    t_kd = with_kd.loss(outputs(F_S1, zs), outputs(F_T1, zt), crd_batch(IDX1, CIDX1), None)
    assert set(t_kd) == {"loss_crd", "loss_kd"}
    assert t_kd["loss_kd"].item() == pytest.approx(naive_kd(zs, zt, 4.0), rel=1e-5)
    assert t_kd["loss_crd"].item() == pytest.approx(t_plain["loss_crd"].item(), rel=1e-6)
    t_kd2 = make_crd({"kd_weight": 0.5, "temperature": 2.0}).loss(outputs(F_S1, zs), outputs(F_T1, zt),
                                                                  crd_batch(IDX1, CIDX1), None)
    assert t_kd2["loss_kd"].item() == pytest.approx(0.5 * naive_kd(zs, zt, 2.0), rel=1e-5)


def test_loss_is_float32_under_bf16_autocast_and_missing_indices_fail_clearly():
    m = make_crd()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        terms = m.loss(outputs(F_S1), Outputs(torch.zeros(2, 3), torch.tensor(F_T1).bfloat16()),
                       crd_batch(IDX1, CIDX1), None)
    assert terms["loss_crd"].dtype == torch.float32 and math.isfinite(terms["loss_crd"].item())
    assert m.memory_student.dtype == torch.float32
    with pytest.raises(ValueError, match="contrast_idx"):
        m.loss(outputs(F_S1), outputs(F_T1), Batch(torch.zeros(2, 1), LABELS[:2], torch.tensor(IDX1)), None)


def test_memory_and_z_are_restored_from_a_state_dict():
    a = make_crd(seed=0)
    a.loss(outputs(F_S1), outputs(F_T1), crd_batch(IDX1, CIDX1), None)
    state = {k: v.clone() for k, v in a.state_dict().items()}
    assert state["z_student"].item() > 0 and state["z_teacher"].item() > 0
    b = make_crd(seed=1)
    assert not torch.equal(b.memory_student, a.memory_student)
    b.load_state_dict(state)
    for name in ("memory_student", "memory_teacher", "z_student", "z_teacher"):
        assert torch.equal(getattr(b, name), state[name])
    la = a.loss(outputs(F_S2), outputs(F_T2), crd_batch(IDX2, CIDX2), None)["loss_crd"]
    lb = b.loss(outputs(F_S2), outputs(F_T2), crd_batch(IDX2, CIDX2), None)["loss_crd"]
    assert torch.equal(la, lb)
    assert torch.equal(b.z_student, state["z_student"])  # Z kept, not re-estimated on the resumed run
    assert torch.equal(a.memory_teacher, b.memory_teacher)
    # loading a fresh state (Z unset) into a used method makes it estimate Z again
    fresh = make_crd(seed=2)
    a.load_state_dict({k: v.clone() for k, v in fresh.state_dict().items()})
    assert a.z_student.item() == -1.0
    la = a.loss(outputs(F_S1), outputs(F_T1), crd_batch(IDX1, CIDX1), None)["loss_crd"]
    lf = fresh.loss(outputs(F_S1), outputs(F_T1), crd_batch(IDX1, CIDX1), None)["loss_crd"]
    assert torch.equal(la, lf) and torch.equal(a.z_student, fresh.z_student) and a.z_student.item() > 0


# ---------------------------------------------------------------------------------------------
# the data side: negatives
# ---------------------------------------------------------------------------------------------

def sample_data(labels, k=16384, without_replacement=False, batch_size=4):
    data = random_image_data(n_train=len(labels), num_classes=int(labels.max()) + 1, size=8)
    data = replace(data, train_labels=labels)
    return crd.ContrastSampleData(TrainData(data, batch_size, torch.device("cpu"), seed=0), k, without_replacement)


@pytest.mark.parametrize("without_replacement", [False, True])
def test_negatives_come_from_other_classes_and_column_0_is_the_own_index(without_replacement):
    setup = build("crd", overrides={"negatives_without_replacement": without_replacement})
    data = setup.data
    assert isinstance(data, crd.ContrastSampleData)
    # harness: 40 images of 4 classes -> K scales down to 40 - 10 = 30
    assert data.k == 30 and setup.method.k_effective == 30
    labels = data.labels_cpu
    for epoch in (1, 2):
        gen = epoch_generator(0, 0, epoch)
        for idx in data.epoch_indices(gen):
            batch = data.make_batch(idx, gen)
            c = batch.extras["contrast_idx"]
            assert c.dtype == torch.int64 and c.shape == (len(idx), 31) and c.device == batch.x.device
            assert torch.equal(c[:, 0], batch.index)
            assert (labels[c[:, 1:]] != labels[idx].unsqueeze(1)).all()
            assert ((c >= 0) & (c < 40)).all()
            if without_replacement:  # 30 of a pool of 30: every other-class sample exactly once
                for row, y in zip(c[:, 1:].tolist(), labels[idx].tolist()):
                    assert sorted(row) == [i for i in range(40) if i % 4 != y]


def test_negatives_are_deterministic_under_the_same_generator():
    data = build("crd").data
    idx = torch.tensor([3, 17, 22, 8])
    a = data.contrast_indices(idx, epoch_generator(5, 1, 3))
    b = data.contrast_indices(idx, epoch_generator(5, 1, 3))
    c = data.contrast_indices(idx, epoch_generator(5, 1, 4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # the whole batch too (augmentation + negatives from one generator stream)
    g1, g2 = epoch_generator(0, 0, 1), epoch_generator(0, 0, 1)
    b1, b2 = data.make_batch(idx, g1), data.make_batch(idx, g2)
    assert torch.equal(b1.x, b2.x) and torch.equal(b1.extras["contrast_idx"], b2.extras["contrast_idx"])
    # crops equal those of the unwrapped data at the same generator state
    plain = data.inner.make_batch(idx, epoch_generator(0, 0, 1))
    assert torch.equal(plain.x, b1.x)


def test_k_scales_down_to_n_minus_the_largest_class():
    labels = torch.tensor([0] * 6 + [1] * 3 + [2] * 3)  # N 12, largest class 6
    assert sample_data(labels).k == 6
    assert sample_data(labels, k=4).k == 4  # a smaller request is kept
    with pytest.raises(ValueError, match="two classes"):
        sample_data(torch.zeros(5, dtype=torch.int64))


@pytest.mark.parametrize("without_replacement", [False, True])
def test_negatives_are_uniform_over_the_other_classes_with_uneven_classes(without_replacement):
    labels = torch.tensor([1, 0, 2, 0, 0, 1, 2, 0, 1, 0, 2, 0])  # class 0: 6, classes 1 and 2: 3 each
    data = sample_data(labels, k=5, without_replacement=without_replacement)
    idx = torch.tensor([1, 0, 2] * 400)  # a class-0, a class-1 and a class-2 anchor, 400 times each
    c = data.contrast_indices(idx, torch.Generator().manual_seed(0))
    for anchor in (1, 0, 2):
        rows = c[idx == anchor]
        y = int(labels[anchor])
        pool = [i for i in range(12) if int(labels[i]) != y]
        counts = Counter(rows[:, 1:].reshape(-1).tolist())
        assert set(counts) == set(pool)
        expected = rows.shape[0] * 5 / len(pool)
        assert all(abs(counts[i] - expected) < 0.15 * expected for i in pool), (anchor, counts)
        if without_replacement:
            assert all(len(set(r)) == 5 for r in rows[:, 1:].tolist())


def test_repeated_draws_happen_only_with_replacement():
    labels = torch.arange(200) % 2
    with_rep = sample_data(labels, k=60).contrast_indices(torch.arange(8), torch.Generator().manual_seed(0))
    without = sample_data(labels, k=60, without_replacement=True).contrast_indices(
        torch.arange(8), torch.Generator().manual_seed(0))
    assert any(len(set(r)) < 60 for r in with_rep[:, 1:].tolist())
    assert all(len(set(r)) == 60 for r in without[:, 1:].tolist())


def test_wrapper_checks_the_memory_size():
    m = make_crd()  # memory for 8 samples
    with pytest.raises(ValueError, match="memory bank has 8 rows"):
        m.wrap_train_dataset(TrainData(random_image_data(n_train=12, size=8), 4, torch.device("cpu"), seed=0))


# ---------------------------------------------------------------------------------------------
# defaults and pairs
# ---------------------------------------------------------------------------------------------

def test_defaults_are_the_reference_values():
    cfg = resolve_config(crd.CRD, {})
    assert (cfg.ce_weight, cfg.feat_weight, cfg.kd_weight, cfg.temperature) == (1.0, 0.8, 0.0, 4.0)
    assert (cfg.feat_dim, cfg.num_negatives, cfg.nce_temperature, cfg.momentum) == (128, 16384, 0.07, 0.5)
    assert cfg.negatives_without_replacement is True  # RepDistiller's np.random.choice(replace=False)
    assert crd.NCE_EPS == 1e-7
    assert crd.CRD.needs().embedding and crd.CRD.needs().teacher


def test_check_serves_the_crd_grid_and_declines_without_teacher():
    cfg = crd.CRD.Config()
    for t, s in CRD_GRID:
        assert crd.CRD.check(cfg, measured(t), measured(s)) is None, (t, s)
    reason = crd.CRD.check(cfg, None, measured("resnet8x4"))
    assert isinstance(reason, str) and "teacher" in reason
    no_emb = TapInfo(num_classes=100, embedding_dim=0, stage_channels=(), stage_sizes=(), has_preact=False)
    assert "embedding" in crd.CRD.check(cfg, measured("resnet32x4"), no_emb)


def test_heads_are_sized_from_the_measured_embeddings():
    t_info, s_info = measured("resnet32x4"), measured("shufflev2")  # embeddings 256 and 1024
    ctx = MethodContext(num_classes=100, num_train_samples=40, device=torch.device("cpu"), epochs=1,
                        steps_per_epoch=1, teacher_arch="resnet32x4", student_arch="shufflev2", dataset="x",
                        input_size=(3, 32, 32), train_labels=torch.arange(40) % 4)
    m = crd.CRD(crd.CRD.Config(), t_info, s_info, ctx)
    assert m.embed_s.linear.in_features == s_info.embedding_dim == 1024
    assert m.embed_t.linear.in_features == t_info.embedding_dim == 256
    assert m.embed_s.linear.out_features == m.embed_t.linear.out_features == 128
    assert m.memory_student.shape == m.memory_teacher.shape == (40, 128)
    assert m.extra_parameters() == (1024 + 1) * 128 + (256 + 1) * 128  # the memories are buffers
