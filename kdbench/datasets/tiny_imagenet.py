"""``tiny_imagenet``: Tiny-ImageNet-200 in its standard folder layout.

Source: the Stanford CS231n Tiny ImageNet Visual Recognition Challenge,
http://cs231n.stanford.edu/tiny-imagenet-200.zip — 200 ImageNet classes, 64×64 JPEGs.

Format (``tiny-imagenet-200/``): ``wnids.txt`` lists the 200 WordNet ids;
``train/<wnid>/images/*.JPEG`` holds 500 images per class (``train/<wnid>/<wnid>_boxes.txt``
is ignored); ``val/images/*.JPEG`` holds 10,000 images (50 per class) whose classes are in
``val/val_annotations.txt`` (tab-separated: file name, wnid, bounding box). ``words.txt``
(optional) maps wnids to names: the first synonym becomes the class name (with the wnid
appended where two classes would share a name); without it the class names are the wnids.
``test/`` has no labels and is not used.

Split: train = the 100,000 training images, test = the 10,000 validation images (the
usual practice, since the official test labels were never released).

Validation (never a silent partial load): exactly ``train_per_class`` (500) training images
in every class folder and ``val_per_class`` (50) annotated validation images per class,
every annotated file present and every validation image annotated; a short or empty class
is an error naming the class and its count even when the totals match. Tests pass small
per-class counts for their tiny fake copies; the registered dataset uses the real ones.

Choices: labels follow the *sorted* wnids (what torchvision's ImageFolder gives for
``train/``), not the order of ``wnids.txt``. A few images are grayscale; every image is
converted to RGB. Decoded images are cached (see :mod:`._decode`). Images stay 64×64.

Training pipeline (the recipe's ``augment``; both use mean (0.4802, 0.4481, 0.3975)):

* ``"crop"`` (the default): random crop 64 with padding 4 + horizontal flip, std
  (0.2770, 0.2691, 0.2821). This is RepDistiller's CIFAR transform with only the size
  changed, the pipeline of the RepDistiller-derived suites (CRD, HKD) whose Tiny-ImageNet
  tables kdbench ships (``reports/paper_tables/hkd_tiny_imagenet.csv``; the default pair
  preset ``hkd``). HKD's released code (wyc-ruiker/HKD) has only its CIFAR-100 loader, so
  its Tiny-ImageNet transform cannot be read off; padding 4 is RepDistiller's value, as in
  the CRD-style Tiny-ImageNet loaders that use these statistics. The mean/std are the
  per-pixel statistics of the 100,000 training images (0.48025, 0.44807, 0.39755 /
  0.27699, 0.26906, 0.28208 at full precision in those loaders), rounded to 4 digits.
* ``"rotate"``: random rotation within ±20° (nearest, zero fill) + horizontal flip, no
  crop, std (0.2302, 0.2265, 0.2262): exactly mdistiller's ``get_tinyimagenet_dataloader``
  (megvii-research/mdistiller, ``mdistiller/dataset/tiny_imagenet.py``: ``RandomRotation(20)``,
  ``RandomHorizontalFlip(0.5)``, ``Normalize([0.4802, 0.4481, 0.3975], [0.2302, 0.2265,
  0.2262])``), used for its (DOT) Tiny-ImageNet results. Select it with
  ``recipe: {augment: rotate}`` in a grid file.

Recipe otherwise: the same shape as CIFAR-100's (RepDistiller defaults); grids override it.
torchvision cannot download this set, so ``--download`` does not apply.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from kdbench.data import Augment, DatasetSource, ImageData, Pipeline
from kdbench.datasets._common import expect_count
from kdbench.datasets._decode import decode_images, is_image_file, list_images
from kdbench.registry import register_dataset
from kdbench.spec import Recipe

log = logging.getLogger(__name__)


@register_dataset("tiny_imagenet")
class TinyImageNet(DatasetSource):
    name = "tiny_imagenet"
    num_classes = 200
    image_size = 64
    mean = (0.4802, 0.4481, 0.3975)
    std = (0.2770, 0.2691, 0.2821)
    augment = Augment(crop_padding=4, hflip=True)
    #: mdistiller's Tiny-ImageNet pipeline, the recipe's ``augment="rotate"``
    rotate_pipeline = Pipeline(Augment(crop_padding=0, hflip=True, rotate_degrees=20.0),
                               (0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262))
    recipe = Recipe(augment="crop")
    folder = "tiny-imagenet-200"
    layout = """
