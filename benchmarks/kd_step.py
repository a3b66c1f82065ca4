"""Benchmark (a): the cost of one KD training step through kdbench's engine, divided by
the same step written as a plain hand-written PyTorch loop.

Setting (issue #2): resnet32x4 → resnet8x4, batch 64, 32×32 inputs, 100 classes, CPU,
torch's default thread count. Both sides start from identical weights and see the same
number of steps. kdbench's side is its real training epoch (``Column.train_epoch``):
batch cutting, on-device crop/flip and normalisation, tapped forwards, the method's loss,
bookkeeping. The hand-written side gets its batches *pre-built* (so its data work is
free, a conservative comparison) — a second figure gives it the same augmentation work.

Rounds alternate between the sides (in a rotating order) so that drifting machine load
hits all of them; the ratios of the median and of the minimum per-step times are printed
(the minimum is the least disturbed measurement).

    python benchmarks/kd_step.py [--steps 20] [--rounds 5] [--method kd]
"""
from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kdbench.column import Column
from kdbench.data import Augment, ImageData, TrainData, epoch_generator
from kdbench.method import MethodContext
from kdbench.config import resolve_config
from kdbench.methods._common import kl_div_t
from kdbench.models import create_model
from kdbench.registry import METHODS
from kdbench.spec import Recipe
from kdbench.taps import measure
from kdbench.train import Env, Progress, Trainer

log = logging.getLogger("benchmarks.kd_step")


def synthetic_data(n: int, classes: int = 100, size: int = 32) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData("synthetic", torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
                     torch.randint(0, classes, (n,), generator=g), torch.zeros(2, 3, size, size, dtype=torch.uint8),
                     torch.zeros(2, dtype=torch.long), [str(i) for i in range(classes)],
                     (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761), Augment(4, True))


def build_trainer(method: str, teacher, student, data: ImageData, batch: int, run_dir: Path) -> Trainer:
    cls = METHODS.get(method)
    cfg = resolve_config(cls, {})
    device = torch.device("cpu")
    td = TrainData(data, batch, device, seed=0)
    ctx = MethodContext(num_classes=data.num_classes, num_train_samples=len(td), device=device, epochs=240,
                        steps_per_epoch=td.steps_per_epoch(), teacher_arch="resnet32x4", student_arch="resnet8x4",
                        dataset="synthetic", input_size=data.input_size, train_labels=data.train_labels)
    m = cls(cfg, measure(teacher, data.input_size), measure(student, data.input_size), ctx)
    from kdbench.data import EvalData

    ev = EvalData(data.test_images, data.test_labels, data.mean, data.std, device)
    return Trainer(student=student, teacher=teacher, method=m, train_data=m.wrap_train_dataset(td), eval_data=ev,
                   recipe=Recipe(), lr=0.05, seed=0, env=Env(progress=False), run_dir=run_dir)


def kdbench_epoch(trainer: Trainer, epoch: int) -> float:
    """Seconds per step of the engine's training epoch ``epoch`` of the main phase (the
    steps only: no evaluation, no checkpoint)."""
    trainer.load_state()
    trainer.next_phase, trainer.next_epoch = trainer.main_index(), epoch
    column = Column([trainer])
    t0 = time.perf_counter()
    column.train_epoch([trainer], Progress(0, 0, "", False))
    return (time.perf_counter() - t0) / trainer.train_data.steps_per_epoch()


def hand_epoch(student, teacher, batches, augment_on_the_fly: TrainData | None, epoch: int) -> float:
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    student.train()
    gen = epoch_generator(0, 9, epoch)
    t0 = time.perf_counter()
    for idx, (x, y) in enumerate(batches):
        if augment_on_the_fly is not None:
            b = augment_on_the_fly.make_batch(augment_on_the_fly.epoch_indices(gen)[idx], gen)
            x, y = b.x, b.y
        with torch.no_grad():
            zt = teacher(x)
        zs = student(x)
        loss = 0.1 * F.cross_entropy(zs, y) + 0.9 * kl_div_t(zs, zt, 4.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / len(batches)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--method", default="kd")
    args = p.parse_args()
    torch.manual_seed(0)
    teacher = create_model("resnet32x4", 100).eval().requires_grad_(False)
    student = create_model("resnet8x4", 100)
    data = synthetic_data(args.steps * args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(args.method, teacher, copy.deepcopy(student), data, args.batch, Path(tmp))
        plain = TrainData(data, args.batch, torch.device("cpu"), seed=0)
        gen = epoch_generator(0, 0, 1)
        batches = [(b.x, b.y) for b in plain.epoch(gen)]
        hand_student = copy.deepcopy(student)
        # warm-up (allocator, kernels)
        kdbench_epoch(trainer, 1)
        hand_epoch(hand_student, teacher, batches[:3], None, 1)
        sides = {
            "kdbench engine": lambda r: kdbench_epoch(trainer, r + 2),
            "hand-written loop, pre-built data": lambda r: hand_epoch(hand_student, teacher, batches, None, r + 2),
            "hand-written loop, same augment": lambda r: hand_epoch(hand_student, teacher, batches, plain, r + 2),
        }
        times: dict[str, list[float]] = {k: [] for k in sides}
        names = list(sides)
        for r in range(args.rounds):
            for name in names[r % 3:] + names[:r % 3]:
                times[name].append(sides[name](r))
    print(f"{args.method} step, resnet32x4->resnet8x4, batch {args.batch}, 32x32, CPU, "
          f"{torch.get_num_threads()} threads, {args.rounds} rounds x {args.steps} steps:")
    ours = times["kdbench engine"]
    for name, v in times.items():
        ratio = "" if v is ours else (f"   ratio median {statistics.median(ours) / statistics.median(v):.3f}, "
                                      f"min {min(ours) / min(v):.3f}")
        print(f"  {name:34s} median {statistics.median(v) * 1000:7.1f} ms/step, min {min(v) * 1000:7.1f}{ratio}")


if __name__ == "__main__":
    main()
