"""``mini_imagenet``: mini-ImageNet (100 classes × 600 images, 84×84) for 100-way classification.

Source: Vinyals et al., *Matching Networks for One Shot Learning* (NeurIPS 2016), with the
class split of Ravi & Larochelle, *Optimization as a Model for Few-Shot Learning* (ICLR
2017): 600 images for each of 100 ImageNet classes. There is no official download; copies
circulate in three layouts, all accepted here and detected automatically (the layout found
is logged). kdbench looks in these sub-folders of the data root, in this order:
``mini-imagenet/``, ``mini_imagenet/``, ``miniImageNet/``; in a folder holding several
layouts, the pickles win, then the CSV layout, then class folders.

1. ``csv``: ``images/*.jpg`` + Ravi's ``train.csv`` / ``val.csv`` / ``test.csv``
   (``filename,label`` rows, the label being the wnid). Some copies hold the original
   ImageNet images of mixed sizes, so every image is resized to 84×84 (aspect ratio not
   kept, LANCZOS filter, as the common ``make`` scripts do).
2. ``folders``: class sub-folders ``train|val|test/<wnid>/*.jpg`` (``split folders``) or a
   single ``<wnid>/*.jpg`` level (``class folders``); images resized to 84×84 if needed.
3. ``pickle``: ``mini-imagenet-cache-{train,val,test}.pkl`` (the val file is named
   ``-validation.pkl`` in some copies), each a dict ``{'image_data': uint8 N×84×84×3,
   'class_dict': {wnid: [row indices]}}``; some were pickled by Python 2 (byte-string keys),
   which is handled (see :mod:`._pickles`).

Split: the few-shot split has disjoint classes (64 / 16 / 20), useless for 100-way
classification, so all 60,000 images are pooled and re-split per class: by default 500
train / 100 test per class, drawn with a fixed seed (``split_seed=0``), stratified.

Stable labels across layouts: classes are the sorted wnids (label = position), and within a
class the images are ordered by file name (layouts 1, 2) or by the pickle's row list
(layout 3, which in the published caches follows the CSV, i.e. file-name, order). The same
images in any layout therefore give identical tensors and labels. The pool must be exactly
100 classes × 600 images, otherwise loading fails with the counts found. Decoded JPEGs are
cached (see :mod:`._decode`).

Choices: augmentation random crop 84 with padding 8 + horizontal flip (as in the few-shot
literature); mean/std are the per-channel pixel statistics used throughout the common
mini-ImageNet code (e.g. Gidaris & Komodakis' low-shot learning loaders and the few-shot
baselines built on them): mean (120.39586422, 115.59361427, 104.54012653)/255 and std
(70.68188272, 68.27635443, 72.54505529)/255, rounded to 4 digits: (0.4721, 0.4533, 0.4100)
and (0.2772, 0.2678, 0.2845). Recipe: the same shape as CIFAR-100's (RepDistiller defaults);
grids override it. ``--download`` does not apply.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from kdbench.data import Augment, DatasetSource, ImageData
from kdbench.datasets._common import per_class_split, read_pickled_dict
from kdbench.datasets._decode import decode_images, list_images
from kdbench.datasets._pickles import as_str
from kdbench.registry import register_dataset
from kdbench.spec import Recipe

log = logging.getLogger(__name__)

#: Sub-folders of the data root searched, in order.
SUBFOLDERS = ("mini-imagenet", "mini_imagenet", "miniImageNet")
#: Pickle file names per few-shot split (alternatives in order of preference).
PICKLES = {
    "train": ("mini-imagenet-cache-train.pkl",),
    "val": ("mini-imagenet-cache-val.pkl", "mini-imagenet-cache-validation.pkl"),
    "test": ("mini-imagenet-cache-test.pkl",),
}
CSVS = ("train.csv", "val.csv", "test.csv")
SPLIT_DIRS = ("train", "val", "test")


@register_dataset("mini_imagenet")
class MiniImageNet(DatasetSource):
    name = "mini_imagenet"
    num_classes = 100
    image_size = 84
    mean = (0.4721, 0.4533, 0.4100)
    std = (0.2772, 0.2678, 0.2845)  # 68.27635443 / 255 = 0.267750... -> 0.2678 (0.2677 before issue #7)
    augment = Augment(crop_padding=8, hflip=True)
    recipe = Recipe()
    layout = """
