"""DKD (Zhao et al., CVPR 2022) golden values, warm-up, β presets and pair checks.

Expected values are computed with plain loops over classes written from REFERENCE.md §1:
TCKD = T²·mean_b KL([p_t,gt, 1−p_t,gt] ‖ [p_s,gt, 1−p_s,gt]); NCKD = T²·mean_b KL over the
softmax of the non-target classes only; total = min(epoch/warmup, 1)·(α·TCKD + β·NCKD).
"""
import logging
import math

import pytest
import torch

from kdbench.data import Batch
from kdbench.method import MethodContext, StepInfo
from kdbench.config import resolve_config
from kdbench.methods.dkd import BETA_PRESETS, DKD, nckd_loss, non_target_logits, tckd_loss, warmup_factor
from kdbench.taps import Outputs
from harness import CRD_GRID, cifar_info


ZS = [[1.0, 2.0, 0.5, -1.0, 0.0], [0.0, -1.0, 3.0, 2.5, 1.0], [4.0, 1.0, 1.0, -2.0, 0.3]]
ZT = [[2.0, 0.0, 1.0, 0.5, -0.5], [1.0, 1.0, 1.0, 4.0, -1.0], [0.5, 3.0, -1.0, 0.0, 2.0]]
Y = [1, 3, 0]


def context(teacher="resnet32x4", student="resnet8x4", epochs=240) -> MethodContext:
    return MethodContext(num_classes=5, num_train_samples=100, device=torch.device("cpu"), epochs=epochs,
                         steps_per_epoch=10, teacher_arch=teacher, student_arch=student, dataset="x",
                         input_size=(3, 32, 32))


def step(epoch: int) -> StepInfo:
    return StepInfo(phase="main", epoch=epoch, epochs=240, step=0, steps_per_epoch=10)


def out(z) -> Outputs:
    z = torch.tensor(z)
    return Outputs(logits=z, embedding=torch.zeros(len(z), 2))


def batch(y) -> Batch:
    y = torch.tensor(y)
    return Batch(x=torch.zeros(len(y), 3, 2, 2), y=y, index=torch.arange(len(y)))


# -- independent references ------------------------------------------------------------------

def softmax_list(values, T):
    e = [math.exp(v / T) for v in values]
    return [v / sum(e) for v in e]


def naive_tckd(zs, zt, y, T):
    total = 0.0
    for row_s, row_t, gt in zip(zs, zt, y):
        ps, pt = softmax_list(row_s, T), softmax_list(row_t, T)
        bs = [ps[gt], sum(p for c, p in enumerate(ps) if c != gt)]
        bt = [pt[gt], sum(p for c, p in enumerate(pt) if c != gt)]
        total += sum(q * math.log(q / p) for p, q in zip(bs, bt))
    return T * T * total / len(zs)


def naive_nckd(zs, zt, y, T):
    total = 0.0
    for row_s, row_t, gt in zip(zs, zt, y):
        ps = softmax_list([v for c, v in enumerate(row_s) if c != gt], T)
        pt = softmax_list([v for c, v in enumerate(row_t) if c != gt], T)
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return T * T * total / len(zs)


def naive_kd(zs, zt, T):
    total = 0.0
    for row_s, row_t in zip(zs, zt):
        ps, pt = softmax_list(row_s, T), softmax_list(row_t, T)
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return T * T * total / len(zs)


# -- golden values -------------------------------------------------------------------------------

@pytest.mark.parametrize("T", [1.0, 4.0, 2.5])
def test_tckd_and_nckd_match_the_class_loops(T):
    zs, zt, y = torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y)
    assert tckd_loss(zs, zt, y, T).item() == pytest.approx(naive_tckd(ZS, ZT, Y, T), rel=1e-5, abs=1e-7)
    assert nckd_loss(zs, zt, y, T).item() == pytest.approx(naive_nckd(ZS, ZT, Y, T), rel=1e-5, abs=1e-7)


def test_non_target_logits_keep_order_and_drop_the_target():
    z = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    got = non_target_logits(z, torch.tensor([0, 2, 3]))
    assert got.tolist() == [[1.0, 2.0, 3.0], [0.0, 1.0, 3.0], [0.0, 1.0, 2.0]]


