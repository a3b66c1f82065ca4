"""One run, end to end: resolve its key, build it (:func:`kdbench.build.build_run`: models,
method, pair check, the teacher — trained once, as its own vanilla run, if needed), train
it (:class:`kdbench.train.Trainer`), and write the result row.

Idempotent: a run whose ``result.json`` says done or skipped is returned as it is; a failed
run is tried again (unless ``keep_failed``); a lock file keeps two processes from working
on the same run. Runners (``kdbench.runners``) decide where and when :func:`execute` runs.
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
from kdbench import memory, preemption
from kdbench.build import Skipped, build_run
from kdbench.config import config_dict, resolve_config
from kdbench.data import EvalData, ImageData, TrainData, data_root
from kdbench.datasets import get_dataset
from kdbench.method import Method
from kdbench.models import is_lightweight, model_version
from kdbench.registry import METHODS, import_user_modules
from kdbench.spec import ResolvedSpec, RunSpec, file_sha256
from kdbench.store import CKPT, MODEL, SPEC, LockHeld, RunLock, Store, atomic_torch_save, atomic_write_json
from kdbench.teachers.cache import TeacherCache, TeacherUnavailable
from kdbench.train import Env, NonFiniteLoss, Trainer, TrainResult

log = logging.getLogger(__name__)

__all__ = ["Session", "Skipped", "execute", "execute_column", "resolve", "run_dir_of"]


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


def resolve(spec: RunSpec) -> ResolvedSpec:
    """Fill in everything that determines ``spec``'s result (see :mod:`kdbench.spec`)."""
    cls = method_class(spec.method)
    cfg = resolve_config(cls, spec.overrides_dict())
    teacher_key = None
    if cls.needs(cfg).teacher:
        if not spec.teacher:
            raise ValueError(f"method {spec.method!r} needs a teacher, but the run has none")
        if spec.teacher_ckpt:
            teacher_key = "file-" + file_sha256(str(Path(spec.teacher_ckpt).expanduser().resolve()))[:16]
        else:
            teacher_key = resolve(spec.teacher_spec()).key
    elif spec.teacher:
        raise ValueError(f"method {spec.method!r} uses no teacher; give it teacher=None")
    own_student = cls.student_name(cfg)
    if own_student is not None and own_student != spec.student:
        raise ValueError(f"method {spec.method!r} trains its own student {own_student!r}; the run names "
                         f"{spec.student!r} (build runs with kdbench.grid)")
    versions = {"student": None if own_student else model_version(spec.student),  # own: the method's version
                "teacher": model_version(spec.teacher) if spec.teacher else None}
    return ResolvedSpec(spec=spec, method_version=cls.version, method_config=config_dict(cfg),
                        student_lr=spec.recipe.lr_for(is_lightweight(spec.student)), teacher_key=teacher_key,
                        model_versions=versions)


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
        "own_student": method_class(s.method).student_name(resolve_config(method_class(s.method),
                                                                           s.overrides_dict())) is not None,
        "pair": f"{s.teacher}->{s.student}" if s.teacher else s.student, "method": s.method,
        "method_version": resolved.method_version, "method_config": resolved.method_config, "seed": s.seed,
        "teacher_seed": s.teacher_seed if s.teacher else None, "teacher_key": resolved.teacher_key,
        "teacher_ckpt": s.teacher_ckpt, "recipe": dataclasses.asdict(s.recipe), "student_lr": resolved.student_lr,
        "imports": list(s.imports), "device": env.device, "memory_format": "channels_last" if s.recipe.channels_last
        else "contiguous", "cpu_capability": cpu_capability(), "num_threads": torch.get_num_threads(),
        "host": socket.gethostname(),
        "versions": {"kdbench": kdbench.__version__, "torch": torch.__version__, "python": platform.python_version(),
                     "git_sha": git_sha()},
    }


