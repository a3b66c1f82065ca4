"""``vanilla``: the student trained alone with cross-entropy — the baseline every report
shows as the "student" row. No teacher is loaded."""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import Method, MethodConfig, Needs
from kdbench.registry import register_method


@register_method("vanilla")
class Vanilla(Method):
    """Cross-entropy only (``ce_weight`` 1). Also trains kdbench's teachers."""

    name = "vanilla"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 1.0

    needs = Needs(teacher=False)
