"""Assembling one run from its spec: the one place that builds what training needs.

:func:`build_run` is used by the engine (:mod:`kdbench.run`) and by the unit tests
(``tests/harness.py``), so both build a run the same way, in the same order, with the
same seeding:

1. resolve the method's Config from the spec's overrides;
2. build the teacher architecture and measure its taps (a fresh, untrained copy: measuring
   needs shapes only, so a pair the method declines never trains a teacher; its random
   initialisation is drawn from a forked RNG, so it changes nothing downstream);
3. seed everything from the run's seed, build the student (the method's own type through
   ``Method.make_student``, else the model zoo) and measure its taps;
4. ``Method.check`` — a declined pair raises :class:`Skipped` with the reason;
5. obtain the real teacher (the engine's teacher cache; tests use the fresh copy);
6. re-seed from ``(seed, 1)`` — independent of whether a teacher was just trained — and
   build the method from the measured shapes, then wrap the training data for it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from kdbench.config import resolve_config
from kdbench.data import ImageData, TrainData
from kdbench.method import Method, MethodConfig, MethodContext
from kdbench.models import create_model
from kdbench.registry import METHODS
from kdbench.spec import RunSpec
from kdbench.taps import TapInfo, measure
from kdbench.train import derived_seed, seed_everything

#: Given the freshly built (untrained) teacher architecture, return the frozen teacher to train with.
TeacherLoader = Callable[[nn.Module], nn.Module]


class Skipped(Exception):
    """The method declined the pair (``Method.check``); the message is the reason."""


@dataclass
class BuiltRun:
    """Everything a run trains with, built by :func:`build_run`."""

    spec: RunSpec
    cfg: MethodConfig
    ctx: MethodContext
    student: nn.Module
    teacher: nn.Module | None
    method: Method
    train_data: TrainData
    student_info: TapInfo
    teacher_info: TapInfo | None
    base_train: TrainData  # the standard training data, before the method's wrapper


def method_context(spec: RunSpec, data: ImageData, train: TrainData, device: torch.device,
                   teacher_arch: str | None) -> MethodContext:
    """What the method may know about the run (``MethodContext``)."""
    return MethodContext(num_classes=data.num_classes, num_train_samples=len(train), device=device,
                         epochs=spec.recipe.epochs, steps_per_epoch=train.steps_per_epoch(),
                         teacher_arch=teacher_arch, student_arch=spec.student, dataset=spec.dataset,
                         input_size=data.input_size, train_labels=data.train_labels)


def frozen(model: nn.Module) -> nn.Module:
    """``model`` in eval mode without gradients (how every teacher is used)."""
    return model.eval().requires_grad_(False)


def build_run(spec: RunSpec, data: ImageData, device: torch.device | str = "cpu",
              load_teacher: TeacherLoader | None = None, base_train: TrainData | None = None) -> BuiltRun:
    """Build student, teacher, method and training data of ``spec`` (see module docstring).

    ``load_teacher`` receives the fresh teacher architecture and returns the teacher to use
    (default: that fresh copy, frozen, on ``device``). ``base_train``: the standard
    training data to share (a fused column's; it must be this spec's data, batch size and
    seed), else built here. Raises :class:`Skipped` when the method declines the pair.
    """
    device = torch.device(device)
    memory_format = spec.recipe.memory_format
    cls: type[Method] = METHODS.get(spec.method)
    cfg = resolve_config(cls, spec.overrides_dict())
    needs_teacher = cls.needs(cfg).teacher
    c, h, _ = data.input_size
    train = base_train if base_train is not None else TrainData(data, spec.recipe.batch_size, device, spec.seed, memory_format)
    ctx = method_context(spec, data, train, device, spec.teacher if needs_teacher else None)

    fresh_teacher = teacher_info = None
    if needs_teacher:
        with torch.random.fork_rng(devices=[]):  # measuring the teacher draws nothing from the run's stream
            fresh_teacher = create_model(spec.teacher, data.num_classes, c, h)
            teacher_info = measure(fresh_teacher, data.input_size)
    seed_everything(spec.seed)
    student = cls.make_student(cfg, ctx, teacher_info) or create_model(spec.student, data.num_classes, c, h)
    student_info = measure(student, data.input_size)
    reason = cls.check(cfg, teacher_info, student_info)
    if reason:
        raise Skipped(reason)

    teacher = None
    if fresh_teacher is not None:
        teacher = (load_teacher or (lambda m: frozen(m.to(device, memory_format=memory_format))))(fresh_teacher)
    student.to(device, memory_format=memory_format)
    seed_everything(derived_seed(spec.seed, 1))  # independent of whether the teacher was just trained
    method = cls(cfg, teacher_info, student_info, ctx).to(device)
    train_data = method.wrap_train_dataset(train)
    return BuiltRun(spec=spec, cfg=cfg, ctx=ctx, student=student, teacher=teacher, method=method,
                    train_data=train_data, student_info=student_info, teacher_info=teacher_info, base_train=train)
