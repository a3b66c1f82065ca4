"""The batched tensor augmentation and batching, checked against naive per-sample code
and (rotation) against torchvision's own ``rotate``."""
import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from kdbench import data as kdbench_data
from kdbench.data import (Augment, DatasetError, EvalData, ImageData, Normalizer, TrainData, augment_batch,
                          crop_flip_batch, epoch_generator, random_crop_flip, rotate_batch)
from kdbench.spec import Recipe


def naive_crop_flip(img: torch.Tensor, pad: int, dy: int, dx: int, flip: bool) -> torch.Tensor:
    c, h, w = img.shape
    canvas = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=img.dtype)
    canvas[:, pad:pad + h, pad:pad + w] = img
    out = torch.empty_like(img)
    for i in range(h):
        for j in range(w):
            out[:, i, j] = canvas[:, dy + i, dx + j]
    if flip:
        out = torch.stack([out[:, :, w - 1 - j] for j in range(w)], dim=2)
    return out


def test_random_crop_flip_matches_naive_per_sample_code():
    x = torch.randint(0, 256, (6, 3, 8, 10), dtype=torch.uint8)
    aug = Augment(crop_padding=2, hflip=True)
    out = random_crop_flip(x, aug, epoch_generator(3, 0, 1))
    # replay the same random draws: offsets (2×B) first, then the flip coin per sample
    g = epoch_generator(3, 0, 1)
    offsets = torch.randint(0, 5, (2, 6), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    for b in range(6):
        expected = naive_crop_flip(x[b], 2, int(offsets[0, b]), int(offsets[1, b]), bool(flips[b]))
        assert torch.equal(out[b], expected), b
    assert 0 < int(flips.sum()) < 6  # both branches exercised by this seed


def test_augmentation_is_deterministic_per_epoch_and_varies_across_epochs():
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    aug = Augment(crop_padding=3, hflip=True)
    a = random_crop_flip(x, aug, epoch_generator(0, 0, 1))
    b = random_crop_flip(x, aug, epoch_generator(0, 0, 1))
    c = random_crop_flip(x, aug, epoch_generator(0, 0, 2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_no_padding_no_flip_is_identity():
    x = torch.randint(0, 256, (4, 3, 5, 5), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(x, Augment(0, False), epoch_generator(0, 0, 0)), x)


def test_normalizer_matches_formula():
    x = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.25, 0.125)
    out = Normalizer(mean, std, torch.device("cpu"))(x)
    for ch in range(3):
        ref = (x[:, ch].float() / 255.0 - mean[ch]) / std[ch]
        torch.testing.assert_close(out[:, ch], ref, rtol=1e-6, atol=1e-6)


def _data(n_train=10, n_test=5):
    g = torch.Generator().manual_seed(0)
    return ImageData("toy", torch.randint(0, 256, (n_train, 3, 4, 4), dtype=torch.uint8, generator=g),
                     torch.arange(n_train) % 3, torch.randint(0, 256, (n_test, 3, 4, 4), dtype=torch.uint8, generator=g),
                     torch.arange(n_test) % 3, ["a", "b", "c"], (0.5,) * 3, (0.5,) * 3, Augment(1, True))


def test_epoch_covers_every_sample_once_and_drops_only_a_single_sample_tail():
    td = TrainData(_data(10), batch_size=4, device=torch.device("cpu"), seed=0)
    idx = torch.cat(td.epoch_indices(epoch_generator(0, 0, 1)))
    assert sorted(idx.tolist()) == list(range(10)) and td.steps_per_epoch() == 3  # 4 + 4 + 2
    td9 = TrainData(_data(9), batch_size=4, device=torch.device("cpu"), seed=0)
    assert td9.steps_per_epoch() == 2  # 4 + 4 + (1 dropped: BatchNorm needs 2 rows)
    batches = list(td.epoch(epoch_generator(0, 0, 1)))
    assert [len(b) for b in batches] == [4, 4, 2]
    b = batches[0]
    assert torch.equal(b.y, td.labels[b.index]) and b.x.dtype == torch.float32


def test_eval_data_is_ordered_and_complete():
    d = _data(10, 7)
    ev = EvalData(d.test_images, d.test_labels, d.mean, d.std, torch.device("cpu"), batch_size=3)
    batches = list(ev)
    assert [len(b) for b in batches] == [3, 3, 1]
    assert torch.cat([b.index for b in batches]).tolist() == list(range(7))
    assert torch.equal(torch.cat([b.y for b in batches]), d.test_labels)


# -- rotation (the recipe's augment="rotate": mdistiller's RandomRotation(20) + flip) ----------
ANGLES = [0.0, 90.0, -90.0, 180.0, 13.7, -19.2, 7.3, 20.0]


@pytest.mark.parametrize("size", [(16, 16), (9, 13), (12, 8)], ids=str)
def test_rotate_batch_equals_torchvision_rotate_on_tensors(size):
    """torchvision's rotate(img, angle) defaults: counter-clockwise, nearest, same size, zero fill.
    (Sides of one parity: with one odd and one even side, ±90° puts sources exactly halfway
    between two pixels, and either is "nearest".)"""
    g = torch.Generator().manual_seed(1)
    x = torch.randint(1, 256, (len(ANGLES), 3, *size), dtype=torch.uint8, generator=g)  # no zeros: fill shows
    out = rotate_batch(x, torch.tensor(ANGLES))
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for img, rotated, angle in zip(x, out, ANGLES):
        assert torch.equal(rotated, TF.rotate(img, angle)), angle


def test_rotate_batch_matches_torchvision_on_pil_images_up_to_rounding_ties():
    """On PIL images (what mdistiller's loader rotates) the nearest source pixel can differ
    where the exact source position is a rounding tie: at most 0.2 % of the pixels."""
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, 256, (len(ANGLES), 3, 64, 64), dtype=torch.uint8, generator=g)
    out = rotate_batch(x, torch.tensor(ANGLES))
    for img, rotated, angle in zip(x, out, ANGLES):
        pil = TF.rotate(Image.fromarray(img.permute(1, 2, 0).numpy()), angle)
        ref = torch.from_numpy(np.array(pil)).permute(2, 0, 1)
        assert (ref != rotated).any(0).float().mean() <= 0.002, angle


def test_rotate_batch_by_hand():
    """A 90° counter-clockwise turn moves the top-right pixel to the top-left; 45° leaves
    the corners (outside the rotated square) zero."""
    x = torch.zeros(1, 1, 5, 5, dtype=torch.uint8)
    x[0, 0, 0, 4] = 200
    x[0, 0, 2, 2] = 7
    out = rotate_batch(x, torch.tensor([90.0]))[0, 0]
    assert out[0, 0] == 200 and out[2, 2] == 7 and int(out.sum()) == 207
    ones = torch.full((1, 1, 9, 9), 255, dtype=torch.uint8)
    turned = rotate_batch(ones, torch.tensor([45.0]))[0, 0]
    assert turned[0, 0] == turned[0, 8] == turned[8, 0] == turned[8, 8] == 0 and turned[4, 4] == 255


def test_augment_batch_rotation_replays_angles_then_flips():
    """Draw order: B angles uniform in [-d, d], then (no crop) B flip coins."""
    x = torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8)
    aug = Augment(crop_padding=0, hflip=True, rotate_degrees=20.0)
    out = augment_batch(x, aug, epoch_generator(5, 0, 2))
    g = epoch_generator(5, 0, 2)
    angles = torch.rand(6, generator=g, dtype=torch.float64) * 40.0 - 20.0
    flips = torch.rand(6, generator=g) < 0.5
    assert angles.abs().max() <= 20.0 and 0 < int(flips.sum()) < 6
    for b in range(6):
        expected = TF.rotate(x[b], float(angles[b]))
        expected = expected.flip(2) if flips[b] else expected
        assert torch.equal(out[b], expected), b
    assert torch.equal(out, augment_batch(x, aug, epoch_generator(5, 0, 2)))  # deterministic per epoch
    assert not torch.equal(out, augment_batch(x, aug, epoch_generator(5, 0, 3)))