def cpu_capability() -> str:
    """The CPU instruction set PyTorch's kernels dispatch to here (e.g. ``AVX2``,
    ``AVX512``): runs on CPUs of different capability differ in float rounding."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # very old or exotic builds
        return platform.machine()


@dataclass
class Session:
    """Shared state of one process executing runs: the store, the environment, and caches
    of loaded datasets and frozen teachers (reused by every run of the grid)."""

    store: Store
    env: Env = field(default_factory=Env)
    imports: tuple[str, ...] = ()
    row_extra: dict[str, Any] = field(default_factory=dict)  # added to every result row (e.g. the job's)
    #: A job of a runner that ran the teachers first: a failed teacher is final here
    #: (its students fail with its error instead of each training it again).
    teacher_failures_final: bool = False
    _datasets: dict[str, ImageData] = field(default_factory=dict)
    _teachers: Any = None
    _tried_teachers: set[RunSpec] = field(default_factory=set)

    def __post_init__(self) -> None:
        import_user_modules(list(self.imports))
        self._teachers = TeacherCache(self.env, self.dataset, self.train_teacher)

    def train_teacher(self, tspec: RunSpec, keep_failed: bool = False) -> dict[str, Any]:
        """Train (or read back) a teacher's run; a teacher that failed once in this session
        is not tried again for each of its students (its failed row is returned)."""
        final = keep_failed or self.teacher_failures_final or tspec in self._tried_teachers
        row = execute(tspec, self, keep_failed=final, label=run_label(tspec, teacher=True))
        self._tried_teachers.add(tspec)
        return row

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


# -- executing runs ------------------------------------------------------------------------

def execute(spec: RunSpec, session: Session, keep_failed: bool = False, label: str | None = None) -> dict[str, Any]:
    """Run ``spec`` unless it is finished; return its result row (never raises for a failure
    of the run itself: that becomes a ``failed`` row).

    Done and skipped runs are final and returned as they are. A failed run is tried again
    (the cause may have been fixed), unless ``keep_failed``. ``label`` names the run in log
    lines (default :func:`run_label`).
    """
    return execute_column([spec], session, keep_failed, [label or run_label(spec)])[0]


@dataclass
class _Member:
    """A run of :func:`execute_column` while it is being worked on."""

    spec: RunSpec
    resolved: ResolvedSpec
    run_dir: Path
    label: str
    lock: RunLock
    row: dict[str, Any]
    prepared: "_Prepared | None" = None


def execute_column(specs: list[RunSpec], session: Session, keep_failed: bool = False,
                   labels: list[str] | None = None) -> list[dict[str, Any]]:
    """Run every spec of ``specs`` that is not finished, all in one fused pass
    (:mod:`kdbench.column`) when there are several, and return their rows in order
    (see :func:`execute`; each run keeps its own folder, lock, checkpoint and row).

    The specs must share dataset, recipe and seed, and those with a teacher the same
    teacher (:func:`kdbench.column.column_groups` forms such groups). A member that is
    skipped or fails while being built leaves the column before training starts; one that
    fails while training leaves it then."""
    labels = labels or [run_label(spec) for spec in specs]
    rows: list[dict[str, Any] | None] = [None] * len(specs)
    members: list[tuple[int, _Member]] = []
    try:
        for i, (spec, label) in enumerate(zip(specs, labels)):
            resolved = resolve(spec)
            run_dir = run_dir_of(session.store, resolved)
            rows[i] = _final_row(run_dir, keep_failed)
            if rows[i] is not None:
                continue
            lock = RunLock(run_dir)
            try:
                lock.acquire()
            except LockHeld as exc:
                log.warning("%s", exc)
                rows[i] = {**identity_row(resolved, session.env), "status": "running", "error": str(exc),
                           "run_dir": str(run_dir), "lock_owner": exc.owner}
                continue
            member = _Member(spec, resolved, run_dir, label, lock, {})
            members.append((i, member))
            rows[i] = _final_row(run_dir, keep_failed)
            if rows[i] is not None:
                continue
            atomic_write_json(run_dir / SPEC, {"key": resolved.key, "spec": spec.to_json(),
                                               "identity": resolved.identity()})
            member.row = {**identity_row(resolved, session.env), **session.row_extra}
            base = next((m.prepared.base_train for _, m in members if m.prepared is not None), None)
            try:
                member.prepared = _prepare(member, session, base)
            except Exception as exc:
                rows[i] = _record(member, exc)
        training = [(i, m) for i, m in members if m.prepared is not None]
        if training:
            # the peak of this column's training (its members' models, optimizers and method
            # state, the data): not of earlier columns trained by this process
            memory.reset_peak(training[0][1].prepared.trainer.device)
            outcomes = _fit([m.prepared for _, m in training])
            for (i, member), result in zip(training, outcomes):
                if not isinstance(result, BaseException):
                    try:
                        rows[i] = _record(member, None, _measured(member.prepared, result))
                        continue
                    except Exception as exc:  # e.g. the model file cannot be written
                        result = exc
                rows[i] = _record(member, result)
    finally:
        for _, member in members:
            member.lock.release()
    return [row for row in rows if row is not None]


def _fit(prepared: list["_Prepared"]) -> list[Any]:
    """Train the prepared runs: alone (exceptions propagate to :func:`_record`), or fused."""
    if len(prepared) == 1:
        try:
            return [prepared[0].trainer.fit()]
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            return [exc]
    from kdbench.column import Column

    labels = ", ".join(p.trainer.desc for p in prepared)
    log.info("fused column of %d runs: %s", len(prepared), labels)
    return Column([p.trainer for p in prepared], desc=f"column of {len(prepared)}").fit()


def _record(member: _Member, error: BaseException | None, measured: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``member``'s result row: done with ``measured``, or skipped / failed by ``error``."""
    if error is not None and not isinstance(error, Skipped) and preemption.interrupts_run(error):
        # interrupted for a requeue (e.g. `scontrol requeue` itself got Slurm's SIGTERM): the
        # requeued job resumes this run from its checkpoint, so it is not a failed run
        raise error
    row = member.row
    if error is None:
        row.update(measured or {})
        row["status"] = "done"
    elif isinstance(error, Skipped):
        row.update(status="skipped", reason=str(error))
    elif isinstance(error, (NonFiniteLoss, TeacherUnavailable)):
        row.update(status="failed", error=f"{type(error).__name__}: {error}")
    else:  # the grid goes on; the row keeps the evidence
        row.update(status="failed", error=f"{type(error).__name__}: {error}",
                   traceback="".join(traceback.format_exception(error, limit=20)))
        log.debug("run %s failed", member.run_dir, exc_info=error)
    row["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    Store.write_result(member.run_dir, row)
    if row["status"] == "done":
        (member.run_dir / CKPT).unlink(missing_ok=True)
    return {**row, "run_dir": str(member.run_dir)}


def _final_row(run_dir: Path, keep_failed: bool) -> dict[str, Any] | None:
    """The stored row of a finished run (done, skipped; failed with ``keep_failed``)."""
    existing = Store.result(run_dir)
    if existing is None or (existing.get("status") == "failed" and not keep_failed):
        return None
    return {**existing, "run_dir": str(run_dir)}


def run_label(spec: RunSpec, teacher: bool = False) -> str:
    """How logs name a run, everywhere: ``kd resnet20->resnet8 s0``, ``vanilla resnet8 s0``;
    a teacher's training run (the vanilla run of its architecture) is ``teacher resnet20 s0``."""
    if teacher:
        return f"teacher {spec.student} s{spec.seed}"
    return f"{spec.method} {spec.pair} s{spec.seed}"


@dataclass
class _Prepared:
    """A run built and ready to train."""

    built: Any  # kdbench.build.BuiltRun
    trainer: Trainer
    eval_data: EvalData
    data: ImageData
    teacher_row: dict[str, Any] | None

    @property
    def base_train(self) -> TrainData:
        return self.built.base_train


def _prepare(member: _Member, session: Session, base_train: TrainData | None = None) -> _Prepared:
    """Build ``member``'s run (models, method, data; the teacher trained or loaded once per
    session). ``base_train``: the standard training data of a column, shared, not rebuilt."""
    spec, env = member.spec, session.env
    data = session.dataset(spec.dataset).for_recipe(spec.recipe)  # augmentation + normalisation of the recipe
    teacher_row: dict[str, Any] | None = None

    def load_teacher(_fresh: nn.Module) -> nn.Module:
        nonlocal teacher_row
        teacher, teacher_row = session.teacher(spec, member.resolved)
        return teacher

    built = build_run(spec, data, env.torch_device, load_teacher, base_train=base_train)
    eval_data = EvalData(data.test_images, data.test_labels, data.mean, data.std, env.torch_device,
                         built.method.eval_batch_size() or env.eval_batch_size, spec.recipe.memory_format)
    trainer = Trainer(student=built.student, teacher=built.teacher, method=built.method, train_data=built.train_data,
                      eval_data=eval_data, recipe=spec.recipe, lr=member.resolved.student_lr, seed=spec.seed, env=env,
                      run_dir=member.run_dir, lock=member.lock, desc=member.label)
    return _Prepared(built, trainer, eval_data, data, teacher_row)


def _measured(prepared: _Prepared, result: TrainResult) -> dict[str, Any]:
    """The measured part of a finished run's result row (and its ``model.pt``, written)."""
    built, data, eval_data, teacher_row = prepared.built, prepared.data, prepared.eval_data, prepared.teacher_row
    spec, run_dir = built.spec, prepared.trainer.run_dir
    main = result.main_epochs()
    last = main[-1]
    best = max(main, key=lambda r: (r["test_top1"], -r["epoch"]))
    student = built.student
    atomic_torch_save(run_dir / MODEL, {"arch": getattr(student, "arch_name", spec.student),
                                        "state_dict": student.state_dict(), "num_classes": data.num_classes,
                                        "input_size": list(data.input_size)})
    return {
        "student_arch": getattr(student, "arch_name", type(student).__name__),
        "top1_last": last["test_top1"], "top5_last": last["test_top5"],
        "top1_best": best["test_top1"], "top5_best": best["test_top5"], "best_epoch": best["epoch"],
        "epochs": len(main), "teacher_top1": teacher_row.get("top1_last") if teacher_row else None,
        "teacher_top5": teacher_row.get("top5_last") if teacher_row else None,
        "wall_time_s": round(result.wall_time, 3), "train_time_s": round(result.train_time, 3),
        "own_time_s": round(result.own_time, 3), "shared_time_s": round(result.shared_time, 3),
        "fused": result.fused, "column_size": result.column_size,
        "time_per_epoch_s": round(result.wall_time / max(1, len(result.history)), 4),
        "peak_memory_mb": memory.peak_mb(prepared.trainer.device),
        "student_params": sum(p.numel() for p in student.parameters()),
        "extra_params": sum(p.numel() for p in built.method.parameters()),
        "uses_teacher_at_inference": built.method.uses_teacher_at_inference,
        **built.method.inference_cost(student, built.teacher),
        "infer_ms_per_image": round(1000.0 * last["eval_time_s"] / max(1, len(eval_data)), 5),
        "method_info": built.method.run_info(),
        "resumed_from": list(result.resumed_from) if result.resumed_from else None,
        "num_train": len(built.train_data), "num_test": len(eval_data),
        "pid": os.getpid(),
    }
