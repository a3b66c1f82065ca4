"""Built-in datasets. Each module registers one or more :class:`kdbench.data.DatasetSource`."""
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
