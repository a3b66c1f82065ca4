"""Jobs: what a runner hands to another process or node.

A :class:`RunJob` is a small picklable call — one run spec and the :class:`JobOptions`
(results root, execution environment, imports) — that builds its own
:class:`kdbench.run.Session` where it runs and executes the spec there. Its return value
is the result row, but runners never rely on it: the row is read back from the run's
``result.json``, so a job that was requeued, duplicated or killed is judged by what it
left in the store.

``RunJob`` is :class:`submitit.helpers.Checkpointable`: when Slurm preempts it or its time
limit comes, submitit requeues the same call, and the engine resumes from the run's last
epoch checkpoint (work since the last epoch boundary is redone, bit-identically).

Every submitted run gets a ``job.json`` in its run folder (:func:`write_job_record`): the
runner, the job id, the log files, when and from which commit it was submitted, and the
ids of earlier submissions. ``kdbench status`` reads it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from kdbench.spec import RunSpec
from kdbench.store import atomic_write_json, current_slurm_job, read_json

log = logging.getLogger(__name__)

JOB = "job.json"


class RunFailed(RuntimeError):
    """Raised by a job whose run ended ``failed`` (after its row was written), so the
    scheduler marks the job failed too: a failed teacher never satisfies its students'
    ``afterok`` dependency."""


@dataclass(frozen=True)
class JobOptions:
    """Everything a job needs besides its spec; picklable, small, no live state.

    ``threads`` sets ``torch.set_num_threads`` in the job (None: Slurm's
    ``SLURM_CPUS_PER_TASK`` if set, else torch's default). ``submitted`` lands in every
    result row (runner name, the commit of the submitted code, the job id).
    """

    out: str
    device: str = "cpu"
    data_root: str | None = None
    download: bool = False
    progress: bool | None = None
    imports: tuple[str, ...] = ()
    keep_failed: bool = False
    log_level: int = logging.INFO
    threads: int | None = None
    submitted: dict[str, Any] = field(default_factory=dict)
    #: train the runs of a grid column in one fused pass (``--fuse``), at most ``fuse_max``
    #: runs per pass (None: no limit); see :mod:`kdbench.column`
    fuse: bool = False
    fuse_max: int | None = None

    def env(self):  # -> kdbench.train.Env (imported late: jobs are unpickled before torch is needed)
        from kdbench.train import Env

        return Env(device=self.device, data_root=self.data_root, download=self.download, progress=self.progress)

    def session(self, teacher_failures_final: bool = False):  # -> kdbench.run.Session
        from kdbench.run import Session
        from kdbench.store import Store

        return Session(store=Store(self.out), env=self.env(), imports=self.imports,
                       row_extra={"submitted": dict(self.submitted)} if self.submitted else {},
                       teacher_failures_final=teacher_failures_final)

    def with_submitted(self, **info: Any) -> "JobOptions":
        return dataclasses.replace(self, submitted={**self.submitted, **info})


def configure_job_process(options: JobOptions) -> None:
    """Logging to the job's stderr (its log file) and the thread count, once per process."""
    from kdbench.cli import setup_logging

    setup_logging(verbose=int(options.log_level <= logging.DEBUG), quiet=options.log_level >= logging.WARNING)
    threads = options.threads or int(os.environ.get("SLURM_CPUS_PER_TASK", "0") or 0)
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


class RunJob(submitit.helpers.Checkpointable):
    """Execute one run spec in this process, or several as one fused column
    (:func:`kdbench.run.execute_column`); see the module docstring."""

    def __init__(self, specs: RunSpec | list[RunSpec], options: JobOptions, teacher: bool = False):
        self.specs = [specs] if isinstance(specs, RunSpec) else list(specs)
        self.options = options
        self.teacher = teacher

    @property
    def spec(self) -> RunSpec:
        return self.specs[0]

    def __call__(self) -> list[dict[str, Any]]:
        from kdbench.run import execute_column, run_label

        configure_job_process(self.options)
        options = self.options.with_submitted(job_id=current_slurm_job() or os.environ.get("SUBMITIT_LOCAL_JOB_ID"))
        labels = [run_label(spec, teacher=self.teacher) for spec in self.specs]
        log.info("job %s: %s", options.submitted.get("job_id") or os.getpid(), ", ".join(labels))
        # the runner ran the teachers before this job: a failed one is not trained again here
        rows = execute_column(self.specs, options.session(teacher_failures_final=True),
                              keep_failed=options.keep_failed, labels=labels)
        for label, row in zip(labels, rows):
            log.info("%s: %s", label, row.get("status"))
        failed = [(label, row) for label, row in zip(labels, rows) if row.get("status") == "failed"]
        if failed:
            raise RunFailed("; ".join(f"{label} failed: {row.get('error')} (the row is in {row.get('run_dir')})"
                                      for label, row in failed))
        return [{k: v for k, v in row.items() if k != "traceback"} for row in rows]

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Called by submitit's preemption/time-limit handler right before it runs
        ``scontrol requeue`` on this job and exits.

        The requeue makes Slurm SIGTERM every process of the job, and that includes the
        ``scontrol`` child when it has not exited yet: it then dies, submitit raises
        ``CalledProcessError``, and the run was recorded as failed although it was
        requeued (seen on CI). So from here on SIGTERM is ignored: a disposition set to
        ``SIG_IGN`` is inherited across ``exec``, so ``scontrol`` survives it too, and this
        process exits right after the requeue anyway (Slurm's SIGKILL follows after its
        ``KillWait`` if it does not). :func:`kdbench.preemption.request_requeue` tells the
        engine that whatever is raised from now on interrupts the run, it does not fail
        it. The engine's own epoch checkpoint is what the requeued job resumes from."""
        from kdbench import preemption

        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        preemption.request_requeue()
        log.warning("job %s: interrupted (preemption or time limit); being requeued, it resumes from the last epoch "
                    "checkpoint", current_slurm_job() or os.getpid())
        return super().checkpoint(*args, **kwargs)

    def __repr__(self) -> str:
        more = f" + {len(self.specs) - 1} fused" if len(self.specs) > 1 else ""
        return f"RunJob({self.spec.method} {self.spec.pair} s{self.spec.seed}{more})"


# -- job records ----------------------------------------------------------------------------

def write_job_record(run_dir: Path, runner: str, job_id: str, paths: dict[str, str] | None = None,
                     **info: Any) -> None:
    """Record in ``run_dir/job.json`` that ``runner`` submitted the run as ``job_id``
    (earlier ids are kept under ``previous``)."""
    old = read_json(run_dir / JOB) or {}
    previous = list(old.get("previous") or [])
    if old.get("job_id") and old.get("job_id") != job_id:
        previous.append({k: old.get(k) for k in ("runner", "job_id", "submitted_at")})
    atomic_write_json(run_dir / JOB, {"runner": runner, "job_id": job_id, **(paths or {}),
                                      "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      "submit_host": socket.gethostname(), **info, "previous": previous})


def job_paths(job: Any) -> dict[str, str]:
    """The log files of a submitit job, as recorded in ``job.json``."""
    return {"stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr)}


def read_job_record(run_dir: Path) -> dict[str, Any] | None:
    record = read_json(run_dir / JOB)
    return record if isinstance(record, dict) and record.get("job_id") else None


def log_tail(path: str | os.PathLike | None, lines: int = 12) -> str:
    """The last ``lines`` lines of a log file ('' when there is none)."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
