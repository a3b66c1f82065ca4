"""Built-in datasets. Each module registers one or more :class:`kdbench.data.DatasetSource`.

``digits`` (bundled with scikit-learn), ``cifar10`` / ``cifar100`` (torchvision's pickles),
``stl10`` (binary), ``tiny_imagenet`` and ``mini_imagenet`` (folders / CSV / pickle caches)
and ``imagefolder:<path>`` (your own class sub-folders; a prefix resolver). Each module's
docstring documents its on-disk format, source, split and choices. JPEG sets are decoded
once and cached under ``$KDBENCH_CACHE/decoded`` (default ``~/.cache/kdbench/decoded``).
"""
from __future__ import annotations

from pathlib import Path

from kdbench.data import DatasetSource, ImageData, data_root
from kdbench.registry import DATASETS


def get_dataset(name: str) -> DatasetSource:
    """The dataset registered as ``name`` (``imagefolder:<path>`` included), instantiated."""
    entry = DATASETS.get(name)
    return entry() if isinstance(entry, type) else entry


def load_dataset(name: str, root: str | Path | None = None, download: bool = False) -> ImageData:
    """Load ``name`` from ``root`` (default: :func:`kdbench.data.data_root`)."""
    return get_dataset(name).load(data_root(root), download=download)
