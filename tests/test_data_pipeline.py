"""The batched tensor augmentation and batching, checked against naive per-sample code."""
import torch

from kdbench.data import Augment, EvalData, ImageData, Normalizer, TrainData, epoch_generator, random_crop_flip


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