def test_crop_flip_draws_are_unchanged_without_rotation():
    """rotate_degrees=0 draws no angles: crop recipes replay exactly what they did before."""
    x = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    aug = Augment(crop_padding=2, hflip=True)
    assert random_crop_flip is augment_batch
    g = epoch_generator(1, 0, 1)
    offsets = torch.randint(0, 5, (2, 5), generator=g)
    flips = torch.rand(5, generator=g) < 0.5
    out = augment_batch(x, aug, epoch_generator(1, 0, 1))
    for b in range(5):
        assert torch.equal(out[b], naive_crop_flip(x[b], 2, int(offsets[0, b]), int(offsets[1, b]), bool(flips[b])))


def test_augment_rejects_bad_values():
    with pytest.raises(ValueError, match="rotate_degrees must be in \\[0, 180\\], got -5"):
        Augment(rotate_degrees=-5)
    with pytest.raises(ValueError, match="crop_padding must be >= 0, got -1"):
        Augment(crop_padding=-1)


def test_for_recipe_selects_pipeline_and_train_data_uses_it():
    d = _data(10)
    assert d.for_recipe(Recipe()).augment == d.augment == Augment(1, True)
    rot = d.for_recipe(Recipe(augment="rotate"))
    assert rot.augment == Augment(crop_padding=0, hflip=True, rotate_degrees=20.0)
    assert (rot.mean, rot.std) == (d.mean, d.std) and rot.train_images is d.train_images
    td = TrainData(rot, batch_size=4, device=torch.device("cpu"), seed=0)
    idx = torch.arange(4)
    expected = augment_batch(d.train_images[idx], rot.augment, epoch_generator(0, 0, 1))
    assert torch.equal(td.augmented_uint8(idx, epoch_generator(0, 0, 1)), expected)


