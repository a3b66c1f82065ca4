"""Tiny datasets written in the genuine on-disk formats, for tests (never downloads).

Each ``write_*`` function writes a small, deterministic (seeded) copy of a dataset below a
data root and returns a :class:`FakeSet` with the pixels and labels the loader must
produce (``H×W×3`` uint8, in the loader's documented order). The formats are encoded
from their published descriptions, independently of the loaders:

* CIFAR: Python-2 pickles (byte-string keys and array buffers, as in the real files),
  written by :func:`py2_pickle`; rows are the R, G, B planes, each row-major.
* STL-10: raw bytes, each image's R, G, B planes in column-major order; labels 1..10.
* Tiny-ImageNet / mini-ImageNet / image folders: real JPEG (or PNG) files. The expected
  pixels of a JPEG are what PIL decodes from the written bytes.

Use the loaders with small expectations, e.g. ``Cifar10(expected_train=fake.n_train,
expected_test=fake.n_test)`` or ``TinyImageNet(num_classes=3, train_per_class=3,
val_per_class=2)`` (the registered datasets keep the real counts), and set
``$KDBENCH_CACHE`` to a temporary folder so the decoded-image cache stays out of the home
directory.
"""
from __future__ import annotations

import csv
import io
import pickle
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image


@dataclass
class FakeSet:
    """What a fake dataset holds: the data root, its folder, and the expected content."""

    root: Path
    path: Path
    train_images: np.ndarray  # N×H×W×3 uint8
    train_labels: np.ndarray  # N int64
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_train(self) -> int:
        return len(self.train_labels)

    @property
    def n_test(self) -> int:
        return len(self.test_labels)


# -- Python-2 style pickles -----------------------------------------------------------------
def py2_pickle(obj: Any) -> bytes:
    """Pickle ``obj`` the way Python 2's cPickle (protocol 2) wrote the CIFAR files.

    ``str`` and ``bytes`` both become Python-2 byte strings (``SHORT_BINSTRING`` /
    ``BINSTRING``): read back as ``bytes`` with ``encoding='bytes'`` and as ``str`` with
    ``encoding='latin1'``. numpy arrays are written as numpy 1.x did under Python 2:
    ``numpy.core.multiarray._reconstruct`` + a state tuple whose buffer is a byte string.
    Supports dict, list, tuple, str, bytes, int, float, bool, None and numpy arrays.
    """
    out = io.BytesIO()
    out.write(b"\x80\x02")  # PROTO 2
    _py2_save(obj, out)
    out.write(b".")  # STOP
    return out.getvalue()


def _py2_save(obj: Any, out: io.BytesIO) -> None:
    if obj is None:
        out.write(b"N")
    elif obj is True or obj is False:
        out.write(b"\x88" if obj else b"\x89")
    elif isinstance(obj, (int, np.integer)):
        v = int(obj)
        if 0 <= v < 256:
            out.write(b"K" + struct.pack("<B", v))
        elif 0 <= v < 65536:
            out.write(b"M" + struct.pack("<H", v))
        elif -(2**31) <= v < 2**31:
            out.write(b"J" + struct.pack("<i", v))
        else:
            raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
            out.write(b"\x8a" + struct.pack("<B", len(raw)) + raw)
    elif isinstance(obj, float):
        out.write(b"G" + struct.pack(">d", obj))
    elif isinstance(obj, (str, bytes)):
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            out.write(b"U" + struct.pack("<B", len(raw)) + raw)
        else:
            out.write(b"T" + struct.pack("<I", len(raw)) + raw)
    elif isinstance(obj, dict):
        out.write(b"}")
        if obj:
            out.write(b"(")
            for k, v in obj.items():
                _py2_save(k, out)
                _py2_save(v, out)
            out.write(b"u")  # SETITEMS
    elif isinstance(obj, list):
        out.write(b"]")
        if obj:
            out.write(b"(")
            for v in obj:
                _py2_save(v, out)
            out.write(b"e")  # APPENDS
    elif isinstance(obj, tuple):
        out.write(b"(")
        for v in obj:
            _py2_save(v, out)
        out.write(b"t")
    elif isinstance(obj, np.ndarray):
        arr = np.ascontiguousarray(obj)
        out.write(b"cnumpy.core.multiarray\n_reconstruct\n")
        out.write(b"cnumpy\nndarray\n")
        _py2_save((0,), out)
        _py2_save("b", out)
        out.write(b"\x87R")  # TUPLE3, REDUCE -> empty array
        out.write(b"(")  # state: (1, shape, dtype, is_fortran, raw data)
        _py2_save(1, out)
        _py2_save(tuple(arr.shape), out)
        out.write(b"cnumpy\ndtype\n")
        _py2_save((arr.dtype.str[1:], 0, 1), out)
        out.write(b"R")
        order = "|" if arr.dtype.itemsize == 1 else "<"
        _py2_save((3, order, None, None, None, -1, -1, 0), out)
        out.write(b"b")  # BUILD the dtype
        out.write(b"\x89")  # not Fortran-ordered
        _py2_save(arr.tobytes(), out)
        out.write(b"t")
        out.write(b"b")  # BUILD the array
    else:
        raise TypeError(f"py2_pickle cannot write {type(obj).__name__}")


