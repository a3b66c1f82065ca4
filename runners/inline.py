"""``inline``: every run sequentially in this process (the default; tests, debugging, a laptop).

Teachers are trained first (each once), then the student runs in grid order (with
``--fuse``, a grid column at a time: :mod:`kdbench.column`), all in one
:class:`kdbench.run.Session`, so the dataset is loaded once and each teacher is loaded once.
A failed run becomes a row and the grid goes on; Ctrl-C stops at once and a re-run resumes
from the last epoch checkpoint. Each run is announced once and its outcome reported once,
under the same name (:func:`kdbench.run.run_label`).
"""
from __future__ import annotations

import logging
from typing import Any

from kdbench.registry import register_runner
from kdbench.run import execute_column, run_label
from kdbench.runners.base import check_datasets, outcome, plan, tasks
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
        done = 0
        for unit in tasks(queue, options):
            names = [run_label(item.spec, teacher=item.teacher) for item in unit]
            first = done + 1
            done += len(unit)
            where = f"[{first}/{len(queue)}]" if len(unit) == 1 else f"[{first}-{done}/{len(queue)}]"
            log.info("%s %s%s", where, "fused column: " if len(unit) > 1 else "", ", ".join(names))
            if unit[0].teacher:
                unit_rows = [session.train_teacher(unit[0].spec, keep_failed=self.keep_failed)]
            else:
                unit_rows = execute_column([item.spec for item in unit], session, keep_failed=self.keep_failed,
                                           labels=names)
            for name, row in zip(names, unit_rows):
                log.info("%s %s: %s", where, name, outcome(row))
            rows.extend(unit_rows)
        return rows
