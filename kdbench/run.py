"""One run, end to end: resolve its key, build models and method, check the pair, make sure
the teacher exists (training it once, as its own vanilla run, if needed), train, and write
the result row. Idempotent: a run whose ``result.json`` exists is returned as it is, and
a lock file keeps two processes from working on the same run.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import os
import platform
import socket
import subprocess
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

import kdbench
from kdbench.data import EvalData, ImageData, TrainData, data_root
from kdbench.datasets import get_dataset
from kdbench.method import Method, MethodContext, config_dict, resolve_config
from kdbench.models import create_model, is_lightweight
from kdbench.registry import METHODS, import_user_modules
from kdbench.spec import ResolvedSpec, RunSpec, file_sha256
from kdbench.store import CKPT, MODEL, SPEC, LockHeld, RunLock, Store, atomic_torch_save, atomic_write_json
from kdbench.taps import measure
from kdbench.teachers.cache import TeacherUnavailable
from kdbench.train import Env, NonFiniteLoss, Trainer, derived_seed, seed_everything

log = logging.getLogger(__name__)


class Skipped(Exception):
    """The method declined the pair (``Method.check``); the message is the reason."""


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def resolve(spec: RunSpec) -> ResolvedSpec:
    """Fill in everything that determines ``spec``'s result (see :mod:`kdbench.spec`)."""
    cls = method_class(spec.method)
    cfg = resolve_config(cls, spec.overrides_dict())
    teacher_key = None
    if cls.needs.teacher:
        if not spec.teacher:
            raise ValueError(f"method {spec.method!r} needs a teacher, but the run has none")
        if spec.teacher_ckpt:
            teacher_key = "file-" + file_sha256(str(Path(spec.teacher_ckpt).expanduser().resolve()))[:16]
        else:
            teacher_key = resolve(spec.teacher_spec()).key
    elif spec.teacher:
        raise ValueError(f"method {spec.method!r} uses no teacher; give it teacher=None")
    return ResolvedSpec(spec=spec, method_version=cls.version, method_config=config_dict(cfg),
                        student_lr=spec.recipe.lr_for(is_lightweight(spec.student)), teacher_key=teacher_key)


def run_dir_of(store: Store, resolved: ResolvedSpec) -> Path:
    s = resolved.spec
    return store.run_dir(s.dataset, s.teacher, s.student, s.method, s.seed, resolved.key)


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """The commit of the kdbench source tree, if it is a git checkout."""
    here = Path(kdbench.__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def identity_row(resolved: ResolvedSpec, env: Env) -> dict[str, Any]:
    s = resolved.spec
    return {
        "run_key": resolved.key, "dataset": s.dataset, "teacher": s.teacher, "student": s.student,
        "pair": f"{s.teacher}->{s.student}" if s.teacher else s.student, "method": s.method,
        "method_version": resolved.method_version, "method_config": resolved.method_config, "seed": s.seed,
        "teacher_seed": s.teacher_seed if s.teacher else None, "teacher_key": resolved.teacher_key,
        "teacher_ckpt": s.teacher_ckpt, "recipe": dataclasses.asdict(s.recipe), "student_lr": resolved.student_lr,
        "imports": list(s.imports), "device": env.device, "host": socket.gethostname(),
        "versions": {"kdbench": kdbench.__version__, "torch": torch.__version__, "python": platform.python_version(),
                     "git_sha": git_sha()},
    }


@dataclass
class Session:
    """Shared state of one process executing runs: the store, the environment, and caches
    of loaded datasets and frozen teachers (reused by every run of the grid)."""

    store: Store
    env: Env = field(default_factory=Env)
    imports: tuple[str, ...] = ()
    _datasets: dict[str, ImageData] = field(default_factory=dict)
    _teachers: Any = None

    def __post_init__(self) -> None:
        from kdbench.teachers.cache import TeacherCache

        import_user_modules(list(self.imports))
        self._teachers = TeacherCache(self)

    def dataset(self, name: str) -> ImageData:
        if name not in self._datasets:
            t0 = time.perf_counter()
            self._datasets[name] = get_dataset(name).load(data_root(self.env.data_root), download=self.env.download)
            log.info("loaded dataset %s (%d train / %d test, %s) in %.1f s", name, len(self._datasets[name].train_labels),
                     len(self._datasets[name].test_labels), "×".join(map(str, self._datasets[name].input_size)),
                     time.perf_counter() - t0)
        return self._datasets[name]

    def teacher(self, spec: RunSpec, resolved: ResolvedSpec) -> tuple[nn.Module, dict[str, Any]]:
        """The frozen teacher of ``spec`` on the device, and its result row (see
        :class:`kdbench.teachers.cache.TeacherCache`)."""
        return self._teachers.get(spec, resolved)


# -- executing one run --------------------------------------------------------------------

def execute(spec: RunSpec, session: Session, retry_failed: bool = False) -> dict[str, Any]:
    """Run ``spec`` unless its result exists; return its result row (never raises for a
    failure of the run itself: that becomes a ``failed`` row)."""
    resolved = resolve(spec)
    run_dir = run_dir_of(session.store, resolved)
    existing = Store.result(run_dir)
    if existing is not None and not (retry_failed and existing.get("status") == "failed"):
        return {**existing, "run_dir": str(run_dir)}
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except LockHeld as exc:
        log.warning("%s", exc)
        return {**identity_row(resolved, session.env), "status": "running", "error": str(exc), "run_dir": str(run_dir)}
    try:
        existing = Store.result(run_dir)
        if existing is not None and not (retry_failed and existing.get("status") == "failed"):
            return {**existing, "run_dir": str(run_dir)}
        atomic_write_json(run_dir / SPEC, {"key": resolved.key, "spec": spec.to_json(), "identity": resolved.identity()})
        row = identity_row(resolved, session.env)
        try:
            row.update(_train(spec, resolved, run_dir, session, lock))
            row["status"] = "done"
        except Skipped as exc:
            row.update(status="skipped", reason=str(exc))
            log.info("skipped %s on %s: %s", spec.method, spec.pair, exc)
        except (NonFiniteLoss, TeacherUnavailable) as exc:
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}")
            log.error("failed %s on %s seed %d: %s", spec.method, spec.pair, spec.seed, exc)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the grid goes on; the row keeps the evidence
            row.update(status="failed", error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc(limit=20))
            log.exception("failed %s on %s seed %d", spec.method, spec.pair, spec.seed)
        row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        Store.write_result(run_dir, row)
        if row["status"] == "done":
            (run_dir / CKPT).unlink(missing_ok=True)
        return {**row, "run_dir": str(run_dir)}
    finally:
        lock.release()


