"""Training loop of one or more runs that share their batches: a *column* (issue #12).

Every run is trained through :class:`Column`; a separate run is a column of one. The runs of
one (dataset, recipe, seed) and teacher — every method of a grid column, plus vanilla —
can be *fused* into one column: each epoch's standard batches are built once
(:meth:`kdbench.data.TrainData.base_batch`, from the shared epoch generator), the frozen
teacher runs once per batch with the union of the taps the members need, and then each
member does its own part: extends the batch with its own draws
(:meth:`~kdbench.data.TrainData.extend`, from its own generator), runs its student, loss,
backward and optimizer step.

Results are bit-identical to separate runs (on CPU; tested), because nothing a member
computes depends on the others:

* the batches are the same: at one seed every method's main phase sees the same order,
  crops and flips (stream 0), and a method's extra draws come from its own generator;
* the teacher's outputs are the same tensors the member would compute itself: a member
  whose batch is not the standard one runs its own teacher forward, except on the
  standard rows when it declares it can reuse them
  (:attr:`kdbench.method.Method.teacher_on_standard_rows`: CCD's original view — it splits
  its teacher forward the same way when it runs alone);
* each member has its own global RNG state (torch, CUDA, Python, NumPy), swapped in for
  everything it does (dropout, random init of late buffers…): at the start of every epoch
  the global RNGs are seeded from ``(seed, stream, epoch)`` exactly as a separate run does,
  and each member then continues its own copy.

Extra phases (AB's initialisation, FT's paraphraser, FitNets' hint phase) draw from their
own streams and run per member before the column joins the main phase; members already
finished are never in a column (the engine reads their rows back). Each member keeps its
own run folder, checkpoint (written after every epoch), metrics and lock. A member that
raises or goes non-finite leaves the column as a failed run; the others go on. Members
resumed from checkpoints at different epochs train alone until the others catch up (the
main phase's batches of epoch ``e`` do not depend on who trains them).

Wall time: each member is charged its own compute (batch extension, student forward and
backward, loss, optimizer step, evaluation) plus an equal share of the shared work of the
batches it took part in (building the batch; the teacher's forward is shared among the
members that used it). Separate runs are charged everything, so the cost table compares
methods fairly either way; the row says whether the run was fused (see
:class:`kdbench.train.TrainResult`).
"""
from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from kdbench import preemption
from kdbench.data import Batch, epoch_generator, member_generator
from kdbench.method import Needs, Phase, StepInfo
from kdbench.taps import Outputs
from kdbench.train import (FiniteWatch, Progress, TrainResult, derived_seed, random_stream, seed_everything,
                           teacher_outputs)

if TYPE_CHECKING:
    from kdbench.train import Trainer

log = logging.getLogger(__name__)


class GlobalRNG:
    """A saved copy of the global random generators (torch CPU, the CUDA device in use,
    Python's ``random``, NumPy's legacy global state), swapped in and out per member."""

    def __init__(self, cuda_device: torch.device | None) -> None:
        self.cuda_device = cuda_device
        self.state: tuple[Any, ...] = ()

    def save(self) -> None:
        cuda = torch.cuda.get_rng_state(self.cuda_device) if self.cuda_device is not None else None
        self.state = (torch.get_rng_state(), cuda, random.getstate(), np.random.get_state())

    def load(self) -> None:
        cpu, cuda, py, npy = self.state
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, self.cuda_device)
        random.setstate(py)
        np.random.set_state(npy)


@dataclass
class MemberEpoch:
    """One member's state during one epoch of a column."""

    trainer: "Trainer"
    phase_idx: int
    phase: Phase
    epoch: int
    optimizer: torch.optim.Optimizer
    lr: float
    own_gen: torch.Generator
    run_student: bool
    use_teacher: bool
    watch: FiniteWatch = field(default_factory=FiniteWatch)
    correct: Tensor | None = None
    rows: int = 0
    own_time: float = 0.0
    shared_time: float = 0.0


class MemberFailed(Exception):
    """Internal: a member of a fused column failed; it leaves the column."""


