"""Toy methods loaded with ``--import kdbench_toys`` by the engine tests (never imported by
the test process itself, so they do not join the registry-wide tests)."""
import os
from dataclasses import dataclass

import torch

from kdbench.method import Method, MethodConfig, Needs
from kdbench.methods.kd import KD
from kdbench.registry import register_method


@register_method("toy_nan")
class ToyNaN(KD):
    """KD whose loss turns NaN in epoch 2 (tests the failed-row path); not once the
    environment says the bug is fixed (``KDBENCH_TOY_NAN_FIXED=1``)."""

    name = "toy_nan"

    def loss(self, s, t, batch, step):
        terms = super().loss(s, t, batch, step)
        if step.epoch >= 2 and os.environ.get("KDBENCH_TOY_NAN_FIXED") != "1":
            terms["loss_kd"] = terms["loss_kd"] * torch.tensor(float("nan"))
        return terms


@register_method("toy_decline")
class ToyDecline(Method):
    """Declines every pair (tests the skipped-row path)."""

    name = "toy_decline"

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0

    needs = Needs(teacher=True)

    @classmethod
    def check(cls, cfg, teacher_info, student_info):
        return f"toy_decline serves no pair (student has {student_info.num_stages} stages)"


@register_method("toy_raise")
class ToyRaise(KD):
    """KD whose loss raises (tests that an exception becomes a failed row with its traceback)."""

    name = "toy_raise"

    def loss(self, s, t, batch, step):
        raise RuntimeError("toy_raise: this method always raises")