def test_for_recipe_unknown_pipeline_says_what_exists():
    d = _data(4)
    d.pipelines.pop("rotate")
    with pytest.raises(DatasetError, match=r"has no 'rotate' pipeline \(it has \['crop'\]\)(.|\n)*how to fix it"):
        d.for_recipe(Recipe(augment="rotate"))


# -- the optimised batch path (one gather for crop + flip) against a straightforward reference ----
def reference_epoch(images, labels, mean, std, augment, batch_size, steps, gen, memory_format):
    """Per-image zero padding, slicing, flip and ``addcmul(-mean/std, x, 1/(255·std))`` (the
    normalisation's formula, in float32), replaying the draws in the documented order: the
    permutation, then per batch the crop offsets (rows, then columns) and the flip coins."""
    n, c, h, w = images.shape
    pad = augment.crop_padding
    std_t = torch.tensor(std, dtype=torch.float32).view(c, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(c, 1, 1)
    scale, shift = 1.0 / (255.0 * std_t), -mean_t / std_t
    perm = torch.randperm(n, generator=gen)
    for s in range(steps):
        idx = perm[s * batch_size:(s + 1) * batch_size]
        b = len(idx)
        offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=gen) if pad else torch.zeros(2, b, dtype=torch.long)
        flips = torch.rand(b, generator=gen) < 0.5 if augment.hflip else torch.zeros(b, dtype=torch.bool)
        rows = []
        for i, k in enumerate(idx.tolist()):
            canvas = torch.zeros(c, h + 2 * pad, w + 2 * pad, dtype=torch.uint8)
            canvas[:, pad:pad + h, pad:pad + w] = images[k]
            dy, dx = int(offsets[0, i]), int(offsets[1, i])
            crop = canvas[:, dy:dy + h, dx:dx + w]
            rows.append(crop.flip(2) if flips[i] else crop)
        source = torch.stack(rows)
        x = torch.stack([torch.addcmul(shift, r.float(), scale) for r in rows]).contiguous(memory_format=memory_format)
        yield idx, source, x, labels[idx]


