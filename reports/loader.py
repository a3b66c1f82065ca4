"""Reading a results folder for a report — read only: nothing under it is ever written.

:func:`load_rows` gives every valid ``result.json`` row (done, failed, skipped) plus one
row per run that has started but has no result yet, built from its ``spec.json`` identity
(the store's rule: identity is read from the files, never parsed from paths), with the
run's state as its status: ``running`` (a live lock), ``interrupted`` (a checkpoint, no
live lock) or ``pending``. Runs a scheduler holds that have not started have only a
``job.json`` (no identity yet): they are counted (:func:`queued_runs`), not placed in cells.
:func:`read_curve` reads one run's per-epoch test accuracy from ``metrics.jsonl``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from kdbench.reports.leaderboard import WAITING
from kdbench.store import METRICS, RESULT, SPEC, Store, read_json

log = logging.getLogger(__name__)

#: spec.json identity fields copied into a waiting run's row.
_IDENTITY = ("dataset", "method", "method_config", "method_version", "recipe", "seed", "student", "teacher",
             "teacher_key")


def _run_dirs(store: Store, name: str) -> list[Path]:
    runs = store.root / "runs"
    return sorted(p.parent for p in runs.glob(f"*/*/*/*/{name}")) if runs.is_dir() else []


def waiting_row(run_dir: Path, own_student_methods: set[str]) -> dict[str, Any] | None:
    """The row of a started run without a result (``None`` if it has one, or its spec is
    unreadable)."""
    state = Store.state(run_dir)
    if state not in WAITING:
        return None
    spec = read_json(run_dir / SPEC)
    if not isinstance(spec, dict) or not isinstance(spec.get("identity"), dict):
        return None
    ident, given = spec["identity"], spec.get("spec") or {}
    row = {k: ident.get(k) for k in _IDENTITY}
    row.update(status=state, run_key=spec.get("key"), run_dir=str(run_dir), teacher_seed=given.get("teacher_seed"),
               teacher_ckpt=given.get("teacher_ckpt"), own_student=row["method"] in own_student_methods,
               pair=f"{row['teacher']}->{row['student']}" if row.get("teacher") else None)
    return row


def load_rows(store: Store) -> list[dict[str, Any]]:
    """Result rows and waiting runs' rows (see the module docstring)."""
    rows = list(store.iter_results())
    with_result = {r.get("run_dir") for r in rows}
    own = {r["method"] for r in rows if r.get("own_student")}
    for run_dir in _run_dirs(store, SPEC):
        if str(run_dir) not in with_result:
            row = waiting_row(run_dir, own)
            if row is not None:
                rows.append(row)
    return rows


def queued_runs(store: Store) -> int:
    """Run folders a runner submitted (``job.json``) that have not started (no spec.json)."""
    return sum(1 for d in _run_dirs(store, "job.json") if not (d / SPEC).exists() and not (d / RESULT).exists())


def read_curve(run_dir: str | Path | None, key: str = "test_top1") -> list[tuple[int, float]]:
    """``(epoch, value)`` of the main phase from a run's ``metrics.jsonl`` ([] when absent);
    a torn line ends the curve."""
    if not run_dir:
        return []
    try:
        text = (Path(run_dir) / METRICS).read_text()
    except OSError:
        return []
    points = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(rec, dict) and rec.get("phase", rec.get("stage")) == "main" and \
                isinstance(rec.get(key), (int, float)) and isinstance(rec.get("epoch"), int):
            points.append((rec["epoch"], float(rec[key])))
    return points