def test_hand_cases():
    y = torch.tensor([1])
    z = torch.tensor([[0.3, 2.0, -1.0, 0.7]])
    assert tckd_loss(z, z, y, 4.0).abs().item() < 1e-7 and nckd_loss(z, z, y, 4.0).abs().item() < 1e-7
    # only the target logit differs: the non-target distribution is the same, NCKD = 0
    zt = z.clone()
    zt[0, 1] += 3.0
    assert nckd_loss(z, zt, y, 4.0).abs().item() < 1e-6 and tckd_loss(z, zt, y, 4.0).item() > 1e-3
    # non-target logits permuted: same p_gt, TCKD = 0, NCKD > 0
    zp = torch.tensor([[0.7, 2.0, 0.3, -1.0]])
    assert tckd_loss(z, zp, y, 4.0).abs().item() < 1e-6 and nckd_loss(z, zp, y, 4.0).item() > 1e-3
    # two classes, T = 1: TCKD is the full KL and NCKD is 0 (a single non-target class)
    zs2, zt2 = torch.tensor([[0.0, 0.0]]), torch.tensor([[1.0, 0.0]])
    p = math.e / (1 + math.e)
    kl = p * math.log(2 * p) + (1 - p) * math.log(2 * (1 - p))
    assert tckd_loss(zs2, zt2, torch.tensor([0]), 1.0).item() == pytest.approx(kl, rel=1e-6)
    assert nckd_loss(zs2, zt2, torch.tensor([0]), 1.0).abs().item() < 1e-7


def test_decomposition_of_kd_per_sample():
    """The paper's Eq. (7): KD = TCKD + (1 − p_t,gt) · NCKD for each sample."""
    T = 4.0
    for zs, zt, gt in zip(ZS, ZT, Y):
        p_t_gt = softmax_list(zt, T)[gt]
        tckd = tckd_loss(torch.tensor([zs]), torch.tensor([zt]), torch.tensor([gt]), T).item()
        nckd = nckd_loss(torch.tensor([zs]), torch.tensor([zt]), torch.tensor([gt]), T).item()
        assert tckd + (1 - p_t_gt) * nckd == pytest.approx(naive_kd([zs], [zt], T), rel=1e-5)


def test_confident_student_stays_finite():
    zs = torch.tensor([[500.0, 0.0, 0.0], [0.0, -400.0, 300.0]], requires_grad=True)
    zt = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]])
    y = torch.tensor([0, 2])
    loss = tckd_loss(zs, zt, y, 1.0) + nckd_loss(zs, zt, y, 1.0)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(zs.grad).all()


def test_float32_under_bf16_logits():
    zs, zt = torch.tensor(ZS, dtype=torch.bfloat16), torch.tensor(ZT, dtype=torch.bfloat16)
    y = torch.tensor(Y)
    assert tckd_loss(zs, zt, y, 4.0).dtype == torch.float32 and nckd_loss(zs, zt, y, 4.0).dtype == torch.float32


# -- the method: weights, warm-up, β -------------------------------------------------------------

def test_defaults_are_the_reference_ones():
    cfg = resolve_config(DKD, {})
    assert (cfg.ce_weight, cfg.alpha, cfg.beta, cfg.temperature, cfg.warmup_epochs) == (1.0, 1.0, None, 4.0, None)
    assert DKD(cfg, None, None, context(epochs=240)).warmup_epochs == 20
    assert DKD(cfg, None, None, context(epochs=120)).warmup_epochs == 10
    assert DKD(cfg, None, None, context(epochs=15)).warmup_epochs == 1
    assert DKD(resolve_config(DKD, {"warmup_epochs": 5}), None, None, context(epochs=240)).warmup_epochs == 5


@pytest.mark.parametrize("epoch,factor", [(1, 1 / 20), (5, 0.25), (10, 0.5), (19, 0.95), (20, 1.0), (21, 1.0),
                                          (240, 1.0)])
