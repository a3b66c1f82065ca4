"""FitNets (Romero et al. 2015): golden hint loss, regressor shapes, check(), hint stage."""
import math

import pytest
import torch
from torch import nn

from kdbench.method import MethodContext, StepInfo
from kdbench.config import resolve_config
from kdbench.methods._common import bridge_kind
from kdbench.methods.fitnets import FitNets, make_regressor
from kdbench.taps import Outputs, TapInfo
from kdbench.train import configure_phase, phase_losses

from harness import build
from harness import CRD_GRID, cifar_info as info


def fake_info(*shapes: tuple[int, int, int], kind: str = "cnn") -> TapInfo:
    return TapInfo(num_classes=10, embedding_dim=shapes[-1][0], stage_channels=tuple(s[0] for s in shapes),
                   stage_sizes=tuple((s[1], s[2]) for s in shapes), has_preact=False, kind=kind)


def ctx(epochs: int = 240) -> MethodContext:
    return MethodContext(num_classes=10, num_train_samples=100, device=torch.device("cpu"), epochs=epochs,
                         steps_per_epoch=10, teacher_arch="t", student_arch="s", dataset="x", input_size=(3, 32, 32))


def naive_regressed_mse(fs, w, bias, ft):
    """ReLU((W·f_s + bias) per pixel) (1×1 conv, identity BN) vs f_t: mean squared error, by loops."""
    B, Cs, H, W = len(fs), len(fs[0]), len(fs[0][0]), len(fs[0][0][0])
    Ct = len(w)
    total, n = 0.0, 0
    for b in range(B):
        for c in range(Ct):
            for h in range(H):
                for x in range(W):
                    v = bias[c] + sum(w[c][k] * fs[b][k][h][x] for k in range(Cs))
                    v = max(v, 0.0)
                    total += (v - ft[b][c][h][x]) ** 2
                    n += 1
    return total / n


def method_with_known_regressor(w, bias, s_shape, t_shape, **overrides) -> FitNets:
    cfg = resolve_config(FitNets, overrides)
    m = FitNets(cfg, fake_info((1, 8, 8), t_shape), fake_info((1, 8, 8), s_shape), ctx())
    conv, bn, _ = m.regressor
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(w).view(len(w), len(w[0]), 1, 1))
        conv.bias.copy_(torch.tensor(bias))
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0 - bn.eps)  # BN(x) = x exactly in eval mode
    m.eval()
    return m


def test_defaults_are_the_reference_ones():
    cfg = resolve_config(FitNets, {})
    assert (cfg.ce_weight, cfg.feat_weight, cfg.hint_layer, cfg.hint_phase_epochs, cfg.hint_lr) == (1.0, 100.0, 2, 0, None)


def test_golden_hint_loss_matches_naive_loops():
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(2, 3, 2, 2, generator=g)
    ft = torch.rand(2, 2, 2, 2, generator=g)
    w = [[0.5, -1.0, 0.25], [1.5, 0.3, -0.2]]
    bias = [0.1, -0.05]
    m = method_with_known_regressor(w, bias, (3, 2, 2), (2, 2, 2))
    s = Outputs(logits=torch.zeros(2, 10), embedding=torch.zeros(2, 3), stages=(fs, fs))
    t = Outputs(logits=torch.zeros(2, 10), embedding=torch.zeros(2, 2), stages=(ft, ft))
    terms = m.loss(s, t, None, None)
    assert set(terms) == {"loss_hint"}
    expected = 100.0 * naive_regressed_mse(fs.tolist(), w, bias, ft.tolist())
    assert math.isclose(terms["loss_hint"].item(), expected, rel_tol=1e-5)


def test_hand_checkable_zero_and_constant_cases():
    # identity regressor, non-negative equal maps: zero loss
    f = torch.rand(3, 2, 4, 4)
    m = method_with_known_regressor([[1.0, 0.0], [0.0, 1.0]], [0.0, 0.0], (2, 4, 4), (2, 4, 4))
    assert m.hint_loss(f, f).item() < 1e-10
    # zero regressor output (all weights/bias 0 -> ReLU 0) against a teacher of all 2s: 100 * 4
    m0 = method_with_known_regressor([[0.0, 0.0]], [0.0], (2, 4, 4), (1, 4, 4))
    assert math.isclose(m0.hint_loss(f, torch.full((3, 1, 4, 4), 2.0)).item(), 400.0, rel_tol=1e-6)


