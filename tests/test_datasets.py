"""Dataset loaders on tiny copies written in the genuine formats (tests/fake_datasets.py).

Nothing here downloads: the download paths are exercised with torchvision's classes
replaced by fakes.
"""
from __future__ import annotations

import logging
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from kdbench.data import Augment, DatasetError, ImageData
from kdbench.datasets import get_dataset, load_dataset
from kdbench.datasets.cifar import Cifar10, Cifar100
from kdbench.datasets.imagefolder import ImageFolder, channel_stats
from kdbench.datasets.mini_imagenet import MiniImageNet
from kdbench.datasets.stl10 import STL10
from kdbench.datasets.tiny_imagenet import TinyImageNet
from kdbench.registry import DATASETS, UnknownNameError
from kdbench.spec import Recipe

try:  # tests/ as a package or as a plain folder on sys.path
    from tests import fake_datasets as fake
except ImportError:  # pragma: no cover - depends on how pytest imports tests
    sys.path.insert(0, str(Path(__file__).parent))
    import fake_datasets as fake

DECODE_LOG = "kdbench.datasets._decode"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Keep the decoded-image cache out of the home directory."""
    monkeypatch.setenv("KDBENCH_CACHE", str(tmp_path_factory.mktemp("kdbench-cache")))


def hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(0, 2, 3, 1).numpy()


def check_contract(data: ImageData, n_train: int, n_test: int, size: tuple[int, int], num_classes: int) -> None:
    assert data.train_images.dtype == torch.uint8 and data.test_images.dtype == torch.uint8
    assert data.train_labels.dtype == torch.int64 and data.test_labels.dtype == torch.int64
    assert tuple(data.train_images.shape) == (n_train, 3, *size)
    assert tuple(data.test_images.shape) == (n_test, 3, *size)
    assert data.train_images.is_contiguous() and data.test_images.is_contiguous()
    assert data.num_classes == num_classes
    assert len(data.mean) == len(data.std) == 3


# -- registry ---------------------------------------------------------------------------
def test_registered_datasets():
    for name in ("cifar10", "cifar100", "stl10", "tiny_imagenet", "mini_imagenet", "digits"):
        assert name in DATASETS
    assert "imagefolder:/some/where" in DATASETS


def test_unknown_dataset_suggests_close_name():
    with pytest.raises(UnknownNameError) as err:
        DATASETS.get("cifar1000")
    assert "Did you mean 'cifar100'" in str(err.value)
    assert "imagefolder:<name>" in str(err.value)


def test_registered_defaults_are_the_real_sizes():
    c = get_dataset("cifar100")
    assert isinstance(c, Cifar100) and (c.expected_train, c.expected_test) == (50000, 10000)
    assert c.recipe == Recipe() and c.augment == Augment(crop_padding=4, hflip=True)
    assert c.mean == (0.5071, 0.4867, 0.4408) and c.std == (0.2675, 0.2565, 0.2761)
    assert get_dataset("cifar10").mean == (0.4914, 0.4822, 0.4465)
    s = get_dataset("stl10")
    assert (s.expected_train, s.expected_test, s.image_size) == (5000, 8000, 96)
    t = get_dataset("tiny_imagenet")
    assert (t.num_classes, t.expected_train, t.expected_test, t.image_size) == (200, 100000, 10000, 64)
    m = get_dataset("mini_imagenet")
    assert (m.num_classes, m.images_per_class, m.train_per_class, m.image_size) == (100, 600, 500, 84)
    for name in DATASETS.list():
        src = get_dataset(name)
        assert src.layout.strip() and src.obtain.strip(), name


# -- CIFAR ------------------------------------------------------------------------------
@pytest.mark.parametrize("py2", [True, False], ids=["py2-pickle", "py3-pickle"])
def test_cifar10_loads(tmp_path, py2):
    f = fake.write_cifar10(tmp_path, per_batch=4, n_test=6, py2=py2)
    data = Cifar10(expected_train=20, expected_test=6).load(tmp_path)
    check_contract(data, 20, 6, (32, 32), 10)
    assert data.name == "cifar10" and data.classes == f.classes
    np.testing.assert_array_equal(hwc(data.train_images), f.train_images)
    np.testing.assert_array_equal(hwc(data.test_images), f.test_images)
    assert data.train_labels.tolist() == f.train_labels.tolist()
    assert data.test_labels.tolist() == f.test_labels.tolist()


@pytest.mark.parametrize("py2", [True, False], ids=["py2-pickle", "py3-pickle"])
def test_cifar100_loads(tmp_path, py2):
    f = fake.write_cifar100(tmp_path, n_train=12, n_test=7, py2=py2)
    data = Cifar100(expected_train=12, expected_test=7).load(tmp_path)
    check_contract(data, 12, 7, (32, 32), 100)
    assert data.classes == fake.cifar100_names()
    np.testing.assert_array_equal(hwc(data.train_images), f.train_images)
    np.testing.assert_array_equal(hwc(data.test_images), f.test_images)
    assert data.train_labels.tolist() == f.train_labels.tolist()
    assert (data.mean, data.std) == (Cifar100.mean, Cifar100.std)


def test_fake_cifar_pickles_are_python2_style(tmp_path):
    """As in the real files: bytes keys with encoding='bytes', str keys with 'latin1'."""
    f = fake.write_cifar100(tmp_path, n_train=2, n_test=2)
    raw = (f.path / "train").read_bytes()
    as_bytes = pickle.loads(raw, encoding="bytes")
    assert b"data" in as_bytes and b"fine_labels" in as_bytes
    assert isinstance(as_bytes[b"filenames"][0], bytes)
    as_latin1 = pickle.loads(raw, encoding="latin1")
    assert "data" in as_latin1 and as_latin1["data"].dtype == np.uint8 and as_latin1["data"].shape == (2, 3072)


def test_cifar_pickle_with_bytes_keys(tmp_path):
    """A Python 3 re-pickle of an ``encoding='bytes'`` load keeps bytes keys and names."""
    f = fake.write_cifar10(tmp_path, per_batch=2, n_test=2)
    meta = {b"label_names": [n.encode() for n in f.classes], b"num_vis": 3072}
    (f.path / "batches.meta").write_bytes(pickle.dumps(meta))
    test = {b"labels": [int(v) for v in f.test_labels], b"data": fake.cifar_rows(f.test_images)}
    (f.path / "test_batch").write_bytes(pickle.dumps(test))
    data = Cifar10(expected_train=10, expected_test=2).load(tmp_path)
    assert data.classes == f.classes
    np.testing.assert_array_equal(hwc(data.test_images), f.test_images)


def test_cifar_pixel_layout_by_hand(tmp_path):
    """A row built from the format description: R plane, G plane, B plane, each row-major."""
    f = fake.write_cifar10(tmp_path, per_batch=1, n_test=1)
    row = np.zeros(3072, dtype=np.uint8)
    row[0 * 1024 + 0 * 32 + 0] = 255     # red at (row 0, col 0)
    row[1 * 1024 + 0 * 32 + 31] = 200    # green at (row 0, col 31)
    row[2 * 1024 + 31 * 32 + 0] = 100    # blue at (row 31, col 0)
    row[0 * 1024 + 5 * 32 + 9] = 7       # red at (row 5, col 9)
    (f.path / "test_batch").write_bytes(fake.py2_pickle({"batch_label": "t", "labels": [3], "data": row[None],
                                                         "filenames": ["x.png"]}))
    img = Cifar10(expected_train=5, expected_test=1).load(tmp_path).test_images[0]
    expected = torch.zeros(3, 32, 32, dtype=torch.uint8)
    expected[0, 0, 0], expected[1, 0, 31], expected[2, 31, 0], expected[0, 5, 9] = 255, 200, 100, 7
    assert torch.equal(img, expected)


def test_cifar_matches_torchvision_reading_the_same_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    import torchvision.datasets.cifar as tvcifar

    monkeypatch.setattr(tvcifar, "check_integrity", lambda *a, **k: True)  # fake files have other MD5s
    monkeypatch.setattr(tvd.CIFAR10, "_check_integrity", lambda self: True)
    fake.write_cifar10(tmp_path, per_batch=3, n_test=4)
    ours = Cifar10(expected_train=15, expected_test=4).load(tmp_path)
    for train, x, y in ((True, ours.train_images, ours.train_labels), (False, ours.test_images, ours.test_labels)):
        theirs = tvd.CIFAR10(str(tmp_path), train=train)
        np.testing.assert_array_equal(hwc(x), theirs.data)
        assert y.tolist() == list(theirs.targets)
    assert ours.classes == theirs.classes


def test_cifar_default_counts_reject_tiny_set(tmp_path):
    fake.write_cifar100(tmp_path, n_train=12, n_test=7)
    with pytest.raises(DatasetError, match=r"expected 50000 training images.*found 12"):
        get_dataset("cifar100").load(tmp_path)
    fake.write_cifar10(tmp_path, per_batch=2, n_test=3)
    with pytest.raises(DatasetError, match=r"expected 50000 training images.*found 10"):
        load_dataset("cifar10", root=tmp_path)


def test_cifar_missing_names_path_layout_and_download(tmp_path):
    with pytest.raises(DatasetError) as err:
        Cifar100().load(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "cifar-100-python") in msg
    assert "fine_label_names" in msg and "meta" in msg  # the layout
    assert "cifar-100-python.tar.gz" in msg and "--download" in msg
    with pytest.raises(DatasetError) as err:
        Cifar10().load(tmp_path)
    assert str(tmp_path / "cifar-10-batches-py") in str(err.value) and "data_batch_1" in str(err.value)


def test_cifar_missing_file_in_existing_folder(tmp_path):
    f = fake.write_cifar10(tmp_path, per_batch=1, n_test=1)
    (f.path / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_4") as err:
        Cifar10(expected_train=5, expected_test=1).load(tmp_path)
    assert str(f.path / "data_batch_4") in str(err.value)


def test_cifar_truncated_pickle(tmp_path):
    f = fake.write_cifar10(tmp_path, per_batch=3, n_test=2)
    path = f.path / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-700])
    with pytest.raises(DatasetError, match="cannot unpickle") as err:
        Cifar10(expected_train=15, expected_test=2).load(tmp_path)
    assert str(path) in str(err.value)


def test_cifar_wrong_row_size(tmp_path):
    f = fake.write_cifar100(tmp_path, n_train=3, n_test=2)
    bad = {"fine_labels": [0, 1], "coarse_labels": [0, 0], "data": np.zeros((2, 3000), np.uint8), "filenames": []}
    (f.path / "test").write_bytes(fake.py2_pickle(bad))
    with pytest.raises(DatasetError, match=r"uint8 N×3072 array, found uint8 \(2, 3000\)") as err:
        Cifar100(expected_train=3, expected_test=2).load(tmp_path)
    assert str(f.path / "test") in str(err.value)


def test_cifar_labels_out_of_range(tmp_path):
    f = fake.write_cifar10(tmp_path, per_batch=2, n_test=2)
    bad = {"labels": [3, 10], "data": fake.cifar_rows(f.test_images), "batch_label": "x", "filenames": []}
    (f.path / "test_batch").write_bytes(fake.py2_pickle(bad))
    with pytest.raises(DatasetError, match=r"test_batch.*1 label\(s\) outside \[0, 9\]"):
        Cifar10(expected_train=10, expected_test=2).load(tmp_path)


def test_cifar_pickle_may_not_run_code(tmp_path):
    f = fake.write_cifar10(tmp_path, per_batch=1, n_test=1)

    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    (f.path / "batches.meta").write_bytes(pickle.dumps({"label_names": Evil()}))
    with pytest.raises(DatasetError, match="refusing to run code"):
        Cifar10(expected_train=5, expected_test=1).load(tmp_path)


def test_cifar_download_uses_torchvision_then_own_reader(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeCIFAR100:
        def __init__(self, root, train=True, download=False, **kw):
            calls.append((root, train, download))
            fake.write_cifar100(Path(root), n_train=4, n_test=3, seed=5)

    monkeypatch.setattr(tvd, "CIFAR100", FakeCIFAR100)
    data = Cifar100(expected_train=4, expected_test=3).load(tmp_path / "fresh", download=True)
    assert calls == [(str(tmp_path / "fresh"), True, True)]
    assert data.train_images.shape == (4, 3, 32, 32)
    Cifar100(expected_train=4, expected_test=3).load(tmp_path / "fresh", download=True)
    assert len(calls) == 1  # already there: no second download


def test_cifar_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    class Offline:
        def __init__(self, *a, **k):
            raise OSError("network is unreachable")

    monkeypatch.setattr(tvd, "CIFAR10", Offline)
    with pytest.raises(DatasetError, match=r"download into .* failed.*network is unreachable(.|\n)*cifar-10-python"):
        Cifar10().load(tmp_path, download=True)


# -- STL-10 -----------------------------------------------------------------------------
def test_stl10_loads(tmp_path):
    f = fake.write_stl10(tmp_path, n_train=10, n_test=6)
    data = STL10(expected_train=10, expected_test=6).load(tmp_path)
    check_contract(data, 10, 6, (96, 96), 10)
    assert data.classes == f.classes
    np.testing.assert_array_equal(hwc(data.train_images), f.train_images)
    np.testing.assert_array_equal(hwc(data.test_images), f.test_images)
    assert data.train_labels.tolist() == f.train_labels.tolist()  # 1..10 on disk -> 0..9
    assert data.augment == Augment(crop_padding=12, hflip=True)


def test_stl10_orientation_with_asymmetric_image(tmp_path):
    """Bytes placed by the format description: plane c, column x, row y at c*9216 + x*96 + y."""
    fake.write_stl10(tmp_path, n_train=2, n_test=1)
    raw = np.zeros(2 * 3 * 96 * 96, dtype=np.uint8)
    rows, cols = np.meshgrid(np.arange(96), np.arange(96), indexing="ij")
    for y, x in zip(rows.ravel(), cols.ravel()):
        raw[0 * 9216 + x * 96 + y] = y          # red = row index
        raw[1 * 9216 + x * 96 + y] = 2 * x      # green = twice the column index
    raw[2 * 9216 + 95 * 96 + 0] = 255           # blue only at the top-right pixel (row 0, col 95)
    raw[27648 + 0 * 9216 + 0 * 96 + 95] = 77    # image 2: red only at the bottom-left pixel (row 95, col 0)
    (tmp_path / "stl10_binary" / "train_X.bin").write_bytes(raw.tobytes())
    img, img2 = STL10(expected_train=2, expected_test=1).load(tmp_path).train_images
    assert torch.equal(img[0], torch.arange(96, dtype=torch.uint8).view(96, 1).expand(96, 96))
    assert torch.equal(img[1], (2 * torch.arange(96)).to(torch.uint8).view(1, 96).expand(96, 96))
    assert img[2, 0, 95] == 255 and int(img[2].sum()) == 255
    assert img2[0, 95, 0] == 77 and int(img2.sum()) == 77


def test_stl10_matches_torchvision_reading_the_same_files(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    monkeypatch.setattr(tvd.STL10, "_check_integrity", lambda self: True)
    fake.write_stl10(tmp_path, n_train=4, n_test=3)
    ours = STL10(expected_train=4, expected_test=3).load(tmp_path)
    theirs = tvd.STL10(str(tmp_path), split="test")
    np.testing.assert_array_equal(ours.test_images.numpy(), theirs.data)
    np.testing.assert_array_equal(ours.test_labels.numpy(), theirs.labels)


def test_stl10_errors(tmp_path):
    f = fake.write_stl10(tmp_path, n_train=4, n_test=3)
    with pytest.raises(DatasetError, match=r"expected 5000 train images, found 4"):
        get_dataset("stl10").load(tmp_path)
    src = STL10(expected_train=4, expected_test=3)
    (f.path / "test_y.bin").write_bytes(bytes([1, 11, 3]))
    with pytest.raises(DatasetError, match=r"test_y.bin.*outside \[1, 10\]"):
        src.load(tmp_path)
    (f.path / "test_y.bin").write_bytes(bytes([1, 2]))
    with pytest.raises(DatasetError, match=r"2 labels for the 3 images"):
        src.load(tmp_path)
    x = f.path / "train_X.bin"
    x.write_bytes(x.read_bytes()[:-100])
    with pytest.raises(DatasetError, match="not a multiple of one image") as err:
        src.load(tmp_path)
    assert str(x) in str(err.value)


def test_stl10_download_uses_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets as tvd

    calls = []

    class FakeSTL10:
        def __init__(self, root, split="train", download=False, **kw):
            calls.append((root, split, download))
            fake.write_stl10(Path(root), n_train=3, n_test=2)

    monkeypatch.setattr(tvd, "STL10", FakeSTL10)
    data = STL10(expected_train=3, expected_test=2).load(tmp_path, download=True)
    assert calls == [(str(tmp_path), "train", True)] and len(data.test_labels) == 2


def test_stl10_missing(tmp_path):
    with pytest.raises(DatasetError) as err:
        STL10().load(tmp_path)
    msg = str(err.value)
    assert str(tmp_path / "stl10_binary") in msg and "train_X.bin" in msg
    assert "stl10_binary.tar.gz" in msg and "--download" in msg


# -- Tiny-ImageNet ----------------------------------------------------------------------
def small_tiny(**kw) -> TinyImageNet:
    return TinyImageNet(num_classes=3, train_per_class=3, val_per_class=2, **kw)


def test_tiny_imagenet_loads(tmp_path):
    f = fake.write_tiny_imagenet(tmp_path, num_classes=3, train_per_class=3, val_per_class=2, grayscale=(1,))
    data = small_tiny().load(tmp_path)
    check_contract(data, 9, 6, (64, 64), 3)
    assert data.classes == f.classes  # first synonym from words.txt, sorted wnid order
    np.testing.assert_array_equal(hwc(data.train_images), f.train_images)
    np.testing.assert_array_equal(hwc(data.test_images), f.test_images)
    assert data.train_labels.tolist() == f.train_labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert data.test_labels.tolist() == f.test_labels.tolist()
    gray = data.train_images[1]  # written as a grayscale JPEG
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert data.augment == Augment(crop_padding=4, hflip=True)


def test_tiny_imagenet_without_words_uses_wnids(tmp_path):
    f = fake.write_tiny_imagenet(tmp_path, words=False)
    assert small_tiny().load(tmp_path).classes == f.extra["wnids"] == sorted(f.extra["wnids"])


def test_tiny_imagenet_orientation(tmp_path):
    f = fake.write_tiny_imagenet(tmp_path, grayscale=())
    img = np.zeros((64, 64, 3), np.uint8)
    img[:16, :32, 0] = 255  # red block in the top-left, wider than tall
    img[48:, 48:, 2] = 255  # blue block in the bottom-right
    path = sorted((f.path / "train" / f.extra["wnids"][0] / "images").iterdir())[0]
    Image.fromarray(img).save(path, format="JPEG", quality=100, subsampling=0)
    x = small_tiny().load(tmp_path).train_images[0].int()
    # JPEG blurs the block edges a little: check block interiors and regions well away from them
    assert (x[0, 1:15, 1:31] > 200).all() and (x[1:, 1:15, 1:31] < 60).all()
    assert (x[0, 20:, :] < 60).all() and (x[0, :, 36:] < 60).all()
    assert (x[2, 49:, 49:] > 200).all() and (x[2, :44, :] < 60).all() and (x[2, :, :44] < 60).all()


def test_tiny_imagenet_default_counts_reject_tiny_set(tmp_path):
    f = fake.write_tiny_imagenet(tmp_path)
    with pytest.raises(DatasetError, match=r"expected 200 class wnids, found 3"):
        get_dataset("tiny_imagenet").load(tmp_path)
    first = f.extra["wnids"][0]
    with pytest.raises(DatasetError, match=rf"class {first} has 3 training images, expected 500 in every class; "
                                           r"2 more class\(es\)"):
        TinyImageNet(num_classes=3).load(tmp_path)
    with pytest.raises(DatasetError, match=rf"class {first} has 2 annotated validation images, expected 50"):
        TinyImageNet(num_classes=3, train_per_class=3).load(tmp_path)


def test_tiny_imagenet_short_class_with_matching_total(tmp_path):
    """An empty class folder is an error naming the class, although 3 classes x 3 = 9 images are there."""
    f = fake.write_tiny_imagenet(tmp_path, num_classes=3, train_per_class=3)
    empty, full = f.extra["wnids"][0], f.extra["wnids"][1]
    for i, path in enumerate(sorted((f.path / "train" / empty / "images").iterdir())):
        path.rename(f.path / "train" / full / "images" / f"moved_{i}.JPEG")
    assert sum(1 for _ in (f.path / "train").glob("*/images/*.JPEG")) == 9  # the total still matches
    with pytest.raises(DatasetError) as err:
        small_tiny().load(tmp_path)
    msg = str(err.value)
    assert str(f.path / "train" / empty / "images") in msg
    assert f"class {empty} has 0 training images, expected 3 in every class" in msg
    assert f"1 more class(es) with another count ({full}: 6)" in msg


def test_tiny_imagenet_val_per_class(tmp_path):
    """50 validation images per class: a relabelled annotation line is an error naming both classes."""
    f = fake.write_tiny_imagenet(tmp_path, num_classes=3, val_per_class=2)
    ann = f.path / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    a, b = f.extra["wnids"][0], f.extra["wnids"][2]
    k = next(i for i, line in enumerate(lines) if line.split("\t")[1] == a)
    lines[k] = lines[k].replace(f"\t{a}\t", f"\t{b}\t")
    ann.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as err:
        small_tiny().load(tmp_path)
    msg = str(err.value)
    assert str(ann) in msg and f"class {a} has 1 annotated validation images, expected 2 in every class" in msg
    assert f"({b}: 3)" in msg


def test_tiny_imagenet_unannotated_validation_image(tmp_path):
    f = fake.write_tiny_imagenet(tmp_path)
    extra = f.path / "val" / "images" / "val_99.JPEG"
    extra.write_bytes((f.path / "val" / "images" / "val_0.JPEG").read_bytes())
    with pytest.raises(DatasetError, match=r"1 image\(s\) have no line in val_annotations.txt, e.g. val_99.JPEG"):
        small_tiny().load(tmp_path)


def test_tiny_imagenet_pipelines(tmp_path):
    """The recipe's augment selects crop (default, training-set std) or mdistiller's rotation + std."""
    fake.write_tiny_imagenet(tmp_path)
    data = small_tiny().load(tmp_path)
    assert get_dataset("tiny_imagenet").recipe.augment == "crop"
    crop = data.for_recipe(Recipe())
    assert crop.augment == Augment(crop_padding=4, hflip=True, rotate_degrees=0.0)
    assert crop.mean == (0.4802, 0.4481, 0.3975) and crop.std == (0.2770, 0.2691, 0.2821)
    rot = data.for_recipe(Recipe(augment="rotate"))
    assert rot.augment == Augment(crop_padding=0, hflip=True, rotate_degrees=20.0)
    assert rot.mean == (0.4802, 0.4481, 0.3975) and rot.std == (0.2302, 0.2265, 0.2262)
    assert rot.train_images is data.train_images  # shared, not copied
    assert rot.for_recipe(Recipe()).std == crop.std  # back and forth


def test_recipe_rotate_keeps_other_datasets_statistics(tmp_path):
    fake.write_cifar10(tmp_path, per_batch=1, n_test=1)
    data = Cifar10(expected_train=5, expected_test=1).load(tmp_path)
    rot = data.for_recipe(Recipe(augment="rotate"))
    assert rot.augment == Augment(crop_padding=0, hflip=True, rotate_degrees=20.0)
    assert (rot.mean, rot.std) == (Cifar10.mean, Cifar10.std)
    with pytest.raises(ValueError, match="recipe augment must be 'crop' or 'rotate', got 'jitter'"):
        Recipe(augment="jitter")


def test_mini_imagenet_statistics_from_the_source_figures():
    """mean/std = the common mini-ImageNet code's 0-255 figures / 255, rounded to 4 digits."""
    mean_255 = (120.39586422, 115.59361427, 104.54012653)
    std_255 = (70.68188272, 68.27635443, 72.54505529)
    m = get_dataset("mini_imagenet")
    assert m.mean == tuple(round(v / 255, 4) for v in mean_255) == (0.4721, 0.4533, 0.41)
    assert m.std == tuple(round(v / 255, 4) for v in std_255) == (0.2772, 0.2678, 0.2845)


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(DatasetError) as err:
        TinyImageNet().load(tmp_path, download=True)
    msg = str(err.value)
    assert str(tmp_path / "tiny-imagenet-200") in msg
    assert "wnids.txt" in msg and "val_annotations.txt" in msg and "tiny-imagenet-200.zip" in msg
    assert "cannot fetch" in msg


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_tiny_imagenet_corrupt_jpeg(tmp_path, damage):
    f = fake.write_tiny_imagenet(tmp_path)
    path = sorted((f.path / "train" / f.extra["wnids"][2] / "images").iterdir())[1]
    data = path.read_bytes()
    path.write_bytes(b"not a jpeg at all" if damage == "garbage" else data[: len(data) // 2])
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        small_tiny().load(tmp_path)
    assert str(path) in str(err.value)


def test_tiny_imagenet_bad_annotations(tmp_path):
    f = fake.write_tiny_imagenet(tmp_path)
    ann = f.path / "val" / "val_annotations.txt"
    lines = ann.read_text().splitlines()
    ann.write_text("\n".join(lines[:-1] + [lines[-1].replace(lines[-1].split("\t")[1], "n12345678")]) + "\n")
    with pytest.raises(DatasetError, match=r"wnid 'n12345678' is not in wnids.txt"):
        small_tiny().load(tmp_path)
    ann.write_text("\n".join(lines) + "\n")
    (f.path / "val" / "images" / "val_3.JPEG").unlink()
    with pytest.raises(DatasetError, match=r"val_3.JPEG is malformed: listed in val_annotations.txt"):
        small_tiny().load(tmp_path)


def test_decoded_cache_hit_stale_and_corrupt(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger=DECODE_LOG)
    f = fake.write_tiny_imagenet(tmp_path)
    first = small_tiny().load(tmp_path)
    assert any("decoding 9 images" in r.message for r in caplog.records)
    caches = sorted((Path(os.environ["KDBENCH_CACHE"]) / "decoded").iterdir())
    assert [p.suffix for p in caches] == [".pt", ".pt"]  # train + val, no temporary leftovers

    caplog.clear()
    second = small_tiny().load(tmp_path)
    assert sum("loaded 9 decoded images from cache" in r.message for r in caplog.records) == 1
    assert not any("decoding" in r.message for r in caplog.records)
    assert torch.equal(first.train_images, second.train_images)

    # stale: one file changes -> the train cache is rebuilt with the new pixels
    path = sorted((f.path / "train" / f.extra["wnids"][0] / "images").iterdir())[0]
    new = np.full((64, 64, 3), 123, np.uint8)
    Image.fromarray(new).save(path, format="JPEG", quality=100)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    caplog.clear()
    third = small_tiny().load(tmp_path)
    assert any("is stale" in r.message for r in caplog.records)
    assert any("decoding 9 images" in r.message for r in caplog.records)
    assert (third.train_images[0].int() - 123).abs().max() <= 2
    assert torch.equal(third.test_images, first.test_images)

    # corrupt: garbage in the cache file -> warning, rebuilt, same result
    train_cache = next(p for p in caches if "-train-" in p.name)
    train_cache.write_bytes(b"garbage")
    caplog.clear()
    fourth = small_tiny().load(tmp_path)
    assert any(r.levelno == logging.WARNING and "unreadable" in r.message for r in caplog.records)
    assert torch.equal(fourth.train_images, third.train_images)
    caplog.clear()
    small_tiny().load(tmp_path)
    assert sum("from cache" in r.message for r in caplog.records) == 2

    # no cache at all when disabled
    caplog.clear()
    small_tiny(use_cache=False).load(tmp_path)
    assert not any("from cache" in r.message for r in caplog.records)


# -- mini-ImageNet ----------------------------------------------------------------------
def small_mini(**kw) -> MiniImageNet:
    return MiniImageNet(num_classes=5, images_per_class=6, train_per_class=5, **kw)


def test_mini_imagenet_layouts_are_equivalent(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="kdbench.datasets.mini_imagenet")
    loaded = {}
    cases = [("csv", "mini-imagenet", "val"), ("split folders", "mini_imagenet", "val"),
             ("class folders", "miniImageNet", "val"), ("pickle", "mini-imagenet", "validation"),
             ("pickle-py2", "mini_imagenet", "val")]
    for layout, folder, val_name in cases:
        root = tmp_path / layout.replace(" ", "_")
        f = fake.write_mini_imagenet(root, layout=layout, folder=folder, val_pickle=val_name, seed=3)
        caplog.clear()
        loaded[layout] = small_mini().load(root)
        detected = layout.replace("-py2", "")
        assert any(f"found the {detected} layout in {root / folder}" in r.message for r in caplog.records)
    base = loaded["csv"]
    check_contract(base, 25, 5, (84, 84), 5)
    for layout, data in loaded.items():
        assert data.classes == base.classes == f.classes == sorted(f.classes), layout
        for part in ("train_images", "train_labels", "test_images", "test_labels"):
            assert torch.equal(getattr(data, part), getattr(base, part)), (layout, part)

    # every image comes from its own class's pool, 5 train + 1 test per class, none twice
    pool = f.extra["pool"].reshape(len(f.extra["pool"]), -1)
    seen = []
    for x, y in ((base.train_images, base.train_labels), (base.test_images, base.test_labels)):
        for img, label in zip(hwc(x).reshape(len(x), -1), y.tolist()):
            (match,) = np.flatnonzero((pool == img).all(axis=1))
            assert match // 6 == label
            seen.append(int(match))
    assert sorted(seen) == list(range(30))
    assert torch.bincount(base.train_labels).tolist() == [5] * 5
    assert torch.bincount(base.test_labels).tolist() == [1] * 5


def test_fake_mini_py2_pickle_has_bytes_keys(tmp_path):
    f = fake.write_mini_imagenet(tmp_path, layout="pickle-py2")
    obj = pickle.loads((f.path / "mini-imagenet-cache-train.pkl").read_bytes(), encoding="bytes")
    assert set(obj) == {b"image_data", b"class_dict"} and all(isinstance(k, bytes) for k in obj[b"class_dict"])


def test_mini_imagenet_pickle_with_bytes_keys(tmp_path):
    """Python 3 pickles with bytes keys (a re-pickled ``encoding='bytes'`` load) load too."""
    f = fake.write_mini_imagenet(tmp_path / "a", layout="pickle")
    fake.write_mini_imagenet(tmp_path / "b", layout="pickle")
    for path in sorted((tmp_path / "b" / "mini-imagenet").glob("*.pkl")):
        obj = pickle.loads(path.read_bytes())
        obj = {b"image_data": obj["image_data"], b"class_dict": {k.encode(): v for k, v in obj["class_dict"].items()}}
        path.write_bytes(pickle.dumps(obj))
    a, b = small_mini().load(tmp_path / "a"), small_mini().load(tmp_path / "b")
    assert b.classes == a.classes == f.classes and torch.equal(a.train_images, b.train_images)


def test_mini_imagenet_split_is_seeded(tmp_path):
    fake.write_mini_imagenet(tmp_path, layout="pickle")
    a, b = small_mini().load(tmp_path), small_mini().load(tmp_path)
    c = small_mini(split_seed=1).load(tmp_path)
    assert torch.equal(a.test_images, b.test_images)
    assert not torch.equal(a.test_images, c.test_images)
    assert torch.equal(a.test_labels, c.test_labels)


def test_mini_imagenet_mixed_sizes_resized_to_84(tmp_path):
    f = fake.write_mini_imagenet(tmp_path, layout="csv", mixed_sizes=True)
    data = small_mini().load(tmp_path)
    assert data.train_images.shape[1:] == (3, 84, 84)
    sizes = set()
    for p in f.extra["files"]:
        with Image.open(f.path / p) as im:
            sizes.add(im.size)
    assert len(sizes) > 1
    # the first image of the first class (train or test) equals PIL's LANCZOS resize of its file
    first = sorted(p for p in f.extra["files"] if Path(p).name.startswith(f.classes[0]))[0]
    with Image.open(f.path / first) as im:
        expected = np.asarray(im.convert("RGB").resize((84, 84), Image.Resampling.LANCZOS))
    candidates = torch.cat([data.train_images[data.train_labels == 0], data.test_images[data.test_labels == 0]])
    assert any((hwc(candidates) == expected).all(axis=(1, 2, 3)))


def test_mini_imagenet_wrong_counts(tmp_path):
    f = fake.write_mini_imagenet(tmp_path, layout="class folders")
    with pytest.raises(DatasetError, match=r"expected 100 classes x 600 images, found 5 classes \(30 images\)"):
        get_dataset("mini_imagenet").load(tmp_path)
    victim = sorted((f.path / f.classes[2]).iterdir())[0]
    victim.unlink()
    with pytest.raises(DatasetError, match=rf"expected 5 classes x 6 images.*{f.classes[2]}: 5"):
        small_mini().load(tmp_path)


def test_mini_imagenet_missing(tmp_path):
    with pytest.raises(DatasetError) as err:
        MiniImageNet().load(tmp_path)
    msg = str(err.value)
    for sub in ("mini-imagenet", "mini_imagenet", "miniImageNet"):
        assert str(tmp_path / sub) in msg
    assert "train.csv" in msg and "mini-imagenet-cache-train.pkl" in msg and "no official download" in msg


def test_mini_imagenet_malformed_files(tmp_path):
    f = fake.write_mini_imagenet(tmp_path / "p", layout="pickle")
    pkl = f.path / "mini-imagenet-cache-test.pkl"
    pkl.write_bytes(pkl.read_bytes()[:1000])
    with pytest.raises(DatasetError, match="cannot unpickle") as err:
        small_mini().load(tmp_path / "p")
    assert str(pkl) in str(err.value)

    f = fake.write_mini_imagenet(tmp_path / "c", layout="csv")
    jpg = f.path / f.extra["files"][4]
    jpg.write_bytes(jpg.read_bytes()[:200])
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        small_mini().load(tmp_path / "c")
    assert str(jpg) in str(err.value)
    jpg.unlink()
    with pytest.raises(DatasetError, match=r"is malformed: listed in (train|val|test).csv"):
        small_mini().load(tmp_path / "c")
    (f.path / "test.csv").unlink()
    with pytest.raises(DatasetError, match="lacks test.csv"):
        small_mini().load(tmp_path / "c")


# -- imagefolder ------------------------------------------------------------------------
def test_imagefolder_flat_via_registry_relative_to_cwd(tmp_path, monkeypatch):
    written = fake.write_imagefolder(tmp_path / "data" / "pets", classes=("dog", "cat", "emu"), per_class=5)
    monkeypatch.chdir(tmp_path / "data")
    src = get_dataset("imagefolder:pets")
    assert isinstance(src, ImageFolder) and src.path == tmp_path / "data" / "pets"
    monkeypatch.chdir(tmp_path)  # bound at resolution time, not at load time
    data = src.load(tmp_path / "unrelated-data-root")
    check_contract(data, 12, 3, (24, 24), 3)
    assert data.name == "imagefolder:pets" and data.classes == ["cat", "dog", "emu"]
    assert torch.bincount(data.test_labels).tolist() == [1, 1, 1]
    by_class = {c: np.stack([v for k, v in written.items() if k.startswith(c + "/")]) for c in data.classes}
    for x, y in ((data.train_images, data.train_labels), (data.test_images, data.test_labels)):
        for img, label in zip(hwc(x), y.tolist()):
            assert (by_class[data.classes[label]] == img).all(axis=(1, 2, 3)).any()
    train = hwc(data.train_images).astype(np.float64) / 255
    np.testing.assert_allclose(data.mean, train.mean(axis=(0, 1, 2)), atol=1e-5)
    np.testing.assert_allclose(data.std, train.std(axis=(0, 1, 2)), atol=1e-5)
    again = get_dataset(f"imagefolder:{tmp_path / 'data' / 'pets'}").load(None)
    assert torch.equal(again.test_images, data.test_images)  # fixed split


@pytest.mark.parametrize("test_dir", ["val", "test"])
def test_imagefolder_train_and_test_folders(tmp_path, test_dir):
    fake.write_imagefolder(tmp_path, classes=("a", "b"), per_class=3, split=True, test_per_class=2,
                           test_dir=test_dir, size=(20, 28), fmt="JPEG")
    data = load_dataset(f"imagefolder:{tmp_path}")
    check_contract(data, 6, 4, (20, 28), 2)
    assert data.train_labels.tolist() == [0, 0, 0, 1, 1, 1] and data.test_labels.tolist() == [0, 0, 1, 1]
    assert data.augment == Augment(crop_padding=2, hflip=True)


def test_imagefolder_sizes(tmp_path):
    fake.write_imagefolder(tmp_path / "mixed", per_class=2, size=[(24, 24), (40, 30)])
    assert ImageFolder(tmp_path / "mixed").load().train_images.shape[2:] == (32, 32)
    fake.write_imagefolder(tmp_path / "big", per_class=2, size=(130, 130))
    assert ImageFolder(tmp_path / "big").load().train_images.shape[2:] == (32, 32)
    fake.write_imagefolder(tmp_path / "same", per_class=2, size=(64, 48))
    assert ImageFolder(tmp_path / "same").load().train_images.shape[2:] == (64, 48)
    assert ImageFolder(tmp_path / "same", image_size=16).load().train_images.shape[2:] == (16, 16)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DatasetError, match="imagefolder needs a folder"):
        get_dataset("imagefolder:")
    with pytest.raises(DatasetError) as err:
        get_dataset(f"imagefolder:{tmp_path / 'nowhere'}").load(None)
    assert str(tmp_path / "nowhere") in str(err.value) and "<path>/<class>/<image>" in str(err.value)
    written = fake.write_imagefolder(tmp_path / "f", per_class=3)
    bad = tmp_path / "f" / next(iter(written))
    bad.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match="cannot decode image") as err:
        ImageFolder(tmp_path / "f", image_size=8).load()
    assert str(bad) in str(err.value)
    (tmp_path / "g" / "train" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match="neither test/ nor val/"):
        ImageFolder(tmp_path / "g").load()
    fake.write_imagefolder(tmp_path / "h", classes=("a",), per_class=2, split=True)
    (tmp_path / "h" / "test" / "zebra").mkdir()
    with pytest.raises(DatasetError, match="zebra do not exist in train/"):
        ImageFolder(tmp_path / "h").load()


def test_channel_stats_independent_formula():
    x = torch.tensor([[[[0, 255]], [[51, 51]], [[0, 0]]]], dtype=torch.uint8)  # 1×3×1×2
    mean, std = channel_stats(x)
    assert mean == pytest.approx((0.5, 0.2, 0.0)) and std == pytest.approx((0.5, 0.0, 0.0), abs=1e-5)
