"""The training engine's per-run part (DESIGN §7): a run's state, its training step,
evaluation, checkpoints and resume. The epoch loop that drives it is
:class:`kdbench.column.Column` — for one run (:meth:`Trainer.fit`, a column of one) or for
a fused column of runs that share their batches and teacher.

The teacher is frozen once (``eval()``, no gradients); the student and the method's
trainable modules are optimised with SGD under the recipe. Extra phases declared by the
method (:meth:`kdbench.method.Method.phases`) run first, each with its own epochs, lr,
trainable set and loss, then the main phase (CE + the method's terms, multi-step lr
decay, evaluated every epoch).

Reproducibility and resume: the global RNGs are re-seeded and a fresh CPU generator drives
shuffling and augmentation at the start of every epoch from ``(seed, stream, epoch)``
alone, and an atomic checkpoint (models, method, optimizer, history, wall time, RNG
states) is written after every epoch and read back weights-only. A run killed at any
point resumes from the last completed epoch and, on CPU, ends with exactly the numbers of
an uninterrupted run.

A non-finite loss stops the run with :class:`NonFiniteLoss`, naming the term that went
non-finite first (recorded as a failed row by the caller; the grid goes on). Where no
progress bar is drawn (logs of Slurm jobs, CI, ``nohup``), every epoch logs one line:
losses, accuracies, elapsed time and ETA.
"""
from __future__ import annotations

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

from kdbench.data import EvalData, TrainData
from kdbench.method import Method, Needs, Phase, StepInfo
from kdbench.models import classifier_parameters
from kdbench.spec import Recipe
from kdbench.taps import Outputs
from kdbench.store import CKPT, METRICS, RunLock, atomic_torch_save, atomic_write_text

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """A loss term became NaN or infinite."""


def _devices_here() -> str:
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return "cpu" + (f", cuda, cuda:0…cuda:{n_cuda - 1}" if n_cuda else "") + \
        (", mps" if torch.backends.mps.is_available() else "")


@dataclass
class Env:
    """How runs execute here; nothing in it changes a run's key.

    ``progress=None`` shows progress bars only on a terminal. (The memory format changes
    results and is part of the recipe: ``Recipe.channels_last``.)
    """

    device: str = "cpu"
    data_root: str | None = None
    download: bool = False
    progress: bool | None = None
    eval_batch_size: int = 512
    check_every: int = 10

    def check_device_name(self) -> tuple[str, str, str]:
        """``device`` split as (kind, colon, index); a malformed or unknown device name is a
        ValueError (whether it exists here is :attr:`torch_device`'s business)."""
        kind, colon, index = str(self.device).strip().lower().partition(":")
        if kind not in ("cpu", "cuda", "mps") or (colon and not (kind == "cuda" and index.isdigit())):
            raise ValueError(f"--device {self.device!r} is not a device: write cpu, cuda, cuda:N or mps "
                             f"(available here: {_devices_here()})")
        return kind, colon, index

    @property
    def torch_device(self) -> torch.device:
        """``device`` as a torch device; a malformed, unknown or unavailable device is a
        ValueError listing the devices valid on this machine."""
        kind, colon, index = self.check_device_name()
        n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (kind == "cuda" and (n_cuda == 0 or (colon and int(index) >= n_cuda))) or \
                (kind == "mps" and not torch.backends.mps.is_available()):
            raise ValueError(f"--device {self.device} is not available here (available: {_devices_here()})")
        return torch.device(f"{kind}{colon}{index}")


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


def random_stream(phase: Phase, index: int) -> int:
    """The random stream an epoch of ``phase`` (at ``index`` in the plan) draws from.

    Every method's main phase uses stream 0, so at one seed the main phase of a method with
    a pre-phase (AB, FT, FitNets with hints) sees the same orders, crops, flips and CRD
    negatives as KD's; pre-phases use ``index + 1``.
    """
    return 0 if phase.name == "main" else index + 1


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
    """What training a run produced. ``wall_time`` is the run's own compute plus its share
    of the work it shared with the other members of a fused column (:mod:`kdbench.column`);
    ``own_time`` and ``shared_time`` split it; ``train_time`` is the part spent training
    (no evaluation)."""

    history: list[dict[str, Any]]
    wall_time: float
    train_time: float
    resumed_from: tuple[int, int] | None = None
    own_time: float = 0.0
    shared_time: float = 0.0
    fused: bool = False
    column_size: int = 1

    def main_epochs(self) -> list[dict[str, Any]]:
        return [h for h in self.history if h["phase"] == "main"]


