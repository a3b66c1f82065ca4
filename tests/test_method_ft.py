"""FT (Kim et al. 2018): golden factor losses (both modes), reconstruction, stages, freezing."""
import math

import pytest
import torch
from torch import nn

from kdbench.method import MethodContext
from kdbench.config import resolve_config
from kdbench.methods.ft import FT, factor_loss
from kdbench.taps import Outputs, TapInfo
from kdbench.train import configure_phase, set_phase_modes, phase_losses

from harness import build
from harness import CRD_GRID, cifar_info as info
from naive_ref import naive_common


def fake_info(*shapes, kind="cnn") -> TapInfo:
    return TapInfo(num_classes=10, embedding_dim=shapes[-1][0], stage_channels=tuple(s[0] for s in shapes),
                   stage_sizes=tuple((s[1], s[2]) for s in shapes), has_preact=False, kind=kind)


def ctx(epochs: int = 240) -> MethodContext:
    return MethodContext(num_classes=10, num_train_samples=100, device=torch.device("cpu"), epochs=epochs,
                         steps_per_epoch=10, teacher_arch="t", student_arch="s", dataset="x", input_size=(3, 32, 32))


def make(s_shape=(6, 4, 4), t_shape=(8, 4, 4), epochs=240, **overrides) -> FT:
    return FT(resolve_config(FT, overrides), fake_info(t_shape), fake_info(s_shape), ctx(epochs))


def outputs(f) -> Outputs:
    return Outputs(logits=torch.zeros(f.shape[0], 3), embedding=torch.zeros(f.shape[0], 2), stages=(f,))


# -- naive reference computations, from REFERENCE.md, with plain loops --------------------

def unit(v):
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def naive_code(fs, ft):
    """mean over b, hw of |φ_s − φ_t|, φ = unit(vec(mean_c F²))."""
    fs, ft = naive_common(fs.tolist(), ft.tolist())
    diffs = []
    for a, b in zip(fs, ft):
        pa = unit([sum(a[c][h][w] ** 2 for c in range(len(a))) / len(a) for h in range(len(a[0])) for w in range(len(a[0][0]))])
        pb = unit([sum(b[c][h][w] ** 2 for c in range(len(b))) / len(b) for h in range(len(b[0])) for w in range(len(b[0][0]))])
        diffs += [abs(x - y) for x, y in zip(pa, pb)]
    return sum(diffs) / len(diffs)


def naive_paper(fs, ft):
    """mean over b of ‖unit(vec F_s) − unit(vec F_t)‖₁, vec over C·H·W."""
    fs, ft = naive_common(fs.tolist(), ft.tolist())
    per_sample = []
    for a, b in zip(fs, ft):
        va = unit([x for ch in a for row in ch for x in row])
        vb = unit([x for ch in b for row in ch for x in row])
        per_sample.append(sum(abs(x - y) for x, y in zip(va, vb)))
    return sum(per_sample) / len(per_sample)


def factor_pairs():
    g = torch.Generator().manual_seed(5)
    return [(torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)),
            (torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 2, 2, generator=g)),
            (torch.randn(2, 3, 2, 2, generator=g), torch.randn(2, 3, 4, 4, generator=g))]


def test_defaults_are_the_reference_ones():
    cfg = resolve_config(FT, {})
    assert (cfg.ce_weight, cfg.feat_weight, cfg.paraphrase_rate, cfg.init_epochs, cfg.init_lr, cfg.rec_loss,
            cfg.mode) == (1.0, 200.0, 0.5, None, 0.01, "mse", "code")


@pytest.mark.parametrize("mode,naive", [("code", naive_code), ("paper", naive_paper)])
def test_golden_factor_loss_of_both_modes(mode, naive):
    for fs, ft in factor_pairs():
        assert math.isclose(factor_loss(fs, ft, mode).item(), naive(fs, ft), rel_tol=1e-5)


@pytest.mark.parametrize("mode,naive", [("code", naive_code), ("paper", naive_paper)])
def test_main_loss_weights_the_factor_loss_of_translator_and_paraphraser_factors(mode, naive):
    m = make(mode=mode).eval()
    g = torch.Generator().manual_seed(7)
    f_s, f_t = torch.randn(2, 6, 4, 4, generator=g), torch.randn(2, 8, 4, 4, generator=g)
    terms = m.loss(outputs(f_s), outputs(f_t), None, None)
    assert set(terms) == {"loss_ft"}
    with torch.no_grad():
        factor_s, factor_t = m.translator(f_s), m.paraphraser.encoder(f_t)
    assert factor_s.shape == factor_t.shape == (2, 4, 4, 4)
    assert math.isclose(terms["loss_ft"].item(), 200.0 * naive(factor_s, factor_t), rel_tol=1e-5)


