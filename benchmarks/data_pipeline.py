"""Benchmark (b): images/s of kdbench's CIFAR training pipeline (decode + augmentation +
batching) divided by torchvision's CIFAR100 dataset with PIL transforms in a DataLoader.

Both read the same files in torchvision's on-disk format (``cifar-100-python/``). Without
``--root``, a full-size CIFAR-100 (50,000 + 10,000 random images) is written to a temporary
folder in the genuine format first — Python-2 protocol-2 pickles, byte-for-byte the way the
published files are written (``tests/fake_datasets.py``); torchvision's MD5 check is then
switched off for the synthetic files (it would reject them), nothing else changes.

Measured per side, one epoch of batch-64 training batches (crop 32 pad 4, horizontal
flip, normalise to float):

* kdbench: ``load`` (decode the pickles into one uint8 tensor), then every ``TrainData``
  batch of one epoch, in-process (kdbench needs no workers);
* torchvision: ``CIFAR100(transform=RandomCrop+RandomHorizontalFlip+ToTensor+Normalize)``
  (its constructor decodes the pickles), then one epoch of a
  ``DataLoader(batch_size=64, shuffle=True, num_workers=W)`` for W in ``--workers``.

Two ratios per torchvision setting: **steady state** (epoch vs epoch: what every epoch
after the first costs, kdbench decoding once per run) and **decode included** (decode +
one epoch on both sides: a one-epoch run). The sides run in alternating rounds
(``--rounds``, default 3: kdbench, then torchvision with each W, then again), so a change
in the machine's load hits all of them alike; each round's ratios compare that round's
measurements, and the summary is the median over rounds.

    python benchmarks/data_pipeline.py [--root DIR] [--workers 0 2] [--rounds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from kdbench.data import TrainData, epoch_generator
from kdbench.datasets.cifar import Cifar100

MEAN, STD = (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)


def write_cifar100(root: Path, n_train: int = 50000, n_test: int = 10000) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fake_datasets import py2_pickle

    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", n_train), ("test", n_test)):
        obj = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "fine_labels": rng.integers(0, 100, n).tolist(),
               "coarse_labels": rng.integers(0, 20, n).tolist(), "filenames": [f"img_{i}.png" for i in range(n)]}
        (folder / name).write_bytes(py2_pickle(obj))
    (folder / "meta").write_bytes(py2_pickle({"fine_label_names": [f"c{i}" for i in range(100)],
                                              "coarse_label_names": [f"s{i}" for i in range(20)]}))


def kdbench_times(root: Path, epoch: int) -> tuple[int, float, float]:
    """(images, decode seconds, epoch seconds) of kdbench: load, then one epoch of batches."""
    t0 = time.perf_counter()
    data = Cifar100().load(root)
    t_load = time.perf_counter() - t0
    td = TrainData(data, 64, torch.device("cpu"), seed=0)
    t1 = time.perf_counter()
    n = 0
    for batch in td.epoch(epoch_generator(0, 0, epoch)):
        n += len(batch)
    return n, t_load, time.perf_counter() - t1


def torchvision_times(root: Path, workers: int, synthetic: bool) -> tuple[int, float, float]:
    """(images, decode seconds, epoch seconds) of torchvision: the dataset's constructor
    (decodes the pickles), then one epoch of its DataLoader (worker start-up included, as
    in every epoch of a default DataLoader)."""
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    if synthetic:
        import torchvision.datasets.cifar as tv_cifar

        tvd.CIFAR100._check_integrity = lambda self: True  # synthetic files have other MD5s
        tv_cifar.check_integrity = lambda *a, **k: True
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    t0 = time.perf_counter()
    ds = tvd.CIFAR100(str(root), train=True, transform=tf)
    t_load = time.perf_counter() - t0
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers)
    t1 = time.perf_counter()
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n, t_load, time.perf_counter() - t1


def rates(n: int, t_load: float, t_epoch: float) -> tuple[float, float]:
    """(steady-state img/s, decode-included img/s)."""
    return n / t_epoch, n / (t_load + t_epoch)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, help="a folder holding cifar-100-python/ (default: synthetic)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3); medians are reported")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        if args.root is None:
            write_cifar100(root)
        print(f"CIFAR-100 train pipeline, one epoch, batch 64, CPU, {torch.get_num_threads()} threads, "
              f"{args.rounds} alternating round(s); img/s as steady state (epoch alone) / decode included",
              flush=True)
        ours: list[tuple[float, float]] = []
        theirs: dict[int, list[tuple[float, float]]] = {w: [] for w in args.workers}
        for r in range(args.rounds):
            ours.append(rates(*kdbench_times(root, epoch=r + 1)))
            line = f"  round {r + 1}: kdbench {ours[-1][0]:8.0f} / {ours[-1][1]:6.0f}"
            for w in args.workers:
                theirs[w].append(rates(*torchvision_times(root, w, synthetic=args.root is None)))
                line += f"   torchvision W={w} {theirs[w][-1][0]:5.0f} / {theirs[w][-1][1]:5.0f}"
            print(line, flush=True)
        steady, whole = (statistics.median(o[i] for o in ours) for i in (0, 1))
        print(f"  kdbench (decode once + augment + batch)   steady state {steady:8.0f} img/s   "
              f"decode included {whole:6.0f} img/s")
        for w in args.workers:
            tv_steady, tv_whole = (statistics.median(t[i] for t in theirs[w]) for i in (0, 1))
            ratio_steady = statistics.median(o[0] / t[0] for o, t in zip(ours, theirs[w]))
            ratio_whole = statistics.median(o[1] / t[1] for o, t in zip(ours, theirs[w]))
            print(f"  torchvision + PIL, {w} worker(s)          steady state {tv_steady:8.0f} img/s   "
                  f"decode included {tv_whole:6.0f} img/s   kdbench is {ratio_steady:.1f}x (steady state), "
                  f"{ratio_whole:.1f}x (decode included) faster")


if __name__ == "__main__":
    main()
