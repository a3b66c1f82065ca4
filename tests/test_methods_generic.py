"""Properties every registered method must have (new methods are covered automatically)."""
import dataclasses
import json
import math
import sys

import pytest
import torch

from kdbench.method import Method, MethodConfig
from kdbench.registry import METHODS
from kdbench.train import configure_phase, phase_losses

from conftest import TESTS
from harness import build

#: pairs with different shapes, widths, depths and families
PAIRS = [("resnet20", "resnet8"), ("wrn_16_2", "resnet8"), ("vgg11", "vgg8"), ("resnet8", "shufflev2")]


@pytest.mark.parametrize("name", METHODS.list())
def test_method_declares_its_interface(name):
    cls = METHODS.get(name)
    assert issubclass(cls, Method) and cls.name == name
    assert isinstance(cls.version, int) and cls.version >= 1
    assert dataclasses.is_dataclass(cls.Config) and issubclass(cls.Config, MethodConfig)
    assert cls.Config.__dataclass_params__.frozen, "Config must be frozen"
    assert (cls.__doc__ or "").strip(), f"{name}: the class needs a docstring (one line: what it is)"
    assert (sys.modules[cls.__module__].__doc__ or "").strip(), f"{name}: its module needs a docstring (paper, reference, deviations)"
    cfg = cls.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ce_weight = 0.5  # type: ignore[misc]


@pytest.mark.parametrize("teacher,student", PAIRS)
@pytest.mark.parametrize("name", METHODS.list())
def test_one_backward_reaches_every_trainable_parameter_and_never_the_teacher(name, teacher, student):
    setup = build(name, teacher, student)
    if setup.skip_reason is not None:
        assert isinstance(setup.skip_reason, str) and setup.skip_reason
        pytest.skip(f"{name} declines {teacher}->{student}: {setup.skip_reason}")
    m = setup.method
    if setup.teacher is not None:
        setup.teacher.requires_grad_(True)  # as a teacher that was not frozen would be: the engine must not need it
    teacher_state = {k: v.clone() for k, v in setup.teacher.state_dict().items()} if setup.teacher else {}
    for stage in setup.phases():
        params = configure_phase(setup.student, m, stage)
        setup.student.train(stage.student != "none")
        m.eval()
        for mod in stage.modules:
            mod.train()
        for p in list(setup.student.parameters()) + list(m.parameters()):
            p.grad = None
        batch = setup.batch()
        use_teacher = setup.teacher if stage.needs_teacher else None
        s_out, terms = phase_losses(setup.student if stage.student != "none" else None, use_teacher, stage, batch,
                                setup.step_info(stage), m)
        for k, v in terms.items():
            assert k.startswith("loss_") and v.dim() == 0 and math.isfinite(v.item()), (k, v)
        upstream = student_params_feeding_tapped_maps(setup.student, s_out, m.needs(m.cfg)) \
            if stage.name != "main" and s_out is not None else set()
        sum(terms.values()).backward()
        method_params = {id(p) for mod in stage.modules for p in mod.parameters()}
        for pname, p in list(setup.student.named_parameters()) + [(f"method.{n}", p) for n, p in m.named_parameters()]:
            if not p.requires_grad:
                assert p.grad is None, f"{stage.name}: frozen {pname} got a gradient"
                continue
            if stage.name == "main" or id(p) in method_params or id(p) in upstream:
                assert p.grad is not None, f"{stage.name}: trainable {pname} got no gradient"
                assert torch.isfinite(p.grad).all(), f"{stage.name}: {pname} has a non-finite gradient"
        if stage.student != "none":
            assert any(p.grad is not None for p in setup.student.parameters())
        assert params, stage.name
    if setup.teacher is not None:
        assert all(p.grad is None for p in setup.teacher.parameters())
        for k, v in setup.teacher.state_dict().items():
            assert torch.equal(v, teacher_state[k]), f"teacher {k} changed"


def student_params_feeding_tapped_maps(student, s_out, needs) -> set[int]:
    """ids of the trainable student parameters upstream of the stage maps the method taps
    (a pre-phase that trains the student must reach all of them, e.g. AB's every stage)."""
    indices = range(len(s_out.stages)) if needs.stages == "all" else needs.stages
    maps = [s_out.stages[i] for i in indices] + ([s_out.preact[i] for i in indices] if needs.preact else [])
    trainable = [p for p in student.parameters() if p.requires_grad]
    if not maps or not trainable:
        return set()
    grads = torch.autograd.grad(sum(x.float().sum() for x in maps), trainable, allow_unused=True, retain_graph=True)
    return {id(p) for p, g in zip(trainable, grads) if g is not None}


def test_needs_follow_the_config():
    """FitNets taps the stage its hint_layer names; a class attribute Needs stays fixed."""
    fitnets, kd = METHODS.get("fitnets"), METHODS.get("kd")
    assert fitnets.needs(fitnets.Config()).stages == (1,)
    assert fitnets.needs(fitnets.Config(hint_layer=3)).stages == (2,)
    assert kd.needs(kd.Config()) == kd.needs() and not kd.needs().spatial


def test_check_pair_runs_only_after_the_generic_checks_pass(monkeypatch):
    from kdbench.taps import TapInfo

    seen = []
    fitnets = METHODS.get("fitnets")
    monkeypatch.setattr(fitnets, "check_pair", classmethod(lambda cls, cfg, t, s: seen.append(t) or "own reason"))
    info = TapInfo(num_classes=10, embedding_dim=8, stage_channels=(4, 8, 16), stage_sizes=((8, 8), (4, 4), (2, 2)),
                   has_preact=False)
    assert fitnets.check(fitnets.Config(), None, info) == "fitnets needs a teacher" and seen == []
    assert "stage index [3]" in fitnets.check(fitnets.Config(hint_layer=4), info, info) and seen == []
    assert fitnets.check(fitnets.Config(), info, info) == "own reason" and seen == [info]


#: Each method's version and Config defaults. A default cannot change without a version bump
#: (run keys hash every option): change both, then this file, in the same commit.
DEFAULTS_LOCK = TESTS / "data" / "method_defaults.json"


@pytest.mark.parametrize("name", METHODS.list())
def test_config_defaults_are_locked_to_the_method_version(name):
    from kdbench.config import config_dict

    cls = METHODS.get(name)
    lock = json.loads(DEFAULTS_LOCK.read_text())
    assert name in lock, f"{name} is not in {DEFAULTS_LOCK.name}: add its version and defaults there"
    recorded, current = lock[name], json.loads(json.dumps(config_dict(cls.Config())))
    if cls.version == recorded["version"]:
        assert current == recorded["defaults"], (
            f"{name}: Config defaults changed but version is still {cls.version}: bump `version` "
            f"(old runs must not be reused) and record the new defaults in {DEFAULTS_LOCK.name}")
    else:
        pytest.fail(f"{name}: version {recorded['version']} -> {cls.version}: record its defaults in {DEFAULTS_LOCK.name}")
