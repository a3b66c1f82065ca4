"""Loading the pickled dataset files (CIFAR batches, mini-ImageNet caches) safely.

The published pickles come in two flavours:

* written by Python 2 (the CIFAR files, some mini-ImageNet caches): their ``str`` keys and
  the raw buffer of every numpy array are Python-2 byte strings. They are read with
  ``encoding="latin1"`` (what torchvision does), which turns those byte strings into
  ``str`` one-to-one and lets numpy rebuild its arrays;
* written by Python 3: ``str`` keys already (``encoding`` is then irrelevant), or ``bytes``
  keys when someone re-pickled a ``encoding="bytes"`` load.

Either way :func:`normalize_keys` makes every dict key a ``str``, so loaders look up
``"data"`` and never care which flavour they got.

A dataset file has no business importing arbitrary code, so the unpickler only resolves
the handful of globals that numpy arrays and plain containers need; anything else is a
:class:`UnsafePickleError` rather than code execution.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

#: (module, name) pairs a data pickle may reference: numpy's array/dtype reconstructors
#: under their numpy 1 and numpy 2 module names, and how Python 3 pickles bytes (protocol 2).
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"), ("builtins", "bytearray"), ("__builtin__", "bytearray"),
    ("collections", "OrderedDict"),
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle references a global that a data file should not need."""


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise UnsafePickleError(f"it references {module}.{name}, which a data file should not need "
                                "(refusing to run code from a dataset pickle)")


def load_data_pickle(path: Path) -> Any:
    """Unpickle ``path`` (Python 2 or 3 pickle) with ``latin1`` decoding and safe globals.

    Raises whatever :mod:`pickle` raises on a truncated or corrupt file (``EOFError``,
    ``pickle.UnpicklingError``, ...): callers turn it into a :class:`DatasetError`.
    """
    with open(path, "rb") as f:
        return _DataUnpickler(f, encoding="latin1").load()


def normalize_keys(obj: Any) -> Any:
    """``obj`` with every dict key (recursively through dicts) decoded to ``str``."""
    if isinstance(obj, dict):
        return {(k.decode("latin1") if isinstance(k, (bytes, bytearray)) else k): normalize_keys(v)
                for k, v in obj.items()}
    return obj


def as_str(value: Any) -> str:
    """A name read from a pickle (``str`` or ``bytes``) as ``str``."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)
