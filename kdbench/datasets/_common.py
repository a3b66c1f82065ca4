"""Small checks shared by the dataset loaders."""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdbench.data import DatasetError, DatasetSource
from kdbench.datasets._pickles import load_data_pickle, normalize_keys

log = logging.getLogger(__name__)


def locate_files(source: DatasetSource, folder: Path, files: Iterable[str],
                 download: Callable[[], None] | None = None) -> Path:
    """``folder`` once it holds every name in ``files``.

    If some are absent and ``download`` is given, it is called first; afterwards a missing
    folder or file raises :meth:`DatasetSource.missing` naming the first absent file.
    """
    files = tuple(files)

    def absent() -> list[str]:
        return [f for f in files if not (folder / f).is_file()]

    if download is not None and absent():
        download()
    if not folder.is_dir():
        raise source.missing(folder, "no such folder")
    lacking = absent()
    if lacking:
        raise source.missing(folder / lacking[0], f"{folder} exists but lacks {', '.join(lacking)}")
    return folder


def read_pickled_dict(source: DatasetSource, path: Path, kind: str, required: Iterable[str] = ()) -> dict:
    """The dict pickled in ``path``, keys decoded to ``str``; a malformed-dataset error if the
    file does not unpickle (``kind`` names what it should be, e.g. "a CIFAR pickle"), holds
    something else than a dict, or lacks one of the ``required`` keys."""
    try:
        obj = load_data_pickle(path)
    except Exception as exc:  # noqa: BLE001 - truncated/corrupt pickles raise many types
        raise source.malformed(path, f"cannot unpickle it ({type(exc).__name__}: {exc}); "
                                     f"the file is truncated or not {kind}") from exc
    if not isinstance(obj, dict):
        raise source.malformed(path, f"expected a pickled dict, found {type(obj).__name__}")
    obj = normalize_keys(obj)
    for key in required:
        if key not in obj:
            raise source.malformed(path, f"no {key!r} entry (keys: {sorted(map(str, obj))})")
    return obj


def torchvision_download(source: DatasetSource, root: Path, class_name: str, **kwargs) -> None:
    """Fetch and extract ``source`` into ``root`` with ``torchvision.datasets.<class_name>``;
    any failure becomes a :class:`DatasetError` that says how to obtain the data by hand."""
    import torchvision.datasets

    log.info("%s: downloading with torchvision.datasets.%s into %s", source.name, class_name, root)
    try:
        Path(root).mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, class_name)(root=str(root), download=True, **kwargs)
    except Exception as exc:  # noqa: BLE001 - network/disk errors of any kind
        raise DatasetError(f"dataset {source.name!r}: download into {root} failed ({type(exc).__name__}: {exc})\n"
                           f"how to obtain it manually: {source.obtain}") from exc


def expect_count(source: DatasetSource, path: Path, what: str, found: int, expected: int) -> None:
    """Raise a malformed-dataset error unless ``found == expected``."""
    if found != expected:
        raise source.malformed(path, f"expected {expected} {what}, found {found}")


def check_labels(source: DatasetSource, path: Path, labels: np.ndarray, num_classes: int, base: int = 0) -> Tensor:
    """``labels`` (``base``-based) as int64 ``0..num_classes-1``, or an error naming the bad values."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise source.malformed(path, f"labels must be a flat list, got shape {labels.shape}")
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise source.malformed(path, f"labels must be integers, got dtype {labels.dtype}")
    out = labels.astype(np.int64) - base
    bad = (out < 0) | (out >= num_classes)
    if bad.any():
        values = sorted({int(v) + base for v in out[bad][:20]})
        raise source.malformed(path, f"{int(bad.sum())} label(s) outside [{base}, {num_classes - 1 + base}], "
                                     f"e.g. {values[:5]}")
    return torch.from_numpy(out)


def per_class_split(num_per_class: list[int], test_counts: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified split of a class-major pool.

    Class ``c`` owns the rows ``offset_c .. offset_c + num_per_class[c] - 1`` of the pool;
    ``test_counts[c]`` of them, drawn with ``np.random.default_rng(seed)`` (one permutation
    per class, classes in order), go to the test split. Returns the sorted train and test
    row indices.
    """
    rng = np.random.default_rng(seed)
    train, test, offset = [], [], 0
    for n, k in zip(num_per_class, test_counts):
        perm = rng.permutation(n)
        test.append(np.sort(perm[:k]) + offset)
        train.append(np.sort(perm[k:]) + offset)
        offset += n
    cat = lambda parts: np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return cat(train), cat(test)