def _train(spec: RunSpec, resolved: ResolvedSpec, run_dir: Path, session: Session, lock: RunLock) -> dict[str, Any]:
    env = session.env
    device = env.torch_device
    cls = method_class(spec.method)
    cfg = resolve_config(cls, spec.overrides_dict())
    data = session.dataset(spec.dataset).for_recipe(spec.recipe)  # augmentation + normalisation of the recipe
    c, h, w = data.input_size
    plain_train = TrainData(data, spec.recipe.batch_size, device, spec.seed, env.memory_format)
    ctx = MethodContext(num_classes=data.num_classes, num_train_samples=len(plain_train), device=device,
                        epochs=spec.recipe.epochs, steps_per_epoch=plain_train.steps_per_epoch(),
                        teacher_arch=spec.teacher, student_arch=spec.student, dataset=spec.dataset,
                        input_size=data.input_size, train_labels=data.train_labels)

    seed_everything(spec.seed)
    student = cls.make_student(cfg, ctx) or create_model(spec.student, data.num_classes, c, h)
    s_info = measure(student, data.input_size)
    t_info = None
    if cls.needs.teacher:
        t_info = measure(create_model(spec.teacher, data.num_classes, c, h), data.input_size)
    reason = cls.check(cfg, t_info, s_info)
    if reason:
        raise Skipped(reason)

    teacher, teacher_row = (session.teacher(spec, resolved) if cls.needs.teacher else (None, None))
    student.to(device, memory_format=env.memory_format)
    seed_everything(derived_seed(spec.seed, 1))  # independent of whether the teacher was just trained
    method = cls(cfg, t_info, s_info, ctx).to(device)
    train_data = method.wrap_train_dataset(plain_train)
    eval_data = EvalData(data.test_images, data.test_labels, data.mean, data.std, device, env.eval_batch_size,
                         env.memory_format)
    desc = f"{spec.method} {spec.pair} s{spec.seed}"
    trainer = Trainer(student=student, teacher=teacher, method=method, train_data=train_data, eval_data=eval_data,
                      recipe=spec.recipe, lr=resolved.student_lr, seed=spec.seed, env=env, run_dir=run_dir,
                      lock=lock, desc=desc)
    result = trainer.fit()
    main = result.main_epochs()
    last = main[-1]
    best = max(main, key=lambda r: (r["test_top1"], -r["epoch"]))
    atomic_torch_save(run_dir / MODEL, {"arch": getattr(student, "arch_name", spec.student),
                                        "state_dict": student.state_dict(), "num_classes": data.num_classes,
                                        "input_size": list(data.input_size)})
    log.info("done %s: top1 %.2f (best %.2f @%d) in %.1f s", desc, last["test_top1"], best["test_top1"],
             best["epoch"], result.wall_time)
    return {
        "student_arch": getattr(student, "arch_name", type(student).__name__),
        "top1_last": last["test_top1"], "top5_last": last["test_top5"],
        "top1_best": best["test_top1"], "top5_best": best["test_top5"], "best_epoch": best["epoch"],
        "epochs": len(main), "teacher_top1": teacher_row.get("top1_last") if teacher_row else None,
        "wall_time_s": round(result.wall_time, 3), "train_time_s": round(result.train_time, 3),
        "time_per_epoch_s": round(result.wall_time / max(1, len(result.history)), 4),
        "student_params": sum(p.numel() for p in student.parameters()),
        "extra_params": sum(p.numel() for p in method.parameters()),
        "uses_teacher_at_inference": method.uses_teacher_at_inference,
        "method_info": method.run_info(),
        "resumed_from": list(result.resumed_from) if result.resumed_from else None,
        "num_train": len(plain_train), "num_test": len(eval_data),
        "pid": os.getpid(),
    }
