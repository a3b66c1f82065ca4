"""Datasets as whole uint8 tensors, with batched tensor augmentation on the training device.

Every dataset loader returns an :class:`ImageData`: the train and test images as uint8
``N×C×H×W`` tensors with int64 labels. Training batches are cut from that tensor and
augmented as a whole batch with tensor ops (random rotation, random crop with zero
padding, horizontal flip) on the training device — far cheaper than per-sample PIL
transforms, and deterministic under a seed: the order and augmentation of epoch ``e``
depend only on ``(seed, stage, e)``, so a run resumed from an epoch checkpoint replays
exactly.

Which augmentation and normalisation a run uses is part of its recipe
(:attr:`kdbench.spec.Recipe.augment`, hence of its key): ``"crop"`` (the dataset's padded
random crop + flip) or ``"rotate"`` (random rotation + flip, mdistiller's Tiny-ImageNet
pipeline). Each dataset maps both names to a :class:`Pipeline` (augmentation, mean, std);
:meth:`ImageData.for_recipe` selects one.

Data errors (:class:`DatasetError`) are built by :meth:`DatasetSource.missing` and
:meth:`DatasetSource.malformed`: what is wrong and where, the expected layout, and — always
last — how to get a good copy.

A method that needs more from the data (CRD's negatives, CCD's second view) wraps the
:class:`TrainData` through ``Method.wrap_train_dataset`` and overrides
:meth:`TrainData.extend`. A batch is built in two steps so that every method of a grid
column sees the same standard batch and a fused column (:mod:`kdbench.column`) builds it
once: :meth:`TrainData.base_batch` cuts, augments and normalises the standard batch from
the shared epoch generator; :meth:`TrainData.extend` adds what one method needs, drawing
its own randomness from the method's own generator (:func:`member_generator`), never from
the shared stream.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor

from kdbench.spec import Recipe

log = logging.getLogger(__name__)

DEFAULT_DATA_ROOT = Path("~/.cache/kdbench/data")


class DatasetError(RuntimeError):
    """A dataset is missing, malformed or inconsistent; the message says what and how to fix it."""


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """``--data-root`` if given, else ``$KDBENCH_DATA``, else ``~/.cache/kdbench/data``."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("KDBENCH_DATA")
    return Path(env).expanduser() if env else DEFAULT_DATA_ROOT.expanduser()


#: The recipe's ``augment`` choices (:attr:`kdbench.spec.Recipe.augment` validates the same names).
AUGMENT_CHOICES = ("crop", "rotate")
#: Range of the ``"rotate"`` choice: mdistiller's Tiny-ImageNet ``transforms.RandomRotation(20)``.
ROTATE_DEGREES = 20.0


@dataclass(frozen=True)
class Augment:
    """Batched training augmentation, applied in this order (torchvision equivalents):

    * ``rotate_degrees > 0``: random rotation by an angle uniform in ``[-d, d]`` degrees
      about the image centre, nearest neighbour, zero fill, same size
      (``RandomRotation(d)`` with its defaults);
    * ``crop_padding > 0``: random crop of the original size from a zero-padded image
      (``RandomCrop(size, padding=pad)``);
    * ``hflip``: horizontal flip with probability 0.5 (``RandomHorizontalFlip()``).
    """

    crop_padding: int = 4
    hflip: bool = True
    rotate_degrees: float = 0.0

    def __post_init__(self) -> None:
        if self.crop_padding < 0:
            raise ValueError(f"Augment crop_padding must be >= 0, got {self.crop_padding}")
        if not 0 <= self.rotate_degrees <= 180:
            raise ValueError(f"Augment rotate_degrees must be in [0, 180], got {self.rotate_degrees}")


@dataclass(frozen=True)
class Pipeline:
    """What one recipe ``augment`` choice means for a dataset: its batched training
    augmentation and the normalisation of train and test inputs."""

    augment: Augment
    mean: tuple[float, ...]
    std: tuple[float, ...]


