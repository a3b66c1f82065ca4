"""AB (Heo et al., AAAI 2019) golden values, connectors, pair checks and the two-stage plan.

Expected values are computed with plain element-by-element loops written from the formula
in REFERENCE.md §1: per stage Σ[(s+m)²·1(s>−m ∧ t≤0) + (s−m)²·1(s≤m ∧ t>0)], stage i of n
weighted 2^(i−n+1), then /B ×3/1000.
"""
import itertools
import logging

import pytest
import torch

from kdbench.data import EvalData
from kdbench.method import MethodContext
from kdbench.config import resolve_config
from kdbench.methods.ab import AB, ABConnector, ab_stage_loss, connector_kind, stage_weights
from kdbench.models import classifier_parameters
from kdbench.spec import Recipe
from kdbench.taps import Outputs, TapInfo
from kdbench.train import Env, Trainer, configure_phase, phase_plan
from kdbench.train import set_phase_modes as _set_modes  # the engine's own mode switch

from harness import build, random_image_data
from harness import CRD_GRID, cifar_info

SAME_FAMILY = CRD_GRID[:7]


def info(channels, sizes, preact=True) -> TapInfo:
    return TapInfo(num_classes=10, embedding_dim=8, stage_channels=tuple(channels), stage_sizes=tuple(sizes),
                   has_preact=preact)


def context(epochs=240, teacher="t", student="s") -> MethodContext:
    return MethodContext(num_classes=10, num_train_samples=100, device=torch.device("cpu"), epochs=epochs,
                         steps_per_epoch=10, teacher_arch=teacher, student_arch=student, dataset="x",
                         input_size=(3, 32, 32))


def outputs(preacts) -> Outputs:
    b = preacts[0].shape[0]
    return Outputs(logits=torch.zeros(b, 10), embedding=torch.zeros(b, 8), stages=tuple(preacts),
                   preact=tuple(preacts))


# -- independent references ------------------------------------------------------------------

def naive_stage(s: torch.Tensor, t: torch.Tensor, m: float) -> float:
    """The per-stage sum, one element at a time, exactly as the formula reads."""
    total = 0.0
    for idx in itertools.product(*(range(n) for n in s.shape)):
        sv, tv = float(s[idx]), float(t[idx])
        if sv > -m and tv <= 0:
            total += (sv + m) ** 2
        if sv <= m and tv > 0:
            total += (sv - m) ** 2
    return total


