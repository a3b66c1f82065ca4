"""AT (Zagoruyko & Komodakis 2017): golden values of both modes, pooling, check()."""
import math

import pytest
import torch

from kdbench.method import MethodContext
from kdbench.config import resolve_config
from kdbench.methods.at import AT
from kdbench.taps import Outputs, TapInfo

from harness import main_step_with_trainable_teacher, CRD_GRID, build, cifar_info as info
from naive_ref import naive_common


def fake_info(*shapes, kind="cnn") -> TapInfo:
    return TapInfo(num_classes=10, embedding_dim=shapes[-1][0], stage_channels=tuple(s[0] for s in shapes),
                   stage_sizes=tuple((s[1], s[2]) for s in shapes), has_preact=False, kind=kind)


def make(**overrides) -> AT:
    cfg = resolve_config(AT, overrides)
    c = MethodContext(num_classes=10, num_train_samples=100, device=torch.device("cpu"), epochs=240,
                      steps_per_epoch=10, teacher_arch="t", student_arch="s", dataset="x", input_size=(3, 32, 32))
    return AT(cfg, None, None, c)  # type: ignore[arg-type]


def outputs(*maps) -> Outputs:
    return Outputs(logits=torch.zeros(maps[0].shape[0], 3), embedding=torch.zeros(maps[0].shape[0], 2), stages=maps)


# -- naive reference computations, from REFERENCE.md, with plain loops --------------------

def naive_attention(f):
    """Per sample: vec(mean_c f²) divided by its Euclidean norm."""
    out = []
    for sample in f:
        C, H, W = len(sample), len(sample[0]), len(sample[0][0])
        a = [sum(sample[c][h][w] ** 2 for c in range(C)) / C for h in range(H) for w in range(W)]
        norm = math.sqrt(sum(v * v for v in a))
        out.append([v / norm for v in a])
    return out


def naive_code(pairs, beta):
    total = 0.0
    for fs, ft in pairs:
        fs, ft = naive_common(fs.tolist(), ft.tolist())
        a_s, a_t = naive_attention(fs), naive_attention(ft)
        sq = [(x - y) ** 2 for rs, rt in zip(a_s, a_t) for x, y in zip(rs, rt)]
        total += sum(sq) / len(sq)
    return beta * total


def naive_paper(pairs, beta):
    """β/2 · Σ_j β-scaled by 1/(H_j W_j B): Σ_b ‖a_s − a_t‖₂ / (H_j W_j B)."""
    total = 0.0
    for fs, ft in pairs:
        fs, ft = naive_common(fs.tolist(), ft.tolist())
        a_s, a_t = naive_attention(fs), naive_attention(ft)
        B, HW = len(a_s), len(a_s[0])
        beta_j = beta / (HW * B)
        total += beta_j / 2 * sum(math.sqrt(sum((x - y) ** 2 for x, y in zip(rs, rt))) for rs, rt in zip(a_s, a_t))
    return total


def random_pairs():
    g = torch.Generator().manual_seed(3)
    return [
        (torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 5, 4, 4, generator=g)),  # equal sizes
        (torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 4, 2, 2, generator=g)),  # student larger: pooled
        (torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 2, 4, 6, generator=g)),  # teacher larger: pooled
    ]


def test_defaults_are_the_reference_ones():
    cfg = resolve_config(AT, {})
    assert (cfg.ce_weight, cfg.feat_weight, cfg.p, cfg.mode) == (1.0, 1000.0, 2.0, "code")
    with pytest.raises(ValueError):
        resolve_config(AT, {"mode": "other"})


@pytest.mark.parametrize("mode,naive", [("code", naive_code), ("paper", naive_paper)])
def test_golden_values_of_both_modes(mode, naive):
    pairs = random_pairs()
    m = make(mode=mode)
    terms = m.loss(outputs(*(p[0] for p in pairs)), outputs(*(p[1] for p in pairs)), None, None)
    assert set(terms) == {"loss_at"}
    assert math.isclose(terms["loss_at"].item(), naive(pairs, 1000.0), rel_tol=1e-5)


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_hand_checkable_cases(mode):
    f = torch.randn(2, 4, 4, 4)
    m = make(mode=mode)
    tol = 1e-9 if mode == "code" else 1e-4  # paper: the norm itself (not squared) of float32 rounding
    # identical maps, and maps differing by a positive scale (normalised away): zero
    assert m.loss(outputs(f), outputs(f), None, None)["loss_at"].item() < 1e-9
    assert m.loss(outputs(f), outputs(3.0 * f), None, None)["loss_at"].item() < tol
    # one channel, 1×2 maps: a_s = (1, 0), a_t = (0, 1)
    s = torch.tensor([[[[1.0, 0.0]]]])
    t = torch.tensor([[[[0.0, 1.0]]]])
    got = m.loss(outputs(s), outputs(t), None, None)["loss_at"].item()
    expected = 1000.0 * (1 + 1) / 2 if mode == "code" else 500.0 * math.sqrt(2) / 2
    assert math.isclose(got, expected, rel_tol=1e-6)


