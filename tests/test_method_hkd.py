"""HKD (Zhou et al. ICCV 2021, the authors' GNN.py): golden values from plain loops over the
formulas — the kNN graph (ties included), the graph layer, both InfoNCE levels, the smoothed
positives, the memory update — mutants that must fail them (self left out of the
neighbourhood, a graph that carries gradient), gradients, the data-side negatives."""
import math

import pytest
import torch

from kdbench.config import resolve_config
from kdbench.data import Batch, TrainData, epoch_generator
from kdbench.method import MethodContext
from kdbench.methods import hkd
from kdbench.taps import Outputs, TapInfo

from harness import build, main_step_with_trainable_teacher, random_image_data
from harness import cifar_info as measured


# ---------------------------------------------------------------------------------------------
# naive references, written from the formulas (REFERENCE §7)
# ---------------------------------------------------------------------------------------------

def dot(a, b):
    return sum(x * y for x, y in zip(a, b))


def unit(a):
    n = math.sqrt(dot(a, a))
    return [x / n for x in a]


def softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def naive_neighbours(logits, k):
    """Node i's k in-neighbours: itself (distance −1), then by 1 − cos(softmax) ascending, ties
    to the lower index."""
    p = [softmax(r) for r in logits]
    out = []
    for i in range(len(p)):
        d = []
        for j in range(len(p)):
            dist = -1.0 if i == j else 1 - dot(p[i], p[j]) / max(math.sqrt(dot(p[i], p[i]) * dot(p[j], p[j])), 1e-7)
            d.append((dist, j))
        out.append([j for _, j in sorted(d)[:k]])
    return out


def naive_linear(x, weight, bias):
    return [dot(w, x) + b for w, b in zip(weight, bias)]


def naive_graph_layer(x, neighbours, weight, bias):
    """normalise(W [x_i ; mean of x over N(i)] + b) per node."""
    out = []
    for i, nb in enumerate(neighbours):
        mean = [sum(x[j][c] for j in nb) / len(nb) for c in range(len(x[i]))]
        out.append(unit(naive_linear(x[i] + mean, weight, bias)))
    return out


def naive_info_nce(anchors, positives, negatives, tau):
    """mean_b −log(exp(a·p/τ) / (exp(a·p/τ) + Σ_n exp(a·n/τ)))."""
    total = 0.0
    for a, p, negs in zip(anchors, positives, negatives):
        num = math.exp(dot(a, p) / tau)
        total -= math.log(num / (num + sum(math.exp(dot(a, n) / tau) for n in negs)))
    return total / len(anchors)


def blend(old, new, momentum):
    return unit([momentum * a + (1 - momentum) * b for a, b in zip(old, new)])


def params(module):
    return module.linear.weight.tolist(), module.linear.bias.tolist()


def naive_hkd(m, f_s, f_t, z_s, z_t, index, neg, mem_s, mem_t, tau=0.07, k=3, smooth=0.75):
    """(instance, holistic or None, e_s, e_t) of the authors' GNNLoss, from loops."""
    e_s = [unit(naive_linear(x, *params(m.embed_s))) for x in f_s]
    e_t = [unit(naive_linear(x, *params(m.embed_t))) for x in f_t]
    negs_s = [[mem_s[j] for j in row] for row in neg]
    negs_t = [[mem_t[j] for j in row] for row in neg]
    pos_s, pos_t = [mem_s[i] for i in index], [mem_t[i] for i in index]
    instance = naive_info_nce(e_s, pos_t, negs_s, tau) + naive_info_nce(e_t, pos_s, negs_t, tau)
    if len(index) < k:
        return instance, None, e_s, e_t
    g_s = naive_graph_layer(e_s, naive_neighbours(z_s, k), *params(m.graph_s))
    g_t = naive_graph_layer(e_t, naive_neighbours(z_t, k), *params(m.graph_t))
    smooth_t = [blend(p, g, smooth) for p, g in zip(pos_t, g_t)]
    smooth_s = [blend(p, g, smooth) for p, g in zip(pos_s, g_s)]
    holistic = naive_info_nce(g_s, smooth_t, negs_s, tau) + naive_info_nce(g_t, smooth_s, negs_t, tau)
    return instance, holistic, e_s, e_t


