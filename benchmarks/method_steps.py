"""Per-step cost of every registered method relative to KD.

Setting (issue #3): resnet32x4 → resnet8x4, batch 64, 32×32, 100 classes, CPU, a
CIFAR-100-sized synthetic training set (N = 50,000: CRD's memory banks and negatives at
their real scale). Each method's step is the engine's own (``Trainer.train_step`` on a
batch from the method's own data wrapper — CCD's batches carry both views, CRD's the
negatives). Rounds alternate between the methods so that machine-load drift hits all of
them; medians of the per-step times are printed with the ratio to KD. Methods with an
auxiliary stage (AB, FT, FitNets' optional hint stage) also get that stage measured.

    python benchmarks/method_steps.py [--steps 4] [--rounds 5] [--methods kd,crd]
"""
from __future__ import annotations

import argparse
import copy
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kdbench.config import resolve_config
from kdbench.data import epoch_generator
from kdbench.method import StepInfo
from kdbench.models import create_model
from kdbench.registry import METHODS
from kdbench.train import Trainer, set_phase_modes, phase_plan

from kd_step import build_trainer, synthetic_data


def stage_step_time(trainer: Trainer, stage_index: int, steps: int, round_no: int) -> float:
    """Mean time of ``steps`` engine steps of one stage (after one untimed step)."""
    stage = phase_plan(trainer.method, 240)[stage_index]
    optimizer = trainer.begin_phase(stage)
    set_phase_modes(trainer.student, trainer.method, trainer.teacher, stage)
    gen = epoch_generator(0, stage_index, round_no)
    run_student = stage.student != "none"
    use_teacher = trainer.teacher is not None and stage.needs_teacher
    batches = itertools.islice(trainer.train_data.epoch(gen), steps + 1)
    # steady state: the last epoch of the stage (DKD's warm-up done)
    info = StepInfo(phase=stage.name, epoch=stage.epochs, epochs=stage.epochs, step=0,
                    steps_per_epoch=trainer.train_data.steps_per_epoch())
    first = next(batches)  # builds the batch iterator's state outside the timing
    trainer.train_step(optimizer, stage, first, info, run_student, use_teacher)
    t0 = time.perf_counter()
    n = 0
    for batch in batches:
        trainer.train_step(optimizer, stage, batch, info, run_student, use_teacher)
        n += 1
    return (time.perf_counter() - t0) / n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--methods", default="all")
    p.add_argument("--num-train", type=int, default=50000)
    args = p.parse_args()
    names = METHODS.list() if args.methods == "all" else args.methods.split(",")
    own_student = [n for n in names if METHODS.get(n).student_name(resolve_config(METHODS.get(n), {}))]
    if own_student:  # CNN2GNN and gnn train their own (GNN) student, not resnet8x4
        print(f"left out (they bring their own student, not resnet8x4): {', '.join(own_student)}")
        names = [n for n in names if n not in own_student]
    if "kd" not in names:
        names.insert(0, "kd")
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", 100).eval().requires_grad_(False)
    student = create_model("resnet8x4", 100)
    data = synthetic_data(args.num_train)
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {n: build_trainer(n, teacher, copy.deepcopy(student), data, 64, Path(tmp)) for n in names}
        plans = {n: [(i, s.name) for i, s in enumerate(phase_plan(t.method, 240)) if s.epochs > 0]
                 for n, t in trainers.items()}
        times: dict[tuple[str, str], list[float]] = {(n, s): [] for n in names for _, s in plans[n]}
        for r in range(args.rounds):
            for n in names[r % len(names):] + names[:r % len(names)]:
                for i, s in plans[n]:
                    times[(n, s)].append(stage_step_time(trainers[n], i, args.steps, r + 1))
    kd = statistics.median(times[("kd", "main")])
    print(f"per-step cost, resnet32x4->resnet8x4, batch 64, 32x32, N={args.num_train}, CPU, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps (medians):")
    for (n, s), v in times.items():
        med = statistics.median(v)
        print(f"  {n:8s} {s:12s} {med * 1000:8.1f} ms/step   {med / kd:5.2f}x KD")


if __name__ == "__main__":
    main()