tiny-imagenet-200/
    wnids.txt                    the 200 class wnids, one per line
    words.txt                    (optional) wnid<TAB>names, for class names
    train/<wnid>/images/*.JPEG   500 training images per class, 64x64
    val/images/*.JPEG            10000 validation images, 50 per class (used as the test split)
    val/val_annotations.txt      <file name><TAB><wnid><TAB><bounding box...> per validation image
"""
    obtain = ("download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into the data root "
              "(unzip tiny-imagenet-200.zip -d <data root>); torchvision cannot download it")
    archive = "tiny-imagenet-200.zip"

    def __init__(self, num_classes: int = 200, train_per_class: int = 500, val_per_class: int = 50,
                 use_cache: bool = True) -> None:
        if train_per_class < 1 or val_per_class < 1:
            raise ValueError(f"train_per_class and val_per_class must be >= 1, got {train_per_class}, {val_per_class}")
        self.num_classes = num_classes
        self.train_per_class = train_per_class
        self.val_per_class = val_per_class
        self.use_cache = use_cache

    @property
    def expected_train(self) -> int:
        """Training images in a complete copy (classes × ``train_per_class``)."""
        return self.num_classes * self.train_per_class

    @property
    def expected_test(self) -> int:
        """Validation (test) images in a complete copy (classes × ``val_per_class``)."""
        return self.num_classes * self.val_per_class

    def pipelines(self) -> dict[str, Pipeline]:
        """``"crop"``: padded crop + flip with the training-set statistics; ``"rotate"``:
        mdistiller's rotation + flip with its statistics (see the module docstring)."""
        return {"crop": Pipeline(self.augment, self.mean, self.std), "rotate": self.rotate_pipeline}

    def load(self, root: Path, download: bool = False) -> ImageData:
        folder = Path(root) / self.folder
        note = "; --download cannot fetch Tiny-ImageNet" if download else ""
        if not folder.is_dir():
            raise self.missing(folder, "no such folder" + note)
        for part in ("wnids.txt", "train", "val/images", "val/val_annotations.txt"):
            if not (folder / part).exists():
                raise self.missing(folder / part, f"{folder} exists but lacks {part}{note}")
        wnids = self._read_wnids(folder / "wnids.txt")
        index = {w: i for i, w in enumerate(wnids)}
        train_files, train_labels = self._train_files(folder / "train", wnids)
        test_files, test_labels = self._val_files(folder / "val", index)
        classes = self._class_names(folder / "words.txt", wnids)
        size = (self.image_size, self.image_size)
        tag = f"{self.name}-{{}}-{size[0]}x{size[1]}"
        train_x = decode_images(train_files, source=self, base=folder, size=size, tag=tag.format("train"),
                                use_cache=self.use_cache)
        test_x = decode_images(test_files, source=self, base=folder, size=size, tag=tag.format("val"),
                               use_cache=self.use_cache)
        log.info("%s: loaded %d train / %d test images from %s", self.name, len(train_files), len(test_files), folder)
        return self.make(train_x, torch.tensor(train_labels, dtype=torch.int64),
                         test_x, torch.tensor(test_labels, dtype=torch.int64), classes)

    def _read_wnids(self, path: Path) -> list[str]:
        try:
            wnids = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise self.malformed(path, f"cannot read it ({exc})") from exc
        if len(set(wnids)) != len(wnids):
            raise self.malformed(path, "it lists a wnid twice")
        expect_count(self, path, "class wnids", len(wnids), self.num_classes)
        return sorted(wnids)

    def _train_files(self, train: Path, wnids: list[str]) -> tuple[list[Path], list[int]]:
        known = set(wnids)
        extra = sorted(p.name for p in train.iterdir() if p.is_dir() and p.name not in known)
        if extra:
            raise self.malformed(train, f"class folder(s) not listed in wnids.txt: {', '.join(extra[:5])}")
        files: list[Path] = []
        labels: list[int] = []
        counts: dict[str, int] = {}
        for label, wnid in enumerate(wnids):
            images = train / wnid / "images"
            if not images.is_dir():
                raise self.malformed(images, f"missing: class {wnid} from wnids.txt has no training images folder")
            found = list_images(images)
            counts[wnid] = len(found)
            files += found
            labels += [label] * len(found)
        bad = [w for w in wnids if counts[w] != self.train_per_class]
        if bad:
            raise self.malformed(train / bad[0] / "images", self._per_class_problem("training images", bad, counts,
                                                                                     self.train_per_class))
        return files, labels

    @staticmethod
    def _per_class_problem(what: str, bad: list[str], counts: dict[str, int], expected: int) -> str:
        """'class X has n <what>, expected k' for the first bad class, plus a few more."""
        first = bad[0]
        text = f"class {first} has {counts.get(first, 0)} {what}, expected {expected} in every class"
        if len(bad) > 1:
            more = ", ".join(f"{w}: {counts.get(w, 0)}" for w in bad[1:6]) + (", ..." if len(bad) > 6 else "")
            text += f"; {len(bad) - 1} more class(es) with another count ({more})"
        return text

    def _val_files(self, val: Path, index: dict[str, int]) -> tuple[list[Path], list[int]]:
        ann = val / "val_annotations.txt"
        files: list[Path] = []
        labels: list[int] = []
        seen: set[str] = set()
        try:
            lines = ann.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise self.malformed(ann, f"cannot read it ({exc})") from exc
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise self.malformed(ann, f"line {lineno} is not '<file name><TAB><wnid>...': {line!r}")
            name, wnid = fields[0].strip(), fields[1].strip()
            if wnid not in index:
                raise self.malformed(ann, f"line {lineno}: wnid {wnid!r} is not in wnids.txt (label out of range)")
            if name in seen:
                raise self.malformed(ann, f"line {lineno}: {name} is annotated twice")
            path = val / "images" / name
            if not path.is_file():
                raise self.malformed(path, f"listed in {ann.name} (line {lineno}) but missing")
            seen.add(name)
            files.append(path)
            labels.append(index[wnid])
        unlabelled = sorted(p.name for p in (val / "images").iterdir() if is_image_file(p) and p.name not in seen)
        if unlabelled:
            raise self.malformed(val / "images", f"{len(unlabelled)} image(s) have no line in {ann.name}, "
                                                 f"e.g. {unlabelled[0]}")
        counts = {w: 0 for w in index}
        by_label = {i: w for w, i in index.items()}
        for label in labels:
            counts[by_label[label]] += 1
        bad = [w for w in sorted(index) if counts[w] != self.val_per_class]
        if bad:
            raise self.malformed(ann, self._per_class_problem("annotated validation images", bad, counts,
                                                              self.val_per_class))
        return files, labels

    def _class_names(self, words: Path, wnids: list[str]) -> list[str]:
        if not words.is_file():
            return list(wnids)
        wanted = set(wnids)
        names: dict[str, str] = {}
        try:
            with open(words, encoding="utf-8") as f:
                for line in f:
                    wnid, _, text = line.rstrip("\n").partition("\t")
                    if wnid in wanted:
                        names[wnid] = text.split(",")[0].strip() or wnid
        except (OSError, UnicodeDecodeError) as exc:
            raise self.malformed(words, f"cannot read it ({exc})") from exc
        out = [names.get(w, w) for w in wnids]
        dup = {n for n in out if out.count(n) > 1}
        return [f"{n} ({w})" if n in dup else n for n, w in zip(out, wnids)]