def naive_memory_update(mem, index, v, momentum=0.9):
    mem = [list(r) for r in mem]
    for i, row in enumerate(index):
        mem[row] = blend(mem[row], v[i], momentum)
    return mem


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

LABELS = torch.tensor([0, 1, 2] * 4)  # N = 12, 3 classes


def info(dim):
    return TapInfo(num_classes=3, embedding_dim=dim, stage_channels=(), stage_sizes=(), has_preact=False)


def make_hkd(overrides=None, s_dim=5, t_dim=6):
    torch.manual_seed(0)
    cfg = resolve_config(hkd.HKD, {"feat_dim": 4, "knn": 3, **(overrides or {})})
    ctx = MethodContext(num_classes=3, num_train_samples=len(LABELS), device=torch.device("cpu"), epochs=1,
                        steps_per_epoch=1, teacher_arch="t", student_arch="s", dataset="x", input_size=(3, 8, 8),
                        train_labels=LABELS)
    return hkd.HKD(cfg, info(t_dim), info(s_dim), ctx)


def hkd_batch(index, neg):
    index = torch.tensor(index)
    return Batch(x=torch.zeros(len(index), 1), y=LABELS[index], index=index, extras={"contrast_idx": torch.tensor(neg)})


def out(emb, logits):
    return Outputs(logits=torch.tensor(logits), embedding=torch.tensor(emb))


G = torch.Generator().manual_seed(3)
F_S1 = (torch.randn(5, 5, generator=G)).tolist()
F_T1 = (torch.randn(5, 6, generator=G)).tolist()
Z_S1 = (torch.randn(5, 3, generator=G) * 3).tolist()
Z_T1 = (torch.randn(5, 3, generator=G) * 3).tolist()
IDX1 = [0, 1, 2, 3, 4]
NEG1 = [[1, 2, 4, 5], [0, 2, 3, 8], [0, 1, 3, 7], [1, 2, 10, 11], [0, 2, 3, 6]]  # other classes only
F_S2 = (torch.randn(5, 5, generator=G)).tolist()
F_T2 = (torch.randn(5, 6, generator=G)).tolist()
Z_S2 = (torch.randn(5, 3, generator=G) * 3).tolist()
Z_T2 = (torch.randn(5, 3, generator=G) * 3).tolist()
IDX2 = [3, 5, 6, 7, 11]
NEG2 = [[1, 2, 4, 5], [0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5], [0, 1, 3, 4]]


def agrees_with_naive(m, batches, rel=1e-5):
    """Feed ``batches`` through ``m`` and compare every loss term and both banks with the naive
    loops; returns the list of mismatches (empty when everything agrees)."""
    bad = []
    mem_s, mem_t = m.memory_student.tolist(), m.memory_teacher.tolist()
    for f_s, f_t, z_s, z_t, index, neg in batches:
        instance, holistic, e_s, e_t = naive_hkd(m, f_s, f_t, z_s, z_t, index, neg, mem_s, mem_t, k=m.cfg.knn)
        terms = m.loss(out(f_s, z_s), out(f_t, z_t), hkd_batch(index, neg), None)
        if terms["loss_hkd_instance"].item() != pytest.approx(3 * instance, rel=rel):
            bad.append(("instance", terms["loss_hkd_instance"].item(), 3 * instance))
        want_h = 0.0 if holistic is None else 3 * holistic
        if terms["loss_hkd_holistic"].item() != pytest.approx(want_h, rel=rel, abs=1e-9):
            bad.append(("holistic", terms["loss_hkd_holistic"].item(), want_h))
        if holistic is not None:  # the authors' code updates the banks only after the graph term
            mem_s, mem_t = naive_memory_update(mem_s, index, e_s), naive_memory_update(mem_t, index, e_t)
        if not (torch.allclose(m.memory_student, torch.tensor(mem_s), atol=1e-6)
                and torch.allclose(m.memory_teacher, torch.tensor(mem_t), atol=1e-6)):
            bad.append(("memory", index))
    return bad


