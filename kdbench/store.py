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
two jobs ever write the same file.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import socket
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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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
    """Another live process is working on this run."""


class RunLock:
    """An exclusive lock file (``O_CREAT|O_EXCL``) holding host, pid and start time.

    A lock left by a dead process is taken over: on the same host when its pid no longer
    exists, on any host when it has not been refreshed (:meth:`touch`, once per epoch) for
    ``stale_after`` seconds.
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
        if owner and owner.get("host") == socket.gethostname():
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
        return age > self.stale_after

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}).encode()
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._is_stale():
                    log.warning("taking over stale lock %s (owner %s)", self.path, self._owner())
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(self.path)
                    continue
                raise LockHeld(f"{self.path.parent} is being worked on by {self._owner()}")
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


class Store:
    """The results folder of a grid (``--out``)."""

    def __init__(self, out: str | os.PathLike):
        self.root = Path(out).expanduser()

    def run_dir(self, dataset: str, teacher: str | None, student: str, method: str, seed: int, key: str) -> Path:
        pair = f"{safe_name(teacher) if teacher else 'none'}__{safe_name(student)}"
        return self.root / "runs" / safe_name(dataset) / pair / safe_name(method) / f"s{seed}-{key}"

    @staticmethod
    def result(run_dir: Path) -> dict[str, Any] | None:
        return read_json(run_dir / RESULT)

    @staticmethod
    def write_result(run_dir: Path, row: dict[str, Any]) -> None:
        atomic_write_json(run_dir / RESULT, row)

    def iter_results(self) -> Iterator[dict[str, Any]]:
        """Every result row under this store (done, failed and skipped)."""
        runs = self.root / "runs"
        if not runs.is_dir():
            return
        for path in sorted(runs.glob(f"*/*/*/*/{RESULT}")):
            row = read_json(path)
            if row is not None:
                row.setdefault("run_dir", str(path.parent))
                yield row

    @staticmethod
    def state(run_dir: Path) -> str:
        """``done``/``failed``/``skipped`` (from result.json), ``running`` (live lock),
        ``interrupted`` (a checkpoint but no live lock) or ``pending``."""
        row = read_json(run_dir / RESULT)
        if row is not None:
            return str(row.get("status", "done"))
        if (run_dir / LOCK).exists() and not RunLock(run_dir)._is_stale():
            return "running"
        if (run_dir / CKPT).exists():
            return "interrupted"
        return "pending"