def test_hand_checkable_cases():
    f = torch.randn(2, 3, 4, 4)
    for mode in ("code", "paper"):
        assert factor_loss(f, f, mode).item() < 1e-6
        assert factor_loss(f, 2.5 * f, mode).item() < 1e-5  # normalised away
    # one channel, 1×2: code φ_s = (1, 0), φ_t = (0, 1): mean |·| = 1; paper: ‖(1,−1)‖₁ = 2
    s, t = torch.tensor([[[[1.0, 0.0]]]]), torch.tensor([[[[0.0, 1.0]]]])
    assert math.isclose(factor_loss(s, t, "code").item(), 1.0, rel_tol=1e-6)
    assert math.isclose(factor_loss(s, t, "paper").item(), 2.0, rel_tol=1e-6)
    # paper mode keeps the sign (code mode squares it away)
    assert factor_loss(f, -f, "code").item() < 1e-6
    assert factor_loss(f, -f, "paper").item() > 1.0


@pytest.mark.parametrize("rec_loss", ["mse", "relative_mse"])
def test_reconstruction_loss_is_the_mse_of_the_paraphraser_output(rec_loss):
    m = make(rec_loss=rec_loss)
    f_t = torch.randn(2, 8, 4, 4)
    terms = m.reconstruction_loss(None, outputs(f_t), None, None)
    assert set(terms) == {"loss_rec"}
    with torch.no_grad():
        rec = m.paraphraser.decoder(m.paraphraser.encoder(f_t)).tolist()
    ft = f_t.tolist()
    idx = [(b, c, h, w) for b in range(2) for c in range(8) for h in range(4) for w in range(4)]
    expected = sum((rec[b][c][h][w] - ft[b][c][h][w]) ** 2 for b, c, h, w in idx) / len(idx)
    if rec_loss == "relative_mse":
        expected /= sum(ft[b][c][h][w] ** 2 for b, c, h, w in idx) / len(idx)
    assert math.isclose(terms["loss_rec"].item(), expected, rel_tol=1e-5)