# ---------------------------------------------------------------------------------------------
# the kNN graph
# ---------------------------------------------------------------------------------------------

def test_knn_hand_values_self_first_and_ties_to_the_lower_index():
    # softmax ≈ e0, e0, (0.468, 0.468, 0.063), e2, e2: node 2 is at 1 − 0.468/0.665 ≈ 0.296 from
    # nodes 0 and 1 (a tie) and ≈ 0.905 from 3 and 4; nodes 0/1 and 3/4 are ≈ 1 apart
    logits = torch.tensor([[20.0, 0, 0], [20.0, 0, 0], [20.0, 20.0, 18.0], [0, 0, 20.0], [0, 0, 20.0]])
    got = hkd.knn_in_neighbours(logits, 3).tolist()
    assert got == [[0, 1, 2],   # itself, its duplicate (d = 0), then node 2 (0.296)
                   [1, 0, 2],
                   [2, 0, 1],   # 0 and 1 tie at 0.296: lower index first
                   [3, 4, 2],   # itself, its duplicate, then node 2 (0.905 < 1)
                   [4, 3, 2]]
    assert got == naive_neighbours(logits.tolist(), 3)
    assert hkd.knn_in_neighbours(logits, 1).tolist() == [[0], [1], [2], [3], [4]]  # k = 1: itself only


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_knn_matches_naive_loops_with_tied_duplicates(k):
    g = torch.Generator().manual_seed(k)
    protos = torch.randn(5, 6, generator=g) * 2
    logits = protos[torch.tensor([0, 1, 0, 2, 3, 1, 4, 0, 2, 3, 1, 4])]  # duplicated rows tie exactly
    assert hkd.knn_in_neighbours(logits, k).tolist() == naive_neighbours(logits.tolist(), k)


def test_knn_graph_is_the_mean_over_in_neighbours_without_gradient():
    logits = torch.randn(6, 4, requires_grad=True)
    a = hkd.knn_graph(logits, 3)
    assert not a.requires_grad
    nb = naive_neighbours(logits.tolist(), 3)
    want = [[(1 / 3 if j in nb[i] else 0.0) for j in range(6)] for i in range(6)]
    assert torch.allclose(a, torch.tensor(want))
    assert torch.allclose(a.diagonal(), torch.full((6,), 1 / 3))  # every node receives from itself


def test_graph_layer_matches_naive_loop():
    torch.manual_seed(1)
    layer = hkd.GraphLayer(4)
    x = torch.nn.functional.normalize(torch.randn(6, 4), dim=1)
    logits = torch.randn(6, 3) * 2
    got = layer(x, hkd.knn_graph(logits, 3))
    want = naive_graph_layer(x.tolist(), naive_neighbours(logits.tolist(), 3), *params(layer))
    assert torch.allclose(got, torch.tensor(want), atol=1e-6)
    # DGL TAGConv's initialisation: Xavier normal with gain √2 on a 2d → d weight
    big = hkd.GraphLayer(128).linear.weight
    assert big.shape == (128, 256) and big.std().item() == pytest.approx(math.sqrt(2) * math.sqrt(2 / 384), rel=0.05)


# ---------------------------------------------------------------------------------------------
# InfoNCE and the whole HKD term
# ---------------------------------------------------------------------------------------------

def test_info_nce_hand_values_and_naive():
    # all scores equal: −log(1/(K+1))
    assert hkd.info_nce(torch.zeros(2), torch.zeros(2, 4), 0.07).item() == pytest.approx(math.log(5))
    # τ = 1, pos 1, negatives 0 and 0: −log(e/(e+2))
    got = hkd.info_nce(torch.tensor([1.0]), torch.tensor([[0.0, 0.0]]), 1.0).item()
    assert got == pytest.approx(-math.log(math.e / (math.e + 2)))
    g = torch.Generator().manual_seed(0)
    a, p, n = (torch.nn.functional.normalize(torch.randn(*s, generator=g), dim=-1) for s in ((3, 4), (3, 4), (3, 5, 4)))
    got = hkd.info_nce((a * p).sum(1), torch.einsum("bkd,bd->bk", n, a), 0.07).item()
    assert got == pytest.approx(naive_info_nce(a.tolist(), p.tolist(), n.tolist(), 0.07), rel=1e-5)


