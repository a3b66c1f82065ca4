"""``cifar10`` and ``cifar100``: CIFAR in torchvision's on-disk (python pickle) format.

Source: Krizhevsky, *Learning Multiple Layers of Features from Tiny Images* (2009),
https://www.cs.toronto.edu/~kriz/cifar.html — the "python version" archives, which are
exactly what ``torchvision.datasets.CIFAR10/100(download=True)`` extracts.

Format: each batch file is a pickled dict written by Python 2 (so its keys are byte
strings: ``b'data'`` when read with ``encoding='bytes'``, ``'data'`` with ``'latin1'``).
``data`` is an ``N×3072`` uint8 array; each row is one 32×32 image stored channel-major
(1024 red values, then green, then blue), each channel row-major. Labels are ``labels``
(CIFAR-10) or ``fine_labels`` (CIFAR-100, whose ``coarse_labels`` are ignored); class
names come from ``batches.meta`` (``label_names``) or ``meta`` (``fine_label_names``).
The files are decoded here with numpy (a reshape to ``N×3×32×32``), not through
torchvision's dataset class; pickles are read safely (see :mod:`._pickles`).

Split: the official one, 50,000 train / 10,000 test. ``download=True`` lets torchvision's
dataset class fetch and extract the archive into the data root (its MD5 check included),
then the files are read with the code here.

Recipe: RepDistiller's CIFAR-100 recipe (:class:`~kdbench.spec.Recipe` defaults) for both,
with random crop 32 / padding 4 + horizontal flip and the per-channel mean/std of the
training set.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from kdbench.data import Augment, DatasetSource, ImageData
from kdbench.datasets._common import (check_labels, expect_count, locate_files, read_pickled_dict,
                                      torchvision_download)
from kdbench.datasets._pickles import as_str
from kdbench.registry import register_dataset
from kdbench.spec import Recipe

log = logging.getLogger(__name__)

_ROW = 3 * 32 * 32


class _Cifar(DatasetSource):
    """Shared loader; subclasses name the folder, files and keys."""

    folder: str = ""
    train_files: tuple[str, ...] = ()
    test_files: tuple[str, ...] = ()
    meta_file: str = ""
    label_key: str = ""
    names_key: str = ""
    torchvision_class: str = ""
    image_size = 32
    augment = Augment(crop_padding=4, hflip=True)
    recipe = Recipe()
    can_download = True

    def __init__(self, expected_train: int = 50000, expected_test: int = 10000) -> None:
        self.expected_train = expected_train
        self.expected_test = expected_test

    # -- loading ------------------------------------------------------------------------
    def load(self, root: Path, download: bool = False) -> ImageData:
        folder = locate_files(self, Path(root) / self.folder, (*self.train_files, *self.test_files, self.meta_file),
                              (lambda: self.download(Path(root))) if download else None)
        classes = self._read_classes(folder / self.meta_file)
        train_x, train_y = self._read_split(folder, self.train_files, self.expected_train, "training", len(classes))
        test_x, test_y = self._read_split(folder, self.test_files, self.expected_test, "test", len(classes))
        log.info("%s: loaded %d train / %d test images from %s", self.name, len(train_y), len(test_y), folder)
        return self.make(train_x, train_y, test_x, test_y, classes)

    def _read_classes(self, path: Path) -> list[str]:
        meta = read_pickled_dict(self, path, "a CIFAR pickle", (self.names_key,))
        names = [as_str(n) for n in meta[self.names_key]]
        expect_count(self, path, f"class names in {self.names_key!r}", len(names), self.num_classes)
        return names

    def _read_batch(self, path: Path, num_classes: int) -> tuple[np.ndarray, torch.Tensor]:
        batch = read_pickled_dict(self, path, "a CIFAR pickle", ("data", self.label_key))
        data = batch["data"]
        if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _ROW:
            desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise self.malformed(path, f"'data' must be a uint8 N×{_ROW} array, found {desc}")
        labels = np.asarray(batch[self.label_key])
        if labels.shape != (data.shape[0],):
            raise self.malformed(path, f"{data.shape[0]} images but {labels.size} entries in {self.label_key!r}")
        return data, check_labels(self, path, labels, num_classes)

    def _read_split(self, folder: Path, files: tuple[str, ...], expected: int, what: str,
                    num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
        arrays, labels = [], []
        for name in files:
            data, y = self._read_batch(folder / name, num_classes)
            arrays.append(data)
            labels.append(y)
        found = sum(len(a) for a in arrays)
        expect_count(self, folder, f"{what} images in {', '.join(files)}", found, expected)
        # each row is channel-major (R plane, G plane, B plane), each plane row-major
        images = torch.from_numpy(np.concatenate(arrays).reshape(-1, 3, 32, 32)).contiguous()
        return images, torch.cat(labels)

    # -- download -----------------------------------------------------------------------
    def download(self, root: Path) -> None:
        """Fetch and extract the archive into ``root`` with torchvision's dataset class."""
        torchvision_download(self, root, self.torchvision_class, train=True)


@register_dataset("cifar10")
class Cifar10(_Cifar):
    name = "cifar10"
    num_classes = 10
    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    folder = "cifar-10-batches-py"
    train_files = tuple(f"data_batch_{i}" for i in range(1, 6))
    test_files = ("test_batch",)
    meta_file = "batches.meta"
    label_key = "labels"
    names_key = "label_names"
    torchvision_class = "CIFAR10"
    layout = """
cifar-10-batches-py/
    data_batch_1 .. data_batch_5   pickled dicts: 'data' uint8 10000x3072 (channel-major 3x32x32), 'labels'
    test_batch                     the same, 10000 test images
    batches.meta                   pickled dict: 'label_names' (10 names)
"""
    obtain = ("download https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz and extract it into the "
              "data root (tar xzf cifar-10-python.tar.gz -C <data root>)")
    archive = "cifar-10-python.tar.gz"


@register_dataset("cifar100")
class Cifar100(_Cifar):
    name = "cifar100"
    num_classes = 100
    mean = (0.5071, 0.4867, 0.4408)
    std = (0.2675, 0.2565, 0.2761)
    folder = "cifar-100-python"
    train_files = ("train",)
    test_files = ("test",)
    meta_file = "meta"
    label_key = "fine_labels"
    names_key = "fine_label_names"
    torchvision_class = "CIFAR100"
    layout = """
cifar-100-python/
    train   pickled dict: 'data' uint8 50000x3072 (channel-major 3x32x32), 'fine_labels', 'coarse_labels'
    test    the same, 10000 test images
    meta    pickled dict: 'fine_label_names' (100 names), 'coarse_label_names'
"""
    obtain = ("download https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz and extract it into the "
              "data root (tar xzf cifar-100-python.tar.gz -C <data root>)")
    archive = "cifar-100-python.tar.gz"
