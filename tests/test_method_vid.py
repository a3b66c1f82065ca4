"""VID (Ahn et al. 2019) golden values, computed with plain loops from REFERENCE.md §1."""
import math

import pytest
import torch
from torch import nn

from kdbench.method import MethodContext
from kdbench.config import resolve_config
from kdbench.methods.vid import VID
from kdbench.taps import Outputs, TapInfo
from kdbench.train import configure_phase, phase_plan
from harness import main_step_with_trainable_teacher, CRD_GRID as CRD_PAIRS, build, cifar_info as info

CTX = MethodContext(num_classes=5, num_train_samples=10, device=torch.device("cpu"), epochs=1, steps_per_epoch=1,
                    teacher_arch="t", student_arch="s", dataset="random", input_size=(3, 8, 8))

#: stage 1: the student map is larger (pooled 4×4 -> 2×2); stage 2: the teacher map is larger
S_INFO = TapInfo(num_classes=5, embedding_dim=3, stage_channels=(2, 3), stage_sizes=((4, 4), (2, 2)), has_preact=False)
T_INFO = TapInfo(num_classes=5, embedding_dim=2, stage_channels=(3, 2), stage_sizes=((2, 2), (4, 4)), has_preact=False)


def make_vid(**overrides) -> VID:
    torch.manual_seed(0)
    return VID(resolve_config(VID, overrides), T_INFO, S_INFO, CTX)


def naive_pool(f, size):
    """Average non-overlapping blocks (the sizes here divide evenly) — per sample, channel."""
    b, c, h, w = f.shape
    kh, kw = h // size[0], w // size[1]
    out = torch.zeros(b, c, size[0], size[1], dtype=torch.float64)
    for n in range(b):
        for ch in range(c):
            for i in range(size[0]):
                for j in range(size[1]):
                    block = [f[n, ch, i * kh + a, j * kw + d].item() for a in range(kh) for d in range(kw)]
                    out[n, ch, i, j] = sum(block) / len(block)
    return out


def naive_regress(regressor: nn.Sequential, f):
    """Three 1×1 convolutions (ReLU between) applied pixel by pixel as matrix-vector products."""
    w1, w2, w3 = (regressor[k].weight[:, :, 0, 0].tolist() for k in (0, 2, 4))

    def matvec(w, v):
        return [sum(a * x for a, x in zip(row, v)) for row in w]

    b, _, h, w = f.shape
    out = torch.zeros(b, len(w3), h, w, dtype=torch.float64)
    for n in range(b):
        for i in range(h):
            for j in range(w):
                v = [f[n, ch, i, j].item() for ch in range(f.shape[1])]
                hidden = [max(0.0, x) for x in matvec(w1, v)]
                hidden = [max(0.0, x) for x in matvec(w2, hidden)]
                for ch, x in enumerate(matvec(w3, hidden)):
                    out[n, ch, i, j] = x
    return out


def naive_stage_nll(mu, t, theta, eps=1e-5) -> float:
    var = [math.log(1 + math.exp(th)) + eps for th in theta.tolist()]
    b, c, h, w = t.shape
    total = 0.0
    for n in range(b):
        for ch in range(c):
            for i in range(h):
                for j in range(w):
                    diff = mu[n, ch, i, j].item() - t[n, ch, i, j].item()
                    total += 0.5 * (diff * diff / var[ch] + math.log(var[ch]))
    return total / (b * c * h * w)


def random_outputs(seed=0, b=3):
    g = torch.Generator().manual_seed(seed)
    s_maps = tuple(torch.randn(b, *S_INFO.stage_shape(i), generator=g) for i in range(2))
    t_maps = tuple(torch.randn(b, *T_INFO.stage_shape(i), generator=g) for i in range(2))
    s = Outputs(logits=torch.zeros(b, 5), embedding=torch.zeros(b, 3), stages=s_maps)
    t = Outputs(logits=torch.zeros(b, 5), embedding=torch.zeros(b, 2), stages=t_maps)
    return s, t


def naive_vid(m: VID, s: Outputs, t: Outputs) -> float:
    total = 0.0
    for i, (fs, ft) in enumerate(zip(s.stages, t.stages)):
        size = (min(fs.shape[2], ft.shape[2]), min(fs.shape[3], ft.shape[3]))
        fs = naive_pool(fs, size) if tuple(fs.shape[2:]) != size else fs
        ft = naive_pool(ft, size) if tuple(ft.shape[2:]) != size else ft
        total += naive_stage_nll(naive_regress(m.regressors[i], fs), ft, m.theta[i].detach())
    return total


def test_vid_matches_naive_loops_with_pooling_on_either_side():
    m = make_vid()
    with torch.no_grad():  # per-channel variances that differ from each other
        for th in m.theta:
            th.copy_(torch.linspace(-1.0, 2.0, th.numel()))
    s, t = random_outputs()
    terms = m.loss(s, t, None, None)  # type: ignore[arg-type]
    assert set(terms) == {"loss_vid"}
    expected = naive_vid(m, s, t)
    assert abs(terms["loss_vid"].item() - expected) < 1e-5
    half = make_vid(feat_weight=0.5)
    with torch.no_grad():
        for th, ref in zip(half.theta, m.theta):
            th.copy_(ref)
    assert abs(half.loss(s, t, None, None)["loss_vid"].item() - 0.5 * expected) < 1e-5  # type: ignore[arg-type]


