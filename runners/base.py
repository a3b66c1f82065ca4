"""The runner interface: ``Runner.submit(specs, session) -> list of result rows``."""
from __future__ import annotations

import logging
from typing import Any, Protocol

from kdbench.run import Session
from kdbench.spec import RunSpec

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Executes runs. Implementations are registered in ``kdbench.registry.RUNNERS`` and
    constructed with keyword options (from ``--runner-opt`` flags or the grid's ``runner:``)."""

    name: str

    def submit(self, specs: list[RunSpec], session: Session) -> list[dict[str, Any]]:
        """Run (or schedule) every spec; return the rows known when it returns."""
        ...


def teacher_specs(specs: list[RunSpec]) -> list[RunSpec]:
    """The distinct teacher-training runs the specs depend on, in first-use order."""
    out: list[RunSpec] = []
    for spec in specs:
        t = spec.teacher_spec()
        if t is not None and t not in out:
            out.append(t)
    return out