def phase_plan(method: Method, epochs: int) -> list[Phase]:
    """The method's extra phases followed by the main phase (CE + ``method.loss``)."""
    main = Phase(name="main", epochs=epochs, loss=method.loss, modules=tuple(method.main_modules()), student="all",
                 lr=None, ce_weight=float(method.cfg.ce_weight), needs_teacher=method.uses_teacher_in_main())
    extra = method.phases()
    names = [phase.name for phase in extra]
    if "main" in names or len(set(names)) != len(names):
        raise ValueError(f"method {method.name!r}: extra phases need unique names other than 'main', got {names}")
    return [*extra, main]


def configure_phase(student: nn.Module, method: Method, phase: Phase) -> list[nn.Parameter]:
    """Set ``requires_grad`` on student and method for ``phase``; return the trainable
    parameters (student first, then the method's, each once)."""
    head = classifier_parameters(student)
    for p in student.parameters():
        p.requires_grad_(phase.student == "all" or (phase.student == "features" and id(p) not in head))
    method.requires_grad_(False)
    for m in phase.modules:
        m.requires_grad_(True)
    params = [p for p in student.parameters() if p.requires_grad]
    seen = {id(p) for p in params}
    params += [p for p in method.parameters() if p.requires_grad and id(p) not in seen]
    if not params:
        raise ValueError(f"{method.name}: phase {phase.name!r} has no trainable parameters")
    return params


def keep_needed(out: Outputs, needs: Needs) -> Outputs:
    """``out`` without the spatial maps a non-spatial method never reads."""
    if needs.spatial:
        return out
    return Outputs(logits=out.logits, embedding=out.embedding, extras=out.extras)


def set_phase_modes(student: nn.Module, method: Method, teacher: nn.Module | None, phase: Phase) -> None:
    """Train mode for what ``phase`` trains, eval mode for everything else (frozen method
    modules keep their BatchNorm statistics; the teacher is always in eval mode)."""
    student.train(phase.student != "none")
    method.eval()
    for m in phase.modules:
        m.train()
    if teacher is not None:
        teacher.eval()


def teacher_outputs(out: Outputs, needs: Needs) -> Outputs:
    """The teacher's outputs as a method that ``needs`` these taps sees them: without the
    spatial maps a non-spatial method never reads, without pre-activations unless it asks
    for them (a fused column runs the teacher once with the union of its members' taps)."""
    out = keep_needed(out, needs)
    if out.preact is not None and not needs.preact:
        out = Outputs(logits=out.logits, embedding=out.embedding, stages=out.stages, stem=out.stem, extras=out.extras)
    return out


def phase_losses(student: nn.Module | None, teacher: nn.Module | None, phase: Phase, batch, info: StepInfo,
                 method: Method, teacher_out: Outputs | None = None,
                 standard_out: Outputs | None = None) -> tuple[Any, dict[str, Tensor]]:
    """One step's forward passes and named loss terms (CE first when the phase uses it).

    The teacher runs first, under ``no_grad``, and keeps only the taps the method needs
    (logits and embedding always; stage maps, stem and pre-activations only for spatial
    methods), so its large activations are freed before the student's forward reuses the
    memory (through ``method.teacher_forward``, which receives ``standard_out``, the
    teacher's outputs on the standard rows, when the method can reuse them);
    ``teacher_out`` given (a fused column's shared forward) replaces it. The student runs
    through ``method.student_forward`` (a plain ``forward_taps`` unless the
    method's student needs more, e.g. the GNN's batch graph). ``student=None`` skips the
    student (phases that train only method modules)."""
    needs = method.taps
    t = teacher_out
    if t is None and teacher is not None:
        with torch.no_grad():
            t = teacher_outputs(method.teacher_forward(teacher, batch, needs.preact, standard_out), needs)
    s = method.student_forward(student, batch, t, needs.preact) if student is not None else None
    terms = phase.loss(s, t, batch, info)
    if phase.ce_weight and s is not None:
        terms = {"loss_ce": phase.ce_weight * F.cross_entropy(s.logits.float(), batch.y), **terms}
    if not terms:
        raise ValueError(f"phase {phase.name!r} returned no loss terms")
    return s, terms


