"""Whether this process is on its way out to be requeued (Slurm preemption or time limit).

A job that is being requeued is interrupted, not failed: whatever an interruption raises
from then on (the requeue command killed by Slurm's SIGTERM, a ``SystemExit`` from the
signal handler) must not become a ``failed`` result row, because the requeued job resumes
the run from its last epoch checkpoint. :class:`kdbench.runners.jobs.RunJob` calls
:func:`request_requeue` when submitit checkpoints it for the requeue; the engine asks
:func:`interrupts_run` before it records an exception as a failure.

Requested is not granted: after checkpointing, submitit still declines to requeue a job
that timed out more often than its ``max_requeues`` allow, and raises
``UncompletedJobError`` ("Job not requeued because: ...") into the running code. That is the
end of the run, so it *is* a failure (:func:`ends_the_run`): the row keeps submitit's reason.
"""
from __future__ import annotations

_requested = False


def request_requeue() -> None:
    """Mark this process as interrupted for a requeue (for good: the process is ending)."""
    global _requested
    _requested = True


def requeue_requested() -> bool:
    return _requested


def ends_the_run(error: BaseException) -> bool:
    """``error`` is submitit's refusal to requeue: the job ends here without a successor."""
    try:
        from submitit.core.utils import UncompletedJobError
    except ImportError:  # submitit is what raises it: without submitit there is none
        return False
    return isinstance(error, UncompletedJobError)


def interrupts_run(error: BaseException) -> bool:
    """``error`` was raised because the job is being requeued: the run is interrupted (the
    requeued job resumes it), so no result row must be written for it."""
    return _requested and not ends_the_run(error)