@pytest.mark.parametrize("scoring", ["dense", "gather"])
def test_hkd_terms_and_memory_update_match_naive_over_two_batches(scoring, monkeypatch):
    if scoring == "gather":
        monkeypatch.setattr(hkd, "DENSE_SCORING_RATIO", 0)
    m = make_hkd()
    before = m.memory_student.clone()
    assert agrees_with_naive(m, [(F_S1, F_T1, Z_S1, Z_T1, IDX1, NEG1), (F_S2, F_T2, Z_S2, Z_T2, IDX2, NEG2)]) == []
    untouched = [i for i in range(12) if i not in IDX1 + IDX2]
    assert torch.equal(m.memory_student[untouched], before[untouched])


def test_a_batch_smaller_than_k_gives_the_instance_term_only_and_keeps_the_banks():
    m = make_hkd({"knn": 8})
    banks = m.memory_student.clone(), m.memory_teacher.clone()
    assert agrees_with_naive(m, [(F_S1, F_T1, Z_S1, Z_T1, IDX1, NEG1)]) == []  # 5 < 8
    assert torch.equal(m.memory_student, banks[0]) and torch.equal(m.memory_teacher, banks[1])


def without_self(logits, k):
    """Mutant: the k nearest OTHER nodes (the code's −1 diagonal forgotten)."""
    p = torch.softmax(logits.detach().float(), 1)
    w = p.norm(dim=1, keepdim=True)
    dist = 1 - p @ p.t() / (w @ w.t()).clamp_min(1e-7)
    dist.fill_diagonal_(float("inf"))
    nb = torch.sort(dist, dim=1, stable=True).indices[:, :k]
    return torch.zeros(len(p), len(p)).scatter_(1, nb, 1.0 / k)


REAL_KNN_GRAPH = hkd.knn_graph


def soft_graph(logits, k):
    """Mutant: an undetached graph (edge weights that carry the logits' gradient)."""
    a = REAL_KNN_GRAPH(logits, k)
    return a * (1 + 0.1 * torch.softmax(logits.float(), 1) @ torch.softmax(logits.float(), 1).t())


def test_a_neighbourhood_without_self_fails_the_golden_test(monkeypatch):
    monkeypatch.setattr(hkd, "knn_graph", without_self)
    bad = agrees_with_naive(make_hkd(), [(F_S1, F_T1, Z_S1, Z_T1, IDX1, NEG1)])
    assert [b[0] for b in bad] == ["holistic"]


def hkd_logit_grads(m):
    z_s = torch.tensor(Z_S1, requires_grad=True)
    z_t = torch.tensor(Z_T1, requires_grad=True)
    s = Outputs(logits=z_s, embedding=torch.tensor(F_S1, requires_grad=True))
    terms = m.loss(s, Outputs(logits=z_t, embedding=torch.tensor(F_T1)), hkd_batch(IDX1, NEG1), None)
    return torch.autograd.grad(sum(terms.values()), [z_s, z_t, s.embedding], allow_unused=True)


def test_the_graph_is_built_from_detached_logits_and_an_undetached_one_fails(monkeypatch):
    g_zs, g_zt, g_emb = hkd_logit_grads(make_hkd())
    assert g_zs is None and g_zt is None and g_emb is not None  # HKD reaches the features, never the logits
    monkeypatch.setattr(hkd, "knn_graph", soft_graph)
    g_zs, g_zt, _ = hkd_logit_grads(make_hkd())
    assert g_zs is not None and g_zt is not None  # the check above would catch it


# ---------------------------------------------------------------------------------------------
# gradients, data side, options
# ---------------------------------------------------------------------------------------------

