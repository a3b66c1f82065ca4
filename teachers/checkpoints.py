"""Checkpoint files of teachers: safe reading, checking against an architecture, and the
architecture named by RepDistiller's folder convention.

* :func:`read_state_dict` reads a file with ``torch.load(weights_only=True)``: tensors and
  plain containers only, so a crafted file cannot run code. It accepts a bare state dict or
  one held under ``state_dict``, ``model`` or ``net`` (RepDistiller and mdistiller save
  ``{'model': state_dict, 'epoch': ..., 'accuracy': ...}``; the ``opt`` namespace of
  RepDistiller's ``*_last.pth`` is allowed as plain data), and strips the ``module.``
  prefix of ``nn.DataParallel``. Anything else is a :class:`CheckpointError` naming the
  file and what was expected.
* :func:`check_state_dict` compares a state dict with a model and raises ONE bounded
  message: counts and the first few missing / unexpected keys, the first few shape
  mismatches, and a class-count mismatch stated plainly.
* :func:`infer_arch` names the architecture of ``<arch>_vanilla/ckpt_epoch_240.pth`` as
  RepDistiller's ``get_teacher_name`` does (the parent folder's first ``_`` segment, three
  for ``wrn_*``), mapped to kdbench's lowercase names (``ResNet50`` -> ``resnet50``,
  ``MobileNetV2`` / ``mobile_half`` -> ``mobilenetv2``, ``ShuffleV1`` -> ``shufflev1``).
  RepDistiller's student folders ``S:<arch>_T:<teacher>_...`` name the student ``<arch>``.

kdbench's own models use RepDistiller's parameter names (see ``students/``), so these
checkpoints load without any key mapping.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import re
import warnings
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

#: Keys under which a checkpoint dict may hold its state dict, in the order tried.
CONTAINER_KEYS = ("state_dict", "model", "net")
#: The prefix ``nn.DataParallel`` / ``DistributedDataParallel`` adds to every key.
PARALLEL_PREFIX = "module."
#: How many keys of each kind a mismatch message lists.
SHOW = 5
#: RepDistiller / mdistiller architecture names whose lowercase form is not kdbench's name.
ALIASES = {"mobile_half": "mobilenetv2"}


class CheckpointError(ValueError):
    """A checkpoint file cannot be used; the message names the file, says what is wrong
    and what is expected."""


# -- reading ------------------------------------------------------------------------------
def read_state_dict(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Tensor]:
    """The state dict held by the file ``path`` (see the module docstring); ``what``
    names the file's role in error messages (e.g. ``"teacher checkpoint"``)."""
    obj = _torch_load(Path(path).expanduser(), what)
    return strip_parallel_prefix(unwrap_state_dict(obj, path, what))


def _torch_load(path: Path, what: str) -> Any:
    """``torch.load`` restricted to weights; every failure becomes a :class:`CheckpointError`."""
    if not path.exists():
        raise CheckpointError(f"{what} {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{what} {path} is not a file (expected a file written by torch.save)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]), warnings.catch_warnings():
            # files pickled with protocol > 2 (plain pickle.dump, other tools) load fine; torch's
            # warning about the protocol is noise for a user who only wants the weights
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ... for bad files
        raise CheckpointError(
            f"{what} {path} cannot be read as PyTorch weights ({_short_reason(exc)}). Expected a file written by "
            f"torch.save holding a state dict (or a dict with it under {'/'.join(CONTAINER_KEYS)}); it is read with "
            f"weights_only=True, so pickled code and custom objects are refused (save model.state_dict(), "
            f"not the model)") from None


def _short_reason(exc: Exception) -> str:
    """One line of ``exc``: the part of torch's long weights-only message that matters."""
    text = str(exc)
    found = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\.\s|\n|$)", text)
    if found:
        text = found.group(1)
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
    sentence = line.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {sentence[:160]}"


