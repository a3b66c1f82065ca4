"""``inline``: every run sequentially in this process (the default; tests, debugging, a laptop).

Teachers are trained first (each once), then the student runs in grid order. A failed run
becomes a row and the grid goes on; Ctrl-C stops at once and a re-run resumes from the
last epoch checkpoint. Each run is announced once and its outcome reported once, under the
same name (:func:`kdbench.run.run_label`).
"""
from __future__ import annotations

import logging
from typing import Any

from kdbench.registry import register_runner
from kdbench.run import Session, execute, run_label
from kdbench.runners.base import teacher_specs
from kdbench.spec import RunSpec

log = logging.getLogger(__name__)


@register_runner("inline")
class InlineRunner:
    name = "inline"

    def __init__(self, keep_failed: bool = False):
        self.keep_failed = keep_failed

    def submit(self, specs: list[RunSpec], session: Session) -> list[dict[str, Any]]:
        teachers = teacher_specs(specs)
        queue = teachers + [s for s in specs if s not in teachers]
        rows = []
        for i, spec in enumerate(queue, 1):
            name = run_label(spec, teacher=i <= len(teachers))
            log.info("[%d/%d] %s", i, len(queue), name)
            row = execute(spec, session, keep_failed=self.keep_failed, label=name)
            rows.append(row)
            log.info("[%d/%d] %s: %s", i, len(queue), name, outcome(row))
        return rows


def outcome(row: dict[str, Any]) -> str:
    """One line saying how a run ended (failures: the first line of the error)."""
    status = row.get("status")
    if status == "done":
        return f"done, top1 {row['top1_last']:.2f} (best {row['top1_best']:.2f}) in {row['wall_time_s']:.1f} s"
    if status == "skipped":
        return f"skipped: {row.get('reason')}"
    first_line = str(row.get("error") or "").strip().splitlines()[:1]
    return f"{status}: {first_line[0] if first_line else ''} ({row.get('run_dir')})"