class Column:
    """Trains ``members`` (:class:`kdbench.train.Trainer`) together; see the module doc.

    All members must share the seed, the recipe and the standard training data (the
    engine fuses only such runs); those that use a teacher must share the same teacher
    module. ``fit`` returns, per member, its :class:`TrainResult` or the exception that
    ended it (a column of one re-raises instead).
    """

    def __init__(self, members: list["Trainer"], desc: str = "") -> None:
        if not members:
            raise ValueError("a column needs at least one member")
        first = members[0]
        for m in members[1:]:
            if (m.seed, m.recipe, len(m.train_data), m.train_data.batch_size) != \
                    (first.seed, first.recipe, len(first.train_data), first.train_data.batch_size):
                raise ValueError(f"column members differ in seed, recipe or training data: {first.desc} vs {m.desc}")
        teachers = {id(m.teacher) for m in members if m.teacher is not None}
        if len(teachers) > 1:
            raise ValueError("column members use different teacher modules; fuse only runs of one teacher")
        self.members = members
        self.fused = len(members) > 1
        self.teacher = next((m.teacher for m in members if m.teacher is not None), None)
        self.desc = desc or (first.desc if not self.fused else f"column of {len(members)} ({first.desc}, …)")
        self.device = first.device
        self.data = first.train_data.base  # the standard batches, built once for every member
        self.errors: dict[int, BaseException] = {}
        cuda = self.device if self.device.type == "cuda" else None
        self.rngs = {id(m): GlobalRNG(cuda) for m in members}

    # -- public -------------------------------------------------------------------------
    def fit(self) -> list[TrainResult | BaseException]:
        for m in self.members:
            self._guard(m, m.load_state)
        steps = self.data.steps_per_epoch()
        alive = self.alive()
        total = sum(m.total_epochs() for m in alive) * steps
        progress = Progress(total, sum(m.done_epochs() for m in alive) * steps, self.desc,
                            self.members[0].progress_enabled())
        self.session_start, self.session_epochs = time.perf_counter(), 0
        try:
            for m in self.alive():  # extra phases: each member alone, on its own streams
                while m.next_phase < m.main_index() and id(m) not in self.errors:
                    self.run_epoch([m], progress)
            last = max((m.phase_list[-1].epochs for m in self.alive()), default=0)
            for epoch in range(1, last + 1):
                group = [m for m in self.alive() if (m.next_phase, m.next_epoch) == (m.main_index(), epoch)]
                if group:
                    self.run_epoch(group, progress)
        except Exception as exc:
            if not (self.fused and preemption.ends_the_run(exc)):
                raise  # a run alone records it itself; after a requeue, the next job resumes every member
            # submitit declined the requeue (too many time-outs): every unfinished member fails with its reason
            for m in self.alive():
                self.errors[id(m)] = exc
        finally:
            progress.close()
        return [self.errors.get(id(m)) or m.result(fused=self.fused, column_size=len(self.members))
                for m in self.members]

    def alive(self) -> list["Trainer"]:
        return [m for m in self.members if id(m) not in self.errors and not m.finished()]

    # -- one epoch ----------------------------------------------------------------------
    def run_epoch(self, group: list["Trainer"], progress: Progress) -> None:
        """One epoch of ``group``: members at the same epoch of phases with the same
        random stream (the main phase; an extra phase has only one member): training,
        then each member's evaluation, checkpoint and log line."""
        for s in self.train_epoch(group, progress):
            if id(s.trainer) not in self.errors:
                self._guard(s.trainer, self._end_member_epoch, s)

    def train_epoch(self, group: list["Trainer"], progress: Progress) -> list[MemberEpoch]:
        """The training steps of one epoch of ``group`` (see :meth:`run_epoch`)."""
        lead = group[0]
        pi, epoch = lead.next_phase, lead.next_epoch
        stream = random_stream(lead.phase_list[pi], pi)
        seed_everything(derived_seed(lead.seed, stream, epoch))
        states = []
        for m in group:
            if self.fused:
                self.rngs[id(m)].save()  # every member starts the epoch from the seeded state
            state = self._guard(m, self._begin_member_epoch, m, stream)
            if state is not None:
                states.append(state)
        gen = epoch_generator(lead.seed, stream, epoch)
        steps = self.data.steps_per_epoch()
        for i, (batch_time, base) in enumerate(self._timed_batches(gen)):
            states = [s for s in states if id(s.trainer) not in self.errors]
            if not states:
                break
            self.train_batch(states, base, batch_time, i, steps)
            progress.update(len(states))
        return states

    def _timed_batches(self, gen: torch.Generator):
        it = iter(self.data.base_epoch(gen))
        while True:
            t0 = time.perf_counter()
            try:
                base = next(it)
            except StopIteration:
                return
            yield time.perf_counter() - t0, base

    def train_batch(self, states: list[MemberEpoch], base: Batch, batch_time: float, i: int, steps: int) -> None:
        """One shared batch: every member's batch, the shared teacher forward, each member's step."""
        share = batch_time / len(states)
        batches: dict[int, Batch] = {}
        for s in states:
            s.shared_time += share
            t0 = time.perf_counter()
            batch = self._guard(s.trainer, self._member_batch, s, base)
            s.own_time += time.perf_counter() - t0
            if batch is not None:
                batches[id(s)] = batch
        sharing = [s for s in states if id(s) in batches and s.use_teacher and
                   (batches[id(s)].x is base.x or s.trainer.method.teacher_on_standard_rows)]
        shared_t = None
        if sharing and self.teacher is not None:
            t0 = time.perf_counter()
            union = Needs(stages="all" if any(s.trainer.method.taps.spatial for s in sharing) else (),
                          preact=any(s.trainer.method.taps.preact for s in sharing))
            with sharing[0].trainer.autocast, torch.no_grad():
                # only the union of the taps is kept: the maps no member reads are freed at once
                shared_t = teacher_outputs(self.teacher.forward_taps(base.x, preact=union.preact), union)
            teacher_share = (time.perf_counter() - t0) / len(sharing)
            for s in sharing:
                s.shared_time += teacher_share
        for s in states:
            if id(s) not in batches:
                continue
            t = standard = None
            if s in sharing and shared_t is not None:
                standard = teacher_outputs(shared_t, s.trainer.method.taps)
                if batches[id(s)].x is base.x:  # the standard batch: these are its teacher outputs
                    t, standard = standard, None
            t0 = time.perf_counter()
            self._guard(s.trainer, self._member_step, s, batches[id(s)], t, standard, i, steps)
            s.own_time += time.perf_counter() - t0

    # -- member steps (each under its own RNG when fused) -------------------------------
    def _begin_member_epoch(self, m: "Trainer", stream: int) -> MemberEpoch:
        pi, epoch = m.next_phase, m.next_epoch
        phase = m.phase_list[pi]
        optimizer = m.phase_optimizer(pi)
        lr = m.set_epoch_lr(optimizer, phase, epoch)
        m.set_modes(phase)
        return MemberEpoch(trainer=m, phase_idx=pi, phase=phase, epoch=epoch, optimizer=optimizer, lr=lr,
                           own_gen=member_generator(m.seed, stream, epoch, m.method.name),
                           run_student=phase.student != "none",
                           use_teacher=m.teacher is not None and phase.needs_teacher,
                           correct=torch.zeros((), device=m.device, dtype=torch.long))

    def _member_batch(self, s: MemberEpoch, base: Batch) -> Batch:
        return s.trainer.train_data.extend(base.copy(), s.own_gen)

    def _member_step(self, s: MemberEpoch, batch: Batch, t: Outputs | None, standard: Outputs | None, i: int,
                     steps: int) -> None:
        m = s.trainer
        info = StepInfo(phase=s.phase.name, epoch=s.epoch, epochs=s.phase.epochs, step=(s.epoch - 1) * steps + i,
                        steps_per_epoch=steps)
        terms, hits = m.train_step(s.optimizer, s.phase, batch, info, s.run_student, s.use_teacher, teacher_out=t,
                                   standard_out=standard)
        s.watch.add(i, terms)
        if hits is not None:
            s.correct += hits
            s.rows += len(batch)
        if (i + 1) % m.env.check_every == 0:
            m.check_finite(s.watch, s.phase, s.epoch)

    def _end_member_epoch(self, s: MemberEpoch) -> None:
        m = s.trainer
        m.check_finite(s.watch, s.phase, s.epoch)
        t0 = time.perf_counter()
        record: dict[str, Any] = {"phase": s.phase.name, "epoch": s.epoch, "lr": s.lr}
        steps = self.data.steps_per_epoch()
        record.update({k: v.item() / steps for k, v in s.watch.sums.items()})
        record["loss"] = sum(record[k] for k in s.watch.sums)
        if s.rows:
            record["train_top1"] = 100.0 * s.correct.item() / s.rows
        own_train = s.own_time + time.perf_counter() - t0
        if s.phase.name == "main":
            record.update(m.evaluate())
        own = s.own_time + time.perf_counter() - t0
        shared = s.shared_time
        if not self.fused:  # a run alone did all the work itself
            own, own_train, shared = own + shared, own_train + shared, 0.0
        m.add_epoch(record, s.phase_idx, s.optimizer, own=own, own_train=own_train, shared=shared)
        self.session_epochs += 1
        per_epoch = (time.perf_counter() - self.session_start) / self.session_epochs
        remaining = sum(m.total_epochs() - m.done_epochs() for m in self.alive())
        m.log_epoch(record, s.phase, per_epoch * remaining)

    def _guard(self, m: "Trainer", fn, *args):
        """``fn(*args)`` under ``m``'s RNG (fused); an exception fails ``m`` alone (fused)
        or propagates (a column of one)."""
        if not self.fused:
            return fn(*args)
        rng = self.rngs[id(m)]
        if rng.state:
            rng.load()
        try:
            return fn(*args)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if preemption.requeue_requested():
                raise  # the job ends (requeued or not): stop the whole column, see fit()
            self.errors[id(m)] = exc
            log.warning("%s failed in a fused column (%s: %s); the other members go on", m.desc,
                        type(exc).__name__, exc)
            return None
        finally:
            if rng.state:
                rng.save()