def default_pipelines(augment: Augment, mean: tuple[float, ...], std: tuple[float, ...]) -> dict[str, Pipeline]:
    """Both recipe choices for a dataset whose standard pipeline is ``augment`` + ``mean``/``std``:
    ``"crop"`` is exactly that; ``"rotate"`` replaces the crop by a ±:data:`ROTATE_DEGREES`
    rotation, keeps the dataset's flip setting and its normalisation."""
    rotate = Augment(crop_padding=0, hflip=augment.hflip, rotate_degrees=ROTATE_DEGREES)
    return {"crop": Pipeline(augment, tuple(mean), tuple(std)), "rotate": Pipeline(rotate, tuple(mean), tuple(std))}


@dataclass
class ImageData:
    """A loaded dataset: whole-set uint8 tensors (``N×C×H×W``) and int64 labels."""

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Augment = field(default_factory=Augment)
    #: the recipe ``augment`` choices (see :func:`default_pipelines`); missing ones are
    #: filled from ``augment``/``mean``/``std`` as the ``"crop"`` pipeline
    pipelines: dict[str, Pipeline] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            x, y = getattr(self, f"{split}_images"), getattr(self, f"{split}_labels")
            if x.dtype != torch.uint8 or x.dim() != 4:
                raise self._contract_error(f"{split} images must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
            if y.shape != (x.shape[0],):
                raise self._contract_error(f"{split} has {x.shape[0]} images but {tuple(y.shape)} labels")
            if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.classes)):
                raise self._contract_error(f"{split} labels outside [0, {len(self.classes)})")
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise self._contract_error(f"train images {tuple(self.train_images.shape[1:])} and test images "
                                       f"{tuple(self.test_images.shape[1:])} differ in shape")
        self.pipelines = {**default_pipelines(self.augment, self.mean, self.std), **self.pipelines}

    def _contract_error(self, problem: str) -> DatasetError:
        """An inconsistent loader result: the loader, not the files, needs fixing."""
        return DatasetError(f"dataset {self.name!r}: {problem}\n"
                            f"how to fix it: this is a bug in the loader of {self.name!r} (its load() must return "
                            "uint8 N×C×H×W images of one shape and one int64 label in [0, classes) per image); "
                            "report it to the dataset's author")

    def for_recipe(self, recipe: Recipe) -> "ImageData":
        """This data with the augmentation and normalisation that ``recipe.augment`` selects
        (the tensors are shared, not copied)."""
        if recipe.augment not in self.pipelines:
            raise DatasetError(f"dataset {self.name!r} has no {recipe.augment!r} pipeline (it has "
                               f"{sorted(self.pipelines)})\nhow to fix it: set the recipe's augment to one of "
                               f"{sorted(self.pipelines)} (grid file: recipe: {{augment: crop}})")
        chosen = self.pipelines[recipe.augment]
        return dataclasses.replace(self, augment=chosen.augment, mean=chosen.mean, std=chosen.std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def fingerprint(self) -> str:
        """A short content hash (shapes, labels and a sparse sample of pixels)."""
        h = hashlib.sha256()
        for t in (self.train_images, self.test_images):
            h.update(str(tuple(t.shape)).encode())
            flat = t.reshape(-1)
            h.update(flat[:: max(1, flat.numel() // 65536)].numpy().tobytes())
        for t in (self.train_labels, self.test_labels):
            h.update(t.numpy().tobytes())
        return h.hexdigest()[:16]


@dataclass
class Batch:
    """One training or evaluation batch, already on the device.

    ``x`` is normalised float input, ``y`` the labels, ``index`` the dataset indices of the
    rows (CRD's memory needs them). ``extras`` carries what a dataset wrapper adds
    (e.g. ``contrast_idx`` for CRD). A wrapper may also change the number of rows (CCD
    doubles the batch with a second view): ``y`` always matches ``x`` row for row.
    """

    x: Tensor
    y: Tensor
    index: Tensor
    extras: dict[str, Tensor] = field(default_factory=dict)
    #: the standard-augmented uint8 rows ``x`` was normalised from, and the rows' indices on
    #: the CPU (set by :meth:`TrainData.base_batch`, for :meth:`TrainData.extend`)
    source: Tensor | None = None
    index_cpu: Tensor | None = None

    def __len__(self) -> int:
        return self.x.shape[0]

    def copy(self) -> "Batch":
        """A shallow copy with its own ``extras`` dict (tensors are shared, not copied)."""
        return dataclasses.replace(self, extras=dict(self.extras))


def epoch_generator(seed: int, stage: int, epoch: int) -> torch.Generator:
    """A CPU generator determined by (seed, stage, epoch) alone (exact resume)."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + stage * 10_007 + epoch) % (2**63 - 1))
    return g


def member_generator(seed: int, stage: int, epoch: int, member: str) -> torch.Generator:
    """A method's own CPU generator for the extra draws of its batches (CRD's negatives,
    CCD's second view), determined by (seed, stage, epoch, method name) alone and
    independent of the shared :func:`epoch_generator` stream."""
    salt = int.from_bytes(hashlib.sha256(member.encode()).digest()[:6], "big")
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + stage * 10_007 + epoch + salt * 7_919) % (2**63 - 1))
    return g


def rotate_batch(x: Tensor, angles: Tensor) -> Tensor:
    """Each image of the batch ``x`` (``B×C×H×W``, any dtype) rotated counter-clockwise by
    its angle in degrees (``angles``, ``B`` values) about the image centre.

    The semantics of ``torchvision.transforms.functional.rotate(img, angle)`` with its
    defaults (and so of ``RandomRotation``): nearest neighbour, output of the input size,
    zero where the source falls outside the image. Output pixel centre ``p`` (relative to
    the image centre, y pointing down) takes the input pixel nearest to ``R(-angle)·p``,
    found with :func:`torch.nn.functional.affine_grid` / ``grid_sample``. Equal to
    torchvision's rotate on tensors (tested); where a source lies exactly halfway between
    two pixels (±90° on an image with one odd and one even side) either may be taken, and
    PIL images (what torchvision's RandomRotation rotates in a PIL pipeline) differ in the
    odd near-tie pixel (≤ 0.2 % of a 64×64 image, tested).
    """
    b, c, h, w = x.shape
    rad = angles.to(device=x.device, dtype=torch.float32).view(b) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    zero = torch.zeros_like(cos)
    # normalised coordinates (x/(w/2), y/(h/2)): the aspect ratio enters the off-diagonal terms
    theta = torch.stack([torch.stack([cos, -sin * (h / w), zero], dim=1),
                         torch.stack([sin * (w / h), cos, zero], dim=1)], dim=1)
    grid = torch.nn.functional.affine_grid(theta, [b, c, h, w], align_corners=False)
    out = torch.nn.functional.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out.to(x.dtype)  # nearest copies input values: exact for uint8


#: PyTorch runs a CPU tensor op of fewer elements than this on the calling thread alone
#: (``at::internal::GRAIN_SIZE``); larger ones fork and join its intra-op thread pool.
SERIAL_ELEMENTS = 32768


def serial_pieces(rows: int, row_elements: int, device: torch.device) -> list[slice]:
    """Row ranges that split a batch of ``rows`` rows of ``row_elements`` elements each into
    pieces small enough that an elementwise op or copy on one piece runs on the calling
    thread (fewer than :data:`SERIAL_ELEMENTS` elements); one range — the whole batch — on
    other devices, or when a single row is already that big.

    Why: the batch ops here are memory-bound copies of a few hundred kB, which a second
    thread barely speeds up, but every op that forks and joins the intra-op pool waits for
    its slowest thread. On a small machine shared with other work (2 cores here, a test
    run or a training job next door) a descheduled pool thread costs a scheduler tick per
    op: whole-batch ops made an epoch up to 20× slower under load, piecewise ones do not
    notice. Splitting along the batch dimension changes no value (every op is per row)."""
    step = (SERIAL_ELEMENTS - 1) // max(1, row_elements)
    if device.type != "cpu" or step < 1 or step >= rows:
        return [slice(0, rows)]
    return [slice(i, min(rows, i + step)) for i in range(0, rows, step)]


def take_rows(images: Tensor, idx: Tensor) -> Tensor:
    """``images[idx]`` (rows of a dataset tensor, ``idx`` on its device) as a new contiguous
    tensor, cut with :meth:`~torch.Tensor.index_select` (many times faster on CPU than
    advanced indexing, same values) in :func:`serial_pieces`."""
    out = images.new_empty((len(idx), *images.shape[1:]))
    for piece in serial_pieces(len(idx), images[0].numel() if len(images) else 1, images.device):
        torch.index_select(images, 0, idx[piece], out=out[piece])
    return out


def augment_batch(x: Tensor, augment: Augment, gen: torch.Generator) -> Tensor:
    """``augment`` applied to a uint8 batch ``B×C×H×W`` as whole-batch tensor ops on ``x``'s
    device: random rotation, random crop (zero padding ``augment.crop_padding``) and
    horizontal flip, each only if enabled (see :class:`Augment`). Returns a new contiguous
    batch.

    Random numbers come from the CPU generator ``gen``, drawn in this order: angles (``B``),
    crop offsets (``2×B``: rows, then columns), flip coins (``B``); a disabled step draws
    nothing. CPU and CUDA runs therefore see the same augmentation; only the (tiny) random
    vectors cross to the device. Crop and flip run as one gather (:func:`crop_flip_batch`).
    """
    b = x.shape[0]
    if augment.rotate_degrees > 0:
        d = float(augment.rotate_degrees)
        angles = torch.rand(b, generator=gen, dtype=torch.float64) * (2 * d) - d
        x = rotate_batch(x, angles)
    pad = augment.crop_padding
    offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen) if pad > 0 else None
    flip = torch.rand(b, generator=gen) < 0.5 if augment.hflip else None
    if offsets is None and flip is None:
        return x.contiguous()
    return crop_flip_batch(x, pad, offsets, flip)


_scratch = threading.local()


def _canvas(rows: int, c: int, h: int, w: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A zero-filled contiguous ``rows×c×h×w`` scratch tensor for :func:`crop_flip_batch`,
    kept per thread and reused (a prefix of a larger one when it has more rows): callers
    write only its interior, so its border stays zero, and only copies of it leave
    :func:`crop_flip_batch`."""
    key = (c, h, w, dtype, device)
    canvas = getattr(_scratch, "canvas", None)
    if getattr(_scratch, "key", None) != key or canvas.shape[0] < rows:
        canvas = torch.zeros(rows, c, h, w, dtype=dtype, device=device)
        _scratch.key, _scratch.canvas = key, canvas
    return canvas[:rows]


def crop_flip_batch(x: Tensor, pad: int, offsets: Tensor | None, flip: Tensor | None) -> Tensor:
    """Image ``i`` of ``x`` (``B×C×H×W``) zero-padded by ``pad``, cropped back to ``H×W`` at
    row ``offsets[0, i]`` and column ``offsets[1, i]`` of the padded image (``offsets=None``:
    no crop, ``pad`` must be 0), then mirrored left–right where ``flip[i]`` (``None``: never).
    ``offsets`` and ``flip`` are CPU tensors; the result is a new contiguous tensor on
    ``x``'s device.

    One copy-only gather, no per-pixel index arithmetic:

    * The batch goes into a zero canvas ``N×C×Hp×Wp`` (``Hp = H + 2·pad``; scratch reused
      across calls, see :func:`_canvas`): rows ``0..B-1`` hold ``x``, rows ``B..2B-1`` hold
      ``x`` mirrored (only when some image flips).
    * A mirror commutes with symmetric zero padding, and the mirror of the crop at column
      ``dx`` is the crop at column ``2·pad - dx`` of the mirrored padded image. So every
      output image is an unflipped ``C×H×W`` window of one canvas row, starting at flat
      element ``row·C·Hp·Wp + dy·Wp + dx'``.
    * ``windows`` is an overlapping :meth:`~torch.Tensor.as_strided` view of the flat
      canvas whose entry ``k`` is the ``C×H×W`` window starting at flat element ``k``
      (strides ``Hp·Wp, Wp, 1``); :meth:`~torch.Tensor.index_select` of the ``B`` start
      elements copies the cropped, flipped images out in one call (on the CPU, one call per
      :func:`serial_pieces` range).

    Exact by construction: every output byte is a copy of the input byte (or padding zero)
    that per-image padding, slicing and flipping would pick (pinned by tests against such
    a reference).
    """
    b, c, h, w = x.shape
    if offsets is None and pad:
        raise ValueError("crop_flip_batch: pad > 0 needs offsets")
    hp, wp = h + 2 * pad, w + 2 * pad
    copies = 1 if flip is None or not bool(flip.any()) else 2
    canvas = _canvas(copies * b, c, hp, wp, x.dtype, x.device)
    per_image = c * hp * wp
    start = torch.arange(b) * per_image
    dx = offsets[1] if offsets is not None else torch.zeros(b, dtype=torch.long)
    if copies == 2:
        flipped = flip.to(torch.long)
        start += flipped * (b * per_image)  # the mirrored copy of the same image
        dx = dx + flipped * (2 * pad - 2 * dx)  # dx -> 2·pad - dx where flipped
    if offsets is not None:
        start += offsets[0] * wp
    start += dx
    span = (c - 1) * hp * wp + (h - 1) * wp + w  # elements from a window's first to its last
    windows = canvas.view(-1).as_strided((canvas.numel() - span + 1, c, h, w), (1, hp * wp, wp, 1))
    start = start.to(x.device, non_blocking=True)
    out = x.new_empty((b, c, h, w))
    inner = canvas[:, :, pad:pad + h, pad:pad + w]
    for p in serial_pieces(b, per_image, x.device):  # a piece's windows lie in its own canvas rows
        inner[p].copy_(x[p])
        if copies == 2:
            inner[b + p.start:b + p.stop].copy_(x[p].flip(3))
        torch.index_select(windows, 0, start[p], out=out[p])
    return out


#: The name methods import (CCD's second view); it applies the whole :class:`Augment`.
random_crop_flip = augment_batch


class Normalizer:
    """uint8 → float, ``(x/255 - mean)/std`` per channel, as one fused multiply-add:
    ``addcmul(-mean/std, x, 1/(255·std))`` in float32 (run in :func:`serial_pieces` on the
    CPU: the same elementwise op on row ranges, hence the same values).

    (A 256-entry table per channel, filled with this same addcmul, gives the same values,
    but a gather through it is slower on the CPU than the multiply-add.)"""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, x: Tensor, memory_format: torch.memory_format = torch.contiguous_format) -> Tensor:
        pieces = serial_pieces(x.shape[0], x[0].numel() if len(x) else 1, x.device)
        if len(pieces) == 1:
            return torch.addcmul(self.shift, x.float(), self.scale).contiguous(memory_format=memory_format)
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for p in pieces:
            torch.addcmul(self.shift, x[p].float(), self.scale, out=out[p])
        if memory_format == torch.contiguous_format:
            return out
        converted = torch.empty_like(out, memory_format=memory_format)
        for p in pieces:
            converted[p].copy_(out[p])
        return converted


class TrainData:
    """Training split on the device: shuffled, augmented, normalised batches.

    Subclass or wrap (see :class:`TrainDataWrapper`) to add per-batch extras.
    """

    def __init__(self, data: ImageData, batch_size: int, device: torch.device, seed: int,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.data = data
        self.batch_size = batch_size
        self.device = device
        self.seed = seed
        self.memory_format = memory_format
        self.images = data.train_images.to(device)
        self.labels = data.train_labels.to(device)
        self.labels_cpu = data.train_labels
        self.augment = data.augment
        self.normalize = Normalizer(data.mean, data.std, device)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return self.data.num_classes

    def steps_per_epoch(self) -> int:
        n, b = len(self), self.batch_size
        full, tail = divmod(n, b)
        return full + (1 if tail >= 2 else 0)  # a 1-sample tail would break BatchNorm

    def epoch_indices(self, gen: torch.Generator) -> list[Tensor]:
        perm = torch.randperm(len(self), generator=gen)
        return [perm[i:i + self.batch_size] for i in range(0, self.steps_per_epoch() * self.batch_size, self.batch_size)]

    def augmented_uint8(self, idx_cpu: Tensor, gen: torch.Generator, idx: Tensor | None = None) -> Tensor:
        """The standard-augmented uint8 batch for these indices (before normalisation);
        ``idx`` is ``idx_cpu`` already on the device, if the caller has it.

        Rows are cut by :func:`take_rows`."""
        idx = idx_cpu.to(self.device, non_blocking=True) if idx is None else idx
        return augment_batch(take_rows(self.images, idx), self.augment, gen)

    @property
    def base(self) -> "TrainData":
        """The standard training data (this object; a wrapper's is the one it wraps)."""
        return self

    def base_batch(self, idx_cpu: Tensor, gen: torch.Generator) -> Batch:
        """The standard batch of rows ``idx_cpu``: augmented with draws from ``gen`` (the
        shared stream), normalised; ``source`` keeps the augmented uint8 rows."""
        idx = idx_cpu.to(self.device, non_blocking=True)
        source = self.augmented_uint8(idx_cpu, gen, idx)
        x = self.normalize(source, self.memory_format)
        return Batch(x=x, y=self.labels.index_select(0, idx), index=idx, source=source, index_cpu=idx_cpu)

    def extend(self, batch: Batch, own: torch.Generator) -> Batch:
        """What this method adds to a standard batch (nothing here), drawing from ``own``.
        Wrappers call ``self.inner.extend`` first; ``batch`` is theirs to change (the column
        hands every member its own :meth:`Batch.copy`)."""
        return batch

    def make_batch(self, idx_cpu: Tensor, gen: torch.Generator, own: torch.Generator | None = None) -> Batch:
        """The method's batch of rows ``idx_cpu``: :meth:`base_batch` from ``gen``, then
        :meth:`extend` with draws from ``own`` (default: ``gen`` again, after the base draws)."""
        return self.extend(self.base_batch(idx_cpu, gen), gen if own is None else own)

    def base_epoch(self, gen: torch.Generator) -> Iterator[Batch]:
        """The standard batches of an epoch (order and augmentation from ``gen``)."""
        for idx in self.epoch_indices(gen):
            yield self.base_batch(idx, gen)

    def epoch(self, gen: torch.Generator, own: torch.Generator | None = None) -> Iterator[Batch]:
        """The method's batches of an epoch (see :meth:`make_batch`)."""
        for idx in self.epoch_indices(gen):
            yield self.make_batch(idx, gen, own)


class TrainDataWrapper(TrainData):
    """Base for method-side wrappers: shares the wrapped data's tensors, overrides
    :meth:`extend` (calling ``self.inner.extend`` first)."""

    def __init__(self, inner: TrainData):  # noqa: D107 - shares state, no copy
        self.__dict__.update(inner.__dict__)
        self.inner = inner

    @property
    def base(self) -> TrainData:
        """The standard training data under every wrapper."""
        return self.inner.base

    def steps_per_epoch(self) -> int:
        return self.inner.steps_per_epoch()

    def epoch_indices(self, gen: torch.Generator) -> list[Tensor]:
        return self.inner.epoch_indices(gen)

    def base_batch(self, idx_cpu: Tensor, gen: torch.Generator) -> Batch:
        return self.inner.base_batch(idx_cpu, gen)

    def extend(self, batch: Batch, own: torch.Generator) -> Batch:
        return self.inner.extend(batch, own)


class EvalData:
    """A test split on the device, normalised once, iterated in fixed order."""

    def __init__(self, images: Tensor, labels: Tensor, mean, std, device: torch.device, batch_size: int = 256,
                 memory_format: torch.memory_format = torch.contiguous_format):
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.normalize = Normalizer(mean, std, device)
        self.batch_size = batch_size
        self.memory_format = memory_format

    def __len__(self) -> int:
        return self.images.shape[0]

    def __iter__(self) -> Iterator[Batch]:
        for i in range(0, len(self), self.batch_size):
            x = self.normalize(self.images[i:i + self.batch_size], self.memory_format)
            idx = torch.arange(i, i + x.shape[0], device=x.device)
            yield Batch(x=x, y=self.labels[i:i + self.batch_size], index=idx)


def replace(data: ImageData, **changes) -> ImageData:
    return dataclasses.replace(data, **changes)


class DatasetSource:
    """A registered dataset: its on-disk layout, how to load it and how to obtain it.

    Subclasses set the class attributes and implement :meth:`load`. Register with
    ``@register_dataset("name")`` on the class; the registry returns the class and
    :func:`kdbench.datasets.get_dataset` instantiates it.
    """

    name: str = ""
    num_classes: int = 0
    image_size: int = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.25, 0.25, 0.25)
    augment: Augment = Augment()
    #: the recipe used for teachers and students unless the grid overrides it
    recipe: Recipe = Recipe()
    #: the teachers' epochs when the grid does not set them (None: the recipe's epochs)
    teacher_epochs: int | None = None
    #: expected on-disk layout below the data root, shown in errors
    layout: str = ""
    #: how to obtain the data, shown in errors
    obtain: str = ""
    #: the archive the files are extracted from (e.g. ``tiny-imagenet-200.zip``), named in
    #: the remedy of a damaged copy; empty when there is none
    archive: str = ""
    can_download: bool = False

    def load(self, root: Path, download: bool = False) -> ImageData:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.num_classes} classes, {self.image_size}×{self.image_size}"

    def pipelines(self) -> dict[str, Pipeline]:
        """The recipe ``augment`` choices for this dataset (default: :func:`default_pipelines`
        of its ``augment``, ``mean`` and ``std``); a dataset whose choices also change the
        normalisation overrides this."""
        return default_pipelines(self.augment, self.mean, self.std)

    def missing(self, looked_at: Path, detail: str = "") -> DatasetError:
        """The standard 'not found' error: where we looked, the layout, how to get it."""
        head = f"dataset {self.name!r} not found: looked at {looked_at}" + (f" ({detail})" if detail else "")
        title = f"expected layout under the data root (--data-root or $KDBENCH_DATA, default {DEFAULT_DATA_ROOT}):"
        remedy = []
        if self.obtain:
            remedy.append("how to obtain it: " + self.obtain)
        if self.can_download:
            remedy.append("or re-run with --download to let torchvision fetch it.")
        return self._error(head, title, remedy)

    def malformed(self, path: Path, problem: str, remedy: str | None = None) -> DatasetError:
        """The standard 'damaged data' error: the file or folder, what is wrong with it, the
        layout, and how to replace it with a good copy (``remedy``, default :meth:`repair`)."""
        head = f"dataset {self.name!r} at {path} is malformed: {problem}"
        return self._error(head, "expected layout:", [remedy or self.repair(path)])

    def repair(self, path: Path) -> str:
        """How to replace damaged data at ``path`` with a good copy (the last line of
        :meth:`malformed`): delete it (unless it is already gone), then extract it again
        from :attr:`archive`, or let ``--download`` fetch it where torchvision can, or
        obtain it as :attr:`obtain` says."""
        text = f"how to fix it: delete {path}, then " if path.exists() else f"how to fix it: restore {path}: "
        if self.archive:
            text += f"extract it again from {self.archive}"
            text += f" (if the archive is damaged too: {self.obtain})" if self.obtain else ""
        else:
            text += f"put a good copy in its place ({self.obtain})" if self.obtain else "put a good copy in its place"
        if self.can_download:
            text += ("; or, with it deleted, re-run with --download (torchvision downloads the archive, "
                     "checks its MD5 and extracts it)")
        return text + "."

    def _error(self, head: str, layout_title: str, remedy: list[str]) -> DatasetError:
        """One data error: ``head``, the expected layout, then the remedy lines (always last)."""
        layout = ["    " + line for line in self.layout.strip().splitlines()]
        return DatasetError("\n".join([head, *([layout_title, *layout] if layout else []), *remedy]))

    def make(self, train_images: Tensor, train_labels: Tensor, test_images: Tensor, test_labels: Tensor,
             classes: list[str]) -> ImageData:
        return ImageData(self.name, train_images, train_labels, test_images, test_labels, list(classes),
                         tuple(self.mean), tuple(self.std), self.augment, self.pipelines())