# -- pixels -----------------------------------------------------------------------------
def random_images(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    """``n`` noise images ``H×W×3`` (exact formats: every pixel checks orientation)."""
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def block_image(rng: np.random.Generator, h: int, w: int, block: int = 8) -> np.ndarray:
    """An ``H×W×3`` image of random flat-coloured blocks (survives JPEG well)."""
    cells = rng.integers(0, 256, size=(h // block + 1, w // block + 1, 3), dtype=np.uint8)
    return np.repeat(np.repeat(cells, block, axis=0), block, axis=1)[:h, :w]


def encode(img: np.ndarray, fmt: str = "JPEG", mode: str = "RGB") -> bytes:
    """Encode ``H×W×3`` pixels as an image file (``mode='L'`` writes a grayscale file)."""
    im = Image.fromarray(img, "RGB")
    if mode != "RGB":
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def decode(data: bytes) -> np.ndarray:
    """What PIL decodes from image bytes, as RGB ``H×W×3`` uint8."""
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()


def _wnids(rng: np.random.Generator, n: int) -> list[str]:
    ids = rng.choice(10**8, size=n, replace=False)
    return [f"n{int(i):08d}" for i in ids]


# -- CIFAR ------------------------------------------------------------------------------
def cifar_rows(images: np.ndarray) -> np.ndarray:
    """``N×32×32×3`` pixels as CIFAR rows: 1024 red values (row by row), then green, then blue."""
    return np.stack([np.concatenate([img[:, :, c].reshape(-1) for c in range(3)]) for img in images]).astype(np.uint8)


def _dump(obj: dict, path: Path, py2: bool) -> None:
    path.write_bytes(py2_pickle(obj) if py2 else pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def write_cifar10(root: Path, per_batch: int = 4, n_test: int = 6, seed: int = 0, py2: bool = True) -> FakeSet:
    """``cifar-10-batches-py/`` with 5 train batches of ``per_batch`` images and ``n_test`` test images."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    train_x = random_images(rng, 5 * per_batch, 32, 32)
    train_y = rng.integers(0, 10, size=5 * per_batch)
    test_x = random_images(rng, n_test, 32, 32)
    test_y = rng.integers(0, 10, size=n_test)
    for b in range(5):
        sl = slice(b * per_batch, (b + 1) * per_batch)
        _dump({"batch_label": f"training batch {b + 1} of 5", "labels": [int(v) for v in train_y[sl]],
               "data": cifar_rows(train_x[sl]), "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)]},
              folder / f"data_batch_{b + 1}", py2)
    _dump({"batch_label": "testing batch 1 of 1", "labels": [int(v) for v in test_y], "data": cifar_rows(test_x),
           "filenames": [f"test_{i}.png" for i in range(n_test)]}, folder / "test_batch", py2)
    _dump({"num_cases_per_batch": per_batch, "label_names": classes, "num_vis": 3072}, folder / "batches.meta", py2)
    return FakeSet(Path(root), folder, train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64), classes)


def cifar100_names() -> list[str]:
    return [f"class_{i:02d}" for i in range(100)]


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0, py2: bool = True) -> FakeSet:
    """``cifar-100-python/`` with ``n_train`` / ``n_test`` images and the real 100-name meta."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    classes = cifar100_names()
    split = {}
    for name, n in (("train", n_train), ("test", n_test)):
        x = random_images(rng, n, 32, 32)
        y = rng.integers(0, 100, size=n)
        _dump({"filenames": [f"{name}_{i}.png" for i in range(n)], "batch_label": f"{name} batch",
               "fine_labels": [int(v) for v in y], "coarse_labels": [int(v) // 5 for v in y], "data": cifar_rows(x)},
              folder / name, py2)
        split[name] = (x, y.astype(np.int64))
    _dump({"fine_label_names": classes, "coarse_label_names": [f"super_{i}" for i in range(20)]}, folder / "meta", py2)
    return FakeSet(Path(root), folder, *split["train"], *split["test"], classes)


# -- STL-10 -----------------------------------------------------------------------------
def stl10_bytes(images: np.ndarray) -> bytes:
    """``N×96×96×3`` pixels in STL-10's layout: per image the R, G, B planes, each column-major."""
    return b"".join(img[:, :, c].tobytes(order="F") for img in images for c in range(3))


def write_stl10(root: Path, n_train: int = 10, n_test: int = 6, seed: int = 0,
                train_images: np.ndarray | None = None) -> FakeSet:
    """``stl10_binary/`` with ``n_train`` / ``n_test`` images (or the given train images)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    train_x = random_images(rng, n_train, 96, 96) if train_images is None else np.asarray(train_images, np.uint8)
    test_x = random_images(rng, n_test, 96, 96)
    train_y = rng.integers(0, 10, size=len(train_x))
    test_y = rng.integers(0, 10, size=n_test)
    for split, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        (folder / f"{split}_X.bin").write_bytes(stl10_bytes(x))
        (folder / f"{split}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())  # labels 1..10 on disk
    (folder / "class_names.txt").write_text("\n".join(classes) + "\n")
    return FakeSet(Path(root), folder, train_x, train_y.astype(np.int64), test_x, test_y.astype(np.int64), classes)


# -- Tiny-ImageNet --------------------------------------------------------------------------
def write_tiny_imagenet(root: Path, num_classes: int = 3, train_per_class: int = 3, val_per_class: int = 2,
                        seed: int = 0, words: bool = True, grayscale: Sequence[int] = (1,)) -> FakeSet:
    """``tiny-imagenet-200/`` with 64×64 JPEGs; the train images at positions ``grayscale``
    (in expected order) are written as grayscale JPEGs. Expected order: sorted wnids, file
    names sorted within a class; validation in ``val_annotations.txt`` order."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    wnids = _wnids(rng, num_classes)
    (folder / "val" / "images").mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")  # not sorted, like the real file
    names = {w: f"thing {i}" for i, w in enumerate(wnids)}
    if words:
        lines = ["n00001740\tentity"] + [f"{w}\t{names[w]}, synonym {w}" for w in wnids] + ["n99999999\tunused"]
        (folder / "words.txt").write_text("\n".join(lines) + "\n")
    order = sorted(wnids)
    train_x, train_y, k = [], [], 0
    for w in order:
        d = folder / "train" / w / "images"
        d.mkdir(parents=True, exist_ok=True)
        (folder / "train" / w / f"{w}_boxes.txt").write_text("")
        for i in sorted(range(train_per_class), key=lambda i: f"{w}_{i}.JPEG"):
            data = encode(block_image(rng, 64, 64), mode="L" if k in grayscale else "RGB")
            (d / f"{w}_{i}.JPEG").write_bytes(data)
            train_x.append(decode(data))
            train_y.append(order.index(w))
            k += 1
    val_labels = [c for c in range(num_classes) for _ in range(val_per_class)]
    rng.shuffle(val_labels)
    test_x, ann = [], []
    for i, c in enumerate(val_labels):
        data = encode(block_image(rng, 64, 64))
        (folder / "val" / "images" / f"val_{i}.JPEG").write_bytes(data)
        test_x.append(decode(data))
        ann.append(f"val_{i}.JPEG\t{order[c]}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    classes = [names[w] for w in order] if words else order
    return FakeSet(Path(root), folder, np.stack(train_x), np.array(train_y, np.int64), np.stack(test_x),
                   np.array(val_labels, np.int64), classes, {"wnids": order})


# -- mini-ImageNet --------------------------------------------------------------------------
MINI_LAYOUTS = ("csv", "split folders", "class folders", "pickle", "pickle-py2")


def write_mini_imagenet(root: Path, layout: str = "csv", folder: str = "mini-imagenet", num_classes: int = 5,
                        images_per_class: int = 6, seed: int = 0, val_pickle: str = "val",
                        mixed_sizes: bool = False) -> FakeSet:
    """mini-ImageNet in one of :data:`MINI_LAYOUTS` below ``root/folder``.

    The same ``seed`` gives the same images in every layout (the pickles hold exactly the
    pixels PIL decodes from the JPEGs of the other layouts). Classes get a few-shot split
    with disjoint classes (60/20/20 %), as in Ravi's CSVs. ``mixed_sizes`` (CSV layout
    only) writes images of several sizes, which the loader resizes to 84×84.

    The returned :class:`FakeSet` has no train/test arrays (the loader re-splits); its
    ``extra['pool']`` holds the class-major pool (sorted wnids, file names sorted within a
    class, 84×84 layouts only) and ``extra['files']`` the relative file names.
    """
    if layout not in MINI_LAYOUTS:
        raise ValueError(f"layout must be one of {MINI_LAYOUTS}")
    rng = np.random.default_rng(seed)
    base = Path(root) / folder
    base.mkdir(parents=True, exist_ok=True)
    wnids = _wnids(rng, num_classes)  # random order: few-shot splits are not sorted
    n_tr = max(1, round(0.6 * num_classes))
    n_va = max(1, round(0.2 * num_classes))
    fewshot = {"train": wnids[:n_tr], "val": wnids[n_tr:n_tr + n_va], "test": wnids[n_tr + n_va:]}
    sizes = [(84, 84), (100, 120), (375, 500), (64, 90)]
    blobs: dict[str, list[tuple[str, bytes]]] = {}
    for w in wnids:
        blobs[w] = []
        for i in range(images_per_class):
            h, wd = sizes[(i + len(w)) % len(sizes)] if mixed_sizes else (84, 84)
            blobs[w].append((f"{w}{i + 1:08d}.jpg", encode(block_image(rng, h, wd))))
    order = sorted(wnids)
    pool = None if mixed_sizes else np.stack([decode(b) for w in order for _, b in sorted(blobs[w])])
    files: list[str] = []
    if layout == "csv":
        (base / "images").mkdir(exist_ok=True)
        for split, ws in fewshot.items():
            rows = [(n, w) for w in ws for n, _ in blobs[w]]
            rng.shuffle(rows)  # the loader must not depend on row order
            with open(base / f"{split}.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["filename", "label"])
                writer.writerows(rows)
            for w in ws:
                for n, b in blobs[w]:
                    (base / "images" / n).write_bytes(b)
                    files.append(f"images/{n}")
    elif layout in ("split folders", "class folders"):
        for split, ws in fewshot.items():
            for w in ws:
                d = base / split / w if layout == "split folders" else base / w
                d.mkdir(parents=True, exist_ok=True)
                for n, b in blobs[w]:
                    (d / n).write_bytes(b)
                    files.append(str((d / n).relative_to(base)))
    else:
        if mixed_sizes:
            raise ValueError("pickle layouts hold 84x84 images only")
        for split, ws in fewshot.items():
            items = [(w, decode(b)) for w in ws for _, b in sorted(blobs[w])]
            perm = rng.permutation(len(items))  # rows not grouped by class: class_dict must be used
            image_data = np.stack([items[j][1] for j in perm]) if items else np.zeros((0, 84, 84, 3), np.uint8)
            where = {int(j): row for row, j in enumerate(perm)}
            class_dict: dict[str, list[int]] = {}
            for k, (w, _) in enumerate(items):
                class_dict.setdefault(w, []).append(where[k])
            name = f"mini-imagenet-cache-{'validation' if split == 'val' and val_pickle == 'validation' else split}.pkl"
            obj = {"image_data": image_data, "class_dict": class_dict}
            _dump(obj, base / name, py2=(layout == "pickle-py2"))
            files.append(name)
    return FakeSet(Path(root), base, np.zeros((0, 84, 84, 3), np.uint8), np.zeros(0, np.int64),
                   np.zeros((0, 84, 84, 3), np.uint8), np.zeros(0, np.int64), order,
                   {"pool": pool, "files": files, "fewshot": fewshot})


# -- image folders ----------------------------------------------------------------------
def write_imagefolder(path: Path, classes: Sequence[str] = ("cat", "dog", "emu"), per_class: int = 5,
                      split: bool = False, test_per_class: int = 2, size: tuple[int, int] | Sequence[tuple[int, int]] = (24, 24),
                      fmt: str = "PNG", seed: int = 0, test_dir: str = "test") -> dict[str, np.ndarray]:
    """A class-folder tree at ``path``: flat ``<class>/img_<i>.png`` or, with ``split``,
    ``train/<class>/`` + ``<test_dir>/<class>/``. ``size`` is one ``(h, w)`` or a list cycled
    through. Returns ``{relative path: decoded H×W×3 pixels}`` (PNG is lossless)."""
    rng = np.random.default_rng(seed)
    sizes = [size] if isinstance(size, tuple) else list(size)
    written: dict[str, np.ndarray] = {}
    k = 0
    groups = [("train", per_class), (test_dir, test_per_class)] if split else [("", per_class)]
    ext = {"PNG": ".png", "JPEG": ".jpg"}[fmt]
    for sub, n in groups:
        for c in classes:
            d = Path(path) / sub / c if sub else Path(path) / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = sizes[k % len(sizes)]
                k += 1
                data = encode(random_images(rng, 1, h, w)[0], fmt=fmt)
                (d / f"img_{i}{ext}").write_bytes(data)
                written[str((d / f"img_{i}{ext}").relative_to(path))] = decode(data)
    return written