@pytest.mark.parametrize("serial_elements", [False, True], ids=["whole", "pieces"])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "nhwc"])
@pytest.mark.parametrize("channels,size", [(1, (6, 9)), (3, (8, 8))], ids=["1ch", "3ch"])
@pytest.mark.parametrize("pad", [0, 3], ids=["nocrop", "crop3"])
@pytest.mark.parametrize("hflip", [False, True], ids=["noflip", "flip"])
def test_train_batches_equal_per_image_reference_bit_for_bit(memory_format, channels, size, pad, hflip,
                                                             serial_elements, monkeypatch):
    """Every batch of two epochs (order, crops, flips, normalisation, labels) is
    bit-identical to the per-image reference, for 1 and 3 channels, with and without crop
    and flip, in either memory format, as whole batches and in serial pieces of a few rows
    (what full-size images get on the CPU); the tail batch (7 rows) changes the shape."""
    if serial_elements:  # pieces of 2 rows (1 row for the padded canvas)
        monkeypatch.setattr(kdbench_data, "SERIAL_ELEMENTS", 2 * channels * size[0] * size[1] + 1)
        assert len(kdbench_data.serial_pieces(8, channels * size[0] * size[1], torch.device("cpu"))) == 4
    g = torch.Generator().manual_seed(channels * 100 + pad * 10 + hflip)
    n = 23
    images = torch.randint(0, 256, (n, channels, *size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    mean, std = (0.49, 0.48, 0.45)[:channels], (0.247, 0.243, 0.261)[:channels]
    d = ImageData("toy", images, labels, images[:2], labels[:2], ["a", "b", "c"], mean, std, Augment(pad, hflip))
    td = TrainData(d, batch_size=8, device=torch.device("cpu"), seed=0, memory_format=memory_format)
    for epoch in (1, 2):
        got = list(td.base_epoch(epoch_generator(0, 0, epoch)))
        want = list(reference_epoch(images, labels, mean, std, d.augment, 8, td.steps_per_epoch(),
                                    epoch_generator(0, 0, epoch), memory_format))
        assert [len(b) for b in got] == [8, 8, 7] and len(want) == 3
        for batch, (idx, source, x, y) in zip(got, want):
            assert torch.equal(batch.index_cpu, idx) and torch.equal(batch.index, idx)
            assert torch.equal(batch.source, source) and batch.source.is_contiguous()
            assert batch.x.dtype == torch.float32 and batch.x.is_contiguous(memory_format=memory_format)
            assert torch.equal(batch.x, x)
            assert torch.equal(batch.y, y)


@pytest.mark.parametrize("serial_elements", [None, 100], ids=["whole", "pieces"])
@pytest.mark.parametrize("pad,hflip", [(0, True), (2, False), (2, True), (4, True)])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["contiguous", "nhwc"])
def test_crop_flip_batch_equals_per_image_slicing(pad, hflip, memory_format, serial_elements, monkeypatch):
    """``crop_flip_batch`` (the gather behind ``augment_batch``) on a batch of any layout, with
    every offset and both flips, whole or in serial pieces, and the scratch canvas reused
    across calls and shapes."""
    if serial_elements:
        monkeypatch.setattr(kdbench_data, "SERIAL_ELEMENTS", serial_elements)
    g = torch.Generator().manual_seed(pad * 2 + hflip)
    for b, c, h, w in [(50, 3, 5, 7), (1, 1, 4, 4), (50, 3, 5, 7), (9, 2, 3, 6)]:
        x = torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g).contiguous(memory_format=memory_format)
        offsets = torch.randint(0, 2 * pad + 1, (2, b), generator=g) if pad else None
        flip = torch.rand(b, generator=g) < 0.5 if hflip else None
        out = crop_flip_batch(x, pad, offsets, flip)
        out_again = crop_flip_batch(x, pad, offsets, flip)
        assert out.is_contiguous() and out.data_ptr() != out_again.data_ptr() and torch.equal(out, out_again)
        for i in range(b):
            dy, dx = (int(offsets[0, i]), int(offsets[1, i])) if pad else (0, 0)
            f = bool(flip[i]) if hflip else False
            assert torch.equal(out[i], naive_crop_flip(x[i], pad, dy, dx, f)), (b, i)
