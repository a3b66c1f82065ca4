"""SP (Tung & Mori 2019) golden values, computed with plain loops from REFERENCE.md §1."""
import math

import torch

from kdbench.config import resolve_config
from kdbench.methods.sp import SP, sp_loss
from kdbench.models import create_model
from kdbench.taps import Outputs, TapInfo
from harness import CRD_GRID as CRD_PAIRS, cifar_info as info


def naive_sp(fs, ft) -> float:
    """‖G_t − G_s‖²_F / B² with G = row-L2-normalised F Fᵀ, entry by entry."""
    def flat(f):
        return [f[i].flatten().tolist() for i in range(f.shape[0])]

    def gram(rows):
        g = [[sum(a * b for a, b in zip(ri, rj)) for rj in rows] for ri in rows]
        out = []
        for row in g:
            norm = math.sqrt(sum(v * v for v in row))
            out.append([v / norm for v in row])
        return out

    gs, gt = gram(flat(fs)), gram(flat(ft))
    b = fs.shape[0]
    return sum((gt[i][j] - gs[i][j]) ** 2 for i in range(b) for j in range(b)) / (b * b)


def test_sp_matches_naive_loops_across_shapes():
    g = torch.Generator().manual_seed(1)
    fs = torch.randn(5, 3, 4, 4, generator=g, dtype=torch.float64)  # student: 3 channels @ 4×4
    ft = torch.randn(5, 6, 2, 2, generator=g, dtype=torch.float64).relu()  # teacher: 6 @ 2×2
    got = sp_loss(fs, ft)
    assert got.dtype == torch.float32
    assert abs(got.item() - naive_sp(fs, ft)) < 1e-6


def test_sp_hand_checkable_cases():
    f = torch.randn(4, 2, 3, 3)
    assert sp_loss(f, f).item() < 1e-12  # identical maps
    assert sp_loss(2.5 * f, f).item() < 1e-10  # row normalisation makes the Gram matrix scale-free
    # B = 2: orthogonal student rows -> G_s = I; identical teacher rows -> G_t = all 1/√2.
    # ‖G_t − I‖² = 2(1 − 1/√2)² + 2·½ = 4 − 2√2, divided by B² = 4.
    fs = torch.tensor([[1.0, 0.0], [0.0, 3.0]]).view(2, 2, 1, 1)
    ft = torch.tensor([[2.0, 2.0], [2.0, 2.0]]).view(2, 2, 1, 1)
    assert abs(sp_loss(fs, ft).item() - (1 - math.sqrt(2) / 2)) < 1e-6


def test_sp_method_weights_the_term_and_defaults_are_the_reference_ones():
    cfg = resolve_config(SP, {})
    assert (cfg.ce_weight, cfg.feat_weight) == (1.0, 3000.0)
    assert SP.needs().stages == (-1,) and SP.needs().teacher
    g = torch.Generator().manual_seed(2)
    early_s, early_t = torch.randn(3, 2, 8, 8, generator=g), torch.randn(3, 2, 8, 8, generator=g)
    fs, ft = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 8, 1, 1, generator=g)
    s = Outputs(logits=torch.zeros(3, 5), embedding=torch.zeros(3, 4), stages=(early_s, fs))
    t = Outputs(logits=torch.zeros(3, 5), embedding=torch.zeros(3, 8), stages=(early_t, ft))
    for weight in (3000.0, 7.0):
        m = SP(resolve_config(SP, {"feat_weight": weight}), None, None, None)  # type: ignore[arg-type]
        terms = m.loss(s, t, None, None)  # type: ignore[arg-type]
        assert set(terms) == {"loss_sp"}
        assert abs(terms["loss_sp"].item() - weight * naive_sp(fs, ft)) < 1e-5 * weight  # last map only


def test_sp_is_float32_under_bf16_autocast_and_zero_maps_have_finite_gradients():
    g = torch.Generator().manual_seed(3)
    fs = torch.randn(4, 3, 2, 2, generator=g)
    fs[1] = 0.0  # a dead sample
    fs.requires_grad_(True)
    ft = torch.randn(4, 5, 2, 2, generator=g)
    exact = sp_loss(fs, ft)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_amp = sp_loss(fs, ft)
    assert under_amp.dtype == torch.float32 and abs(under_amp.item() - exact.item()) < 1e-7
    exact.backward()
    assert torch.isfinite(fs.grad).all()


def test_sp_check_serves_the_crd_grid_and_declines_non_cnn_and_teacherless():
    cfg = SP.Config()
    for teacher, student in CRD_PAIRS:
        assert SP.check(cfg, info(teacher), info(student)) is None, (teacher, student)
    gnn = TapInfo(num_classes=100, embedding_dim=64, stage_channels=(), stage_sizes=(), has_preact=False, kind="gnn")
    reason = SP.check(cfg, info("resnet20"), gnn)
    assert reason and "spatial" in reason
    assert SP.check(cfg, None, info("resnet8x4"))


def test_sp_one_step_on_a_real_pair():
    teacher, student = create_model("resnet20", 10), create_model("resnet8", 10)
    m = SP(SP.Config(), info("resnet20"), info("resnet8"), None)  # type: ignore[arg-type]
    x = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        t = teacher.forward_taps(x)
    terms = m.loss(student.forward_taps(x), t, None, None)  # type: ignore[arg-type]
    terms["loss_sp"].backward()
    assert math.isfinite(terms["loss_sp"].item()) and terms["loss_sp"].item() > 0
    assert any(p.grad is not None for p in student.parameters())
