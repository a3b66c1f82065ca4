"""The training engine: one loop for every method and every stage (DESIGN §7).

The teacher is frozen once (``eval()``, no gradients); the student and the method's
trainable modules are optimised with SGD under the recipe. Extra stages declared by the
method (:meth:`kdbench.method.Method.stages`) run first, each with its own epochs, lr,
trainable set and loss, then the main stage (CE + the method's terms, multi-step lr
decay, evaluated every epoch).

Reproducibility and resume: the global RNGs are re-seeded and a fresh CPU generator drives
shuffling and augmentation at the start of every epoch from ``(seed, stage, epoch)``
alone, and an atomic checkpoint (models, method, optimizer, history, wall time, RNG
states) is written after every epoch. A run killed at any point resumes from the last
completed epoch and, on CPU, ends with exactly the numbers of an uninterrupted run.

A non-finite loss stops the run with :class:`NonFiniteLoss` (recorded as a failed row by
the caller; the grid goes on).
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from kdbench.data import EvalData, TrainData, epoch_generator
from kdbench.method import Method, Needs, Stage, StepInfo
from kdbench.models import classifier_parameters
from kdbench.spec import Recipe
from kdbench.taps import Outputs
from kdbench.store import CKPT, METRICS, RunLock, atomic_torch_save, atomic_write_text

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite."""


@dataclass
class Env:
    """How runs execute here; nothing in it changes a run's key.

    ``progress=None`` shows progress bars only on a terminal. ``channels_last`` and
    ``device`` are accepted everywhere (channels_last is a no-op for the math).
    """

    device: str = "cpu"
    channels_last: bool = False
    data_root: str | None = None
    download: bool = False
    progress: bool | None = None
    eval_batch_size: int = 512
    check_every: int = 10

    @property
    def torch_device(self) -> torch.device:
        dev = torch.device(self.device)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available here (use --device cpu)")
        return dev

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derived_seed(seed: int, *parts: int) -> int:
    value = seed
    for p in parts:
        value = (value * 1_000_003 + p + 7919) % (2**31 - 1)
    return value


def random_stream(stage: Stage, index: int) -> int:
    """The random stream an epoch of ``stage`` (at ``index`` in the plan) draws from.

    Every method's main stage uses stream 0, so at one seed the main stage of a method with
    a pre-stage (AB, FT, FitNets with hints) sees the same orders, crops, flips and CRD
    negatives as KD's; pre-stages use ``index + 1``.
    """
    return 0 if stage.name == "main" else index + 1


