"""``inline``: every run sequentially in this process (the default; tests, debugging, a laptop).

Teachers are trained first (each once), then the student runs in grid order, all in one
:class:`kdbench.run.Session`, so the dataset is loaded once and each teacher is loaded once.
A failed run becomes a row and the grid goes on; Ctrl-C stops at once and a re-run resumes
from the last epoch checkpoint. Each run is announced once and its outcome reported once,
under the same name (:func:`kdbench.run.run_label`).
"""
from __future__ import annotations

import logging
from typing import Any

from kdbench.registry import register_runner
from kdbench.run import execute, run_label
from kdbench.runners.base import check_datasets, outcome, plan
from kdbench.runners.jobs import JobOptions
from kdbench.spec import RunSpec
from kdbench.store import Store

log = logging.getLogger(__name__)


@register_runner("inline")
class InlineRunner:
    """Every run in this process, one after the other."""

    name = "inline"

    def __init__(self, keep_failed: bool = False):
        self.keep_failed = keep_failed

    def submit(self, specs: list[RunSpec], options: JobOptions) -> list[dict[str, Any]]:
        session = options.session()
        check_datasets(specs, session)
        queue = plan(specs, Store(options.out))
        rows = []
        for i, item in enumerate(queue, 1):
            name = run_label(item.spec, teacher=item.teacher)
            log.info("[%d/%d] %s", i, len(queue), name)
            if item.teacher:
                row = session.train_teacher(item.spec, keep_failed=self.keep_failed)
            else:
                row = execute(item.spec, session, keep_failed=self.keep_failed, label=name)
            rows.append(row)
            log.info("[%d/%d] %s: %s", i, len(queue), name, outcome(row))
        return rows
