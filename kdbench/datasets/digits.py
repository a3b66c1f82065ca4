"""``digits``: scikit-learn's bundled 8×8 handwritten digits, the embedded default.

1,797 images of 10 classes (UCI optical recognition of handwritten digits, test part),
shipped inside scikit-learn, so it runs anywhere offline. Images are scaled from 0–16 to
0–255, upsampled bilinearly to 32×32 and repeated to 3 channels so that every CIFAR
architecture runs unchanged, at the resolution its methods' default weights were tuned for
(attention- and factor-based losses scale with the map size: at 16×16, AT and FT weighted
as on CIFAR swamp the cross-entropy). Fixed stratified split: 80 % train / 20 % test
(1,437 / 360) with seed 0. No horizontal flip (a flipped digit is another symbol); random
crops with 2 pixels of padding (half an original pixel).

Recipe: 5 epochs for students, 15 for teachers (``teacher_epochs``), batch 32, lr 0.05: a
student budget short enough for distillation to matter and for the demo (every method, 2
seeds) to fit in a few minutes on two CPU cores, and a teacher clearly better than the
vanilla student — on 8×8 digits every network of the zoo ends near 99 % when trained to
convergence. Batch 32 rather than CIFAR's 64: the same compute per epoch on a CPU, twice
the updates (5 epochs of 64 leave most methods far from converged). Methods with an
auxiliary stage get one epoch of it here (30 of 240 scaled), which shows in their numbers:
the demo is a smoke test of the whole pipeline, not a benchmark.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from kdbench.data import Augment, DatasetSource, ImageData
from kdbench.registry import register_dataset
from kdbench.spec import Recipe


@register_dataset("digits")
class Digits(DatasetSource):
    name = "digits"
    num_classes = 10
    image_size = 32
    mean = (0.305, 0.305, 0.305)
    std = (0.324, 0.324, 0.324)
    augment = Augment(crop_padding=2, hflip=False)
    recipe = Recipe(epochs=5, batch_size=32, lr=0.05, lr_lightweight=0.02, weight_decay=5e-4)
    teacher_epochs = 15
    layout = "nothing on disk: bundled with scikit-learn (sklearn.datasets.load_digits)"
    obtain = "pip install scikit-learn"
    test_fraction = 0.2
    split_seed = 0

    def load(self, root: Path, download: bool = False) -> ImageData:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        bunch = load_digits()
        images = torch.from_numpy(bunch.images.astype(np.float32) * (255.0 / 16.0)).unsqueeze(1)  # N×1×8×8
        images = F.interpolate(images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        images = images.round().clamp(0, 255).to(torch.uint8).repeat(1, 3, 1, 1).contiguous()
        labels = torch.from_numpy(bunch.target.astype(np.int64))
        train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=self.test_fraction,
                                               stratify=bunch.target, random_state=self.split_seed)
        train_idx, test_idx = torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))
        return self.make(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx],
                         [str(c) for c in range(10)])