def unwrap_state_dict(obj: Any, path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Tensor]:
    """``obj`` itself if it is a state dict (a non-empty dict of tensors), else the state
    dict under one of :data:`CONTAINER_KEYS`; otherwise a :class:`CheckpointError`."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, Mapping):
        for key in CONTAINER_KEYS:
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
        keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        found = f"a dict with keys {keys}" if obj else "an empty dict"
    else:
        found = f"a {type(obj).__name__}"
    raise CheckpointError(f"{what} {path} holds {found}; expected a state dict (parameter name -> tensor) or a dict "
                          f"holding one under {', '.join(repr(k) for k in CONTAINER_KEYS)} (RepDistiller's "
                          f"{{'model': state_dict, ...}})")


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())


def strip_parallel_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Keys without the ``module.`` prefix when every key has it (a DataParallel model)."""
    if all(k.startswith(PARALLEL_PREFIX) for k in state_dict):
        return {k[len(PARALLEL_PREFIX):]: v for k, v in state_dict.items()}
    return state_dict


# -- checking against an architecture --------------------------------------------------------
def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], *, arch: str, path: str | os.PathLike,
                     dataset: str | None = None, what: str = "checkpoint") -> None:
    """Raise one bounded :class:`CheckpointError` if ``state_dict`` does not fit ``model``
    (architecture ``arch`` built for ``dataset``'s class count): missing and unexpected
    keys, shape mismatches, and a class-count mismatch said in words."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [(k, tuple(state_dict[k].shape), tuple(v.shape)) for k, v in expected.items()
              if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    classes = _class_counts(model, state_dict)
    if not (missing or unexpected or shapes):
        return
    problems = []
    if classes and classes[0] != classes[1]:
        problems.append(f"the checkpoint has {classes[0]} classes, dataset {dataset or '?'} has {classes[1]}")
        head = {f"{_head_name(model)}.weight", f"{_head_name(model)}.bias"}
        shapes = [s for s in shapes if s[0] not in head]
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_first(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_first(unexpected)}")
    if shapes:
        by_key = {k: (a, b) for k, a, b in shapes}
        picked, rest = _pick(list(by_key))
        shown = "; ".join(f"{k} is {list(by_key[k][0])} in the checkpoint, {list(by_key[k][1])} in the model"
                          for k in picked)
        problems.append(f"{len(shapes)} shape mismatch(es): {shown}" + (f"; ... (+{rest} more)" if rest else ""))
    raise CheckpointError(f"{what} {path} does not fit architecture {arch}: {'; '.join(problems)}. "
                          f"Check the architecture (write ARCH=PATH) and the dataset; kdbench's models use "
                          f"RepDistiller's parameter names, so its checkpoints of the same architecture fit.")


def _pick(keys: list[str]) -> tuple[list[str], int]:
    """Up to :data:`SHOW` of ``keys``, one per module (a BatchNorm's five tensors count
    once), and how many keys are not shown."""
    shown: dict[str, str] = {}
    for k in keys:
        shown.setdefault(k.rsplit(".", 1)[0], k)
        if len(shown) == SHOW:
            break
    return list(shown.values()), len(keys) - len(shown)


def _first(keys: list[str]) -> str:
    """The keys :func:`_pick` chooses, comma-separated, and how many more there are."""
    shown, rest = _pick(keys)
    text = ", ".join(k if len(k) <= 80 else k[:77] + "..." for k in shown)
    return text + (f", ... (+{rest} more)" if rest else "")


def _head_name(model: nn.Module) -> str | None:
    """The module name of ``model.get_classifier()`` (``fc``, ``linear``, ``classifier.0``...)."""
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    return next((name for name, m in model.named_modules() if m is head), None) if head is not None else None


def _class_counts(model: nn.Module, state_dict: Mapping[str, Tensor]) -> tuple[int, int] | None:
    """(classes in the checkpoint, classes of the model) read from the classifier weight."""
    name = _head_name(model)
    key = f"{name}.weight"
    if name is None or key not in state_dict or key not in model.state_dict():
        return None
    ckpt, ours = state_dict[key], model.state_dict()[key]
    if ckpt.dim() != ours.dim() or ckpt.dim() < 1 or tuple(ckpt.shape[1:]) != tuple(ours.shape[1:]):
        return None  # another head altogether: the shape list says so
    return int(ckpt.shape[0]), int(ours.shape[0])


def load_checkpoint(model: nn.Module, path: str | os.PathLike, *, arch: str, dataset: str | None = None,
                    what: str = "checkpoint") -> None:
    """Read ``path`` safely, check it against ``model`` and load it (strict)."""
    state_dict = read_state_dict(path, what)
    check_state_dict(model, state_dict, arch=arch, path=path, dataset=dataset, what=what)
    model.load_state_dict(state_dict)


@functools.lru_cache(maxsize=16)
def _verified(arch: str, path: str, stamp: tuple[int, int], num_classes: int, dataset: str | None, in_chans: int,
              image_size: int) -> None:
    """Build ``arch`` and load ``path`` into it (successes are cached per file version)."""
    from kdbench.models import create_model

    model = create_model(arch, num_classes, in_chans=in_chans, image_size=image_size)
    load_checkpoint(model, path, arch=arch, dataset=dataset, what="teacher checkpoint")


def verify_teacher_checkpoint(arch: str, path: str | os.PathLike, num_classes: int | None = None,
                              dataset: str | None = None, in_chans: int = 3, image_size: int = 32) -> None:
    """Check before anything trains that ``path`` is a safe state dict of ``arch`` built for
    ``dataset`` (``num_classes`` classes when known, else the checkpoint's own count), or
    raise a :class:`CheckpointError`."""
    p = Path(path).expanduser()
    if not num_classes:
        num_classes = _checkpoint_classes(arch, read_state_dict(p, "teacher checkpoint"))
    st = p.stat() if p.is_file() else None
    _verified(arch, str(p), (st.st_mtime_ns, st.st_size) if st else (0, 0), int(num_classes), dataset,
              in_chans, image_size)


def _checkpoint_classes(arch: str, state_dict: Mapping[str, Tensor]) -> int:
    """The class count a checkpoint's classifier has (so the check covers keys and shapes)."""
    from kdbench.models import create_model

    probe = create_model(arch, 1)
    weight = state_dict.get(f"{_head_name(probe)}.weight")
    return int(weight.shape[0]) if isinstance(weight, Tensor) and weight.dim() >= 1 else 1


# -- the architecture from RepDistiller's folder names ---------------------------------------
def reference_name(folder: str) -> str:
    """The architecture RepDistiller's ``get_teacher_name`` reads from a folder name
    (``resnet32x4_vanilla`` -> ``resnet32x4``, ``wrn_40_2_vanilla`` -> ``wrn_40_2``);
    ``mobile_half_*`` keeps its two segments, and a student folder
    ``S:<arch>_T:<teacher>_...`` names ``<arch>``."""
    if folder.startswith("S:"):
        return folder[2:].split("_T:")[0]
    segments = folder.split("_")
    if segments[0].lower() == "wrn":
        return "_".join(segments[:3])
    if segments[0].lower() == "mobile":
        return "_".join(segments[:2])
    return segments[0]


def infer_arch(path: str | os.PathLike) -> str:
    """kdbench's name of the architecture of checkpoint ``path`` from its parent folder
    (RepDistiller's convention); a :class:`CheckpointError` asking for ARCH=PATH otherwise."""
    from kdbench.registry import MODELS

    folder = Path(path).expanduser().parent.name
    name = reference_name(folder).lower() if folder else ""
    arch = ALIASES.get(name, name)
    if not arch or ":" in arch or arch not in MODELS:
        raise CheckpointError(
            f"cannot tell the architecture of {path} from its folder name {folder!r} (RepDistiller's convention is "
            f"<arch>_vanilla/ckpt_epoch_240.pth, e.g. resnet32x4_vanilla); write ARCH=PATH, e.g. "
            f"--teacher-ckpt resnet32x4={path} (architectures: `kdbench list models`)")
    log.info("teacher checkpoint %s: architecture %s (from its folder name %r)", path, arch, folder)
    return arch


def parse_teacher_ckpt(item: str) -> tuple[str, str]:
    """``(arch, path)`` of a ``--teacher-ckpt`` value: ``ARCH=PATH``, or a bare ``PATH``
    whose architecture :func:`infer_arch` reads from the folder name."""
    arch, eq, path = item.partition("=")
    arch = arch.strip()
    if eq and arch and "/" not in arch and os.sep not in arch and not Path(item).expanduser().is_file():
        if not path.strip():
            raise CheckpointError(f"--teacher-ckpt {item!r}: no path after '='; write ARCH=PATH, "
                                  f"e.g. resnet32x4=ckpts/resnet32x4_vanilla/ckpt_epoch_240.pth")
        return arch, path.strip()
    return infer_arch(item), item