def test_initial_variance_and_hand_checkable_values():
    m = make_vid()
    theta0 = math.log(math.expm1(5.0 - 1e-5))
    for th, c in zip(m.theta, T_INFO.stage_channels):
        assert th.shape == (c,) and torch.allclose(th, torch.full((c,), theta0))
    for var in m.variances():
        assert torch.allclose(var, torch.full_like(var, 5.0), atol=1e-6)
    assert abs(theta0 - 4.99323) < 1e-4
    # zero regressor -> μ = 0: NLL of a target t is ½(t²/5 + log 5) per element
    with torch.no_grad():
        for p in m.regressors.parameters():
            p.zero_()
    s, t = random_outputs()
    t = Outputs(logits=t.logits, embedding=t.embedding, stages=tuple(torch.zeros_like(f) for f in t.stages))
    assert abs(m.loss(s, t, None, None)["loss_vid"].item() - 2 * 0.5 * math.log(5)) < 1e-5  # type: ignore[arg-type]
    t = Outputs(logits=t.logits, embedding=t.embedding, stages=tuple(torch.ones_like(f) for f in t.stages))
    got = m.loss(s, t, None, None)["loss_vid"].item()  # type: ignore[arg-type]
    assert abs(got - 2 * 0.5 * (0.2 + math.log(5))) < 1e-5


def test_regressor_shape_follows_the_reference():
    m = make_vid()
    for reg, c_s, c_t in zip(m.regressors, S_INFO.stage_channels, T_INFO.stage_channels):
        convs = [mod for mod in reg if isinstance(mod, nn.Conv2d)]
        assert [type(mod) for mod in reg] == [nn.Conv2d, nn.ReLU, nn.Conv2d, nn.ReLU, nn.Conv2d]
        assert [(c.in_channels, c.out_channels) for c in convs] == [(c_s, c_t), (c_t, c_t), (c_t, c_t)]  # hidden = C_t
        assert all(c.kernel_size == (1, 1) and c.bias is None for c in convs)


def test_theta_and_regressors_are_registered_and_get_gradients():
    m = make_vid()
    params = {id(p) for p in m.parameters()}
    assert all(id(th) in params for th in m.theta)
    assert all(id(p) in params for p in m.regressors.parameters())
    assert any(name.startswith("theta.") for name in m.state_dict())
    main = phase_plan(m, 1)[-1]
    trainable = {id(p) for p in configure_phase(nn.Linear(1, 1), m, main)}
    assert all(id(th) in trainable for th in m.theta)
    s, t = random_outputs()
    s = Outputs(logits=s.logits, embedding=s.embedding, stages=tuple(f.requires_grad_(True) for f in s.stages))
    m.loss(s, t, None, None)["loss_vid"].backward()  # type: ignore[arg-type]
    for p in m.parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    assert all(f.grad is not None for f in s.stages)


def test_the_teacher_is_a_target_through_the_engine():
    """VID, like RepDistiller's VIDLoss, does not detach the teacher map itself: the teacher
    is a target because the engine runs it under no_grad (RepDistiller: ``torch.no_grad()``
    and ``.detach()`` on ``feat_t``). Through the engine's own step, with the teacher's
    weights left trainable so that nothing else keeps the gradient out, its maps carry no
    graph and its weights get no gradient, while the student, the regressors and θ do."""
    setup = build("vid", "resnet20", "resnet8")
    m, student, teacher = setup.method, setup.student, setup.teacher
    seen, terms = main_step_with_trainable_teacher(setup)
    sum(terms.values()).backward()
    assert len(seen) == 1 and len(seen[0].stages) == 3
    assert all(not f.requires_grad for f in seen[0].stages)
    assert all(p.grad is None for p in teacher.parameters())
    assert all(p.grad is not None for p in m.parameters())
    assert student.layer1[0].conv1.weight.grad is not None


def test_autocast_is_off():
    m = make_vid()
    s, t = random_outputs(seed=1)
    exact = m.loss(s, t, None, None)["loss_vid"]  # type: ignore[arg-type]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        amp = m.loss(s, t, None, None)["loss_vid"]  # type: ignore[arg-type]
    assert amp.dtype == torch.float32 and abs(amp.item() - exact.item()) < 1e-6


def test_defaults_and_config_validation():
    cfg = resolve_config(VID, {})
    assert (cfg.ce_weight, cfg.feat_weight, cfg.init_var, cfg.var_eps) == (1.0, 1.0, 5.0, 1e-5)
    assert VID.needs().stages == "all"
    with pytest.raises(ValueError, match="init_var"):
        resolve_config(VID, {"init_var": 0.0})
    m = make_vid(init_var=2.0)
    assert all(torch.allclose(v, torch.full_like(v, 2.0), atol=1e-6) for v in m.variances())


def test_vid_check_serves_the_crd_grid_and_declines_what_it_cannot_map():
    cfg = VID.Config()
    for teacher, student in CRD_PAIRS:
        assert VID.check(cfg, info(teacher), info(student)) is None, (teacher, student)
        m = VID(cfg, info(teacher), info(student), CTX)
        assert len(m.regressors) == len(m.theta) == info(student).num_stages
    reason = VID.check(cfg, info("resnet32x4"), info("vgg8"))  # 3 stages vs 4
    assert reason and "stage counts differ" in reason and "student 4" in reason and "teacher 3" in reason
    gnn = TapInfo(num_classes=100, embedding_dim=64, stage_channels=(), stage_sizes=(), has_preact=False, kind="gnn")
    assert "spatial" in (VID.check(cfg, info("resnet20"), gnn) or "")
    assert VID.check(cfg, None, info("resnet8x4"))
