"""What the Slurm cluster says about jobs: one ``squeue`` and at most one ``sacct`` call for
any number of job ids, and the cluster's ``MaxArraySize``. Used by the Slurm runner (is a
run already queued?) and by ``kdbench status``.

States are Slurm's (``PENDING``, ``RUNNING``, ``COMPLETED``, ``FAILED``, ``CANCELLED``,
``TIMEOUT``, ``OUT_OF_MEMORY``, …). A local job's id is its controller's pid: it is
``RUNNING`` while that process lives on this host.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
from typing import Iterable

log = logging.getLogger(__name__)

#: States in which a job is still coming: do not submit its run again.
ACTIVE_STATES = frozenset({"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING",
                           "CONFIGURING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "PREEMPTED",
                           "STOPPED", "RESV_DEL_HOLD"})


class SlurmUnavailable(RuntimeError):
    """The Slurm commands are missing or the controller does not answer."""


def _run(cmd: list[str], timeout: float = 60) -> subprocess.CompletedProcess:
    if not shutil.which(cmd[0]):
        raise SlurmUnavailable(f"`{cmd[0]}` is not on PATH: run on a Slurm login node, or use --runner local")
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"`{' '.join(cmd[:3])} …` did not answer within {timeout:.0f} s") from None


def slurm_available() -> bool:
    """Whether a Slurm controller answers here (``scontrol ping``)."""
    try:
        out = _run(["scontrol", "ping"], timeout=20)
    except SlurmUnavailable:
        return False
    return out.returncode == 0 and "UP" in out.stdout


def require_slurm() -> None:
    """Raise :class:`SlurmUnavailable` unless the Slurm commands are here and a controller
    answers ``scontrol ping``."""
    out = _run(["scontrol", "ping"], timeout=20)
    if out.returncode != 0 or "UP" not in out.stdout:
        reply = (out.stdout + out.stderr).strip().splitlines()
        last = reply[-1] if reply else "no reply"
        raise SlurmUnavailable(f"no Slurm controller answers `scontrol ping` here ({last}); "
                               "run on a Slurm login node, or use --runner local")


def max_array_size() -> int:
    """The cluster's ``MaxArraySize`` (an array may use task ids 0 … MaxArraySize-1)."""
    out = _run(["scontrol", "show", "config"])
    match = re.search(r"^MaxArraySize\s*=\s*(\d+)", out.stdout, re.M)
    return int(match.group(1)) if match else 1001


def _normal(state: str) -> str:
    """``CANCELLED by 0`` → ``CANCELLED``."""
    return state.split()[0].rstrip("+") if state.strip() else "UNKNOWN"


def slurm_states(job_ids: Iterable[str]) -> dict[str, str]:
    """The state of each job id (``123`` or array task ``123_4``) Slurm knows: live jobs
    from ``squeue``, ended ones from ``sacct`` (needs accounting; without it ended jobs are
    simply absent from the answer)."""
    wanted = sorted({str(j) for j in job_ids if j})
    if not wanted:
        return {}
    states: dict[str, str] = {}
    arrays = sorted({j.split("_")[0] for j in wanted})
    out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", ",".join(arrays)])
    # squeue rejects the whole list when one id is unknown to it; then ask one by one
    lines = out.stdout.splitlines() if out.returncode == 0 else _squeue_each(arrays)
    for line in lines:
        job, _, state = line.partition("|")
        states[job.strip()] = _normal(state)
    missing = [j for j in wanted if j not in states]
    if missing and shutil.which("sacct"):
        arrays = sorted({j.split("_")[0] for j in missing})
        out = _run(["sacct", "-X", "-n", "-P", "-o", "JobID,State", "-j", ",".join(arrays)])
        for line in out.stdout.splitlines():
            job, _, state = line.partition("|")
            states.setdefault(job.strip(), _normal(state))
    return {j: states[j] for j in wanted if j in states}


def _squeue_each(ids: list[str]) -> list[str]:
    lines: list[str] = []
    for job in ids:
        out = _run(["squeue", "-h", "-r", "-o", "%i|%T", "-j", job])
        if out.returncode == 0:
            lines.extend(out.stdout.splitlines())
    return lines


def local_state(pid: str, host: str | None) -> str | None:
    """``RUNNING`` while a local job's controller process lives (on this host), else None."""
    import socket

    if host and host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return None
    except PermissionError:
        return "RUNNING"
    return "RUNNING"
