"""Benchmark (b): images/s of kdbench's CIFAR training pipeline (decode + augmentation +
batching) divided by torchvision's CIFAR100 dataset with PIL transforms in a DataLoader.

Both read the same files in torchvision's on-disk format (``cifar-100-python/``). Without
``--root``, a full-size CIFAR-100 (50,000 + 10,000 random images) is written to a temporary
folder in the genuine format first — Python-2 protocol-2 pickles, byte-for-byte the way the
published files are written (``tests/fake_datasets.py``); torchvision's MD5 check is then
switched off for the synthetic files (it would reject them), nothing else changes.

Measured per side, one epoch of batch-64 training batches (crop 32 pad 4, horizontal
flip, normalise to float):

* kdbench: ``load`` (decode the pickles into one uint8 tensor) + every ``TrainData``
  batch of the epoch, in-process (kdbench needs no workers);
* torchvision: ``CIFAR100(transform=RandomCrop+RandomHorizontalFlip+ToTensor+Normalize)``
  in a ``DataLoader(batch_size=64, shuffle=True, num_workers=W)`` for W in ``--workers``.

    python benchmarks/data_pipeline.py [--root DIR] [--workers 0 2]
"""
from __future__ import annotations

import argparse
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


def kdbench_images_per_s(root: Path) -> tuple[float, float]:
    t0 = time.perf_counter()
    data = Cifar100().load(root)
    t_load = time.perf_counter() - t0
    td = TrainData(data, 64, torch.device("cpu"), seed=0)
    t1 = time.perf_counter()
    n = 0
    for batch in td.epoch(epoch_generator(0, 0, 1)):
        n += len(batch)
    t_epoch = time.perf_counter() - t1
    return n / (t_load + t_epoch), n / t_epoch


def torchvision_images_per_s(root: Path, workers: int, synthetic: bool) -> float:
    import torchvision.datasets as tvd
    import torchvision.transforms as T

    if synthetic:
        import torchvision.datasets.cifar as tv_cifar

        tvd.CIFAR100._check_integrity = lambda self: True  # synthetic files have other MD5s
        tv_cifar.check_integrity = lambda *a, **k: True
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    t0 = time.perf_counter()
    ds = tvd.CIFAR100(str(root), train=True, transform=tf)
    loader = torch.utils.data.DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers)
    n = 0
    for x, _ in loader:
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", type=Path, help="a folder holding cifar-100-python/ (default: synthetic)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        if args.root is None:
            write_cifar100(root)
        ours, ours_epoch = kdbench_images_per_s(root)
        print(f"CIFAR-100 train pipeline, one epoch, batch 64, CPU, {torch.get_num_threads()} threads:")
        print(f"  kdbench (decode + augment + batch)  {ours:10.0f} img/s   (epoch alone: {ours_epoch:.0f} img/s)")
        for w in args.workers:
            tv = torchvision_images_per_s(root, w, synthetic=args.root is None)
            print(f"  torchvision + PIL, {w} worker(s)     {tv:10.0f} img/s   kdbench is {ours / tv:.1f}x faster")


if __name__ == "__main__":
    main()
