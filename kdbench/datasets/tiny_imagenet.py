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

Choices: labels follow the *sorted* wnids (what torchvision's ImageFolder gives for
``train/``), not the order of ``wnids.txt``. A few images are grayscale; every image is
converted to RGB. Decoded images are cached (see :mod:`._decode`). Augmentation: random
crop 64 with padding 8 (an eighth of the side, as 4 is for 32) + horizontal flip; mean/std
are the commonly used per-channel values of the training set. Recipe: the same shape as
CIFAR-100's (RepDistiller defaults); grids override it. torchvision cannot download this
set, so ``--download`` does not apply.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from kdbench.data import Augment, DatasetSource, ImageData
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
    augment = Augment(crop_padding=8, hflip=True)
    recipe = Recipe()
    folder = "tiny-imagenet-200"
    layout = """
tiny-imagenet-200/
    wnids.txt                    the 200 class wnids, one per line
    words.txt                    (optional) wnid<TAB>names, for class names
    train/<wnid>/images/*.JPEG   500 training images per class, 64x64
    val/images/*.JPEG            10000 validation images (used as the test split)
    val/val_annotations.txt      <file name><TAB><wnid><TAB><bounding box...> per validation image
"""
    obtain = ("download http://cs231n.stanford.edu/tiny-imagenet-200.zip and unzip it into the data root "
              "(unzip tiny-imagenet-200.zip -d <data root>); torchvision cannot download it")

    def __init__(self, num_classes: int = 200, expected_train: int = 100000, expected_test: int = 10000,
                 use_cache: bool = True) -> None:
        self.num_classes = num_classes
        self.expected_train = expected_train
        self.expected_test = expected_test
        self.use_cache = use_cache

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
        for label, wnid in enumerate(wnids):
            images = train / wnid / "images"
            if not images.is_dir():
                raise self.malformed(images, f"missing: class {wnid} from wnids.txt has no training images folder")
            found = list_images(images)
            files += found
            labels += [label] * len(found)
        expect_count(self, train, "training images", len(files), self.expected_train)
        return files, labels

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
        expect_count(self, ann, "validation (test) images", len(files), self.expected_test)
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
