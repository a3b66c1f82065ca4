"""Every data error names the file and ends with how to get a good copy (issue #7).

Each case damages a tiny copy written in the genuine format (tests/fake_datasets.py) the
way the issue lists — truncated pickle or binary, wrong label count, labels out of range,
wrong totals, a corrupt JPEG, a CSV row without its image — and checks the message: it
names the damaged file, and its last line is the remedy for that dataset (delete the file,
extract the archive again or let ``--download`` fetch it, or obtain a copy), with the
archive name or download address written out here, not taken from the loaders.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from kdbench.data import DatasetError, DatasetSource
from kdbench.datasets.cifar import Cifar10, Cifar100
from kdbench.datasets.imagefolder import ImageFolder
from kdbench.datasets.mini_imagenet import MiniImageNet
from kdbench.datasets.stl10 import STL10
from kdbench.datasets.tiny_imagenet import TinyImageNet

try:  # tests/ as a package or as a plain folder on sys.path
    from tests import fake_datasets as fake
except ImportError:  # pragma: no cover - depends on how pytest imports tests
    sys.path.insert(0, str(Path(__file__).parent))
    import fake_datasets as fake

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR100_URL = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
STL10_URL = "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz"
TINY_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the decoded-image cache out of the home directory."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path_factory.mktemp("kdbench-cache")))


@dataclass
class Case:
    """One way of damaging a dataset: ``damage(root)`` returns the file the error must name."""

    damage: Callable[[Path], Path]
    source: Callable[[], DatasetSource]
    problem: str  # a phrase of the problem statement
    remedy: tuple[str, ...]  # phrases the last line must hold besides "how to fix it: delete <file>"
    gone: bool = False  # the damage is a missing file: the remedy restores it instead of deleting it


def truncate(path: Path, keep: int) -> Path:
    path.write_bytes(path.read_bytes()[:keep])
    return path


# -- the damages ---------------------------------------------------------------------------
def cifar10_truncated_pickle(root: Path) -> Path:
    f = fake.write_cifar10(root, per_batch=3, n_test=2)
    return truncate(f.path / "data_batch_3", -700)


def cifar10_label_count(root: Path) -> Path:
    f = fake.write_cifar10(root, per_batch=3, n_test=2)
    bad = {"labels": [1, 2, 3], "data": fake.cifar_rows(f.test_images), "batch_label": "x", "filenames": []}
    (f.path / "test_batch").write_bytes(fake.py2_pickle(bad))
    return f.path / "test_batch"


def cifar100_labels_out_of_range(root: Path) -> Path:
    f = fake.write_cifar100(root, n_train=3, n_test=2)
    bad = {"fine_labels": [5, 100], "coarse_labels": [0, 0], "data": fake.cifar_rows(f.test_images), "filenames": []}
    (f.path / "test").write_bytes(fake.py2_pickle(bad))
    return f.path / "test"


def cifar100_wrong_total(root: Path) -> Path:
    f = fake.write_cifar100(root, n_train=4, n_test=2)  # the loader below expects 5 training images
    return f.path


def stl10_truncated_binary(root: Path) -> Path:
    f = fake.write_stl10(root, n_train=3, n_test=2)
    return truncate(f.path / "train_X.bin", -100)


def stl10_label_count(root: Path) -> Path:
    f = fake.write_stl10(root, n_train=3, n_test=2)
    (f.path / "test_y.bin").write_bytes(bytes([1]))
    return f.path / "test_y.bin"


def stl10_labels_out_of_range(root: Path) -> Path:
    f = fake.write_stl10(root, n_train=3, n_test=2)
    (f.path / "train_y.bin").write_bytes(bytes([1, 0, 3]))  # STL-10 labels are 1..10
    return f.path / "train_y.bin"


def stl10_wrong_total(root: Path) -> Path:
    f = fake.write_stl10(root, n_train=4, n_test=2)  # the loader below expects 3
    return f.path / "train_X.bin"


def tiny_corrupt_jpeg(root: Path) -> Path:
    f = fake.write_tiny_imagenet(root)
    path = sorted((f.path / "train" / f.extra["wnids"][1] / "images").iterdir())[2]
    return truncate(path, 300)


def tiny_label_out_of_range(root: Path) -> Path:
    f = fake.write_tiny_imagenet(root)
    ann = f.path / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    lines[0] = lines[0].replace(lines[0].split("\t")[1], "n00000001")
    ann.write_text("\n".join(lines) + "\n")
    return ann


def tiny_annotated_file_missing(root: Path) -> Path:
    f = fake.write_tiny_imagenet(root)
    path = f.path / "val" / "images" / "val_4.JPEG"
    path.unlink()
    return path


def tiny_short_class(root: Path) -> Path:
    f = fake.write_tiny_imagenet(root)
    folder = f.path / "train" / f.extra["wnids"][2] / "images"
    sorted(folder.iterdir())[0].unlink()
    return folder


def mini_truncated_pickle(root: Path) -> Path:
    f = fake.write_mini_imagenet(root, layout="pickle-py2")
    return truncate(f.path / "mini-imagenet-cache-val.pkl", 1000)


def mini_corrupt_jpeg(root: Path) -> Path:
    f = fake.write_mini_imagenet(root, layout="class folders")
    return truncate(f.path / f.extra["files"][7], 200)


def mini_csv_row_without_image(root: Path) -> Path:
    f = fake.write_mini_imagenet(root, layout="csv")
    path = f.path / f.extra["files"][3]
    path.unlink()
    return path


def mini_wrong_total(root: Path) -> Path:
    f = fake.write_mini_imagenet(root, layout="split folders")
    next((f.path / "train").glob("*/*.jpg")).unlink()
    return f.path


def imagefolder_corrupt_image(root: Path) -> Path:
    written = fake.write_imagefolder(root / "pets", per_class=3, fmt="JPEG")
    return truncate(root / "pets" / sorted(written)[4], 100)


def small_mini() -> MiniImageNet:
    return MiniImageNet(num_classes=5, images_per_class=6, train_per_class=5)


def small_tiny() -> TinyImageNet:
    return TinyImageNet(num_classes=3, train_per_class=3, val_per_class=2)


DOWNLOAD = "re-run with --download"
MINI_REMEDY = ("put a good copy in its place", "no official download")
CASES = {
    "cifar10 truncated pickle": Case(cifar10_truncated_pickle, lambda: Cifar10(15, 2), "cannot unpickle",
                                     ("cifar-10-python.tar.gz", CIFAR10_URL, DOWNLOAD)),
    "cifar10 label count": Case(cifar10_label_count, lambda: Cifar10(15, 2), "2 images but 3 entries",
                                ("cifar-10-python.tar.gz", DOWNLOAD)),
    "cifar100 labels out of range": Case(cifar100_labels_out_of_range, lambda: Cifar100(3, 2),
                                         "1 label(s) outside [0, 99]", ("cifar-100-python.tar.gz", CIFAR100_URL)),
    "cifar100 wrong total": Case(cifar100_wrong_total, lambda: Cifar100(5, 2), "expected 5 training images",
                                 ("cifar-100-python.tar.gz", DOWNLOAD)),
    "stl10 truncated binary": Case(stl10_truncated_binary, lambda: STL10(3, 2), "not a multiple of one image",
                                   ("stl10_binary.tar.gz", STL10_URL, DOWNLOAD)),
    "stl10 label count": Case(stl10_label_count, lambda: STL10(3, 2), "1 labels for the 2 images",
                              ("stl10_binary.tar.gz", DOWNLOAD)),
    "stl10 labels out of range": Case(stl10_labels_out_of_range, lambda: STL10(3, 2), "outside [1, 10]",
                                      ("stl10_binary.tar.gz", DOWNLOAD)),
    "stl10 wrong total": Case(stl10_wrong_total, lambda: STL10(3, 2), "expected 3 train images, found 4",
                              ("stl10_binary.tar.gz",)),
    "tiny corrupt jpeg": Case(tiny_corrupt_jpeg, small_tiny, "cannot decode image",
                              ("tiny-imagenet-200.zip", TINY_URL)),
    "tiny label out of range": Case(tiny_label_out_of_range, small_tiny, "'n00000001' is not in wnids.txt",
                                    ("tiny-imagenet-200.zip", TINY_URL)),
    "tiny annotated file missing": Case(tiny_annotated_file_missing, small_tiny, "listed in val_annotations.txt",
                                        ("tiny-imagenet-200.zip",), gone=True),
    "tiny short class": Case(tiny_short_class, small_tiny, "has 2 training images, expected 3",
                             ("tiny-imagenet-200.zip",)),
    "mini truncated pickle": Case(mini_truncated_pickle, small_mini, "cannot unpickle", MINI_REMEDY),
    "mini corrupt jpeg": Case(mini_corrupt_jpeg, small_mini, "cannot decode image", MINI_REMEDY),
    "mini csv row without image": Case(mini_csv_row_without_image, small_mini, "but missing", MINI_REMEDY,
                                       gone=True),
    "mini wrong total": Case(mini_wrong_total, small_mini, "expected 5 classes x 6 images", MINI_REMEDY),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_damaged_data_error_names_file_and_ends_with_remedy(tmp_path, name):
    case = CASES[name]
    damaged = case.damage(tmp_path)
    with pytest.raises(DatasetError) as err:
        case.source().load(tmp_path)
    msg = str(err.value)
    head, last = msg.splitlines()[0], msg.splitlines()[-1]
    assert f"at {damaged} is malformed" in head and case.problem in head, msg
    start = f"how to fix it: restore {damaged}: " if case.gone else f"how to fix it: delete {damaged}, then "
    assert last.startswith(start), msg
    for phrase in case.remedy:
        assert phrase in last, (phrase, msg)
    downloadable = DOWNLOAD in last
    assert downloadable == isinstance(case.source(), (Cifar10, Cifar100, STL10)), msg


def test_damaged_own_images_say_replace_or_remove(tmp_path):
    damaged = imagefolder_corrupt_image(tmp_path)
    with pytest.raises(DatasetError) as err:
        ImageFolder(tmp_path / "pets", image_size=8).load()
    msg = str(err.value)
    assert f"at {damaged} is malformed: cannot decode image" in msg
    assert msg.splitlines()[-1].startswith(f"how to fix it: replace {damaged} with a good copy or remove it")


@pytest.mark.parametrize("source, phrases", [
    (Cifar10, (CIFAR10_URL, "--download")), (Cifar100, (CIFAR100_URL, "--download")),
    (STL10, (STL10_URL, "--download")), (TinyImageNet, (TINY_URL, "torchvision cannot download it")),
    (MiniImageNet, ("no official download",)),
    (lambda: ImageFolder("no-such-folder"), ("one sub-folder per class",)),
], ids=lambda v: getattr(v, "__name__", "phrases"))
def test_missing_data_error_ends_with_how_to_obtain(tmp_path, monkeypatch, source, phrases):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError) as err:
        source().load(tmp_path)
    msg = str(err.value)
    assert str(tmp_path) in msg.splitlines()[0]
    tail = "\n".join(line for line in msg.splitlines() if not line.startswith("    "))  # layout lines indented
    remedy = tail[tail.index("how to obtain it:"):]
    assert all(p in remedy for p in phrases), msg
    assert msg.rstrip().endswith(remedy.rstrip())  # nothing after the remedy


def test_vanished_file_while_loading_is_a_malformed_error_with_remedy(tmp_path, monkeypatch):
    """A file that cannot be stat'ed while the decoded cache's key is computed names that file."""
    from kdbench.datasets import _decode

    f = fake.write_tiny_imagenet(tmp_path)
    gone = sorted((f.path / "train" / f.extra["wnids"][0] / "images").iterdir())[1]
    real = _decode.content_key

    def vanish(files, base, size_tag, resample):
        gone.unlink(missing_ok=True)
        return real(files, base, size_tag, resample)

    monkeypatch.setattr(_decode, "content_key", vanish)
    with pytest.raises(DatasetError) as err:
        small_tiny().load(tmp_path)
    msg = str(err.value)
    assert f"at {gone} is malformed" in msg and "vanished or is unreadable" in msg
    assert msg.splitlines()[-1].startswith(f"how to fix it: restore {gone}: extract it again from "
                                           "tiny-imagenet-200.zip")


def test_inconsistent_loader_result_says_it_is_a_loader_bug():
    import torch

    from kdbench.data import ImageData

    with pytest.raises(DatasetError) as err:
        ImageData("plugin", torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 5]),
                  torch.zeros(1, 3, 4, 4, dtype=torch.uint8), torch.tensor([0]), ["a", "b"], (0.5,) * 3, (0.5,) * 3)
    msg = str(err.value)
    assert "train labels outside [0, 2)" in msg and msg.splitlines()[-1].startswith("how to fix it: this is a bug")
