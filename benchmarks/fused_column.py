"""Benchmark (issue #12): a grid column trained fused (one pass: batches and the teacher's
forward shared) versus the same runs trained separately, in one process, alternating.

Setting: resnet32x4 → resnet8x4 on CIFAR-100 (synthetic images written in the genuine
``cifar-100-python`` pickle format and read by kdbench's loader; N = 50,000 by default, so
CRD's and HKD's memory banks and negatives are at their real scale), batch 64, CPU, every
registered method plus vanilla (each with its own student, method state and optimizer,
built by the engine's ``build_run``), the main phase only (pre-phases run per member in
both modes, so they do not change the comparison). Each round trains ``--steps`` steps of
an epoch with every member (after ``--warmup`` untimed rounds), once fused (``Column(members).train_epoch``) and once
separately (``Column([m]).train_epoch`` for each member), in alternating order so that
drifting machine load hits both; the total times, their ratio, each member's own and
shared time and the per-member overhead of fusing are printed (medians over rounds), then
the process's memory: resident set after loading the data and teacher, after building
every member, and the peak of each side (:mod:`kdbench.memory`, reset before each side
on Linux).

    python benchmarks/fused_column.py [--steps 8] [--rounds 3] [--warmup 1] [--num-train 50000] [--methods all]
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from kdbench import memory
from kdbench.build import build_run
from kdbench.column import Column
from kdbench.data import EvalData, TrainData
from kdbench.datasets.cifar import Cifar100
from kdbench.grid import build_grid
from kdbench.models import create_model
from kdbench.train import Env, Progress, Trainer

log = logging.getLogger("benchmarks.fused_column")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from fake_datasets import write_cifar100  # noqa: E402  (the genuine on-disk format)


class FirstSteps(TrainData):
    """The standard training data, with epochs cut to their first ``steps`` batches (the
    permutation is still drawn over the whole set)."""

    steps = 8

    def steps_per_epoch(self) -> int:
        return min(self.steps, super().steps_per_epoch())


def mb(value: float | None) -> str:
    """A memory figure for the summary (``n/a`` where the platform gives none: the resident
    set is read on Linux only)."""
    return "n/a" if value is None else f"{value:.0f}"


def build_members(data, methods: str, teacher: torch.nn.Module, base: TrainData, tmp: Path) -> list[Trainer]:
    grid = build_grid({}, dataset="cifar100", pairs="resnet32x4->resnet8x4", methods=methods, seeds="1")
    members = []
    env = Env(progress=False)
    for spec in grid.expand():
        built = build_run(spec, data, "cpu", load_teacher=lambda fresh: teacher, base_train=base)
        eval_data = EvalData(data.test_images, data.test_labels, data.mean, data.std, torch.device("cpu"))
        members.append(Trainer(student=built.student, teacher=built.teacher, method=built.method,
                               train_data=built.train_data, eval_data=eval_data, recipe=spec.recipe, lr=0.05,
                               seed=spec.seed, env=env, run_dir=tmp / spec.method, desc=spec.method))
    return members


def at_main_epoch(m: Trainer, epoch: int) -> Trainer:
    m.load_state()
    m.next_phase, m.next_epoch = m.main_index(), epoch
    return m


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=8, help="steps of each epoch trained per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first (allocator, first-call costs)")
    p.add_argument("--num-train", type=int, default=50000)
    p.add_argument("--methods", default="all")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s")
    log.setLevel(logging.INFO)
    FirstSteps.steps = args.steps
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        write_cifar100(tmp / "data", n_train=args.num_train, n_test=64)
        data = Cifar100(expected_train=args.num_train, expected_test=64).load(tmp / "data")
        torch.manual_seed(0)
        teacher = create_model("resnet32x4", 100).eval().requires_grad_(False)
        cpu = torch.device("cpu")
        base = FirstSteps(data, 64, cpu, seed=0)
        rss_data = memory.resident_mb()
        members = build_members(data, args.methods, teacher, base, tmp / "runs")
        rss_built = memory.resident_mb()
        peaks: dict[str, list[float]] = {"fused": [], "separate": []}
        names = [m.desc for m in members]
        separate: dict[str, list[float]] = {n: [] for n in names}
        fused_total: list[float] = []
        fused_parts: dict[str, list[tuple[float, float]]] = {n: [] for n in names}
        quiet = Progress(0, 0, "", False)
        for r in range(-args.warmup, args.rounds):
            epoch = r + args.warmup + 1

            def run_fused() -> None:
                column = Column([at_main_epoch(m, epoch) for m in members])
                memory.reset_peak(cpu)
                t0 = time.perf_counter()
                states = column.train_epoch(members, quiet)
                took = time.perf_counter() - t0
                peaks["fused"].append(memory.peak_mb(cpu))
                log.info("round %d, fused: %.2f s", r, took)
                if r >= 0:
                    fused_total.append(took)
                    for s in states:
                        fused_parts[s.trainer.desc].append((s.own_time, s.shared_time))

            def run_separate() -> None:
                for m in members:
                    column = Column([at_main_epoch(m, epoch)])
                    memory.reset_peak(cpu)
                    t0 = time.perf_counter()
                    column.train_epoch([m], quiet)
                    took = time.perf_counter() - t0
                    peaks["separate"].append(memory.peak_mb(cpu))
                    log.info("round %d, separately: %s %.2f s", r, m.desc, took)
                    if r >= 0:
                        separate[m.desc].append(took)

            for side in ((run_separate, run_fused) if r % 2 == 0 else (run_fused, run_separate)):
                side()
    steps = args.steps
    total_sep = statistics.median([sum(v[i] for v in separate.values()) for i in range(args.rounds)])
    total_fused = statistics.median(fused_total)
    own_sum = statistics.median([sum(v[i][0] + v[i][1] for v in fused_parts.values()) for i in range(args.rounds)])
    print(f"column of {len(members)} runs ({args.methods} methods + vanilla), resnet32x4->resnet8x4, CIFAR-100 format, "
          f"N={args.num_train}, batch 64, CPU, {torch.get_num_threads()} threads, {args.rounds} rounds x {steps} "
          f"steps, medians:")
    print(f"  separately: {total_sep:7.2f} s   fused: {total_fused:7.2f} s   speed-up {total_sep / total_fused:.2f}x")
    overhead = (total_fused - own_sum) / (steps * len(members))
    print(f"  fusing overhead (fused wall - members' own - shared work), per member per step: {overhead * 1000:.2f} ms")
    print(f"  {'method':10s} {'separate':>14s} {'fused own':>14s} {'fused share':>14s} {'own+share':>10s}")
    for n in names:
        sep = statistics.median(separate[n]) / steps
        own = statistics.median(o for o, _ in fused_parts[n]) / steps
        share = statistics.median(s for _, s in fused_parts[n]) / steps
        print(f"  {n:10s} {sep * 1000:11.1f} ms {own * 1000:11.1f} ms {share * 1000:11.1f} ms "
              f"{(own + share) / sep:9.2f}x")
    print(f"  memory (resident set): {mb(rss_data)} MB with the data and teacher, {mb(rss_built)} MB with every "
          f"member built (students, optimizers, method state); peak while training: fused column "
          f"{mb(max(peaks['fused'], default=None))} MB, largest separate run {mb(max(peaks['separate'], default=None))} MB "
          f"(this one process holds every member on both sides; a separate run in its own process "
          f"holds one)")


if __name__ == "__main__":
    main()