def test_gradients_reach_student_both_heads_and_both_graph_layers_never_the_teacher():
    setup = build("hkd")
    _, terms = main_step_with_trainable_teacher(setup)
    assert terms["loss_hkd_holistic"].item() > 0  # batch 8 = k: the graph ran
    (terms["loss_hkd_instance"] + terms["loss_hkd_holistic"]).backward()
    m = setup.method
    for mod in (m.embed_s, m.embed_t, m.graph_s, m.graph_t):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in setup.student.parameters())
    assert all(p.grad is None for p in setup.teacher.parameters())
    assert not m.memory_student.requires_grad and not m.memory_teacher.requires_grad


def test_negatives_come_from_crds_sampler_without_the_own_index_and_scale_down():
    data = random_image_data(n_train=40, num_classes=4)  # largest class 10 -> K <= 30
    m = build("hkd").method
    wrapped = m.wrap_train_dataset(TrainData(data, 8, torch.device("cpu"), seed=0))
    gen = epoch_generator(0, 0, 1)
    batch = wrapped.make_batch(wrapped.epoch_indices(gen)[0], gen)
    neg = batch.extras["contrast_idx"]
    assert neg.shape == (8, 30) and m.k_effective == 30 and m.run_info() == {"num_negatives": 30}
    labels = data.train_labels
    assert (labels[neg] != batch.y.unsqueeze(1)).all()  # other classes only, so never the sample itself
    assert all(len(set(row)) == 30 for row in neg.tolist())  # without replacement (the reference's draw)
    m5 = build("hkd", overrides={"num_negatives": 5}).method
    w5 = m5.wrap_train_dataset(TrainData(data, 8, torch.device("cpu"), seed=0))
    assert w5.make_batch(torch.arange(8), epoch_generator(0, 0, 1)).extras["contrast_idx"].shape == (8, 5)


def test_banks_are_checkpointed_buffers_and_defaults_follow_the_authors():
    m = make_hkd()
    assert {"memory_student", "memory_teacher"} <= set(m.state_dict())
    bound = 1 / math.sqrt(4 / 3)
    assert m.memory_student.abs().max() <= bound and m.memory_student.norm(dim=1).std() > 0  # uniform, not normalised
    cfg = hkd.HKD.Config()
    assert (cfg.ce_weight, cfg.feat_weight, cfg.feat_dim, cfg.num_negatives, cfg.nce_temperature, cfg.momentum,
            cfg.smooth_momentum, cfg.knn) == (1.0, 3.0, 128, 16384, 0.07, 0.9, 0.75, 8)
    assert "kd_weight" not in {f for f in vars(cfg)}  # hkd+kd adds KD (kdbench.compose)


@pytest.mark.parametrize("bad", [{"knn": 0}, {"momentum": 1.0}, {"smooth_momentum": 1.5}, {"nce_temperature": 0.0}])
def test_config_range_checks(bad):
    with pytest.raises(ValueError):
        resolve_config(hkd.HKD, bad)


HKD_PAIRS = [("resnet32x4", "resnet8x4"), ("resnet32x4", "shufflev2"), ("vgg13", "mobilenetv2"),
             ("resnet50", "vgg8"), ("resnet50", "mobilenetv2"), ("vgg13", "vgg8")]  # Tables 1 and 2


def test_hkd_and_cc_serve_the_hkd_papers_pairs_with_heads_sized_from_the_measured_embeddings():
    from kdbench.methods.cc import CC

    for t, s in HKD_PAIRS:
        assert hkd.HKD.check(hkd.HKD.Config(), measured(t), measured(s)) is None, (t, s)
        assert CC.check(CC.Config(), measured(t), measured(s)) is None, (t, s)
    t_info, s_info = measured("resnet32x4"), measured("shufflev2")  # embeddings 256 and 1024
    ctx = MethodContext(num_classes=100, num_train_samples=40, device=torch.device("cpu"), epochs=1,
                        steps_per_epoch=1, teacher_arch="resnet32x4", student_arch="shufflev2", dataset="x",
                        input_size=(3, 32, 32), train_labels=torch.arange(40) % 4)
    m = hkd.HKD(hkd.HKD.Config(), t_info, s_info, ctx)
    assert m.memory_student.shape == m.memory_teacher.shape == (40, 128)
    assert m.extra_parameters() == (1024 + 1) * 128 + (256 + 1) * 128 + 2 * (256 + 1) * 128  # banks are buffers