def naive_avg_pool(x: torch.Tensor, k: int) -> torch.Tensor:
    """k×k average pooling with loops (sizes divisible by k)."""
    b, c, h, w = x.shape
    out = torch.zeros(b, c, h // k, w // k)
    for bi, ci, i, j in itertools.product(range(b), range(c), range(h // k), range(w // k)):
        acc = 0.0
        for di, dj in itertools.product(range(k), range(k)):
            acc += float(x[bi, ci, i * k + di, j * k + dj])
        out[bi, ci, i, j] = acc / (k * k)
    return out


def naive_total(per_stage: list[float], batch: int) -> float:
    n = len(per_stage)
    weights = [1.0] * n
    for i in range(n - 2, -1, -1):  # last stage 1, each earlier stage half the next
        weights[i] = weights[i + 1] / 2
    return sum(w * v for w, v in zip(weights, per_stage)) / batch * 3 / 1000


# -- the loss ----------------------------------------------------------------------------------

def test_stage_loss_matches_the_element_loop():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 4, 5, generator=g) * 2
    t = torch.randn(2, 3, 4, 5, generator=g)
    s[0, 0, 0, :4] = torch.tensor([1.0, -1.0, 1.0, -1.0])  # exactly on the margins
    t[0, 0, 0, :4] = torch.tensor([0.0, 0.0, 2.0, 2.0])  # t = 0 counts as "off"
    for m in (1.0, 0.5, 2.0):
        got = ab_stage_loss(s, t, m).item()
        assert got == pytest.approx(naive_stage(s, t, m), rel=1e-5)


def test_hand_cases():
    one = torch.tensor
    # matching signs beyond the margin: nothing to learn
    assert ab_stage_loss(one([1.0, 3.0, -1.0, -5.0]), one([2.0, 0.1, 0.0, -3.0]), 1.0).item() == 0.0
    # on the boundary of the margin the loss is zero too
    assert ab_stage_loss(one([1.0]), one([0.5]), 1.0).item() == 0.0
    assert ab_stage_loss(one([-1.0]), one([-0.5]), 1.0).item() == 0.0
    # s = 0: one margin away on either side
    assert ab_stage_loss(one([0.0]), one([1.0]), 1.0).item() == pytest.approx(1.0)
    assert ab_stage_loss(one([0.0]), one([-1.0]), 1.0).item() == pytest.approx(1.0)
    assert ab_stage_loss(one([0.0]), one([1.0]), 2.0).item() == pytest.approx(4.0)
    # wrong side: (s + m)² for an inactive teacher neuron, (s − m)² for an active one
    assert ab_stage_loss(one([0.5]), one([0.0]), 1.0).item() == pytest.approx(2.25)
    assert ab_stage_loss(one([-0.5]), one([3.0]), 1.0).item() == pytest.approx(2.25)
    assert ab_stage_loss(one([2.0, -3.0]), one([-1.0, 1.0]), 1.0).item() == pytest.approx(9.0 + 16.0)


def test_stage_weights():
    assert stage_weights(3) == [0.25, 0.5, 1.0]
    assert stage_weights(4) == [0.125, 0.25, 0.5, 1.0]
    assert stage_weights(1) == [1.0]


def test_full_loss_golden_with_identity_connectors():
    shapes = [(3, 4, 4), (4, 2, 2), (5, 1, 2)]
    i = info([c for c, _, _ in shapes], [(h, w) for _, h, w in shapes])
    m = AB(resolve_config(AB, {}), i, i, context())
    assert all(c.kind == "identity" for c in m.connectors) and m.extra_parameters() == 0
    g = torch.Generator().manual_seed(2)
    s = [torch.randn(3, *sh, generator=g) for sh in shapes]
    t = [torch.randn(3, *sh, generator=g) for sh in shapes]
    got = m.init_loss(outputs(s), outputs(t), None, None)
    assert set(got) == {"loss_ab"}
    expected = naive_total([naive_stage(a, b, 1.0) for a, b in zip(s, t)], batch=3)
    assert got["loss_ab"].item() == pytest.approx(expected, rel=1e-5)
    # margin and weight options
    m2 = AB(resolve_config(AB, {"margin": 0.5, "feat_weight": 1.0}), i, i, context())
    got2 = m2.ab_loss(outputs(s), outputs(t)).item()
    per = [naive_stage(a, b, 0.5) for a, b in zip(s, t)]
    assert got2 == pytest.approx(naive_total(per, 3) * 1000 / 3, rel=1e-5)
    # identical maps far from zero: no loss
    far = [x.sign() * (x.abs() + 1.0) for x in t]
    assert m.ab_loss(outputs(far), outputs(far)).item() == 0.0


def test_full_loss_golden_through_channel_connectors():
    s_info = info([2, 3], [(3, 3), (2, 2)])
    t_info = info([4, 3], [(3, 3), (2, 2)])
    m = AB(resolve_config(AB, {}), t_info, s_info, context()).eval()
    assert [c.kind for c in m.connectors] == ["1x1", "identity"]
    conv, bn = m.connectors[0].body
    assert conv.weight.shape == (4, 2, 1, 1) and conv.bias is None and bn.num_features == 4
    g = torch.Generator().manual_seed(3)
    # a BatchNorm with non-trivial running statistics and affine parameters (eval mode: it
    # normalises with the running statistics), so that a connector skipping it changes the loss
    rm, rv = torch.randn(4, generator=g), torch.rand(4, generator=g) + 0.5
    gamma, beta = torch.randn(4, generator=g), torch.randn(4, generator=g)
    with torch.no_grad():
        bn.running_mean.copy_(rm), bn.running_var.copy_(rv), bn.weight.copy_(gamma), bn.bias.copy_(beta)
    eps = 1e-5  # torch's (and RepDistiller's) BatchNorm2d default
    assert bn.eps == eps
    s = [torch.randn(2, 2, 3, 3, generator=g), torch.randn(2, 3, 2, 2, generator=g)]
    t = [torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 3, 2, 2, generator=g)]
    # the 1x1 conv (no bias) then BatchNorm per channel, by hand
    y = torch.einsum("oc,bchw->bohw", conv.weight.detach()[:, :, 0, 0], s[0])
    y = (y - rm[:, None, None]) / torch.sqrt(rv + eps)[:, None, None] * gamma[:, None, None] + beta[:, None, None]
    mapped = [y, s[1]]
    expected = naive_total([naive_stage(a, b, 1.0) for a, b in zip(mapped, t)], batch=2)
    assert m.ab_loss(outputs(s), outputs(t)).item() == pytest.approx(expected, rel=1e-5)


def test_pool_mode_golden_on_both_sides():
    g = torch.Generator().manual_seed(4)
    # student map 2x larger: the student side is pooled (channels equal: no conv)
    s_info, t_info = info([2], [(4, 4)]), info([2], [(2, 2)])
    m = AB(resolve_config(AB, {"spatial": "pool"}), t_info, s_info, context())
    assert m.extra_parameters() == 0
    s, t = torch.randn(2, 2, 4, 4, generator=g), torch.randn(2, 2, 2, 2, generator=g)
    expected = naive_total([naive_stage(naive_avg_pool(s, 2), t, 1.0)], batch=2)
    assert m.ab_loss(outputs([s]), outputs([t])).item() == pytest.approx(expected, rel=1e-5)
    # teacher map 2x larger: the teacher side is pooled
    m = AB(resolve_config(AB, {"spatial": "pool"}), s_info, t_info, context())
    s, t = torch.randn(2, 2, 2, 2, generator=g), torch.randn(2, 2, 4, 4, generator=g)
    expected = naive_total([naive_stage(s, naive_avg_pool(t, 2), 1.0)], batch=2)
    assert m.ab_loss(outputs([s]), outputs([t])).item() == pytest.approx(expected, rel=1e-5)


def test_loss_is_float32_under_bf16_inputs_and_reaches_the_student():
    i = info([3], [(2, 2)])
    m = AB(resolve_config(AB, {}), i, i, context())
    s = torch.randn(2, 3, 2, 2, dtype=torch.bfloat16, requires_grad=True)
    t = torch.randn(2, 3, 2, 2, dtype=torch.bfloat16)
    loss = m.ab_loss(outputs([s]), outputs([t]))
    assert loss.dtype == torch.float32
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad.float()).all()