def test_terms_are_weighted_and_warmed_up(epoch, factor):
    assert warmup_factor(epoch, 20) == pytest.approx(factor)
    m = DKD(resolve_config(DKD, {"alpha": 0.7}), None, None, context("vgg13", "vgg8", 240))
    terms = m.loss(out(ZS), out(ZT), batch(Y), step(epoch))
    assert set(terms) == {"loss_tckd", "loss_nckd"}
    assert terms["loss_tckd"].item() == pytest.approx(factor * 0.7 * naive_tckd(ZS, ZT, Y, 4.0), rel=1e-5)
    assert terms["loss_nckd"].item() == pytest.approx(factor * 6.0 * naive_nckd(ZS, ZT, Y, 4.0), rel=1e-5)


def test_warmup_scaled_to_a_short_run_is_full_from_the_first_epoch():
    m = DKD(resolve_config(DKD, {"beta": 1.0}), None, None, context(epochs=15))
    terms = m.loss(out(ZS), out(ZT), batch(Y), step(1))
    assert terms["loss_nckd"].item() == pytest.approx(naive_nckd(ZS, ZT, Y, 4.0), rel=1e-5)


@pytest.mark.parametrize("teacher,student,beta", [
    ("resnet32x4", "resnet8x4", 8.0), ("vgg13", "vgg8", 6.0), ("wrn_40_2", "wrn_16_2", 6.0),
    ("wrn_40_2", "wrn_40_1", 6.0), ("resnet56", "resnet20", 2.0), ("resnet110", "resnet32", 2.0),
    ("vgg13", "mobilenetv2", 6.0), ("resnet32x4", "shufflev1", 8.0), ("resnet32x4", "shufflev2", 8.0),
    ("resnet50", "mobilenetv2", 8.0), ("wrn_40_2", "shufflev1", 8.0),
    ("resnet110", "resnet20", 8.0), ("resnet50", "vgg8", 8.0), ("resnet20", "resnet8", 8.0), (None, "resnet8", 8.0),
])
def test_beta_presets(teacher, student, beta):
    m = DKD(resolve_config(DKD, {}), None, None, context(teacher, student))
    assert m.beta == beta
    assert DKD(resolve_config(DKD, {"beta": 3.0}), None, None, context(teacher, student)).beta == 3.0


def test_beta_presets_table_and_log(caplog):
    assert BETA_PRESETS[("resnet56", "resnet20")] == 2.0 and BETA_PRESETS[("vgg13", "vgg8")] == 6.0
    assert all(v in (2.0, 6.0, 8.0) for v in BETA_PRESETS.values())
    with caplog.at_level(logging.INFO, logger="kdbench.methods.dkd"):
        DKD(resolve_config(DKD, {}), None, None, context("wrn_40_2", "wrn_40_1"))
        DKD(resolve_config(DKD, {}), None, None, context("resnet20", "resnet8"))
        DKD(resolve_config(DKD, {"beta": "0.5"}), None, None, context("vgg13", "vgg8"))
    assert "beta=6 (mdistiller preset)" in caplog.text
    assert "beta=8 (default)" in caplog.text
    assert "beta=0.5 (explicit)" in caplog.text


# -- pair checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("teacher,student", CRD_GRID)
def test_serves_every_crd_pair(teacher, student):
    assert DKD.check(resolve_config(DKD, {}), cifar_info(teacher), cifar_info(student)) is None


def test_declines_without_a_teacher():
    reason = DKD.check(resolve_config(DKD, {}), None, cifar_info("resnet20"))
    assert reason and "teacher" in reason


def test_exact_exclusion_equals_the_sentinel_form_in_float32():
    """mdistiller masks the target by subtracting 1000 from z/T; in float32 its probability is 0."""
    zs, zt, y, T = torch.tensor(ZS), torch.tensor(ZT), torch.tensor(Y), 4.0
    mask = torch.nn.functional.one_hot(y, zs.shape[1]).float()
    log_ps = torch.log_softmax(zs / T - 1000.0 * mask, dim=1)
    pt = torch.softmax(zt / T - 1000.0 * mask, dim=1)
    sentinel = (torch.special.xlogy(pt, pt) - pt * log_ps).sum() / len(y) * T * T
    assert nckd_loss(zs, zt, y, T).item() == pytest.approx(sentinel.item(), rel=1e-5)
