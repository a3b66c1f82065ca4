"""CC (Peng et al. ICCV 2019; RepDistiller's Correlation): golden values from loops and hand
values for the code mode and the paper's Taylor-RBF mode, gradients."""
import math

import pytest
import torch

from kdbench.config import resolve_config
from kdbench.method import MethodContext
from kdbench.methods import cc
from kdbench.taps import Outputs, TapInfo

from harness import build, main_step_with_trainable_teacher


def info(dim):
    return TapInfo(num_classes=3, embedding_dim=dim, stage_channels=(), stage_sizes=(), has_preact=False)


def make_cc(overrides=None, s_dim=2, t_dim=2):
    torch.manual_seed(0)
    cfg = resolve_config(cc.CC, overrides or {})
    ctx = MethodContext(num_classes=3, num_train_samples=10, device=torch.device("cpu"), epochs=1, steps_per_epoch=1,
                        teacher_arch="t", student_arch="s", dataset="x", input_size=(3, 8, 8))
    return cc.CC(cfg, info(t_dim), info(s_dim), ctx)


def loss_of(m, f_s, f_t):
    return m.loss(Outputs(logits=torch.zeros(len(f_s), 3), embedding=torch.tensor(f_s)),
                  Outputs(logits=torch.zeros(len(f_t), 3), embedding=torch.tensor(f_t)), None, None)["loss_cc"].item()


def naive_code(e_s, e_t):
    """mean over consecutive rows b of Σ_d |e_s−e_t|[b,d]·|e_s−e_t|[b+1,d]."""
    delta = [[abs(a - b) for a, b in zip(rs, rt)] for rs, rt in zip(e_s, e_t)]
    return sum(sum(x * y for x, y in zip(delta[b], delta[b + 1])) for b in range(len(delta) - 1)) / (len(delta) - 1)


def naive_corr(f, gamma, order):
    f = [[x / math.sqrt(sum(v * v for v in r)) for x in r] for r in f]
    out = []
    for a in f:
        row = []
        for b in f:
            s = sum(x * y for x, y in zip(a, b))
            row.append(sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * s ** p for p in range(order + 1)))
        out.append(row)
    return out


def naive_paper(f_s, f_t, gamma, order):
    cs, ct = naive_corr(f_s, gamma, order), naive_corr(f_t, gamma, order)
    n = len(f_s)
    return sum((ct[i][j] - cs[i][j]) ** 2 for i in range(n) for j in range(n)) / n**2


def test_code_mode_hand_value_with_identity_heads():
    m = make_cc({"feat_dim": 2})
    with torch.no_grad():
        for head in (m.embed_s, m.embed_t):
            head.weight.copy_(torch.eye(2))
            head.bias.zero_()
    # Δ = [[1,2],[2,0],[1,2]]: rows 0·1 = 2, rows 1·2 = 2 -> mean 2, × 0.02
    assert loss_of(m, [[1.0, 2.0], [3.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0], [1.0, 2.0]]) == pytest.approx(0.04)


def test_code_mode_matches_naive_loop_through_the_heads():
    m = make_cc(s_dim=5, t_dim=7)
    g = torch.Generator().manual_seed(2)
    f_s, f_t = torch.randn(6, 5, generator=g), torch.randn(6, 7, generator=g)
    e_s = [[sum(w * x for w, x in zip(wr, f)) + b for wr, b in zip(m.embed_s.weight.tolist(), m.embed_s.bias.tolist())]
           for f in f_s.tolist()]
    e_t = [[sum(w * x for w, x in zip(wr, f)) + b for wr, b in zip(m.embed_t.weight.tolist(), m.embed_t.bias.tolist())]
           for f in f_t.tolist()]
    assert loss_of(m, f_s.tolist(), f_t.tolist()) == pytest.approx(0.02 * naive_code(e_s, e_t), rel=1e-5)


def test_paper_mode_hand_values_and_naive_loop():
    # P = 0: every entry is exp(−2γ) on both sides -> 0
    m0 = make_cc({"mode": "paper", "taylor_order": 0, "feat_weight": 1.0})
    assert loss_of(m0, [[1.0, 0.0], [0.0, 1.0]], [[1.0, 0.0], [1.0, 0.0]]) == pytest.approx(0.0, abs=1e-12)
    # P = 1, γ = 0.5: C = e^{-1}(1 + s); student orthogonal (s01 = 0), teacher identical rows (s01 = 1):
    # the two off-diagonal entries differ by e^{-1}, the diagonal agrees -> (2 e^{-2}) / 4
    m1 = make_cc({"mode": "paper", "taylor_order": 1, "gamma": 0.5, "feat_weight": 1.0})
    got = loss_of(m1, [[1.0, 0.0], [0.0, 1.0]], [[2.0, 0.0], [3.0, 0.0]])
    assert got == pytest.approx(2 * math.exp(-2) / 4, rel=1e-6)
    m = make_cc({"mode": "paper"}, s_dim=4, t_dim=9)  # widths may differ: B × B matrices
    assert not list(m.parameters())  # no heads in the paper's formulation
    g = torch.Generator().manual_seed(5)
    f_s, f_t = torch.randn(5, 4, generator=g), torch.randn(5, 9, generator=g)
    want = 0.02 * naive_paper(f_s.tolist(), f_t.tolist(), 0.4, 2)
    assert loss_of(m, f_s.tolist(), f_t.tolist()) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_gradients_reach_the_student_and_both_heads_never_the_teacher(mode):
    setup = build("cc", overrides={"mode": mode})
    _, terms = main_step_with_trainable_teacher(setup)
    terms["loss_cc"].backward()
    m = setup.method
    for p in m.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert len(list(m.parameters())) == (4 if mode == "code" else 0)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in setup.student.parameters())
    assert all(p.grad is None for p in setup.teacher.parameters())


def test_defaults_follow_repdistiller():
    cfg = cc.CC.Config()
    assert (cfg.ce_weight, cfg.feat_weight, cfg.feat_dim, cfg.mode, cfg.gamma, cfg.taylor_order) == \
        (1.0, 0.02, 128, "code", 0.4, 2)
    with pytest.raises(ValueError):
        resolve_config(cc.CC, {"mode": "other"})
