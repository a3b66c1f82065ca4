"""Decoding image files into one uint8 tensor, with an on-disk cache of the result.

Folder datasets (Tiny-ImageNet: 110,000 JPEGs; mini-ImageNet: 60,000) take a while to
decode, so :func:`decode_images` keeps the decoded ``N×3×H×W`` uint8 tensor in a ``.pt``
file under :func:`cache_dir` and reuses it while the files are unchanged.

Cache rules:

* one cache file per (dataset, split, target size, dataset location):
  ``<tag>-<hash of the absolute base folder>.pt``; a newer state of the same data
  overwrites it instead of piling up beside it;
* inside it, the *content key*: a hash of the relative file list (in load order) with each
  file's size and mtime, the target size, the resampling filter and :data:`CACHE_FORMAT`.
  A cache whose key differs is stale and rebuilt; an unreadable or inconsistent cache is
  rebuilt too (with a warning);
* written atomically (temporary file in the same folder + :func:`os.replace`), so an
  interrupted run never leaves a half-written cache that looks valid. A cache that cannot
  be written (read-only disk) is a warning, not an error.

Decoding uses PIL in a small thread pool (PIL releases the GIL while decoding). Every image
is converted to RGB (grayscale and CMYK files exist in Tiny-ImageNet and ImageNet) and, if
its size differs from the target, resized with an antialiasing filter (PIL's resampling
filters widen their support when downscaling, i.e. they antialias). A file that cannot be
decoded is a :class:`~kdbench.data.DatasetError` naming the file — never a skipped image.
"""
from __future__ import annotations

import hashlib
import logging
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from kdbench.data import DatasetSource

log = logging.getLogger(__name__)

#: Bump when decoding changes in a way that changes pixels (invalidates every cache).
CACHE_FORMAT = 1

#: Extensions treated as images (case-insensitive), as in torchvision's ImageFolder.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")

#: A fixed ``(height, width)``, or a function choosing it from the file list (called only
#: when the cache cannot be used).
SizeSpec = Union[tuple[int, int], Callable[[Sequence[Path]], tuple[int, int]]]

_CHUNK = 256


def is_image_file(path: Path) -> bool:
    """A visible file with an image extension."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name."""
    return sorted((p for p in folder.iterdir() if is_image_file(p) and p.is_file()), key=lambda p: p.name)


def cache_dir() -> Path:
    """``$KDBENCH_CACHE/decoded`` if ``$KDBENCH_CACHE`` is set, else ``~/.cache/kdbench/decoded``."""
    base = os.environ.get("KDBENCH_CACHE")
    return (Path(base).expanduser() if base else Path("~/.cache/kdbench").expanduser()) / "decoded"


def image_size_of(path: Path, source: DatasetSource) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (no full decode)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Exception as exc:  # noqa: BLE001 - any failure is a malformed file
        raise source.malformed(path, f"cannot read image ({type(exc).__name__}: {exc})") from exc
    return h, w


def _resample_filter(name: str) -> int:
    from PIL import Image

    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "lanczos": Image.Resampling.LANCZOS}
    if name not in filters:
        raise ValueError(f"unknown resampling filter {name!r}; choose from {sorted(filters)}")
    return filters[name]


def decode_file(path: Path, size: tuple[int, int], resample: str, source: DatasetSource) -> np.ndarray:
    """One image file as an RGB ``H×W×3`` uint8 array of the target ``size``."""
    from PIL import Image

    h, w = size
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")  # decodes fully: a truncated file fails here
            if im.size != (w, h):
                im = im.resize((w, h), resample=_resample_filter(resample))
            arr = np.array(im, dtype=np.uint8)  # a writable copy
    except Exception as exc:  # noqa: BLE001 - any failure is a malformed file
        raise source.malformed(path, f"cannot decode image ({type(exc).__name__}: {exc})") from exc
    if arr.shape != (h, w, 3):  # defensive: PIL always honours resize
        raise source.malformed(path, f"decoded to shape {arr.shape}, expected {(h, w, 3)}")
    return arr


