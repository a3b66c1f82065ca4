"""The results store: one folder per run, every file written atomically.

Layout (DESIGN §9)::

    <out>/runs/<dataset>/<teacher>__<student>/<method>/s<seed>-<key>/
        spec.json      the run spec and its resolved identity (written first)
        metrics.jsonl  one line per epoch (rewritten atomically from the checkpoint)
        ckpt.pt        the per-epoch checkpoint (removed once the run is done)
        model.pt       the final student weights (teachers are loaded from here)
        result.json    the done marker: one flat row (status done | failed | skipped)
        lock           held while a process works on the run

Runs without a teacher (vanilla, and the teachers themselves) live under
``none__<student>``. Identity is always read from ``result.json``/``spec.json``, never
parsed back from the path. One file per run keeps shared cluster file systems safe: no
two jobs ever write the same file. Files get the mode the umask gives (0644 under 022).
A ``result.json`` lacking what its status requires is *invalid* and treated as absent.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

log = logging.getLogger(__name__)

RESULT = "result.json"
SPEC = "spec.json"
METRICS = "metrics.jsonl"
CKPT = "ckpt.pt"
MODEL = "model.pt"
LOCK = "lock"


def safe_name(text: str) -> str:
    """A path component from a model/dataset name (``timm:resnet18`` → ``timm_resnet18``)."""
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", text).strip("_") or "_"


def current_umask() -> int:
    """The process's file-mode creation mask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    The file gets the mode a plain ``open`` would give it (0666 minus the umask, e.g. 0644),
    not the temp file's private 0600: colleagues on a shared file system can read results.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True, default=str) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as exc:  # cannot happen with atomic writes, unless edited by hand
        log.warning("ignoring unreadable %s: %s", path, exc)
        return None


class LockHeld(RuntimeError):
    """Another live process is working on this run (``owner``: what its lock file says)."""

    def __init__(self, message: str, owner: dict[str, Any] | None = None):
        super().__init__(message)
        self.owner = owner


def current_slurm_job() -> str | None:
    """The Slurm job this process belongs to (``123``, or ``123_4`` for an array task)."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{array}_{task}" if array and task else os.environ.get("SLURM_JOB_ID")


def slurm_job_alive(job_id: str) -> bool | None:
    """Whether Slurm still has ``job_id`` pending or running (``None``: no Slurm here, or
    it did not answer)."""
    if not shutil.which("squeue"):
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        # squeue fails with "Invalid job id specified" for jobs it has forgotten
        return False if "Invalid job id" in out.stderr else None
    return bool(out.stdout.strip())


class RunLock:
    """An exclusive lock file (``O_CREAT|O_EXCL``) holding host, pid, start time and the
    Slurm job id (if any) of its owner.

    A lock left by a dead owner is taken over: by a later incarnation of the same Slurm job
    (a requeued job keeps its id, and may land on another node); on the same host when the
    owner's pid no longer exists; when the owner's Slurm job has ended; on any host when it
    has not been refreshed (:meth:`touch`, once per epoch) for ``stale_after`` seconds.
    """

    def __init__(self, run_dir: Path, stale_after: float = 6 * 3600):
        self.path = run_dir / LOCK
        self.stale_after = stale_after
        self.held = False

    def _owner(self) -> dict[str, Any] | None:
        return read_json(self.path)

    def _is_stale(self) -> bool:
        owner = self._owner()
        try:
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return True
        owner = owner if isinstance(owner, dict) else {}
        job = owner.get("slurm_job")
        if job and job == current_slurm_job() and not _same_process(owner):
            return True  # this job's earlier incarnation (preempted or timed out, then requeued)
        if owner.get("host") == socket.gethostname():
            pid = int(owner.get("pid", -1))
            if pid == os.getpid():
                return False
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
            return False
        if job and slurm_job_alive(str(job)) is False:
            return True
        return age > self.stale_after

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time(),
                              "slurm_job": current_slurm_job()}).encode()
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._is_stale():
                    log.warning("taking over stale lock %s (owner %s)", self.path, self._owner())
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                owner = self._owner()
                raise LockHeld(f"{self.path.parent} is being worked on by {owner}", owner)
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
            self.held = True
            return
        raise LockHeld(f"could not take {self.path}")

    def touch(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path)

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.held = False

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _same_process(owner: dict[str, Any]) -> bool:
    return owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()


#: Fields every result row holds (its identity), and the fields each status adds. A
#: ``result.json`` without them is *invalid*: treated as absent, so the run is redone.
IDENTITY_FIELDS = ("run_key", "dataset", "student", "method", "seed", "recipe")
STATUS_FIELDS: dict[str, tuple[str, ...]] = {
    "done": ("top1_last", "top1_best", "top5_last", "top5_best", "epochs", "wall_time_s"),
    "failed": ("error",),
    "skipped": ("reason",),
}
_NUMBER_FIELDS = frozenset({"seed", "top1_last", "top1_best", "top5_last", "top5_best", "epochs", "wall_time_s"})


def row_problem(row: Any) -> str | None:
    """Why ``row`` is not a usable result row (``None`` when it is): a missing or unknown
    status, or a field its status requires that is missing, null or of the wrong type."""
    if not isinstance(row, dict):
        return f"holds {type(row).__name__}, not a result row"
    status = row.get("status")
    if status not in STATUS_FIELDS:
        return f"has status {status!r}; valid: {', '.join(STATUS_FIELDS)}"
    missing = [k for k in (*IDENTITY_FIELDS, *STATUS_FIELDS[status]) if row.get(k) is None]
    if missing:
        return f"is {status} but lacks {', '.join(missing)}"
    wrong = [k for k in _NUMBER_FIELDS if k in row and (isinstance(row[k], bool) or
                                                        not isinstance(row[k], (int, float)))]
    if not isinstance(row["recipe"], dict):
        wrong.append("recipe")
    if wrong:
        return f"has field(s) of the wrong type: {', '.join(sorted(wrong))}"
    return None


def read_result(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """``(row, None)`` for a valid ``result.json``, ``(None, problem)`` for an unreadable
    or invalid one, ``(None, None)`` when there is none."""
    try:
        row = json.loads(path.read_text())
    except FileNotFoundError:
        return None, None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, f"is not valid JSON ({exc})"
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    problem = row_problem(row)
    return (None, problem) if problem else (row, None)


def main_epoch_lines(path: Path) -> int:
    """How many main-phase epoch lines ``metrics.jsonl`` at ``path`` holds (0 if none);
    a torn or unreadable line ends the count."""
    count = 0
    try:
        text = path.read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if isinstance(record, dict) and record.get("phase", record.get("stage")) == "main":
            count += 1
    return count


def metrics_problem(run_dir: Path, row: dict[str, Any]) -> str | None:
    """A warning when the ``metrics.jsonl`` of a done run has fewer main-phase epoch lines
    than the run's epochs (the curves were cut short; the result itself stands)."""
    if row.get("status") != "done":
        return None
    expected = int(row.get("epochs") or 0)
    found = main_epoch_lines(run_dir / METRICS)
    if found < expected:
        return f"{run_dir / METRICS} has {found} of {expected} main-phase epoch lines (the file was cut short)"
    return None


