"""``stl10``: STL-10 in its binary format (the labelled part).

Source: Coates, Lee & Ng, *An Analysis of Single-Layer Networks in Unsupervised Feature
Learning* (AISTATS 2011), https://cs.stanford.edu/~acoates/stl10/ — the archive
``stl10_binary.tar.gz``, which ``torchvision.datasets.STL10(download=True)`` extracts.

Format (``stl10_binary/``): ``train_X.bin`` / ``test_X.bin`` are raw uint8 images of
3×96×96 bytes each, one after another, with no header. Within an image the three channel
planes come in RGB order and each plane is stored **column-major** (the first 96 bytes are
the leftmost column, top to bottom), so a plane read as a 96×96 array must be transposed
to get rows × columns. ``train_y.bin`` / ``test_y.bin`` hold one uint8 label per image,
1–10 (mapped here to 0–9). ``class_names.txt`` has one class name per line. The unlabelled
100,000 images (``unlabeled_X.bin``) and ``fold_indices.txt`` are not used.

Split: the official one, 5,000 train / 8,000 test (all ten training folds together).

Choices: images stay 96×96 (the native size); augmentation is random crop 96 with padding
12 (an eighth of the side, as padding 4 is for 32) + horizontal flip; mean/std are the
commonly used per-channel values of the STL-10 images. Recipe: the same shape as CIFAR-100's
(RepDistiller defaults), since there is no standard KD recipe for STL-10; grids override it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from kdbench.data import Augment, DatasetSource, ImageData
from kdbench.datasets._common import check_labels, expect_count, locate_files, torchvision_download
from kdbench.registry import register_dataset
from kdbench.spec import Recipe

log = logging.getLogger(__name__)

_SIDE = 96
_IMAGE_BYTES = 3 * _SIDE * _SIDE


@register_dataset("stl10")
class STL10(DatasetSource):
    name = "stl10"
    num_classes = 10
    image_size = _SIDE
    mean = (0.4467, 0.4398, 0.4066)
    std = (0.2603, 0.2566, 0.2713)
    augment = Augment(crop_padding=12, hflip=True)
    recipe = Recipe()
    can_download = True
    folder = "stl10_binary"
    layout = """
stl10_binary/
    train_X.bin       5000 images, 3x96x96 uint8 each, channel planes column-major, no header
    train_y.bin       5000 uint8 labels 1..10
    test_X.bin        8000 images, same format
    test_y.bin        8000 uint8 labels 1..10
    class_names.txt   10 class names, one per line
"""
    obtain = ("download http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz (2.6 GB) and extract it "
              "into the data root (tar xzf stl10_binary.tar.gz -C <data root>)")
    archive = "stl10_binary.tar.gz"
    files = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin", "class_names.txt")

    def __init__(self, expected_train: int = 5000, expected_test: int = 8000) -> None:
        self.expected_train = expected_train
        self.expected_test = expected_test

    def load(self, root: Path, download: bool = False) -> ImageData:
        folder = locate_files(self, Path(root) / self.folder, self.files,
                              (lambda: self.download(Path(root))) if download else None)
        classes = self._read_classes(folder / "class_names.txt")
        train_x, train_y = self._read_split(folder, "train", self.expected_train)
        test_x, test_y = self._read_split(folder, "test", self.expected_test)
        log.info("%s: loaded %d train / %d test images from %s", self.name, len(train_y), len(test_y), folder)
        return self.make(train_x, train_y, test_x, test_y, classes)

    def _read_classes(self, path: Path) -> list[str]:
        try:
            names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise self.malformed(path, f"cannot read it ({exc})") from exc
        expect_count(self, path, "class names", len(names), self.num_classes)
        return names

    def _read_split(self, folder: Path, split: str, expected: int) -> tuple[torch.Tensor, torch.Tensor]:
        x_path, y_path = folder / f"{split}_X.bin", folder / f"{split}_y.bin"
        size = x_path.stat().st_size
        if size % _IMAGE_BYTES:
            raise self.malformed(x_path, f"size {size} bytes is not a multiple of one image (3x96x96 = "
                                         f"{_IMAGE_BYTES} bytes): the file is truncated or not STL-10")
        n = size // _IMAGE_BYTES
        expect_count(self, x_path, f"{split} images", n, expected)
        labels = np.fromfile(y_path, dtype=np.uint8)
        if labels.size != n:
            raise self.malformed(y_path, f"{labels.size} labels for the {n} images of {x_path.name}")
        y = check_labels(self, y_path, labels, self.num_classes, base=1)
        raw = np.fromfile(x_path, dtype=np.uint8).reshape(n, 3, _SIDE, _SIDE)  # [image, channel, column, row]
        images = torch.from_numpy(raw).transpose(2, 3).contiguous()  # -> [image, channel, row, column]
        return images, y

    def download(self, root: Path) -> None:
        """Fetch and extract the archive into ``root`` with torchvision's STL10 class."""
        torchvision_download(self, root, "STL10", split="train")