one of these folders: mini-imagenet/, mini_imagenet/ or miniImageNet/, holding ONE of
(1) images/*.jpg + train.csv, val.csv, test.csv        (rows 'filename,label', label = wnid)
(2) train/<wnid>/*.jpg, val/<wnid>/*.jpg, test/<wnid>/*.jpg   or just <wnid>/*.jpg
(3) mini-imagenet-cache-train.pkl, mini-imagenet-cache-val.pkl (or -validation.pkl),
    mini-imagenet-cache-test.pkl   each {'image_data': uint8 Nx84x84x3, 'class_dict': {wnid: [rows]}}
in total 100 classes x 600 images (pooled and re-split 500/100 per class)
"""
    obtain = ("mini-ImageNet has no official download: build it from ImageNet with Ravi & Larochelle's CSV "
              "split (e.g. the widely used make-mini-imagenet scripts), or copy an existing images/+CSV, "
              "class-folder or pickle-cache copy into <data root>/mini-imagenet/")

    def __init__(self, num_classes: int = 100, images_per_class: int = 600, train_per_class: int = 500,
                 split_seed: int = 0, use_cache: bool = True) -> None:
        if not 0 < train_per_class < images_per_class:
            raise ValueError(f"train_per_class must be in (0, {images_per_class}), got {train_per_class}")
        self.num_classes = num_classes
        self.images_per_class = images_per_class
        self.train_per_class = train_per_class
        self.split_seed = split_seed
        self.use_cache = use_cache

    # -- entry point --------------------------------------------------------------------
    def load(self, root: Path, download: bool = False) -> ImageData:
        folder, layout = self.find(Path(root), download)
        log.info("%s: found the %s layout in %s", self.name, layout, folder)
        if layout == "pickle":
            wnids, pool = self._from_pickles(folder)
        else:
            by_wnid = self._csv_files(folder) if layout == "csv" else self._folder_files(folder, layout)
            wnids = sorted(by_wnid)
            self._validate(folder, {w: len(by_wnid[w]) for w in wnids})
            files = [p for w in wnids for p in by_wnid[w]]
            kind = "csv" if layout == "csv" else "folders"
            pool = decode_images(files, source=self, base=folder, size=(self.image_size, self.image_size),
                                 resample="lanczos", tag=f"{self.name}-{kind}-{self.image_size}x{self.image_size}",
                                 use_cache=self.use_cache)
        n_test = self.images_per_class - self.train_per_class
        train_idx, test_idx = per_class_split([self.images_per_class] * len(wnids), [n_test] * len(wnids),
                                              self.split_seed)
        labels = torch.arange(len(wnids), dtype=torch.int64).repeat_interleave(self.images_per_class)
        tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
        log.info("%s: %d classes, %d train / %d test images (per class %d / %d, seed %d)", self.name, len(wnids),
                 len(tr), len(te), self.train_per_class, n_test, self.split_seed)
        return self.make(pool[tr], labels[tr], pool[te], labels[te], wnids)

    # -- layout detection ---------------------------------------------------------------
    def find(self, root: Path, download: bool = False) -> tuple[Path, str]:
        """The first searched folder that exists and the layout detected in it."""
        note = "; --download cannot fetch mini-ImageNet" if download else ""
        candidates = [root / sub for sub in SUBFOLDERS]
        for folder in candidates:
            if folder.is_dir():
                layout = self.detect(folder)
                if layout is None:
                    raise self.missing(folder, "the folder exists but holds none of the three layouts" + note)
                return folder, layout
        others = ", ".join(str(c) for c in candidates[1:])
        raise self.missing(candidates[0], f"no such folder; also looked at {others}{note}")

    def detect(self, folder: Path) -> str | None:
        """``pickle``, ``csv``, ``split folders``, ``class folders`` or None."""
        if any((folder / name).is_file() for names in PICKLES.values() for name in names):
            return "pickle"
        if (folder / "images").is_dir() or any((folder / c).is_file() for c in CSVS):
            return "csv"
        if any((folder / s).is_dir() for s in SPLIT_DIRS):
            return "split folders"
        if any(_class_dirs(folder)):
            return "class folders"
        return None

    # -- layout 1: images/ + CSV --------------------------------------------------------
    def _csv_files(self, folder: Path) -> dict[str, list[Path]]:
        images = folder / "images"
        if not images.is_dir():
            raise self.missing(images, f"{folder} has CSV files but no images/ folder")
        by_wnid: dict[str, list[Path]] = {}
        seen: dict[str, str] = {}
        absent = [name for name in CSVS if not (folder / name).is_file()]
        if absent:
            raise self.missing(folder / absent[0], f"{folder} has images/ but lacks {', '.join(absent)}")
        for name in CSVS:
            path = folder / name
            try:
                with open(path, newline="", encoding="utf-8") as f:
                    rows = list(csv.reader(f))
            except (OSError, UnicodeDecodeError, csv.Error) as exc:
                raise self.malformed(path, f"cannot read it ({exc})") from exc
            for lineno, row in enumerate(rows, 1):
                if not row or (lineno == 1 and row[0].strip().lower() == "filename"):
                    continue
                if len(row) < 2 or not row[0].strip() or not row[1].strip():
                    raise self.malformed(path, f"line {lineno} is not 'filename,label': {','.join(row)!r}")
                fname, wnid = row[0].strip(), row[1].strip()
                if fname in seen:
                    raise self.malformed(path, f"line {lineno}: {fname} is already listed in {seen[fname]}")
                seen[fname] = name
                image = images / fname
                if not image.is_file():
                    raise self.malformed(image, f"listed in {name} (line {lineno}) but missing")
                by_wnid.setdefault(wnid, []).append(image)
        return {w: sorted(paths, key=lambda p: p.name) for w, paths in by_wnid.items()}

    # -- layout 2: class folders --------------------------------------------------------
    def _folder_files(self, folder: Path, layout: str) -> dict[str, list[Path]]:
        parents = [folder / s for s in SPLIT_DIRS if (folder / s).is_dir()] if layout == "split folders" else [folder]
        by_wnid: dict[str, list[Path]] = {}
        for parent in parents:
            for class_dir in _class_dirs(parent):
                by_wnid.setdefault(class_dir.name, []).extend(list_images(class_dir))
        return {w: sorted(paths, key=lambda p: (p.name, str(p))) for w, paths in by_wnid.items()}

    # -- layout 3: pickles --------------------------------------------------------------
    def _from_pickles(self, folder: Path) -> tuple[list[str], Tensor]:
        paths = []
        for split, names in PICKLES.items():
            found = next((folder / n for n in names if (folder / n).is_file()), None)
            if found is None:
                raise self.missing(folder / names[0], f"{folder} has pickle caches but none for the {split} "
                                                      f"split ({' or '.join(names)})")
            paths.append(found)
        parts: dict[str, list[Tensor]] = {}
        for path in paths:
            image_data, class_dict = self._read_pickle(path)
            for wnid, rows in class_dict.items():
                # N×84×84×3 rows -> N×3×84×84, copied so the pickle's array can be freed
                parts.setdefault(wnid, []).append(torch.from_numpy(image_data[rows]).permute(0, 3, 1, 2).contiguous())
            del image_data
        wnids = sorted(parts)
        self._validate(folder, {w: sum(len(t) for t in parts[w]) for w in wnids})
        return wnids, torch.cat([t for w in wnids for t in parts.pop(w)])

    def _read_pickle(self, path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        obj = read_pickled_dict(self, path, "a mini-ImageNet cache", ("image_data", "class_dict"))
        data, class_dict = obj["image_data"], obj["class_dict"]
        side = self.image_size
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape[1:] == (side, side, 3)):
            desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
            raise self.malformed(path, f"'image_data' must be a uint8 Nx{side}x{side}x3 array, found {desc}")
        if not isinstance(class_dict, dict):
            raise self.malformed(path, f"'class_dict' must be a dict, found {type(class_dict).__name__}")
        out: dict[str, np.ndarray] = {}
        for wnid, rows in class_dict.items():
            idx = np.asarray(rows)
            if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
                raise self.malformed(path, f"class_dict[{as_str(wnid)!r}] is not a list of row indices")
            if idx.size and (idx.min() < 0 or idx.max() >= len(data)):
                raise self.malformed(path, f"class_dict[{as_str(wnid)!r}] has row indices outside [0, {len(data)})")
            out[as_str(wnid)] = idx.astype(np.int64)
        return data, out

    # -- validation ---------------------------------------------------------------------
    def _validate(self, folder: Path, counts: dict[str, int]) -> None:
        want = f"expected {self.num_classes} classes x {self.images_per_class} images"
        if len(counts) != self.num_classes:
            raise self.malformed(folder, f"{want}, found {len(counts)} classes ({sum(counts.values())} images)")
        bad = [(w, n) for w, n in counts.items() if n != self.images_per_class]
        if bad:
            shown = ", ".join(f"{w}: {n}" for w, n in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise self.malformed(folder, f"{want}, found {len(bad)} class(es) with another count ({shown})")


def _class_dirs(parent: Path) -> list[Path]:
    """Visible sub-folders of ``parent`` (class folders), sorted by name."""
    return sorted((p for p in parent.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))),
                  key=lambda p: p.name)