class FiniteWatch:
    """Tracks, without a device sync per step, the first step at which each loss term of an
    epoch became non-finite, so a failure names the term that broke first (a NaN in one
    term poisons the weights, and every term is NaN one step later)."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.first_bad: dict[str, Tensor] = {}

    def add(self, step: int, terms: dict[str, Tensor]) -> None:
        for k, v in terms.items():
            if k in self.sums:
                self.sums[k] = self.sums[k] + v
                first = self.first_bad[k]
                self.first_bad[k] = torch.where((first < 0) & ~torch.isfinite(v), step, first)
            else:
                self.sums[k] = v
                self.first_bad[k] = torch.where(torch.isfinite(v), -1, step)

    def culprit(self) -> tuple[str, int] | None:
        """``(term, step)`` of the earliest non-finite term, or ``None`` if all are finite."""
        bad = {k: int(v) for k, v in self.first_bad.items() if int(v) >= 0}
        if not bad:
            return None
        name = min(bad, key=lambda k: (bad[k], list(self.first_bad).index(k)))
        return name, bad[name]


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
    phase_list: list[Phase] = field(init=False)

    def __post_init__(self) -> None:
        self.phase_list = phase_plan(self.method, self.recipe.epochs)
        self.device = self.env.torch_device
        self.autocast = torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=self.recipe.amp)
        if self.teacher is not None:
            self.teacher.eval()
            self.teacher.requires_grad_(False)

    # -- public -------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        """Train this run alone (a column of one, :class:`kdbench.column.Column`): resumes
        from the last epoch checkpoint in ``run_dir`` if there is one."""
        from kdbench.column import Column

        result = Column([self]).fit()[0]
        assert isinstance(result, TrainResult)
        return result

    # -- state of the run (what a column drives) -----------------------------------------
    def load_state(self) -> None:
        """Read the checkpoint (if any) and set where training goes on."""
        state = self._load_checkpoint()
        self.history: list[dict[str, Any]] = state["history"] if state else []
        self.wall, self.train_time = (state["wall_time"], state["train_time"]) if state else (0.0, 0.0)
        self.own_time = state.get("own_time", self.wall) if state else 0.0
        self.shared_time = state.get("shared_time", 0.0) if state else 0.0
        self.resumed_from = (state["phase_idx"], state["epoch"]) if state else None
        self._saved_optimizer = (state["phase_idx"], state["optimizer"]) if state else None
        self.next_phase, self.next_epoch = (state["phase_idx"], state["epoch"] + 1) if state else (0, 1)
        self._optimizer: tuple[int, torch.optim.Optimizer] | None = None
        self._skip_finished_phases()

    def _skip_finished_phases(self) -> None:
        while self.next_phase < len(self.phase_list) and self.next_epoch > self.phase_list[self.next_phase].epochs:
            self.next_phase, self.next_epoch = self.next_phase + 1, 1

    def main_index(self) -> int:
        return len(self.phase_list) - 1

    def finished(self) -> bool:
        return self.next_phase >= len(self.phase_list)

    def total_epochs(self) -> int:
        return sum(p.epochs for p in self.phase_list)

    def done_epochs(self) -> int:
        if self.finished():
            return self.total_epochs()
        return sum(p.epochs for p in self.phase_list[:self.next_phase]) + self.next_epoch - 1

    def phase_optimizer(self, pi: int) -> torch.optim.Optimizer:
        """The optimizer of phase ``pi``: built when the phase begins (or resumes, with the
        checkpoint's state), then kept for its epochs."""
        if self._optimizer is None or self._optimizer[0] != pi:
            optimizer = self.begin_phase(self.phase_list[pi])
            if self._saved_optimizer is not None and self._saved_optimizer[0] == pi:
                optimizer.load_state_dict(self._saved_optimizer[1])
            self._saved_optimizer = None
            self._optimizer = (pi, optimizer)
        return self._optimizer[1]

    def set_epoch_lr(self, optimizer: torch.optim.Optimizer, phase: Phase, epoch: int) -> float:
        lr = self._lr_at(phase, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def set_modes(self, phase: Phase) -> None:
        set_phase_modes(self.student, self.method, self.teacher, phase)

    def add_epoch(self, record: dict[str, Any], pi: int, optimizer: torch.optim.Optimizer, own: float,
                  own_train: float, shared: float) -> None:
        """Account a finished epoch (``own`` seconds of this run's own work, ``own_train`` of
        them training; ``shared``: its share of a column's shared work), checkpoint it and
        move on."""
        self.own_time += own
        self.shared_time += shared
        self.train_time += own_train + shared
        self.wall += own + shared
        record["wall_time"] = round(self.wall, 3)
        self.history.append(record)
        self._save_checkpoint(pi, record["epoch"], optimizer, self.history, self.wall, self.train_time)
        if self.lock is not None:
            self.lock.touch()
        self.next_epoch += 1
        self._skip_finished_phases()

    def result(self, fused: bool = False, column_size: int = 1) -> TrainResult:
        return TrainResult(history=self.history, wall_time=self.wall, train_time=self.train_time,
                           resumed_from=self.resumed_from, own_time=self.own_time, shared_time=self.shared_time,
                           fused=fused, column_size=column_size)

    def log_epoch(self, record: dict[str, Any], phase: Phase, eta: float) -> None:
        """One line per epoch: at INFO where no progress bar is drawn (log files), else DEBUG."""
        terms = ", ".join(f"{k.removeprefix('loss_')} {record[k]:.4g}" for k in record
                          if k.startswith("loss_"))
        accs = "".join(f" {label} {record[k]:.2f}%" for k, label in (("train_top1", "train"), ("test_top1", "test"))
                       if k in record)
        level = logging.DEBUG if self.progress_enabled() else logging.INFO
        log.log(level, "%s | %s %d/%d | loss %.4g (%s)%s | lr %.3g | %.1f s, epoch %d/%d, ETA %.0f s", self.desc,
                phase.name, record["epoch"], phase.epochs, record["loss"], terms, accs, record["lr"], self.wall,
                self.done_epochs(), self.total_epochs(), eta)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Top-1/top-5 (%) on the test split through ``method.predict``, and the seconds the
        pass took (``eval_time_s``: the inference cost per image in the result row)."""
        t0 = time.perf_counter()
        self.student.eval()
        self.method.eval()
        correct1 = correct5 = torch.zeros((), device=self.device, dtype=torch.long)
        for batch in self.eval_data:
            with self.autocast:
                logits = self.method.predict(self.student, self.teacher, batch)
            c1, c5 = topk_correct(logits.float(), batch.y)
            correct1, correct5 = correct1 + c1, correct5 + c5
        n = len(self.eval_data)
        top1, top5 = 100.0 * correct1.item() / n, 100.0 * correct5.item() / n  # .item() waits for the device
        return {"test_top1": top1, "test_top5": top5, "eval_time_s": round(time.perf_counter() - t0, 5)}

    # -- phases -------------------------------------------------------------------------
    def begin_phase(self, phase: Phase) -> torch.optim.Optimizer:
        """Set requires_grad for ``phase`` and build its optimizer."""
        params = configure_phase(self.student, self.method, phase)
        lr = self.lr if phase.lr is None else phase.lr
        return torch.optim.SGD(params, lr=lr, momentum=self.recipe.momentum, weight_decay=self.recipe.weight_decay)

    def _lr_at(self, phase: Phase, epoch: int) -> float:
        if phase.name != "main":
            return self.lr if phase.lr is None else phase.lr
        decays = sum(epoch > m for m in self.recipe.milestone_epochs())
        return self.method.main_lr(self.lr) * (self.recipe.lr_decay ** decays)

    def train_step(self, optimizer: torch.optim.Optimizer, phase: Phase, batch, info: StepInfo, run_student: bool,
                   use_teacher: bool, teacher_out: Outputs | None = None,
                   standard_out: Outputs | None = None) -> tuple[dict[str, Tensor], Tensor | None]:
        """One optimisation step; returns the detached loss terms and the number of correct
        student predictions. A function of its own so that the step's outputs are released
        on return: activations kept alive into the next step force fresh allocations (page
        faults) and cost ~5 % of a CPU step (measured with benchmarks/kd_step.py).
        ``teacher_out``: the teacher's outputs on ``batch`` if already computed (a column's
        shared forward); ``standard_out``: its outputs on the standard rows, for a method
        whose batch is not the standard one (see ``Method.teacher_on_standard_rows``)."""
        with self.autocast:
            s, terms = phase_losses(self.student if run_student else None, self.teacher if use_teacher else None,
                                    phase, batch, info, self.method, teacher_out if use_teacher else None,
                                    standard_out if use_teacher else None)
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        hits = s.logits.detach().argmax(1).eq(batch.y).sum() if s is not None else None
        return {k: v.detach().float() for k, v in terms.items()}, hits

    def check_finite(self, watch: FiniteWatch, phase: Phase, epoch: int) -> None:
        """Raise :class:`NonFiniteLoss` naming the term that went non-finite first, if any."""
        if all(math.isfinite(v.item()) for v in watch.sums.values()):
            return
        culprit = watch.culprit()
        assert culprit is not None
        name, step = culprit
        later = [k for k in watch.first_bad if k != name and int(watch.first_bad[k]) >= 0]
        raise NonFiniteLoss(f"{name} became non-finite first, in phase {phase.name!r}, epoch {epoch}, step {step + 1} "
                            f"(lr {self._lr_at(phase, epoch):g})" + (f"; then {', '.join(later)}" if later else ""))

    def progress_enabled(self) -> bool:
        if self.env.progress is not None:
            return self.env.progress
        return sys.stderr.isatty()

    # -- checkpoints --------------------------------------------------------------------
    def _save_checkpoint(self, pi: int, epoch: int, optimizer: torch.optim.Optimizer,
                         history: list[dict[str, Any]], wall: float, train_time: float) -> None:
        state = {
            "phase_idx": pi, "phase": self.phase_list[pi].name, "epoch": epoch,
            "student": self.student.state_dict(), "method": self.method.state_dict(),
            "optimizer": optimizer.state_dict(), "history": history, "wall_time": wall,
            "train_time": train_time, "own_time": self.own_time, "shared_time": self.shared_time,
            "rng": rng_states(),
        }
        atomic_torch_save(self.run_dir / CKPT, state)
        atomic_write_text(self.run_dir / METRICS, "".join(_json_line(h) for h in history))

    def _load_checkpoint(self) -> dict[str, Any] | None:
        path = self.run_dir / CKPT
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
            if not isinstance(state, dict) or "phase_idx" not in state:
                raise KeyError("no 'phase_idx': written by an older kdbench")
        except Exception as exc:  # atomic writes make this rare: a truncated copy, a full disk, an old format
            log.warning("ignoring unreadable checkpoint %s (%s: %s); starting the run over", path,
                        type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
            return None
        try:
            self.student.load_state_dict(state["student"])
            self.method.load_state_dict(state["method"])
        except RuntimeError as exc:
            raise RuntimeError(
                f"checkpoint {path} does not fit the current code ({exc}). The run key did not change, so "
                f"the student or method changed without a version bump: bump the method's `version` "
                f"or delete {self.run_dir}") from exc
        if state["phase_idx"] >= len(self.phase_list) or self.phase_list[state["phase_idx"]].name != state["phase"]:
            raise RuntimeError(f"checkpoint {path} is from another phase plan ({state['phase']!r} at index "
                               f"{state['phase_idx']}); bump the method's `version` or delete {self.run_dir}")
        log.info("resuming %s from phase %r epoch %d", self.desc, state["phase"], state["epoch"])
        restore_rng_states(state["rng"])
        return state


def rng_states() -> dict[str, Any]:
    """The global RNG states as tensors and plain values (loadable with ``weights_only``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}


def restore_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`rng_states`."""
    torch.set_rng_state(states["torch"].cpu())
    random.setstate(states["python"])
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))


def _json_line(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True) + "\n"
