"""The runner interface, and what every runner shares.

``Runner.submit(specs, options) -> rows``: run (or schedule) every spec of a grid. A
runner only decides where and when :func:`kdbench.run.execute` runs: in this process
(``inline``), in local subprocesses (``local``) or on a Slurm cluster (``slurm``). What
crosses a process boundary is a :class:`kdbench.runners.jobs.RunJob` (the spec and the
picklable :class:`~kdbench.runners.jobs.JobOptions`), and rows are read back from each
run's ``result.json`` (:func:`rows_of`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kdbench.run import identity_row, resolve, run_dir_of
from kdbench.spec import RunSpec
from kdbench.store import Store
from kdbench.runners.jobs import JobOptions

log = logging.getLogger(__name__)


class Runner(Protocol):
    """Executes runs. Implementations are registered in ``kdbench.registry.RUNNERS`` and
    constructed with keyword options (from flags or the grid file's ``runner:`` block)."""

    name: str

    def submit(self, specs: list[RunSpec], options: JobOptions) -> list[dict[str, Any]]:
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


@dataclass(frozen=True)
class Planned:
    """One run of a grid as a runner sees it before submitting."""

    spec: RunSpec
    run_dir: Path
    state: str  # Store.state: done | failed | skipped | running | interrupted | pending | invalid
    teacher: bool  # a teacher's training run

    def needs_work(self, keep_failed: bool) -> bool:
        """Whether the run must be (re)submitted: not done or skipped, not being worked on
        now, and not a failure the user asked to keep."""
        return self.state not in ("done", "skipped", "running") and not (keep_failed and self.state == "failed")


def plan(specs: list[RunSpec], store: Store) -> list[Planned]:
    """The grid's teacher runs (first) and its runs, each with its state in ``store``."""
    teachers = teacher_specs(specs)
    out = []
    for i, spec in enumerate(teachers + [s for s in specs if s not in teachers]):
        run_dir = run_dir_of(store, resolve(spec))
        out.append(Planned(spec, run_dir, Store.state(run_dir), teacher=i < len(teachers)))
    return out


def tasks(planned: list[Planned], options: JobOptions) -> list[list[Planned]]:
    """The units of work of ``planned``: each teacher alone, then the student runs one by
    one or, with ``options.fuse``, grouped into fused columns
    (:func:`kdbench.column.column_groups`, at most ``options.fuse_max`` runs each)."""
    from kdbench.column import column_groups

    teachers = [[p] for p in planned if p.teacher]
    students = [p for p in planned if not p.teacher]
    if not options.fuse:
        return teachers + [[p] for p in students]
    return teachers + column_groups(students, options.fuse_max, spec_of=lambda p: p.spec)


def check_datasets(specs: list[RunSpec], session: Any) -> None:
    """Load each dataset of ``specs`` once (``session.dataset``), so a missing or malformed
    dataset is an error here, before anything is trained or submitted."""
    for name in dict.fromkeys(s.dataset for s in specs):
        session.dataset(name)


def rows_of(planned: list[Planned], options: JobOptions) -> list[dict[str, Any]]:
    """The rows of ``planned`` as the store holds them now (``result.json``); a run without
    one gets a row with its identity and its current state."""
    from kdbench.train import Env

    rows = []
    for p in planned:
        row = Store.result(p.run_dir)
        if row is None:
            row = {**identity_row(resolve(p.spec), Env(device=options.device)), "status": Store.state(p.run_dir)}
        rows.append({**row, "run_dir": str(p.run_dir)})
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