class StoreError(ValueError):
    """The results folder cannot be used; the message says which folder and why."""


class Store:
    """The results folder of a grid (``--out``)."""

    def __init__(self, out: str | os.PathLike):
        self.root = Path(out).expanduser()

    def run_dir(self, dataset: str, teacher: str | None, student: str, method: str, seed: int, key: str) -> Path:
        pair = f"{safe_name(teacher) if teacher else 'none'}__{safe_name(student)}"
        return self.root / "runs" / safe_name(dataset) / pair / safe_name(method) / f"s{seed}-{key}"

    def check_writable(self) -> None:
        """Create the results folder and a probe file in it, or raise :class:`StoreError`
        (``--out`` is a file, lies under a file, or is not writable)."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreError(f"--out {self.root} is a file, not a folder: choose a folder for the results")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".kdbench-probe.", dir=self.root)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise StoreError(f"--out {self.root} cannot be written ({reason}"
                             f"{f': {exc.filename}' if exc.filename else ''}); choose a writable folder") from None

    @staticmethod
    def result(run_dir: Path) -> dict[str, Any] | None:
        """The run's valid result row, or ``None`` (no result, or an invalid one: redone)."""
        row, problem = read_result(run_dir / RESULT)
        if problem:
            log.warning("%s %s: the run will be redone", run_dir / RESULT, problem)
        return row

    @staticmethod
    def write_result(run_dir: Path, row: dict[str, Any]) -> None:
        atomic_write_json(run_dir / RESULT, row)

    def _result_paths(self) -> list[Path]:
        runs = self.root / "runs"
        return sorted(runs.glob(f"*/*/*/*/{RESULT}")) if runs.is_dir() else []

    def iter_results(self) -> Iterator[dict[str, Any]]:
        """Every valid result row under this store (done, failed and skipped); invalid
        ones are reported by :meth:`problems`."""
        for path in self._result_paths():
            row, _ = read_result(path)
            if row is not None:
                row.setdefault("run_dir", str(path.parent))
                yield row

    def problems(self) -> list[str]:
        """One line per suspicious file, naming it: invalid ``result.json`` files (their
        runs will be redone) and done runs whose ``metrics.jsonl`` was cut short."""
        lines = []
        for path in self._result_paths():
            row, problem = read_result(path)
            if problem:
                lines.append(f"{path} {problem}: not reported; the run will be redone")
            elif row is not None:
                lines.extend(filter(None, [metrics_problem(path.parent, row)]))
        return lines

    def datasets(self) -> list[str]:
        """The dataset folders under ``runs/`` (path names, for messages)."""
        runs = self.root / "runs"
        return sorted(p.name for p in runs.iterdir() if p.is_dir()) if runs.is_dir() else []

    @staticmethod
    def state(run_dir: Path) -> str:
        """``done``/``failed``/``skipped`` (from a valid result.json), ``invalid`` (a
        result.json lacking what its status requires: the run will be redone), ``running``
        (live lock), ``interrupted`` (a checkpoint but no live lock) or ``pending``."""
        row, problem = read_result(run_dir / RESULT)
        if row is not None:
            return str(row["status"])
        if (run_dir / LOCK).exists() and not RunLock(run_dir)._is_stale():
            return "running"
        if problem:
            return "invalid"
        if (run_dir / CKPT).exists():
            return "interrupted"
        return "pending"
