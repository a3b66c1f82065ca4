"""CNN2GNN inference: Mechanism 1 (one by one) against Mechanism 2 (batch by batch).

Trains a ``cnn2gnn`` student once through the engine (teacher included, cached in the
results folder), then evaluates the same weights on the whole test set with each
mechanism, alternating rounds, and prints accuracy, seconds per pass and the time ratio
(the paper reports Mechanism 1 ≈ 1.8× slower on CIFAR-100: 4999 s vs 2797 s).

    python benchmarks/cnn2gnn_inference.py [--dataset digits] [--pair resnet20->resnet8] [--epochs N]
                                           [--rounds 3] [--out DIR] [--eval-batch N]
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import tempfile
import time

import torch

from kdbench.build import build_run
from kdbench.data import EvalData
from kdbench.grid import build_grid
from kdbench.run import Session, execute, resolve
from kdbench.store import MODEL, Store
from kdbench.train import Env, topk_correct


def evaluate(method, student, teacher, eval_data: EvalData) -> tuple[float, float]:
    """(top-1 %, seconds) of one pass over the test set through ``method.predict``."""
    t0 = time.perf_counter()
    correct = 0
    with torch.no_grad():
        for batch in eval_data:
            correct += int(topk_correct(method.predict(student, teacher, batch), batch.y, (1,))[0])
    return 100.0 * correct / len(eval_data), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--pair", default="resnet20->resnet8")
    parser.add_argument("--epochs", type=int, default=None, help="default: the dataset's recipe")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-batch", type=int, default=None,
                        help="test batch of Mechanism 2 (default: the method's test_batch_size; the paper varies it)")
    parser.add_argument("--out", default=None, help="results folder (default: a temporary one)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(torch.get_num_threads())

    out = args.out or tempfile.mkdtemp(prefix="kdbench-cnn2gnn-")
    grid = build_grid(dataset=args.dataset, methods="cnn2gnn", pairs=args.pair, seeds="1", epochs=args.epochs)
    [spec] = [s for s in grid.expand() if s.method == "cnn2gnn"]
    session = Session(store=Store(out), env=Env(progress=False))
    row = execute(spec, session)
    assert row["status"] == "done", row
    data = session.dataset(spec.dataset).for_recipe(spec.recipe)
    resolved = resolve(spec)
    built = build_run(spec, data, "cpu", lambda fresh: session.teacher(spec, resolved)[0])
    saved = torch.load(f"{row['run_dir']}/{MODEL}", map_location="cpu", weights_only=True)
    built.student.load_state_dict(saved["state_dict"])
    built.student.eval()
    method = built.method.eval()
    test_batch = args.eval_batch or method.eval_batch_size()
    eval_data = EvalData(data.test_images, data.test_labels, data.mean, data.std, torch.device("cpu"), test_batch)

    times: dict[str, list[float]] = {"batch": [], "one_by_one": []}
    accuracy: dict[str, float] = {}
    for _ in range(args.rounds):
        for mechanism in ("batch", "one_by_one"):
            method.cfg = dataclasses.replace(method.cfg, inference=mechanism)
            accuracy[mechanism], seconds = evaluate(method, built.student, built.teacher, eval_data)
            times[mechanism].append(seconds)
    m1, m2 = statistics.median(times["one_by_one"]), statistics.median(times["batch"])
    n = len(eval_data)
    print(f"cnn2gnn {spec.pair} on {spec.dataset}: {n} test images, trained {row['epochs']} epochs "
          f"(engine's evaluation: top-1 {row['top1_last']:.2f})")
    print(f"Mechanism 1 (one by one):     top-1 {accuracy['one_by_one']:6.2f}  {m1:8.3f} s  "
          f"({1000 * m1 / n:.3f} ms/image)")
    print(f"Mechanism 2 (batch of {test_batch:>3}):   top-1 {accuracy['batch']:6.2f}  {m2:8.3f} s  "
          f"({1000 * m2 / n:.3f} ms/image)")
    print(f"Mechanism 1 / Mechanism 2 time: {m1 / m2:.2f}x  (median of {args.rounds} alternating rounds; "
          f"paper, CIFAR-100: 1.79x)")


if __name__ == "__main__":
    main()
