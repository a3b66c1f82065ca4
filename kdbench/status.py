"""``kdbench status``: the state of every run of a grid, whichever runner ran it.

A run is ``done``, ``failed``, ``skipped`` (its ``result.json``), ``running`` (a live
lock, or a running job), ``pending`` (nothing yet, or a job waiting in the queue),
``interrupted`` (a checkpoint and nobody working on it: re-run to resume) or ``invalid``
(a ``result.json`` lacking what its status requires: it will be redone). A run submitted
to a scheduler shows its job (``job.json``) and the job's state as the scheduler reports
it — one ``squeue`` and one ``sacct`` call for the whole grid; a job that ended without
writing a result (killed, out of memory, cancelled because its teacher failed) makes the
run ``failed``, with the tail of the job's log.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kdbench.store import RESULT, Store, metrics_problem, read_result

log = logging.getLogger(__name__)

#: Slurm states of a job that ended without success.
ENDED_BADLY = frozenset({"FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
                         "PREEMPTED", "REVOKED", "SPECIAL_EXIT"})


@dataclass
class RunStatus:
    """One run's line in the status table."""

    method: str
    pair: str
    seed: int
    state: str
    key: str
    detail: str = ""
    job: str = ""  # "slurm 123_4 RUNNING"
    warning: str | None = None  # a message naming a suspicious file
    log_tail: str = ""  # for failures: the end of the job's log or of the traceback


def one_line(text: str, width: int) -> str:
    from kdbench.reports.leaderboard import one_line as _one_line

    return _one_line(text, width)


def stored_state(run_dir: Path) -> tuple[str, str, str | None, dict[str, Any] | None]:
    """(state, one-line detail, warning naming a file or None, result row) from the store."""
    state = Store.state(run_dir)
    row, problem = read_result(run_dir / RESULT)
    if problem:
        warning = f"{run_dir / RESULT} {problem}: the run will be redone"
        return state, one_line(f"result.json {problem}", 80), warning, None
    if row is None:
        return state, "", None, None
    if state == "failed":
        return state, one_line(row["error"], 80), None, row
    if state == "skipped":
        return state, one_line(row["reason"], 80), None, row
    warning = metrics_problem(run_dir, row)
    return state, f"{row['top1_last']:.2f}" + (" (metrics.jsonl cut short)" if warning else ""), warning, row


def grid_status(specs: list, store: Store) -> list[RunStatus]:
    """The status of every spec (in grid order), with scheduler states where runs were
    submitted as jobs."""
    from kdbench.run import resolve, run_dir_of
    from kdbench.runners.jobs import read_job_record

    out: list[tuple[RunStatus, dict[str, Any] | None]] = []
    for spec in specs:
        resolved = resolve(spec)
        run_dir = run_dir_of(store, resolved)
        state, detail, warning, row = stored_state(run_dir)
        status = RunStatus(spec.method, spec.pair, spec.seed, state, resolved.key, detail, warning=warning)
        if state == "failed" and row is not None:
            status.log_tail = _traceback_tail(row)
        record = read_job_record(run_dir)
        out.append((status, record))
    _apply_job_states(out)
    return [s for s, _ in out]


def _traceback_tail(row: dict[str, Any], lines: int = 6) -> str:
    text = str(row.get("traceback") or "").rstrip()
    return "\n".join(text.splitlines()[-lines:]) if text else ""


def _apply_job_states(items: list[tuple[RunStatus, dict[str, Any] | None]]) -> None:
    """Fill in the job column, and the state of runs whose job is queued, running or
    ended without a result."""
    from kdbench.runners.jobs import log_tail
    from kdbench.runners.scheduler import SlurmUnavailable, local_state, slurm_states

    slurm_ids = [r["job_id"] for s, r in items if r and r.get("runner") == "slurm"]
    slurm_ids += [r["dependency"] for s, r in items if r and r.get("runner") == "slurm" and r.get("dependency")]
    try:
        states = slurm_states(slurm_ids) if slurm_ids else {}
    except SlurmUnavailable as exc:
        log.warning("Slurm job states unknown: %s", exc)
        states = {}
    for status, record in items:
        if not record:
            continue
        runner, job_id = record.get("runner"), str(record["job_id"])
        if runner == "slurm":
            job_state = states.get(job_id)
        else:
            job_state = local_state(job_id, record.get("submit_host"))  # a local job that ended: the store says
        status.job = " ".join(filter(None, [runner, job_id, job_state]))
        if status.state in ("done", "skipped", "failed", "invalid") or job_state is None:
            if status.state == "failed" and record.get("stderr"):
                status.log_tail = log_tail(record.get("stderr"), 8) or status.log_tail
            continue
        if job_state in ("PENDING", "REQUEUED", "REQUEUE_HOLD", "CONFIGURING", "SUSPENDED"):
            status.state = "pending" if status.state != "interrupted" else "interrupted"
            status.detail = status.detail or f"queued ({job_state.lower()})"
        elif job_state == "RUNNING":
            status.state = "running"
        elif job_state in ENDED_BADLY or job_state == "COMPLETED":
            status.state = "failed"
            dependency = record.get("dependency")
            if job_state == "CANCELLED" and dependency and states.get(str(dependency)) in ENDED_BADLY:
                status.detail = f"cancelled: its teacher's job {dependency} {states[str(dependency)].lower()}"
            else:
                status.detail = f"job {job_id} ended {job_state.lower()} without a result"
            status.log_tail = log_tail(record.get("stderr"), 8)


def print_status(specs: list, store: Store, write: Any) -> dict[str, int]:
    """Write the status table of ``specs`` with ``write``; return the count per state."""
    from tabulate import tabulate

    statuses = grid_status(specs, store)
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s.state] = counts.get(s.state, 0) + 1
    with_jobs = any(s.job for s in statuses)
    lines = [[s.method, s.pair, s.seed, "invalid (will be redone)" if s.state == "invalid" else s.state,
              *([s.job] if with_jobs else []), s.key, s.detail] for s in statuses]
    headers = ["method", "pair", "seed", "state", *(["job"] if with_jobs else []), "key", "top1 / reason"]
    write(tabulate(lines, headers=headers, disable_numparse=True) + "\n")  # keys and "10.00" stay as written
    write(", ".join(f"{v} {k}" for k, v in sorted(counts.items())) + f" of {len(specs)} runs\n")
    for s in statuses:
        if s.state == "failed" and s.log_tail:
            write(f"\n{s.method} {s.pair} s{s.seed} ({s.job or 'failed'}):\n"
                  + "\n".join("  " + ln for ln in s.log_tail.splitlines()) + "\n")
    if counts.get("failed"):
        write("failed runs: re-run the same command to retry (full errors in each run folder's result.json"
              + (" and the job logs" if with_jobs else "") + ")\n")
    for s in statuses:
        if s.warning:
            log.warning("%s", s.warning)
    return counts