# -- connectors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("s_shape,t_shape,kind", [
    ((8, 4, 4), (8, 4, 4), "identity"),
    ((8, 4, 4), (16, 4, 4), "1x1"),
    ((8, 8, 8), (16, 4, 4), "down2"),
    ((8, 4, 4), (16, 8, 8), "up2"),
    ((8, 6, 6), (16, 4, 4), "valid"),
])
def test_conv_connectors_map_onto_the_teacher_shape(s_shape, t_shape, kind):
    assert connector_kind(s_shape, t_shape, "conv") == kind
    conn = ABConnector(s_shape, t_shape, "conv")
    assert conn.kind == kind
    out = conn(torch.randn(2, *s_shape))
    assert tuple(out.shape[1:]) == t_shape
    if kind != "identity":
        assert isinstance(conn.body[-1], torch.nn.BatchNorm2d)
        assert conn.body[0].bias is None


def test_connector_kind_refusals_and_pool():
    assert connector_kind((8, 4, 4), (8, 12, 12), "conv") is None  # 3x smaller student
    assert connector_kind((8, 4, 4), (8, 8, 8), "decline") is None
    assert connector_kind((8, 4, 4), (16, 4, 4), "decline") == "1x1"
    assert connector_kind((8, 4, 4), (8, 12, 12), "pool") == "pool"
    conn = ABConnector((8, 8, 8), (16, 4, 4), "pool")
    assert tuple(conn(torch.randn(2, 8, 8, 8)).shape) == (2, 16, 4, 4)