def test_attention_is_sign_invariant_and_p_is_used():
    f = torch.randn(2, 3, 4, 4)
    assert make().loss(outputs(f), outputs(-f), None, None)["loss_at"].item() < 1e-9
    g = f.abs()
    s, t = g, g + torch.rand(2, 3, 4, 4)
    assert not math.isclose(make(p=1.0).loss(outputs(s), outputs(t), None, None)["loss_at"].item(),
                            make(p=2.0).loss(outputs(s), outputs(t), None, None)["loss_at"].item())


def test_fractional_p_uses_absolute_values_on_signed_maps():
    # student: channels (-1, 2) at both of its two positions, so its map is constant and
    # normalises to (1, 1)/sqrt(2) (f.pow(1.5) would be NaN on the -1); teacher: one channel
    # with |t|^1.5 = (0.5, 1), normalised to (0.5, 1)/sqrt(1.25); code mode: 1000 · mean diff²
    s = torch.tensor([[[[-1.0, -1.0]], [[2.0, 2.0]]]])  # 1×2×1×2: both positions equal
    t = torch.tensor([[[[0.5 ** (1 / 1.5), 1.0]]]])  # 1×1×1×2: |t|^1.5 = (0.5, 1)
    got = make(p=1.5).loss(outputs(s), outputs(t), None, None)["loss_at"].item()
    a_s = [1 / math.sqrt(2), 1 / math.sqrt(2)]
    a_t = [0.5 / math.sqrt(1.25), 1 / math.sqrt(1.25)]
    expected = 1000.0 * sum((x - y) ** 2 for x, y in zip(a_s, a_t)) / 2
    assert math.isfinite(got) and math.isclose(got, expected, rel_tol=1e-5)


def test_gradient_is_finite_at_zero_difference():
    s = torch.randn(2, 3, 4, 4, requires_grad=True)
    t = s.detach().clone()
    for mode in ("code", "paper"):
        s.grad = None
        make(mode=mode).loss(outputs(s), outputs(t), None, None)["loss_at"].backward()
        assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_gradient_flows_to_the_student_only(mode):
    """AT's loss, like RepDistiller's ``Attention``, does not detach the teacher map itself:
    the teacher is a target because the engine runs it under no_grad. Through the engine's
    own step, with the teacher's weights left trainable so that nothing else keeps the
    gradient out, its maps carry no graph and its weights get no gradient; the student's do."""
    setup = build("at", "resnet20", "resnet8", overrides={"mode": mode})
    student, teacher = setup.student, setup.teacher
    seen, terms = main_step_with_trainable_teacher(setup)
    terms["loss_at"].backward()  # the AT term alone (CE would reach the student anyway)
    assert len(seen) == 1 and len(seen[0].stages) == 3
    assert all(not f.requires_grad for f in seen[0].stages)
    assert all(p.grad is None for p in teacher.parameters())
    w = student.layer1[0].conv1.weight.grad
    assert w is not None and torch.isfinite(w).all() and w.abs().sum() > 0


def test_bf16_inputs_give_a_float32_loss():
    f = torch.randn(2, 3, 4, 4).bfloat16()
    assert make().loss(outputs(f), outputs(f * 2), None, None)["loss_at"].dtype == torch.float32


def test_check_declines_different_stage_counts_and_non_cnn():
    cfg = AT.Config()
    three = fake_info((16, 32, 32), (32, 16, 16), (64, 8, 8))
    four = fake_info((16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4))
    reason = AT.check(cfg, four, three)
    assert reason and "stage counts differ" in reason and "student 3" in reason and "teacher 4" in reason
    assert AT.check(cfg, three, three) is None
    assert "spatial" in AT.check(cfg, three, fake_info((16, 32, 32), kind="gnn"))
    assert AT.check(cfg, info("resnet18"), info("resnet8"))  # ImageNet-depth 4 stages vs CIFAR 3


@pytest.mark.parametrize("teacher,student", CRD_GRID)
def test_serves_every_crd_pair(teacher, student):
    t_info, s_info = info(teacher), info(student)
    assert AT.check(AT.Config(), t_info, s_info) is None
    s = outputs(*(torch.rand(2, *s_info.stage_shape(i)) for i in range(s_info.num_stages)))
    t = outputs(*(torch.rand(2, *t_info.stage_shape(i)) for i in range(t_info.num_stages)))
    assert math.isfinite(make().loss(s, t, None, None)["loss_at"].item())