@pytest.mark.parametrize("s_shape,t_shape,kind,conv_type,kernel,stride", [
    ((16, 32, 32), (32, 16, 16), "down2", nn.Conv2d, (3, 3), (2, 2)),
    ((232, 8, 8), (32, 16, 16), "up2", nn.ConvTranspose2d, (4, 4), (2, 2)),
    ((16, 16, 16), (64, 16, 16), "valid", nn.Conv2d, (1, 1), (1, 1)),
    ((16, 10, 9), (8, 8, 8), "valid", nn.Conv2d, (3, 2), (1, 1)),
    ((16, 2, 2), (8, 1, 1), "down2", nn.Conv2d, (3, 3), (2, 2)),
])
def test_regressor_is_sized_from_the_shapes(s_shape, t_shape, kind, conv_type, kernel, stride):
    assert bridge_kind(s_shape[1:], t_shape[1:]) == kind
    reg = make_regressor(s_shape, t_shape)
    conv, bn, relu = reg
    assert type(conv) is conv_type and conv.kernel_size == kernel and conv.stride == stride
    assert isinstance(bn, nn.BatchNorm2d) and isinstance(relu, nn.ReLU)
    assert reg(torch.randn(2, *s_shape)).shape == (2, *t_shape)


def test_check_declines_unbridgeable_ratios_and_missing_hint_layers():
    cfg = resolve_config(FitNets, {})
    t = fake_info((16, 32, 32), (32, 32, 32), (64, 8, 8))
    for s_size in (8, 12, 20, 31):  # smaller than the teacher's 32 by other than exactly 2x
        reason = FitNets.check(cfg, t, fake_info((16, 32, 32), (32, s_size, s_size), (64, 8, 8)))
        assert reason and "2x" in reason and "smaller" in reason, reason
    assert FitNets.check(cfg, t, fake_info((16, 32, 32), (32, 16, 16), (64, 8, 8))) is None
    reason = FitNets.check(resolve_config(FitNets, {"hint_layer": 4}), t, t)
    assert reason and "stage index [3]" in reason and "3 stage(s)" in reason, reason  # hint_layer 4, 1-based
    assert "needs a teacher" in FitNets.check(cfg, None, t)
    assert "spatial" in FitNets.check(cfg, t, fake_info((16, 32, 32), (32, 16, 16), kind="gnn"))


@pytest.mark.parametrize("teacher,student", CRD_GRID)
def test_serves_every_crd_pair_and_regresses_to_the_teacher_shape(teacher, student):
    t_info, s_info = info(teacher), info(student)
    assert FitNets.check(FitNets.Config(), t_info, s_info) is None
    m = FitNets(FitNets.Config(), t_info, s_info, ctx())
    out = m.regressor(torch.randn(2, *s_info.stage_shape(1)))
    assert out.shape == (2, *t_info.stage_shape(1))


def test_hint_layer_option_selects_the_stage():
    setup = build("fitnets", "resnet20", "resnet8", overrides={"hint_layer": 3})
    assert setup.method.hint_index == 2
    assert setup.method.regressor[0].in_channels == 64 and setup.method.regressor[0].out_channels == 64


def test_default_is_one_stage_with_the_regressor_trained():
    setup = build("fitnets", "resnet20", "resnet8")
    stages = setup.phases()
    assert [s.name for s in stages] == ["main"]
    assert stages[0].modules == (setup.method,) and stages[0].ce_weight == 1.0


def test_hint_stage_trains_the_student_up_to_the_hint_and_the_regressor_only():
    setup = build("fitnets", "resnet20", "resnet8", overrides={"hint_phase_epochs": 2, "hint_lr": 0.02})
    m, student = setup.method, setup.student
    stages = setup.phases(epochs=5)
    assert [s.name for s in stages] == ["hint", "main"]
    hint, main = stages
    assert (hint.epochs, hint.lr, hint.ce_weight, hint.student) == (2, 0.02, 0.0, "all")
    assert hint.modules == (m.regressor,)
    assert main.epochs == 5 and main.modules == (m,) and main.ce_weight == 1.0

    params = configure_phase(student, m, hint)
    student.train()
    m.train()
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    _, terms = phase_losses(student, setup.teacher, hint, setup.batch(), setup.step_info(hint), setup.method)
    assert set(terms) == {"loss_hint"}  # no CE in the hint stage
    opt.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in m.regressor.parameters())
    up_to_hint = [student.conv1, student.bn1, student.layer1, student.layer2]
    after_hint = [student.layer3, student.get_classifier()]
    assert all(p.grad is not None for mod in up_to_hint for p in mod.parameters())
    assert all(p.grad is None for mod in after_hint for p in mod.parameters())
    opt.step()
    after_ids = {id(p) for mod in after_hint for p in mod.parameters()}
    for n, p in student.named_parameters():  # SGD (with weight decay) leaves grad-less parameters alone
        assert torch.equal(p, before[n]) == (id(p) in after_ids), n


def test_loss_is_float32_under_bf16_inputs():
    setup = build("fitnets", "resnet20", "resnet8")
    s = Outputs(logits=torch.zeros(2, 4), embedding=torch.zeros(2, 64),
                stages=tuple(torch.rand(2, c, h, h).bfloat16() for c, h in ((16, 32), (32, 16), (64, 8))))
    step = StepInfo(phase="main", epoch=1, epochs=1, step=0, steps_per_epoch=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = setup.method.loss(s, s, None, step)["loss_hint"]
    assert out.dtype == torch.float32