# -- defaults, stages, freezing -----------------------------------------------------------------

def test_defaults_are_the_reference_ones():
    cfg = resolve_config(AB, {})
    assert (cfg.ce_weight, cfg.margin, cfg.feat_weight) == (1.0, 1.0, 3 / 1000)
    assert (cfg.init_epochs, cfg.init_lr, cfg.spatial) == (None, None, "conv")
    assert AB.needs().preact and AB.needs().stages == "all" and AB.needs().teacher
    i = info([3], [(2, 2)])
    assert AB(cfg, i, i, context(240)).init_epochs == 30
    assert AB(cfg, i, i, context(15)).init_epochs == 2
    assert AB(cfg, i, i, context(1)).init_epochs == 1
    assert AB(resolve_config(AB, {"init_epochs": 5}), i, i, context(240)).init_epochs == 5
    assert AB(resolve_config(AB, {"init_epochs": "0"}), i, i, context(240)).init_epochs == 0
    with pytest.raises(ValueError):
        resolve_config(AB, {"spatial": "stretch"})


def test_stage_plan_init_then_ce_only():
    i = info([3, 4], [(4, 4), (2, 2)])
    m = AB(resolve_config(AB, {"init_lr": 0.01}), info([6, 4], [(4, 4), (2, 2)]), i, context(240))
    init, main = phase_plan(m, 240)
    assert (init.name, init.epochs, init.student, init.ce_weight, init.lr) == ("init", 30, "features", 0.0, 0.01)
    assert init.modules == (m.connectors,) and init.needs_teacher
    assert (main.name, main.epochs, main.student, main.ce_weight, main.modules) == ("main", 240, "all", 1.0, ())
    assert main.loss(None, None, None, None) == {}


def test_main_stage_freezes_the_connectors_in_eval_mode():
    setup = build("ab", "wrn_16_2", "resnet8")  # 1x1+BN connectors (32/64/128 vs 16/32/64 channels)
    m = setup.method
    assert [c.kind for c in m.connectors] == ["1x1", "1x1", "1x1"]
    init, main = setup.phases()
    init_params = {id(p) for p in configure_phase(setup.student, m, init)}
    assert all(id(p) in init_params for p in m.connectors.parameters())
    head = classifier_parameters(setup.student)
    assert head and not head & init_params  # the classifier does not train in the init stage
    _set_modes(setup.student, m, setup.teacher, init)
    assert all(mod.training for mod in m.connectors.modules())
    main_params = {id(p) for p in configure_phase(setup.student, m, main)}
    assert not any(id(p) in main_params or p.requires_grad for p in m.connectors.parameters())
    assert head <= main_params
    _set_modes(setup.student, m, setup.teacher, main)
    assert not any(mod.training for mod in m.connectors.modules())
    assert setup.student.training


