"""Build a method on a pair of real models for unit tests, through the engine's own
:func:`kdbench.build.build_run` (same order, same seeding; the teacher is the freshly
built, untrained architecture)."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from kdbench.build import Skipped, build_run
from kdbench.config import resolve_config
from kdbench.data import Augment, Batch, ImageData, TrainData, epoch_generator
from kdbench.method import Method, Phase, StepInfo
from kdbench.models import create_model
from kdbench.registry import METHODS
from kdbench.spec import Recipe, RunSpec
from kdbench.taps import TapInfo, measure
from kdbench.train import phase_plan


@dataclass
class Setup:
    method: Method | None
    student: nn.Module
    teacher: nn.Module | None
    data: TrainData
    s_info: TapInfo
    t_info: TapInfo | None
    skip_reason: str | None

    def batch(self, epoch: int = 1) -> Batch:
        gen = epoch_generator(0, 0, epoch)
        return self.data.make_batch(self.data.epoch_indices(gen)[0], gen)

    def phases(self, epochs: int = 4) -> list[Phase]:
        return phase_plan(self.method, epochs)

    def step_info(self, phase: Phase, epoch: int = 1) -> StepInfo:
        return StepInfo(phase=phase.name, epoch=epoch, epochs=phase.epochs, step=0,
                        steps_per_epoch=self.data.steps_per_epoch())


def random_image_data(n_train: int = 40, n_test: int = 10, num_classes: int = 4, size: int = 32) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData("random", torch.randint(0, 256, (n_train, 3, size, size), dtype=torch.uint8, generator=g),
                     torch.arange(n_train) % num_classes,
                     torch.randint(0, 256, (n_test, 3, size, size), dtype=torch.uint8, generator=g),
                     torch.arange(n_test) % num_classes, [str(i) for i in range(num_classes)],
                     (0.5,) * 3, (0.25,) * 3, Augment(4, True))


def build(method: str, teacher: str = "resnet20", student: str = "resnet8", overrides: dict | None = None,
          batch_size: int = 8, data: ImageData | None = None, epochs: int = 4) -> Setup:
    """``method`` built on ``teacher -> student`` over ``data`` (random images by default);
    a declined pair gives ``method=None`` and the reason in ``skip_reason``."""
    data = data or random_image_data()
    cls = METHODS.get(method)
    spec = RunSpec(dataset="random", student=student, method=method, seed=0,
                   recipe=Recipe(epochs=epochs, batch_size=batch_size),
                   teacher=teacher if cls.needs(resolve_config(cls, overrides or {})).teacher else None,
                   overrides=tuple(sorted((overrides or {}).items())))
    try:
        built = build_run(spec, data)
    except Skipped as exc:
        c, h, _ = data.input_size
        s_model = create_model(student, data.num_classes, c, h)
        t_model = create_model(teacher, data.num_classes, c, h)
        return Setup(None, s_model, t_model, TrainData(data, batch_size, torch.device("cpu"), seed=0),
                     measure(s_model, data.input_size), measure(t_model, data.input_size), str(exc))
    return Setup(built.method, built.student, built.teacher, built.train_data, built.student_info,
                 built.teacher_info, None)


def main_step_with_trainable_teacher(setup: Setup):
    """One main-phase forward through the engine's own ``phase_losses`` with the teacher's
    weights left trainable (so that only the engine keeps gradients out of it): returns the
    teacher outputs the loss saw and the loss terms (for "the teacher gets no gradient")."""
    import dataclasses

    from kdbench.train import configure_phase, phase_losses

    m, student, teacher = setup.method, setup.student, setup.teacher
    teacher.requires_grad_(True)
    main = setup.phases()[-1]
    configure_phase(student, m, main)
    seen = []

    def loss(s, t, batch, info):
        seen.append(t)
        return m.loss(s, t, batch, info)

    _, terms = phase_losses(student, teacher, dataclasses.replace(main, loss=loss), setup.batch(),
                            setup.step_info(main), m)
    return seen, terms


#: The CRD CIFAR-100 benchmark (Tian et al. 2020, Table 1 and 2): 7 same-family, then 6
#: cross-family teacher->student pairs. Written out here independently of kdbench's presets.
CRD_GRID = [("wrn_40_2", "wrn_16_2"), ("wrn_40_2", "wrn_40_1"), ("resnet56", "resnet20"), ("resnet110", "resnet20"),
            ("resnet110", "resnet32"), ("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("vgg13", "mobilenetv2"),
            ("resnet50", "mobilenetv2"), ("resnet50", "vgg8"), ("resnet32x4", "shufflev1"),
            ("resnet32x4", "shufflev2"), ("wrn_40_2", "shufflev1")]


@functools.lru_cache(maxsize=None)
def cifar_info(name: str) -> TapInfo:
    """The measured taps of ``name`` at CIFAR-100 size (cached for the whole test session)."""
    return measure(create_model(name, 100), (3, 32, 32))
