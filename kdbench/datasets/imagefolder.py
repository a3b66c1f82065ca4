"""``imagefolder:<path>``: your own images, one sub-folder per class.

Two layouts, detected automatically:

* split: ``<path>/train/<class>/*`` and ``<path>/test/<class>/*`` (or ``<path>/val/<class>/*``
  when there is no ``test/``; with both, ``test/`` is the test split and ``val/`` is
  ignored). Classes are the sorted sub-folders of ``train/``; a test class must also
  exist in ``train/``.
* flat: ``<path>/<class>/*``, split per class with a fixed stratified 80/20 split (seed 0):
  ``round(0.2 · n)`` images of a class (at least 1, at most ``n - 1``) go to the test split,
  drawn with ``numpy.random.default_rng(0)``; a class with a single image stays in train.

Images are files with the usual extensions (jpg, jpeg, png, bmp, ppm, pgm, tif, tiff, webp;
any case); hidden files and folders are ignored. Every image is converted to RGB.

Image size: ``ImageFolder(path, image_size=S)`` resizes everything to S×S. The default
(``None``) keeps the native size when all images share one size no larger than 128 on
either side (a prepared set, e.g. 32×32 or 64×64 crops), and otherwise resizes everything to
32×32 (the CIFAR input size every built-in student accepts). Resizing ignores the aspect
ratio and uses antialiased bilinear filtering.

``<path>`` is taken as given: a relative path resolves against the current directory when
the name is resolved (not against the data root). The mean/std used for normalisation are
computed from the training images; augmentation is random crop with padding of an eighth of
the (smaller) side + horizontal flip; the recipe is the CIFAR-100 one (RepDistiller
defaults). Decoded images are cached (see :mod:`._decode`).
"""
from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from kdbench.data import Augment, DatasetError, DatasetSource, ImageData
from kdbench.datasets._common import per_class_split
from kdbench.datasets._decode import SizeSpec, decode_images, image_size_of, list_images
from kdbench.registry import DATASETS
from kdbench.spec import Recipe

log = logging.getLogger(__name__)

#: Largest side kept at native size by the automatic size rule.
MAX_NATIVE_SIDE = 128
#: Size used by the automatic rule when the images differ in size or are large.
FALLBACK_SIZE = 32