# -- which runs form a column ---------------------------------------------------------------

def column_key(spec: Any) -> tuple[Any, ...]:
    """Runs with equal keys see the same standard batches: same dataset, recipe, seed and
    imported code (whatever their method, student and teacher)."""
    return (spec.dataset, spec.recipe, spec.seed, spec.imports)


def teacher_identity(spec: Any) -> tuple[Any, ...] | None:
    """Runs with equal identities use the same frozen teacher (``None``: no teacher)."""
    return (spec.teacher, spec.teacher_seed, spec.teacher_epochs, spec.teacher_ckpt) if spec.teacher else None


def column_groups(items: list[Any], max_members: int | None = None, spec_of=lambda item: item) -> list[list[Any]]:
    """``items`` (run specs, or anything ``spec_of`` maps to one) grouped into columns that
    can be trained fused: one per (dataset, recipe, seed) and teacher — so the runs of every
    pair with that teacher, at that seed — with the teacher-free runs of the same
    (dataset, recipe, seed) (vanilla) joining the first of them. A column larger than
    ``max_members`` is cut into consecutive columns of at most that many runs. Order is
    kept within a column and columns follow their first run's place in ``items``."""
    if max_members is not None and max_members < 1:
        raise ValueError(f"a column needs room for at least one run, not {max_members}")
    groups: dict[tuple[Any, ...], dict[Any, list[Any]]] = {}
    for item in items:
        spec = spec_of(item)
        groups.setdefault(column_key(spec), {}).setdefault(teacher_identity(spec), []).append(item)
    columns: list[list[Any]] = []
    for by_teacher in groups.values():
        free = by_teacher.pop(None, [])
        with_teacher = list(by_teacher.values())
        joined = [free + with_teacher[0], *with_teacher[1:]] if with_teacher else [free]
        for column in joined:
            size = max_members or len(column)
            columns.extend(column[i:i + size] for i in range(0, len(column), size))
    return columns