def test_paraphraser_and_translator_architecture():
    m = make(s_shape=(6, 4, 4), t_shape=(8, 4, 4))
    convs = [mod for mod in m.paraphraser.encoder if isinstance(mod, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [(8, 8), (8, 4), (4, 4)]
    tconvs = [mod for mod in m.paraphraser.decoder if isinstance(mod, nn.ConvTranspose2d)]
    assert [(c.in_channels, c.out_channels) for c in tconvs] == [(4, 4), (4, 8), (8, 8)]
    for c in convs + tconvs:
        assert c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (1, 1)
    assert not any(isinstance(mod, nn.BatchNorm2d) for mod in m.paraphraser.modules())
    leaky = [mod for mod in m.modules() if isinstance(mod, nn.LeakyReLU)]
    assert len(leaky) == 9 and all(mod.negative_slope == 0.1 for mod in leaky)
    kinds = [type(mod) for mod in m.translator]
    assert kinds == [nn.Conv2d, nn.BatchNorm2d, nn.LeakyReLU] * 3
    assert [(c.in_channels, c.out_channels) for c in m.translator if isinstance(c, nn.Conv2d)] == [(6, 6), (6, 4), (4, 4)]
    assert make(paraphrase_rate=0.25).paraphraser.encoder[2].out_channels == 2
    f = torch.randn(2, 8, 4, 4)
    factor, rec = m.paraphraser(f)
    assert factor.shape == (2, 4, 4, 4) and rec.shape == f.shape


@pytest.mark.parametrize("epochs,explicit,expected", [(240, None, 30), (15, None, 2), (4, None, 1), (15, 5, 5)])
def test_init_epochs_scale_with_the_main_schedule(epochs, explicit, expected):
    m = make(epochs=epochs, init_epochs=explicit, init_lr=0.01)
    stages = m.phases()
    assert [s.name for s in stages] == ["paraphraser"]
    (st,) = stages
    assert (st.epochs, st.lr, st.student, st.ce_weight, st.modules) == (expected, 0.01, "none", 0.0, (m.paraphraser,))
    assert m.main_modules() == [m.translator]
    assert make(init_epochs=0).phases() == []


def test_paraphraser_stage_trains_only_the_paraphraser():
    setup = build("ft", "resnet20", "resnet8")
    m = setup.method
    para, main = setup.phases()
    params = configure_phase(setup.student, m, para)
    assert {id(p) for p in params} == {id(p) for p in m.paraphraser.parameters()}
    _, terms = phase_losses(None, setup.teacher, para, setup.batch(), setup.step_info(para), setup.method)
    assert set(terms) == {"loss_rec"}
    sum(terms.values()).backward()
    assert all(p.grad is not None for p in m.paraphraser.parameters())
    assert all(p.grad is None for p in m.translator.parameters())
    assert all(p.grad is None for p in setup.student.parameters())


def test_main_stage_freezes_the_paraphraser_in_eval_mode():
    setup = build("ft", "resnet20", "resnet8")
    m, student = setup.method, setup.student
    _, main = setup.phases()
    assert main.modules == (m.translator,)
    params = configure_phase(student, m, main)
    set_phase_modes(student, m, setup.teacher, main)  # the trainer's code
    assert not m.paraphraser.training and all(not mod.training for mod in m.paraphraser.modules())
    assert m.translator.training and student.training
    assert all(not p.requires_grad for p in m.paraphraser.parameters())
    assert not {id(p) for p in m.paraphraser.parameters()} & {id(p) for p in params}
    before = {k: v.clone() for k, v in m.paraphraser.state_dict().items()}
    opt = torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4)
    _, terms = phase_losses(student, setup.teacher, main, setup.batch(), setup.step_info(main), setup.method)
    assert set(terms) == {"loss_ce", "loss_ft"}
    opt.zero_grad(set_to_none=True)
    sum(terms.values()).backward()
    assert all(p.grad is None for p in m.paraphraser.parameters())
    assert all(p.grad is not None for p in m.translator.parameters())
    opt.step()
    for k, v in m.paraphraser.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_bf16_inputs_give_float32_losses():
    m = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fs, ft = torch.randn(2, 6, 4, 4), torch.randn(2, 8, 4, 4)
        assert m.loss(outputs(fs), outputs(ft), None, None)["loss_ft"].dtype == torch.float32
        assert m.reconstruction_loss(None, outputs(ft), None, None)["loss_rec"].dtype == torch.float32


def test_check_declines_what_it_cannot_serve():
    t = fake_info((16, 32, 32), (64, 8, 8))
    assert FT.check(FT.Config(), t, fake_info((16, 32, 32), kind="gnn"))
    assert "needs a teacher" in FT.check(FT.Config(), None, t)
    reason = FT.check(resolve_config(FT, {"paraphrase_rate": 0.01}), t, t)
    assert reason and "paraphrase_rate" in reason


@pytest.mark.parametrize("teacher,student", CRD_GRID)
def test_accepts_every_crd_pair(teacher, student):
    assert FT.check(FT.Config(), info(teacher), info(student)) is None


# resnet50's 2048-channel paraphraser (~75M parameters) is slow to build: those pairs run in the slow step
@pytest.mark.parametrize("teacher,student", [
    pytest.param(t, s, marks=pytest.mark.slow) if t == "resnet50" else (t, s) for t, s in CRD_GRID])
def test_serves_every_crd_pair(teacher, student):
    t_info, s_info = info(teacher), info(student)
    assert FT.check(FT.Config(), t_info, s_info) is None
    m = FT(FT.Config(), t_info, s_info, ctx())
    f_s, f_t = torch.rand(2, *s_info.stage_shape(-1)), torch.rand(2, *t_info.stage_shape(-1))
    for mode in ("code", "paper"):
        assert math.isfinite(factor_loss(m.translator(f_s), m.paraphraser.encoder(f_t), mode).item())


def test_paper_mode_backpropagates_to_student_and_translator_only():
    setup = build("ft", "wrn_16_2", "resnet8", overrides={"mode": "paper"})
    m, student = setup.method, setup.student
    _, main = setup.phases()
    configure_phase(student, m, main)
    _, terms = phase_losses(student, setup.teacher, main, setup.batch(), setup.step_info(main), setup.method)
    sum(terms.values()).backward()
    assert math.isfinite(terms["loss_ft"].item())
    assert all(p.grad is not None for p in m.translator.parameters())
    assert all(p.grad is None for p in m.paraphraser.parameters())
    assert student.layer3[0].conv1.weight.grad is not None
