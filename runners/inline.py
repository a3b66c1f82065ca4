"""``inline``: every run sequentially in this process (the default; tests, debugging, a laptop).

Teachers are trained first (each once), then the student runs in grid order. A failed run
becomes a row and the grid goes on; Ctrl-C stops at once and a re-run resumes from the
last epoch checkpoint.
"""
from __future__ import annotations

import logging
from typing import Any

from kdbench.registry import register_runner
from kdbench.run import Session, execute
from kdbench.spec import RunSpec
from kdbench.runners.base import teacher_specs

log = logging.getLogger(__name__)


@register_runner("inline")
class InlineRunner:
    name = "inline"

    def __init__(self, retry_failed: bool = False):
        self.retry_failed = retry_failed

    def submit(self, specs: list[RunSpec], session: Session) -> list[dict[str, Any]]:
        teachers = teacher_specs(specs)
        queue = teachers + [s for s in specs if s not in teachers]
        rows = []
        for i, spec in enumerate(queue, 1):
            role = "teacher" if i <= len(teachers) else spec.method
            log.info("[%d/%d] %s %s seed %d", i, len(queue), role, spec.pair, spec.seed)
            row = execute(spec, session, retry_failed=self.retry_failed)
            rows.append(row)
            _log_row(row)
        return rows


def _log_row(row: dict[str, Any]) -> None:
    status = row.get("status")
    if status == "done":
        log.info("    done: top1 %.2f (best %.2f) in %.1f s", row["top1_last"], row["top1_best"], row["wall_time_s"])
    elif status == "skipped":
        log.info("    skipped: %s", row.get("reason"))
    else:
        log.info("    %s: %s", status, row.get("error"))
