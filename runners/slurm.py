"""``slurm``: the grid as Slurm job arrays through submitit's AutoExecutor.

One ``kdbench run --runner slurm`` submits everything and returns (``--wait`` blocks until
the jobs end and prints the leaderboard):

- the teacher runs that are not done yet, as one array;
- the student runs, as one array per teacher, each depending on its teacher's task with
  ``--dependency=afterok:<teacher task>`` and ``--kill-on-invalid-dep=yes`` (Slurm starts
  them once the teacher is trained; nothing polls in the submitting process). A teacher
  that fails exits non-zero, so its students are cancelled rather than each training it;
  runs whose teacher is already done, and runs without a teacher, form one array with no
  dependency. Arrays are cut into chunks of at most ``MaxArraySize`` tasks. The 351-run
  paper grid is about ten ``sbatch`` calls.

Each task is a :class:`kdbench.runners.jobs.RunJob`, which is Checkpointable: on
preemption or at its time limit submitit requeues it (up to ``max_requeues`` time-outs)
and the run resumes from its last epoch checkpoint. The job id and log files of every run
are recorded in its folder (``job.json``); every result row carries the job id and the git
commit of the code that submitted it. Submission happens inside
``submitit.helpers.clean_env()`` (submitting from inside a Slurm job does not leak that
job's settings). Re-running the same command submits only the runs that are not done,
skipped, running, or already queued (``squeue``/``sacct`` say so); failed runs are
submitted again unless ``--keep-failed``.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import submitit

from kdbench.registry import register_runner
from kdbench.run import git_sha, run_label
from kdbench.runners.base import Planned, check_datasets, plan, rows_of
from kdbench.column import column_groups
from kdbench.runners.jobs import JobOptions, RunJob, job_paths, read_job_record, write_job_record
from kdbench.runners.scheduler import ACTIVE_STATES, max_array_size, require_slurm, slurm_states
from kdbench.spec import RunSpec
from kdbench.store import Store

log = logging.getLogger(__name__)


def _key_value_options(values: dict[str, Any] | Sequence[str] | None, what: str) -> dict[str, Any]:
    """``{"account": "abc"}`` from a dict or from ``["account=abc", "exclusive"]``."""
    if not values:
        return {}
    if isinstance(values, dict):
        return {str(k): v for k, v in values.items()}
    out: dict[str, Any] = {}
    for item in values:
        key, eq, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not key:
            raise ValueError(f"{what} {item!r}: write KEY=VALUE (e.g. account=myproject) or a bare flag (exclusive)")
        out[key] = value if eq else True
    return out


@register_runner("slurm")
class SlurmRunner:
    """Job arrays on a Slurm cluster (submitit AutoExecutor), teachers before students."""

    name = "slurm"

    def __init__(self, keep_failed: bool = False, partition: str | None = None, gpus_per_job: int = 0,
                 cpus_per_job: int | None = None, mem_gb: float | None = None, timeout_min: float = 24 * 60,
                 array_parallelism: int = 256, max_requeues: int = 3,
                 sbatch: dict[str, Any] | Sequence[str] | None = None, account: str | None = None,
                 qos: str | None = None, constraint: str | None = None, setup: Sequence[str] = (),
                 hold: bool = False, wait: bool = False, wait_timeout_min: float | None = None,
                 poll_s: float = 10.0, max_array: int | None = None, job_name: str = "kdbench",
                 signal_delay_s: int = 90):
        self.keep_failed = keep_failed
        self.partition = partition
        self.gpus_per_job = int(gpus_per_job or 0)
        self.cpus_per_job = cpus_per_job
        self.mem_gb = mem_gb
        self.timeout_min = float(timeout_min)
        self.array_parallelism = int(array_parallelism)
        self.max_requeues = int(max_requeues)
        self.sbatch = _key_value_options(sbatch, "--sbatch")
        for key, value in (("account", account), ("qos", qos), ("constraint", constraint)):
            if value:
                self.sbatch[key] = value
        self.setup = list(setup or [])
        self.hold = bool(hold)
        self.wait = bool(wait)
        self.wait_timeout_min = wait_timeout_min
        self.poll_s = float(poll_s)
        self.max_array = max_array
        self.job_name = job_name
        self.signal_delay_s = int(signal_delay_s)
        if self.timeout_min <= 0 or self.array_parallelism < 1 or self.max_requeues < 0 or self.gpus_per_job < 0:
            raise ValueError("slurm runner: timeout_min and array_parallelism must be positive, max_requeues and "
                             f"gpus_per_job at least 0 (got {timeout_min}, {array_parallelism}, {max_requeues}, "
                             f"{gpus_per_job})")

    # -- submission -----------------------------------------------------------------------

    def executor(self, folder: Path) -> submitit.AutoExecutor:
        """The AutoExecutor with this runner's resources (parameters of every array)."""
        ex = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=self.max_requeues)
        params: dict[str, Any] = {"timeout_min": max(1, round(self.timeout_min)), "name": self.job_name, "nodes": 1,
                                  "tasks_per_node": 1, "slurm_array_parallelism": self.array_parallelism,
                                  "slurm_signal_delay_s": self.signal_delay_s}
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.gpus_per_job:
            params["gpus_per_node"] = self.gpus_per_job
        if self.cpus_per_job:
            params["cpus_per_task"] = int(self.cpus_per_job)
        if self.mem_gb:
            params["mem_gb"] = float(self.mem_gb)
        if self.setup:
            params["slurm_setup"] = self.setup
        ex.update_parameters(**params)
        return ex

    def submit(self, specs: list[RunSpec], options: JobOptions) -> list[dict[str, Any]]:
        require_slurm()  # before anything is loaded, written or submitted
        store = Store(options.out)
        check_datasets(specs, options.session())  # here, before any job is started
        planned = plan(specs, store)
        queued = self._queued(planned)
        todo = [p for p in planned if p.needs_work(self.keep_failed) and p.run_dir not in queued]
        for p in planned:
            if p.run_dir in queued:
                log.info("%s is already queued as Slurm job %s (%s): not submitted again",
                         run_label(p.spec, teacher=p.teacher), *queued[p.run_dir])
        if not todo:
            log.info("slurm runner: nothing to submit (%d runs: done, skipped or queued)", len(planned))
        else:
            self._submit_all(todo, planned, queued, store, options)
        if self.wait:
            self._wait(planned)
        return rows_of(planned, options)

    def _queued(self, planned: list[Planned]) -> dict[Path, tuple[str, str]]:
        """Runs with a Slurm job still pending or running: run folder → (job id, state)."""
        records = {p.run_dir: read_job_record(p.run_dir) for p in planned if p.state not in ("done", "skipped")}
        records = {d: r for d, r in records.items() if r and r.get("runner") == self.name}
        states = slurm_states(r["job_id"] for r in records.values()) if records else {}
        return {d: (r["job_id"], states[r["job_id"]]) for d, r in records.items()
                if states.get(r["job_id"]) in ACTIVE_STATES}

    def _submit_all(self, todo: list[Planned], planned: list[Planned], queued: dict[Path, tuple[str, str]],
                    store: Store, options: JobOptions) -> None:
        chunk = self.max_array or max_array_size()
        sha = git_sha()
        job_options = dataclasses.replace(options, submitted={"runner": self.name, "git_sha": sha})
        folder = store.root / "jobs" / "slurm"
        # teacher spec -> the job that trains it: queued by an earlier submission, or new below
        teacher_job = {p.spec: queued[p.run_dir][0] for p in planned if p.teacher and p.run_dir in queued}
        t0, calls = time.perf_counter(), 0
        with submitit.helpers.clean_env():
            teachers = [p for p in todo if p.teacher]
            for part in _chunks([[p] for p in teachers], chunk):
                jobs = self._submit_array(part, folder, job_options, dependency=None, sha=sha)
                calls += 1
                teacher_job.update({unit[0].spec: str(j.job_id) for unit, j in zip(part, jobs)})
            groups: dict[str | None, list[Planned]] = defaultdict(list)
            for p in todo:
                if not p.teacher:
                    tspec = p.spec.teacher_spec() if not p.spec.teacher_ckpt else None
                    groups[teacher_job.get(tspec) if tspec is not None else None].append(p)
            for dependency, members in groups.items():
                units = column_groups(members, options.fuse_max, spec_of=lambda p: p.spec) if options.fuse \
                    else [[p] for p in members]  # a fused column is one job
                for part in _chunks(units, chunk):
                    self._submit_array(part, folder, job_options, dependency=dependency, sha=sha)
                    calls += 1
        log.info("slurm runner: submitted %d run(s) in %d sbatch call(s) in %.2f s%s; `kdbench status` shows them",
                 len(todo), calls, time.perf_counter() - t0, " (held: release with `scontrol release <id>`)"
                 if self.hold else "")

    def _submit_array(self, part: list[list[Planned]], folder: Path, options: JobOptions, dependency: str | None,
                      sha: str | None) -> list[Any]:
        """One array job: an element per unit of ``part`` (a run, or a fused column)."""
        ex = self.executor(folder)
        role = "teachers" if part[0][0].teacher else "students"
        # the name says what the array is and what it waits for (sacct shows names, not dependencies)
        ex.update_parameters(name=f"{self.job_name}-{role}" + (f"-after-{dependency}" if dependency else ""))
        extra: dict[str, Any] = {"requeue": True, **self.sbatch}
        if dependency:
            extra.update(dependency=f"afterok:{dependency}", kill_on_invalid_dep="yes")
        if self.hold:
            extra["hold"] = True
        ex.update_parameters(slurm_additional_parameters=extra)
        with ex.batch():
            jobs = [ex.submit(RunJob([p.spec for p in unit], options, teacher=unit[0].teacher)) for unit in part]
        for unit, job in zip(part, jobs):
            for p in unit:
                write_job_record(p.run_dir, self.name, str(job.job_id), job_paths(job), git_sha=sha,
                                 dependency=dependency, teacher=p.teacher, column_size=len(unit))
        runs = sum(len(unit) for unit in part)
        log.info("submitted %d %s run(s) as Slurm array %s%s%s", runs, role[:-1], str(jobs[0].job_id).split("_")[0],
                 f" ({len(part)} fused columns)" if runs > len(part) else "", f" after {dependency}" if dependency else "")
        return jobs

    # -- waiting ----------------------------------------------------------------------------

    def _wait(self, planned: list[Planned]) -> None:
        """Block until no run of the grid has a pending or running Slurm job (or the
        ``wait_timeout_min`` deadline: submitit's own ``result()`` has none)."""
        deadline = time.monotonic() + 60 * self.wait_timeout_min if self.wait_timeout_min else None
        while True:
            queued = self._queued(planned)
            if not queued:
                return
            if deadline is not None and time.monotonic() > deadline:
                log.warning("slurm runner: stopped waiting after %.0f min with %d run(s) still queued",
                            self.wait_timeout_min, len(queued))
                return
            log.debug("waiting for %d Slurm job(s)", len(queued))
            time.sleep(self.poll_s)


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]