def topk_correct(logits: Tensor, y: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of rows whose label is among the top-k logits, for each k (as tensors)."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hit = top.eq(y.view(-1, 1))
    return [hit[:, : min(k, kmax)].any(dim=1).sum() for k in ks]


@dataclass
class Progress:
    """Per-run progress bar (tqdm) or nothing."""

    total: int
    initial: int
    desc: str
    enabled: bool
    bar: Any = None

    def __post_init__(self) -> None:
        if self.enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, initial=self.initial, desc=self.desc, leave=False,
                            dynamic_ncols=True, mininterval=0.5, file=sys.stderr)

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, **info: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix(info, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class TrainResult:
    history: list[dict[str, Any]]
    wall_time: float
    train_time: float
    resumed_from: tuple[int, int] | None = None

    def main_epochs(self) -> list[dict[str, Any]]:
        return [h for h in self.history if h["stage"] == "main"]


def stage_plan(method: Method, epochs: int) -> list[Stage]:
    """The method's extra stages followed by the main stage (CE + ``method.loss``)."""
    main = Stage(name="main", epochs=epochs, loss=method.loss, modules=tuple(method.main_modules()), student="all",
                 lr=None, ce_weight=float(method.cfg.ce_weight), needs_teacher=method.uses_teacher_in_main())
    extra = method.stages()
    names = [stage.name for stage in extra]
    if "main" in names or len(set(names)) != len(names):
        raise ValueError(f"method {method.name!r}: extra stages need unique names other than 'main', got {names}")
    return [*extra, main]


def configure_stage(student: nn.Module, method: Method, stage: Stage) -> list[nn.Parameter]:
    """Set ``requires_grad`` on student and method for ``stage``; return the trainable
    parameters (student first, then the method's, each once)."""
    head = classifier_parameters(student)
    for p in student.parameters():
        p.requires_grad_(stage.student == "all" or (stage.student == "features" and id(p) not in head))
    method.requires_grad_(False)
    for m in stage.modules:
        m.requires_grad_(True)
    params = [p for p in student.parameters() if p.requires_grad]
    seen = {id(p) for p in params}
    params += [p for p in method.parameters() if p.requires_grad and id(p) not in seen]
    if not params:
        raise ValueError(f"{method.name}: stage {stage.name!r} has no trainable parameters")
    return params


def keep_needed(out: Outputs, needs: Needs) -> Outputs:
    """``out`` without the spatial maps a non-spatial method never reads."""
    if needs.spatial:
        return out
    return Outputs(logits=out.logits, embedding=out.embedding, extras=out.extras)


def set_stage_modes(student: nn.Module, method: Method, teacher: nn.Module | None, stage: Stage) -> None:
    """Train mode for what ``stage`` trains, eval mode for everything else (frozen method
    modules keep their BatchNorm statistics; the teacher is always in eval mode)."""
    student.train(stage.student != "none")
    method.eval()
    for m in stage.modules:
        m.train()
    if teacher is not None:
        teacher.eval()


def stage_losses(student: nn.Module | None, teacher: nn.Module | None, stage: Stage, batch, info: StepInfo,
                 needs: Needs) -> tuple[Any, dict[str, Tensor]]:
    """One step's forward passes and named loss terms (CE first when the stage uses it).

    The teacher runs first, under ``no_grad``, and keeps only the taps the method ``needs``
    (logits and embedding always; stage maps, stem and pre-activations only for spatial
    methods), so its large activations are freed before the student's forward reuses the
    memory. ``student=None`` skips the student (stages that train only method modules)."""
    t = None
    if teacher is not None:
        with torch.no_grad():
            t = keep_needed(teacher.forward_taps(batch.x, preact=needs.preact), needs)
    s = student.forward_taps(batch.x, preact=needs.preact) if student is not None else None
    terms = stage.loss(s, t, batch, info)
    if stage.ce_weight and s is not None:
        terms = {"loss_ce": stage.ce_weight * F.cross_entropy(s.logits.float(), batch.y), **terms}
    if not terms:
        raise ValueError(f"stage {stage.name!r} returned no loss terms")
    return s, terms


@dataclass
class Trainer:
    """Trains ``student`` (+ ``method``) from ``teacher`` under ``recipe``; see module doc."""

    student: nn.Module
    teacher: nn.Module | None
    method: Method
    train_data: TrainData
    eval_data: EvalData
    recipe: Recipe
    lr: float
    seed: int
    env: Env
    run_dir: Path
    lock: RunLock | None = None
    desc: str = ""
    stage_list: list[Stage] = field(init=False)

    def __post_init__(self) -> None:
        self.stage_list = stage_plan(self.method, self.recipe.epochs)
        names = [s.name for s in self.stage_list]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.method.name}: stage names must be unique, got {names}")
        self.device = self.env.torch_device
        self.autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.recipe.amp)
        if self.teacher is not None:
            self.teacher.eval()
            self.teacher.requires_grad_(False)

    # -- public -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        state = self._load_checkpoint()
        history: list[dict[str, Any]] = state["history"] if state else []
        wall, train_time = (state["wall_time"], state["train_time"]) if state else (0.0, 0.0)
        start_stage, start_epoch = (state["stage_idx"], state["epoch"] + 1) if state else (0, 1)
        if state and start_epoch > self.stage_list[start_stage].epochs:
            start_stage, start_epoch = start_stage + 1, 1
        resumed_from = (state["stage_idx"], state["epoch"]) if state else None
        steps = self.train_data.steps_per_epoch()
        total = sum(s.epochs for s in self.stage_list) * steps
        done = sum(s.epochs for s in self.stage_list[:start_stage]) * steps + (start_epoch - 1) * steps
        progress = Progress(total, done, self.desc, self._progress_enabled())
        try:
            for si in range(start_stage, len(self.stage_list)):
                stage = self.stage_list[si]
                if stage.epochs == 0:
                    continue
                optimizer = self.begin_stage(stage)
                first = start_epoch if si == start_stage else 1
                if state and si == state["stage_idx"] and first > 1:
                    optimizer.load_state_dict(state["optimizer"])
                for epoch in range(first, stage.epochs + 1):
                    t0 = time.perf_counter()
                    record = self.train_epoch(si, stage, epoch, optimizer, progress)
                    train_time += time.perf_counter() - t0
                    if stage.name == "main":
                        record.update(self.evaluate())
                    wall += time.perf_counter() - t0
                    record["wall_time"] = round(wall, 3)
                    history.append(record)
                    self._save_checkpoint(si, epoch, optimizer, history, wall, train_time)
                    progress.note(**{k: record[k] for k in ("test_top1",) if k in record})
                    log.debug("%s %s", self.desc, record)
        finally:
            progress.close()
        return TrainResult(history=history, wall_time=wall, train_time=train_time, resumed_from=resumed_from)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Top-1/top-5 (%) on the test split through ``method.predict``."""
        self.student.eval()
        self.method.eval()
        correct1 = correct5 = torch.zeros((), device=self.device, dtype=torch.long)
        for batch in self.eval_data:
            with self.autocast:
                logits = self.method.predict(self.student, self.teacher, batch)
            c1, c5 = topk_correct(logits.float(), batch.y)
            correct1, correct5 = correct1 + c1, correct5 + c5
        n = len(self.eval_data)
        return {"test_top1": 100.0 * correct1.item() / n, "test_top5": 100.0 * correct5.item() / n}

    # -- stages -------------------------------------------------------------------------
    def begin_stage(self, stage: Stage) -> torch.optim.Optimizer:
        """Set requires_grad for ``stage`` and build its optimizer."""
        params = configure_stage(self.student, self.method, stage)
        lr = self.lr if stage.lr is None else stage.lr
        return torch.optim.SGD(params, lr=lr, momentum=self.recipe.momentum, weight_decay=self.recipe.weight_decay)

    def _lr_at(self, stage: Stage, epoch: int) -> float:
        if stage.name != "main":
            return self.lr if stage.lr is None else stage.lr
        decays = sum(epoch > m for m in self.recipe.milestone_epochs())
        return self.lr * (self.recipe.lr_decay ** decays)

    def train_epoch(self, si: int, stage: Stage, epoch: int, optimizer: torch.optim.Optimizer,
                     progress: Progress) -> dict[str, Any]:
        stream = random_stream(stage, si)
        seed_everything(derived_seed(self.seed, stream, epoch))
        gen = epoch_generator(self.seed, stream, epoch)
        lr = self._lr_at(stage, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        set_stage_modes(self.student, self.method, self.teacher, stage)
        run_student = stage.student != "none"
        use_teacher = self.teacher is not None and stage.needs_teacher
        steps = self.train_data.steps_per_epoch()
        sums: dict[str, Tensor] = {}
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        rows = 0
        for i, batch in enumerate(self.train_data.epoch(gen)):
            info = StepInfo(stage=stage.name, epoch=epoch, epochs=stage.epochs, step=(epoch - 1) * steps + i,
                            steps_per_epoch=steps)
            terms, hits = self.train_step(optimizer, stage, batch, info, run_student, use_teacher)
            for k, v in terms.items():
                sums[k] = sums[k] + v if k in sums else v
            if hits is not None:
                correct += hits
                rows += len(batch)
            if (i + 1) % self.env.check_every == 0:
                self._check_finite(sums, stage, epoch, i)
            progress.update()
        self._check_finite(sums, stage, epoch, steps - 1)
        if self.lock is not None:
            self.lock.touch()
        record: dict[str, Any] = {"stage": stage.name, "epoch": epoch, "lr": lr}
        record.update({k: v.item() / steps for k, v in sums.items()})
        record["loss"] = sum(record[k] for k in sums)
        if rows:
            record["train_top1"] = 100.0 * correct.item() / rows
        return record

    def train_step(self, optimizer: torch.optim.Optimizer, stage: Stage, batch, info: StepInfo, run_student: bool,
              use_teacher: bool) -> tuple[dict[str, Tensor], Tensor | None]:
        """One optimisation step; returns the detached loss terms and the number of correct
        student predictions. A function of its own so that the step's outputs are released
        on return: activations kept alive into the next step force fresh allocations (page
        faults) and cost ~5 % of a CPU step (measured with benchmarks/kd_step.py)."""
        with self.autocast:
            s, terms = stage_losses(self.student if run_student else None, self.teacher if use_teacher else None,
                                    stage, batch, info, self.method.needs)
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        hits = s.logits.detach().argmax(1).eq(batch.y).sum() if s is not None else None
        return {k: v.detach().float() for k, v in terms.items()}, hits

    def _check_finite(self, sums: dict[str, Tensor], stage: Stage, epoch: int, step: int) -> None:
        for k, v in sums.items():
            if not math.isfinite(v.item()):
                raise NonFiniteLoss(f"{k} became non-finite in stage {stage.name!r}, epoch {epoch}, "
                                    f"by step {step + 1} (lr {self._lr_at(stage, epoch):g})")

    def _progress_enabled(self) -> bool:
        if self.env.progress is not None:
            return self.env.progress
        return sys.stderr.isatty()

    # -- checkpoints --------------------------------------------------------------------
    def _save_checkpoint(self, si: int, epoch: int, optimizer: torch.optim.Optimizer,
                         history: list[dict[str, Any]], wall: float, train_time: float) -> None:
        state = {
            "stage_idx": si, "stage": self.stage_list[si].name, "epoch": epoch,
            "student": self.student.state_dict(), "method": self.method.state_dict(),
            "optimizer": optimizer.state_dict(), "history": history, "wall_time": wall,
            "train_time": train_time,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        }
        atomic_torch_save(self.run_dir / CKPT, state)
        atomic_write_text(self.run_dir / METRICS, "".join(_json_line(h) for h in history))

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self.run_dir / CKPT
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
        except Exception as exc:  # atomic writes make this rare: a truncated copy, a full disk
            log.warning("ignoring unreadable checkpoint %s (%s); starting over", path, exc)
            return None
        try:
            self.student.load_state_dict(state["student"])
            self.method.load_state_dict(state["method"])
        except RuntimeError as exc:
            raise RuntimeError(
                f"checkpoint {path} does not fit the current code ({exc}). The run key did not change, so "
                f"the student or method changed without a version bump: bump the method's `version` "
                f"or delete {self.run_dir}") from exc
        if state["stage_idx"] >= len(self.stage_list) or self.stage_list[state["stage_idx"]].name != state["stage"]:
            raise RuntimeError(f"checkpoint {path} is from another stage plan ({state['stage']!r} at index "
                               f"{state['stage_idx']}); bump the method's `version` or delete {self.run_dir}")
        log.info("resuming %s from stage %r epoch %d", self.desc, state["stage"], state["epoch"])
        with contextlib.suppress(Exception):
            torch.set_rng_state(state["rng"]["torch"].cpu())
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
        return state


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"