class ImageFolder(DatasetSource):
    """A folder of class sub-folders, bound to one path (see the module docstring)."""

    recipe = Recipe()
    layout = """
<path>/train/<class>/<image>   and   <path>/test/<class>/<image>  (or <path>/val/<class>/<image>)
or, split 80/20 per class by kdbench:
<path>/<class>/<image>
images: .jpg .jpeg .png .bmp .ppm .pgm .tif .tiff .webp
"""
    obtain = ("put your images in one sub-folder per class (see the layout) and pass imagefolder:<path>; "
              "relative paths are relative to the current directory, not the data root")

    def __init__(self, path: str | os.PathLike, image_size: int | None = None, test_fraction: float = 0.2,
                 split_seed: int = 0, use_cache: bool = True) -> None:
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.name = f"imagefolder:{os.fspath(path)}"
        self.path = Path(os.path.abspath(Path(path).expanduser()))
        self.requested_size = image_size
        self.test_fraction = test_fraction
        self.split_seed = split_seed
        self.use_cache = use_cache
        self.num_classes = 0  # known after load
        if image_size is not None:
            self.image_size = image_size

    def describe(self) -> str:
        return f"class sub-folders at {self.path}"

    def repair(self, path: Path) -> str:
        """Your own images have no archive to fetch again: fix the file or folder, or remove it."""
        return (f"how to fix it: replace {path} with a good copy or remove it (these are your own images; "
                "kdbench only reads them and re-decodes what changed).")

    def load(self, root: Path | None = None, download: bool = False) -> ImageData:
        """Load the images (``root`` and ``download`` do not apply to a folder of your own)."""
        path = self.path
        if not path.is_dir():
            raise self.missing(path, "no such folder; imagefolder paths are relative to the current directory")
        test_dir = next((path / d for d in ("test", "val") if (path / d).is_dir()), None)
        if (path / "train").is_dir():
            if test_dir is None:
                raise self.malformed(path, "it has train/ but neither test/ nor val/; add one, or use the flat "
                                           "<path>/<class>/ layout to let kdbench split")
            classes, train_files, train_labels = self._scan(path / "train", None)
            _, test_files, test_labels = self._scan(test_dir, classes)
            files = train_files + test_files
            is_train = np.array([True] * len(train_files) + [False] * len(test_files))
            labels = np.array(train_labels + test_labels, dtype=np.int64)
            layout = f"train/ + {test_dir.name}/"
        else:
            classes, files, label_list = self._scan(path, None)
            labels = np.array(label_list, dtype=np.int64)
            counts = np.bincount(labels, minlength=len(classes)).tolist()
            tests = [0 if n < 2 else min(n - 1, max(1, round(n * self.test_fraction))) for n in counts]
            train_idx, _ = per_class_split(counts, tests, self.split_seed)  # files are class-major
            is_train = np.zeros(len(files), dtype=bool)
            is_train[train_idx] = True
            layout = f"flat, {1 - self.test_fraction:.0%}/{self.test_fraction:.0%} split (seed {self.split_seed})"
        log.info("%s: %d classes, %d images, layout %s", self.name, len(classes), len(files), layout)

        if self.requested_size is not None:
            size: SizeSpec = (self.requested_size, self.requested_size)
            tag_size = f"{self.requested_size}x{self.requested_size}"
        else:
            size, tag_size = self._auto_size, "auto"
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", path.name) or "root"
        images = decode_images(files, source=self, base=path, size=size, tag=f"imagefolder-{safe}-{tag_size}",
                               use_cache=self.use_cache)
        train_sel, test_sel = torch.from_numpy(np.flatnonzero(is_train)), torch.from_numpy(np.flatnonzero(~is_train))
        y = torch.from_numpy(labels)
        train_x = images[train_sel]
        self.num_classes = len(classes)
        self.image_size = int(images.shape[2])
        self.mean, self.std = channel_stats(train_x)
        self.augment = Augment(crop_padding=max(1, min(images.shape[2:]) // 8), hflip=True)
        return self.make(train_x, y[train_sel], images[test_sel], y[test_sel], classes)

    def _scan(self, parent: Path, classes: list[str] | None) -> tuple[list[str], list[Path], list[int]]:
        """Class folders of ``parent`` and their images (class-major, sorted by name).

        With ``classes=None`` the folder defines the classes and every class folder must
        hold images; otherwise (a test folder) its class folders must be among ``classes``.
        """
        is_reference = classes is None  # train/ (or the flat folder) defines the classes
        dirs = sorted((p for p in parent.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
        if classes is None:
            classes = [d.name for d in dirs]
            if not classes:
                raise self.missing(parent, "no class sub-folders in it")
        else:
            unknown = [d.name for d in dirs if d.name not in classes]
            if unknown:
                raise self.malformed(parent, f"class folder(s) {', '.join(unknown[:5])} do not exist in train/ "
                                             "(label out of range)")
        index = {c: i for i, c in enumerate(classes)}
        files: list[Path] = []
        labels: list[int] = []
        for d in dirs:
            found = list_images(d)
            if not found and is_reference:
                raise self.malformed(d, "this class folder holds no images")
            files += found
            labels += [index[d.name]] * len(found)
        if not files:
            raise self.malformed(parent, "no images in its class folders")
        return classes, files, labels

    def _auto_size(self, files: Sequence[Path]) -> tuple[int, int]:
        sizes = Counter(image_size_of(p, self) for p in files)
        if len(sizes) == 1:
            (h, w), = sizes
            if max(h, w) <= MAX_NATIVE_SIDE:
                log.info("%s: all images are %dx%d: kept at native size", self.name, h, w)
                return h, w
        common = sizes.most_common(1)[0][0]
        log.info("%s: images of %d sizes (most common %dx%d, largest side %d): resized to %dx%d", self.name,
                 len(sizes), common[0], common[1], max(max(s) for s in sizes), FALLBACK_SIZE, FALLBACK_SIZE)
        return FALLBACK_SIZE, FALLBACK_SIZE


def channel_stats(images: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std (in [0, 1] units) of a uint8 ``N×C×H×W`` tensor."""
    c = images.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    total_sq = torch.zeros(c, dtype=torch.float64)
    for chunk in images.split(1024):
        x = chunk.to(torch.float64).div_(255.0)
        total += x.sum(dim=(0, 2, 3))
        total_sq += x.pow_(2).sum(dim=(0, 2, 3))
    count = max(1, images.shape[0] * images.shape[2] * images.shape[3])
    mean = total / count
    std = (total_sq / count - mean.pow(2)).clamp_min(1e-12).sqrt()
    return tuple(round(float(v), 6) for v in mean), tuple(round(float(v), 6) for v in std)


def resolve_imagefolder(rest: str) -> ImageFolder:
    """Prefix resolver: ``imagefolder:<path>`` -> an :class:`ImageFolder` bound to ``<path>``."""
    if not rest.strip():
        raise DatasetError("imagefolder needs a folder: use imagefolder:<path> (relative to the current directory)")
    return ImageFolder(rest)


DATASETS.register_prefix("imagefolder", resolve_imagefolder)
