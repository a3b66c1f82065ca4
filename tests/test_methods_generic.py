"""Properties every registered method must have (new methods are covered automatically)."""
import dataclasses
import math

import pytest
import torch

from kdbench.method import Method, MethodConfig
from kdbench.registry import METHODS
from kdbench.train import configure_phase, phase_losses

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
    assert (cls.__doc__ or "").strip() or (__import__(cls.__module__).__doc__ or "").strip()
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
        _, terms = phase_losses(setup.student if stage.student != "none" else None, use_teacher, stage, batch,
                                setup.step_info(stage), m.needs())
        for k, v in terms.items():
            assert k.startswith("loss_") and v.dim() == 0 and math.isfinite(v.item()), (k, v)
        sum(terms.values()).backward()
        method_params = {id(p) for mod in stage.modules for p in mod.parameters()}
        for pname, p in list(setup.student.named_parameters()) + [(f"method.{n}", p) for n, p in m.named_parameters()]:
            if not p.requires_grad:
                assert p.grad is None, f"{stage.name}: frozen {pname} got a gradient"
                continue
            if stage.name == "main" or id(p) in method_params:
                assert p.grad is not None, f"{stage.name}: trainable {pname} got no gradient"
                assert torch.isfinite(p.grad).all(), f"{stage.name}: {pname} has a non-finite gradient"
        if stage.student != "none":
            assert any(p.grad is not None for p in setup.student.parameters())
        assert params, stage.name
    if setup.teacher is not None:
        assert all(p.grad is None for p in setup.teacher.parameters())
        for k, v in setup.teacher.state_dict().items():
            assert torch.equal(v, teacher_state[k]), f"teacher {k} changed"