def test_engine_run_trains_connectors_in_init_and_leaves_them_untouched_in_main(tmp_path):
    """A real two-stage Trainer.fit: init changes connectors but not the classifier; main
    changes neither the connectors' weights nor their BN statistics."""
    data = random_image_data(n_train=16, n_test=4, size=16)
    setup = build("ab", "wrn_16_2", "resnet8", data=data, overrides={"init_epochs": 1}, epochs=1)
    m, student = setup.method, setup.student
    start = {k: v.clone() for k, v in m.state_dict().items()}
    head_start = [p.detach().clone() for p in student.get_classifier().parameters()]
    seen = {}

    def main_loss(s, t, batch, step):
        if not seen:
            seen["connectors"] = {k: v.clone() for k, v in m.state_dict().items()}
            seen["head"] = [p.detach().clone() for p in student.get_classifier().parameters()]
            seen["training"] = any(mod.training for mod in m.connectors.modules())
            seen["requires_grad"] = any(p.requires_grad for p in m.connectors.parameters())
        return {}

    m.loss = main_loss  # the main stage's loss, as phase_plan binds it
    trainer = Trainer(student=student, teacher=setup.teacher, method=m, train_data=setup.data,
                      eval_data=EvalData(data.test_images, data.test_labels, data.mean, data.std, torch.device("cpu")),
                      recipe=Recipe(epochs=1, batch_size=8), lr=0.05, seed=0, env=Env(progress=False),
                      run_dir=tmp_path)
    result = trainer.fit()
    assert [h["phase"] for h in result.history] == ["init", "main"]
    assert set(result.history[0]) >= {"loss_ab"} and "loss_ce" not in result.history[0]
    assert set(k for k in result.history[1] if k.startswith("loss_")) == {"loss_ce"}
    assert seen and not seen["training"] and not seen["requires_grad"]
    assert any(not torch.equal(start[k], seen["connectors"][k]) for k in start), "init did not train the connectors"
    assert all(torch.equal(a, b) for a, b in zip(head_start, seen["head"])), "init changed the classifier"
    end = m.state_dict()
    assert all(torch.equal(seen["connectors"][k], end[k]) for k in end), "main stage changed the connectors"


# -- pair checks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("teacher,student", CRD_GRID)
def test_serves_every_crd_pair_and_its_connectors_fit(teacher, student):
    t_info, s_info = cifar_info(teacher), cifar_info(student)
    cfg = resolve_config(AB, {})
    assert AB.check(cfg, t_info, s_info) is None
    m = AB(cfg, t_info, s_info, context(240, teacher, student)).eval()
    with torch.no_grad():
        for i, conn in enumerate(m.connectors):
            out = conn(torch.randn(2, *s_info.stage_shape(i)))
            assert tuple(out.shape[1:]) == t_info.stage_shape(i)
    pool = resolve_config(AB, {"spatial": "pool"})
    assert AB.check(pool, t_info, s_info) is None
    decline = resolve_config(AB, {"spatial": "decline"})
    reason = AB.check(decline, t_info, s_info)
    if (teacher, student) in SAME_FAMILY:
        assert reason is None
    else:  # every cross-family pair of the grid has maps of different sizes
        assert reason and "spatial=decline" in reason


def test_check_declines_what_it_cannot_serve():
    cfg = resolve_config(AB, {})
    reason = AB.check(cfg, cifar_info("resnet32x4"), cifar_info("vgg8"))  # 3 vs 4 stages
    assert reason and "stage counts differ" in reason and "teacher 3" in reason and "student 4" in reason
    no_pre = info([16, 32, 64], [(32, 32), (16, 16), (8, 8)], preact=False)
    reason = AB.check(cfg, cifar_info("resnet56"), no_pre)
    assert reason and "pre-activation" in reason
    reason = AB.check(cfg, cifar_info("resnet56"), info([16, 32, 64], [(8, 8), (4, 4), (2, 2)]))
    assert reason and "stage 1" in reason  # a 4x smaller student map cannot be bridged
    assert AB.check(cfg, None, cifar_info("resnet20"))


def test_logs_its_plan(caplog):
    with caplog.at_level(logging.INFO, logger="kdbench.methods.ab"):
        AB(resolve_config(AB, {}), cifar_info("resnet32x4"), cifar_info("shufflev1"), context(240))
    assert "init epochs" in caplog.text and "up2" in caplog.text