def content_key(files: Sequence[Path], base: Path, size_tag: str, resample: str) -> str:
    """Hash of the relative file list with sizes and mtimes, the target size and filter."""
    h = hashlib.sha256(f"kdbench-decoded v{CACHE_FORMAT} size={size_tag} resample={resample}\n".encode())
    for p in files:
        st = p.stat()
        try:
            rel = p.relative_to(base).as_posix()
        except ValueError:
            rel = p.as_posix()
        h.update(f"{rel}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def decode_images(files: Sequence[Path], *, source: DatasetSource, base: Path, size: SizeSpec, tag: str,
                  resample: str = "bilinear", use_cache: bool = True, cache_root: Path | None = None) -> Tensor:
    """Decode ``files`` (in this order) into an ``N×3×H×W`` uint8 tensor, through the cache.

    ``tag`` names the cache file (e.g. ``"tiny_imagenet-train-64x64"``), ``base`` is the
    dataset folder the file list is made relative to. ``size`` is ``(H, W)`` or a function
    choosing it from the files (its result is stored in the cache, so a cache hit needs no
    image header reads).
    """
    files = list(files)
    size_tag = f"{size[0]}x{size[1]}" if isinstance(size, tuple) else "auto"
    try:
        key = content_key(files, base, size_tag, resample)
    except OSError as exc:
        where = Path(exc.filename) if exc.filename else base
        raise source.malformed(where, f"cannot read the file's size and time ({exc.strerror or exc}); "
                                      "it vanished or is unreadable while loading") from exc
    cache_file = None
    if use_cache:
        where = hashlib.sha256(str(Path(base).resolve()).encode()).hexdigest()[:12]
        cache_file = (cache_root or cache_dir()) / f"{tag}-{where}.pt"
        cached = _read_cache(cache_file, key, len(files))
        if cached is not None:
            log.info("%s: loaded %d decoded images from cache %s", source.name, len(files), cache_file)
            return cached
    target = size if isinstance(size, tuple) else size(files)
    images = _decode_all(files, target, resample, source, tag)
    if cache_file is not None:
        _write_cache(cache_file, key, images)
    return images


def _read_cache(path: Path, key: str, n: int) -> Tensor | None:
    if not path.exists():
        log.debug("no decoded cache at %s", path)
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        images = blob["images"]
        ok = (isinstance(images, Tensor) and images.dtype == torch.uint8 and images.dim() == 4
              and images.shape[0] == n and images.shape[1] == 3)
        if not ok:
            raise ValueError(f"unexpected content {type(images).__name__} "
                             f"{tuple(getattr(images, 'shape', ()))} for {n} files")
    except Exception as exc:  # noqa: BLE001 - a broken cache is rebuilt, never trusted
        log.warning("decoded cache %s is unreadable (%s: %s); rebuilding it", path, type(exc).__name__, exc)
        return None
    if blob.get("key") != key or blob.get("format") != CACHE_FORMAT:
        log.info("decoded cache %s is stale (the files changed); rebuilding it", path)
        return None
    return images


def _write_cache(path: Path, key: str, images: Tensor) -> None:
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            torch.save({"format": CACHE_FORMAT, "key": key, "images": images}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
        tmp_name = None
        log.info("wrote decoded cache %s (%.1f MB)", path, images.numel() / 1e6)
    except OSError as exc:
        log.warning("could not write decoded cache %s: %s (continuing without it; images are decoded again "
                    "next time: point $KDBENCH_CACHE at a writable folder to keep them)", path, exc)
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass


def _decode_all(files: list[Path], size: tuple[int, int], resample: str, source: DatasetSource,
                desc: str) -> Tensor:
    from tqdm import tqdm

    n = len(files)
    h, w = size
    out = torch.empty((n, 3, h, w), dtype=torch.uint8)
    if n == 0:
        return out
    workers = max(1, min(8, os.cpu_count() or 1))
    log.info("%s: decoding %d images to %dx%d with %d threads (cached afterwards)", source.name, n, h, w, workers)
    start = time.perf_counter()
    lock = threading.Lock()
    bar = tqdm(total=n, desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)

    def work(lo: int) -> None:
        hi = min(n, lo + _CHUNK)
        for i in range(lo, hi):
            out[i] = torch.from_numpy(decode_file(files[i], size, resample, source)).permute(2, 0, 1)
        with lock:
            bar.update(hi - lo)

    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            # consume in order, so the first failing chunk in file order raises
            for _ in pool.map(work, range(0, n, _CHUNK)):
                pass
    finally:
        bar.close()
    log.info("%s: decoded %d images in %.1f s", source.name, n, time.perf_counter() - start)
    return out
