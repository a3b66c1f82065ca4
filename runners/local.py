"""``local``: runs as parallel subprocesses of this machine through submitit's LocalExecutor.

submitit's LocalExecutor starts every job it is given at once and has no queue, so kdbench
keeps the queue: at most ``max_parallel`` jobs run at a time (:func:`run_throttled`), each
with a timeout (the executor's own default is 2 minutes, far too short for training; ours
is ``timeout_min``, 24 hours unless set). Teachers run first, as one wave, then the student
runs. With ``--device cuda``, each job gets one GPU of its own through
``CUDA_VISIBLE_DEVICES`` (``max_parallel`` defaults to the number of GPUs); on CPU each
job gets ``cpu_count // max_parallel`` torch threads unless ``cpus_per_job`` says otherwise.

Each job builds its own session (:class:`kdbench.runners.jobs.RunJob`); rows are read back
from ``result.json``. A job's logs are in ``<out>/jobs/local/``, and its id (the pid of
its controller process) in the run folder's ``job.json``. Ctrl-C cancels the running
jobs (they stop at once; a re-run resumes them from their last epoch checkpoint).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol, Sequence

import submitit

from kdbench.registry import register_runner
from kdbench.run import git_sha, run_label
from kdbench.runners.base import Planned, check_datasets, outcome, plan, rows_of, tasks
from kdbench.runners.jobs import JobOptions, RunJob, job_paths, log_tail, write_job_record
from kdbench.spec import RunSpec
from kdbench.store import Store

log = logging.getLogger(__name__)


class _JobLike(Protocol):
    def done(self) -> bool: ...


class Throttle:
    """Start jobs, never more than ``max_parallel`` at a time."""

    def __init__(self, max_parallel: int, poll_s: float = 0.2):
        if max_parallel < 1:
            raise ValueError(f"max_parallel must be at least 1, not {max_parallel}")
        self.max_parallel = max_parallel
        self.poll_s = poll_s
        self.running: dict[int, tuple[Any, _JobLike]] = {}

    def run(self, items: Iterable[Any], start: Callable[[Any, int], _JobLike],
            finished: Callable[[Any, _JobLike], None] = lambda item, job: None) -> None:
        """``start(item, slot)`` for every item; ``slot`` (0 … max_parallel-1) is the
        job's own while it runs (its GPU, say). ``finished(item, job)`` once it is done.
        Ctrl-C propagates: the caller cancels :attr:`running`."""
        queue = list(items)
        while queue or self.running:
            for slot in range(self.max_parallel):
                if queue and slot not in self.running:
                    item = queue.pop(0)
                    self.running[slot] = (item, start(item, slot))
            time.sleep(self.poll_s)
            for slot, (item, job) in list(self.running.items()):
                if job.done():
                    del self.running[slot]
                    finished(item, job)


@register_runner("local")
class LocalRunner:
    """Parallel subprocesses on this machine (submitit LocalExecutor, throttled here)."""

    name = "local"

    def __init__(self, keep_failed: bool = False, max_parallel: int | None = None, timeout_min: float = 24 * 60,
                 gpus: Sequence[int] | None = None, cpus_per_job: int | None = None, poll_s: float = 0.5):
        self.keep_failed = keep_failed
        self.max_parallel = max_parallel
        self.timeout_min = float(timeout_min)
        self.gpus = None if gpus is None else [int(g) for g in gpus]
        self.cpus_per_job = cpus_per_job
        self.poll_s = poll_s
        if self.timeout_min <= 0:
            raise ValueError(f"timeout_min must be positive, not {timeout_min}")
        if max_parallel is not None and (isinstance(max_parallel, bool) or not isinstance(max_parallel, int)):
            raise ValueError(f"--max-parallel must be an integer, not {max_parallel!r}")
        if max_parallel is not None and max_parallel < 1:
            raise ValueError(f"--max-parallel must be at least 1, not {max_parallel}")

    def job_parameters(self, slot: int, gpus: Sequence[int]) -> dict[str, Any]:
        """LocalExecutor parameters of the job started in ``slot``: the time limit, and with
        GPUs the slot's own GPU (submitit sets ``CUDA_VISIBLE_DEVICES`` to it)."""
        params: dict[str, Any] = {"timeout_min": self.timeout_min}
        if gpus:
            params.update(gpus_per_node=1, visible_gpus=(int(gpus[slot]),))
        return params

    def _gpu_ids(self, device: str) -> list[int]:
        if not str(device).startswith("cuda"):
            return []
        if self.gpus is not None:
            return self.gpus
        import torch

        return list(range(torch.cuda.device_count()))

    def submit(self, specs: list[RunSpec], options: JobOptions) -> list[dict[str, Any]]:
        store = Store(options.out)
        check_datasets(specs, options.session())  # here, before any job is started
        planned = plan(specs, store)
        todo = [p for p in planned if p.needs_work(self.keep_failed)]
        gpus = self._gpu_ids(options.device)
        parallel = int(self.max_parallel or len(gpus) or os.cpu_count() or 1)
        if gpus and parallel > len(gpus):
            log.warning("local runner: %d parallel jobs but %d GPU(s): running %d at a time", parallel, len(gpus),
                        len(gpus))
            parallel = len(gpus)
        threads = self.cpus_per_job or max(1, (os.cpu_count() or 1) // parallel)
        job_options = dataclasses.replace(options, threads=threads, device="cuda" if gpus else options.device,
                                          submitted={"runner": self.name, "git_sha": git_sha()})
        executor = submitit.LocalExecutor(folder=store.root / "jobs" / "local")
        log.info("local runner: %d of %d runs to do, %d at a time (%s)", len(todo), len(planned), parallel,
                 f"one GPU each of {gpus}" if gpus else f"{threads} CPU thread(s) each")

        def start(unit: list[Planned], slot: int) -> Any:
            name = f"kdbench-{unit[0].spec.method}" if len(unit) == 1 else f"kdbench-column-{len(unit)}"
            executor.update_parameters(**self.job_parameters(slot, gpus), name=name)
            job = executor.submit(RunJob([p.spec for p in unit], job_options, teacher=unit[0].teacher))
            for item in unit:
                write_job_record(item.run_dir, self.name, str(job.job_id), job_paths(job), git_sha=git_sha(),
                                 gpu=gpus[slot] if gpus else None, column_size=len(unit))
            log.info("started %s (pid %s)", ", ".join(run_label(p.spec, teacher=p.teacher) for p in unit), job.job_id)
            return job

        def finished(unit: list[Planned], job: Any) -> None:
            for item, row in zip(unit, rows_of(unit, options)):
                if row.get("status") in ("done", "skipped", "failed"):
                    log.info("%s: %s", run_label(item.spec, teacher=item.teacher), outcome(row))
                else:
                    log.warning("%s: the job ended without a result (%s); its log:\n%s",
                                run_label(item.spec, teacher=item.teacher), job.state, log_tail(job.paths.stderr))

        units = tasks(todo, options)
        throttle = Throttle(parallel, self.poll_s)
        try:
            for wave in ([u for u in units if u[0].teacher], [u for u in units if not u[0].teacher]):
                throttle.run(wave, start, finished)
        except KeyboardInterrupt:
            for _, job in throttle.running.values():
                job.cancel()
            raise
        return rows_of(planned, options)
