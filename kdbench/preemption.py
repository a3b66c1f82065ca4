"""Whether this process is on its way out to be requeued (Slurm preemption or time limit).

A job that is being requeued is interrupted, not failed: whatever an interruption raises
from then on (the requeue command killed by Slurm's SIGTERM, a ``SystemExit`` from the
signal handler) must not become a ``failed`` result row, because the requeued job resumes
the run from its last epoch checkpoint. :class:`kdbench.runners.jobs.RunJob` calls
:func:`request_requeue` when submitit checkpoints it for the requeue; the engine asks
:func:`requeue_requested` before it records an exception as a failure.
"""
from __future__ import annotations

_requested = False


def request_requeue() -> None:
    """Mark this process as interrupted for a requeue (for good: the process is ending)."""
    global _requested
    _requested = True


def requeue_requested() -> bool:
    return _requested
