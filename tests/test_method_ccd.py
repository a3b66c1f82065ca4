"""CCD (Li et al., ACCV 2022) with joint data augmentation: golden loss values from plain
loops, every JDA operation against Pillow (the reference's own operations) and torchvision,
the chain, the data wrapper's interleaving, determinism, config and pair checks."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms.v2 import functional as TF

from kdbench.data import Augment, ImageData, TrainData, epoch_generator
from kdbench.method import MethodContext
from kdbench.config import resolve_config
from kdbench.methods import _jda
from kdbench.methods.ccd import CCD, JDATrainData, ccd_soft_terms
from kdbench.taps import Outputs
from harness import CRD_GRID as CRD_PAIRS, cifar_info as info

# -- naive references for the loss ------------------------------------------------------------


def softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [v / sum(e) for v in e]


def naive_kl(zs_row, zt_row, T):
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)) of one row, summed over classes, no T²."""
    ps, pt = softmax(zs_row, T), softmax(zt_row, T)
    return sum(p * math.log(p / q) for p, q in zip(pt, ps))


def naive_cos(a, b):
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def naive_ccd(zs, zt, T, kd_weight, alpha):
    """Everything from REFERENCE §1 with explicit loops over the interleaved rows."""
    pairs = len(zs) // 2
    soft_orig = sum(naive_kl(zs[2 * i], zt[2 * i], T) for i in range(pairs)) / pairs
    weights = [naive_cos(zt[2 * i], zt[2 * i + 1]) + 1 for i in range(pairs)]
    soft_aug = sum(weights[i] * naive_kl(zs[2 * i + 1], zt[2 * i + 1], T) for i in range(pairs)) / pairs
    soft = (soft_orig + soft_aug) / 2
    return {"soft_orig": soft_orig, "weights": weights, "soft_aug": soft_aug, "soft": soft,
            "loss_kd": kd_weight * (1 - alpha) * T * T * soft, "ce_weight": kd_weight * alpha}


def naive_ce(z, y):
    total = 0.0
    for row, label in zip(z, y):
        total += -math.log(softmax(row, 1.0)[label])
    return total / len(z)


ZS = [[0.3, -0.2, 1.5, 0.0, 0.7], [1.1, 0.4, -0.6, 2.0, 0.1], [-0.5, 0.9, 0.2, 0.3, -1.2],
      [0.0, 0.0, 1.0, -1.0, 0.5], [2.2, -0.3, 0.8, 0.1, 0.0], [0.6, 0.6, -0.9, 1.4, -0.2]]
ZT = [[1.0, 0.5, -0.5, 2.0, 0.2], [0.8, 0.9, -0.1, 1.5, 0.3], [0.1, 1.7, -0.4, 0.0, -0.8],
      [-1.0, 0.4, 0.6, 0.2, 1.1], [1.9, 0.2, 0.4, -0.6, 0.3], [-0.7, 1.2, 0.5, 0.9, -1.5]]


def method(overrides=None) -> CCD:
    return CCD(resolve_config(CCD, overrides or {}), None, None, None)  # type: ignore[arg-type]


def outputs(z) -> Outputs:
    z = torch.tensor(z)
    return Outputs(logits=z, embedding=torch.zeros(len(z), 2))


def test_defaults_are_the_reference_ones_and_ce_weight_is_derived():
    cfg = resolve_config(CCD, {})
    assert (cfg.temperature, cfg.ce_fraction, cfg.kd_weight, cfg.ce_weight) == (4.0, 0.5, 2.0, 1.0)
    assert cfg.jda_prob == 0.3 and cfg.jda_on == "raw"
    assert cfg.jda_levels == (2, 3, 0, 4, 8, 5, 3, 0, 1, 5, 4, 4, 8, 3)
    assert resolve_config(CCD, {"kd_weight": 3, "ce_fraction": 0.25}).ce_weight == 0.75
    assert resolve_config(CCD, {"ce_weight": 1.0}).ce_weight == 1.0  # consistent: accepted
    with pytest.raises(ValueError, match="derived"):
        resolve_config(CCD, {"ce_weight": 0.5})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.ce_weight = 2.0  # type: ignore[misc]
    for bad in ({"jda_prob": 1.5}, {"ce_fraction": -0.1}, {"temperature": 0}, {"jda_levels": [1, 2]},
                {"jda_levels": [10]}, {"jda_on": "both"}):
        with pytest.raises(ValueError):
            resolve_config(CCD, bad)
    assert resolve_config(CCD, {"jda_levels": "5"}).jda_levels == (5,)  # one level for all ops (CLI form)


@pytest.mark.parametrize("overrides", [{}, {"temperature": 2.0, "kd_weight": 3.0, "ce_fraction": 0.25},
                                       {"temperature": 1.0, "ce_fraction": 0.0}])
def test_loss_matches_naive_loops(overrides):
    m = method(overrides)
    cfg = m.cfg
    want = naive_ccd(ZS, ZT, cfg.temperature, cfg.kd_weight, cfg.ce_fraction)
    terms = ccd_soft_terms(torch.tensor(ZS), torch.tensor(ZT), cfg.temperature)
    for key in ("soft_orig", "soft_aug", "soft"):
        assert terms[key].item() == pytest.approx(want[key], rel=1e-5, abs=1e-7), key
    assert terms["weights"].tolist() == pytest.approx(want["weights"], rel=1e-5)
    got = m.loss(outputs(ZS), outputs(ZT), None, None)
    assert set(got) == {"loss_kd"}
    assert got["loss_kd"].item() == pytest.approx(want["loss_kd"], rel=1e-5)
    assert cfg.ce_weight == pytest.approx(want["ce_weight"])


def test_total_equals_the_reference_criterion_with_T_squared_once():
    """trainer's ce_weight·CE(all 2B rows) + loss_kd = kd_weight·(α·CE + (1−α)·T²·soft)."""
    m = method()
    y = [3, 3, 1, 1, 0, 0]
    T, alpha, kw = 4.0, 0.5, 2.0
    soft = naive_ccd(ZS, ZT, T, kw, alpha)["soft"]
    reference = kw * (alpha * naive_ce(ZS, y) + (1 - alpha) * T ** 2 * soft)
    ce = torch.nn.functional.cross_entropy(torch.tensor(ZS), torch.tensor(y)).item()
    total = m.cfg.ce_weight * ce + m.loss(outputs(ZS), outputs(ZT), None, None)["loss_kd"].item()
    assert total == pytest.approx(reference, rel=1e-5)
    # T² once: the soft term without T² is soft, and loss_kd / (kd_weight·(1−α)) = 16·soft
    assert m.loss(outputs(ZS), outputs(ZT), None, None)["loss_kd"].item() == pytest.approx(16 * soft, rel=1e-5)


def test_hand_checkable_cases():
    z = torch.tensor(ZT)
    terms = ccd_soft_terms(z, z.clone(), 4.0)
    assert abs(terms["soft"].item()) < 1e-7  # identical teacher and student: zero
    # teacher views identical → w = 2; student differs only on augmented (odd) rows
    zt = torch.tensor([[1.0, 0.0, -1.0], [1.0, 0.0, -1.0]])
    zs = torch.tensor([[1.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    kl = naive_kl([0.0, 0.0, 0.0], [1.0, 0.0, -1.0], 1.0)
    terms = ccd_soft_terms(zs, zt, 1.0)
    assert terms["weights"].item() == pytest.approx(2.0)
    assert terms["soft_orig"].item() == pytest.approx(0.0, abs=1e-7)
    assert terms["soft"].item() == pytest.approx((0 + 2 * kl) / 2, rel=1e-6)
    # the same difference on the original (even) row instead: soft = KL / 2
    assert ccd_soft_terms(zs.flip(0), zt, 1.0)["soft"].item() == pytest.approx(kl / 2, rel=1e-6)
    # opposite teacher views → w = 0: the augmented row does not count at all
    zt2 = torch.tensor([[1.0, 0.0, -1.0], [-1.0, 0.0, 1.0]])
    assert ccd_soft_terms(torch.tensor([[1.0, 0.0, -1.0], [5.0, 0.0, 0.0]]), zt2, 1.0)["soft"].item() == \
        pytest.approx(0.0, abs=1e-6)
    # orthogonal teacher views → w = 1: soft is the plain KD mean over all rows
    zt3 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    zs3 = torch.tensor([[0.0, 0.0], [0.3, -0.4]])
    plain = (naive_kl([0.0, 0.0], [1.0, 0.0], 2.0) + naive_kl([0.3, -0.4], [0.0, 1.0], 2.0)) / 2
    assert ccd_soft_terms(zs3, zt3, 2.0)["soft"].item() == pytest.approx(plain, rel=1e-6)


def test_loss_rejects_a_batch_without_views():
    with pytest.raises(ValueError, match="interleaved"):
        method().loss(outputs(ZS[:5]), outputs(ZT[:5]), None, None)


# -- the JDA operations against Pillow and torchvision ---------------------------------------------

def make_images() -> torch.Tensor:
    rng = np.random.default_rng(7)
    imgs = rng.integers(0, 256, (5, 3, 12, 10), dtype=np.uint8)  # non-square on purpose
    imgs[1] = imgs[1] // 5 + 90  # low contrast
    imgs[2, 1] = 77  # a constant channel
    imgs[3] = np.clip(np.arange(120).reshape(1, 12, 10) * 2, 0, 255).astype(np.uint8)  # smooth ramp
    return torch.from_numpy(imgs)


X = make_images()
SIGNS = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], dtype=torch.float64)
FACTORS = torch.tensor([1.3, 0.7, 1.5, 0.1, 1.9], dtype=torch.float64)


def to_pil(x: torch.Tensor) -> Image.Image:
    arr = x.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def from_pil(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img)
    arr = arr[..., None] if arr.ndim == 2 else arr
    return torch.from_numpy(arr.copy()).permute(2, 0, 1)


def per_image(fn, x: torch.Tensor) -> torch.Tensor:
    return torch.stack([from_pil(fn(to_pil(x[i]), i)) for i in range(len(x))])


def rotate_with_fill(img: Image.Image, degrees: float) -> Image.Image:
    """The reference's rotation: RGBA rotate, composited onto grey 128."""
    rot = img.convert("RGBA").rotate(degrees)
    return Image.composite(rot, Image.new("RGBA", rot.size, (128,) * 4), rot).convert(img.mode)


def pil_affine(img: Image.Image, data, resample=Image.NEAREST) -> Image.Image:
    return img.transform(img.size, Image.AFFINE, data, resample, fillcolor=(128,) * len(img.getbands()))


PIL_EXACT = {
    "autocontrast": (lambda x: _jda.autocontrast(x), lambda im, i: ImageOps.autocontrast(im)),
    "equalize": (lambda x: _jda.equalize(x), lambda im, i: ImageOps.equalize(im)),
    "invert": (lambda x: _jda.invert(x), lambda im, i: ImageOps.invert(im)),
    "posterize3": (lambda x: _jda.posterize(x, 3), lambda im, i: ImageOps.posterize(im, 3)),
    "posterize6": (lambda x: _jda.posterize(x, 6), lambda im, i: ImageOps.posterize(im, 6)),
    "solarize142": (lambda x: _jda.solarize(x, 256 - 4 * 256 / 9),
                    lambda im, i: ImageOps.solarize(im, 256 - 4 * 256 / 9)),
    "solarize0": (lambda x: _jda.solarize(x, 0.0), lambda im, i: ImageOps.solarize(im, 0)),
    "brightness": (lambda x: _jda.brightness(x, FACTORS),
                   lambda im, i: ImageEnhance.Brightness(im).enhance(float(FACTORS[i]))),
    "contrast": (lambda x: _jda.contrast(x, FACTORS),
                 lambda im, i: ImageEnhance.Contrast(im).enhance(float(FACTORS[i]))),
    "color": (lambda x: _jda.color(x, FACTORS), lambda im, i: ImageEnhance.Color(im).enhance(float(FACTORS[i]))),
    "sharpness": (lambda x: _jda.sharpness(x, FACTORS),
                  lambda im, i: ImageEnhance.Sharpness(im).enhance(float(FACTORS[i]))),
    "translate_x": (lambda x: _jda.translate(x, 4.53 * SIGNS, "x"),
                    lambda im, i: pil_affine(im, (1, 0, 4.53 * float(SIGNS[i]), 0, 1, 0))),
    "translate_y": (lambda x: _jda.translate(x, 1.61 * SIGNS, "y"),
                    lambda im, i: pil_affine(im, (1, 0, 0, 0, 1, 1.61 * float(SIGNS[i])))),
    "rotate10": (lambda x: _jda.rotate(x, 10.0), lambda im, i: rotate_with_fill(im, 10.0)),
    "rotate27": (lambda x: _jda.rotate(x, 27.0), lambda im, i: rotate_with_fill(im, 27.0)),
}


@pytest.mark.parametrize("name", sorted(PIL_EXACT))
def test_op_matches_pillow(name):
    mine, ref = PIL_EXACT[name]
    got, want = mine(X), per_image(ref, X)
    assert got.dtype == torch.uint8 and got.shape == X.shape
    assert torch.equal(got, want), f"{name}: {(got.int() - want.int()).abs().max()} max diff"


@pytest.mark.parametrize("axis", ["x", "y"])
def test_shear_matches_pillow_bicubic_to_one_grey_level(axis):
    m = 0.3 * 5 / 9
    got = _jda.shear(X, m * SIGNS, axis)
    data = (lambda s: (1, s, 0, 0, 1, 0)) if axis == "x" else (lambda s: (1, 0, 0, s, 1, 0))
    want = per_image(lambda im, i: pil_affine(im, data(m * float(SIGNS[i])), Image.BICUBIC), X)
    diff = (got.int() - want.int()).abs()
    assert diff.max() <= 1 and (diff > 0).float().mean() < 0.05  # float32 here, double in Pillow
    # pixels whose source point (centre + shear) leaves the image are grey 128 in both
    n, _, h, w = X.shape
    for i in range(n):
        s = m * float(SIGNS[i])
        for r in range(h):
            for c in range(w):
                src = (c + 0.5 + s * (r + 0.5), w) if axis == "x" else (r + 0.5 + s * (c + 0.5), h)
                if not 0 <= src[0] < src[1]:
                    assert (got[i, :, r, c] == 128).all() and (want[i, :, r, c] == 128).all()
    assert torch.equal(_jda.shear(X, 0.0, axis), X)


def test_ops_match_torchvision_where_it_implements_them():
    assert torch.equal(_jda.invert(X), TF.invert(X))
    assert torch.equal(_jda.posterize(X, 4), TF.posterize(X, 4))
    assert torch.equal(_jda.solarize(X, 128.0), TF.solarize(X, 128.0))
    assert torch.equal(_jda.equalize(X), TF.equalize(X))
    assert (_jda.autocontrast(X).int() - TF.autocontrast(X).int()).abs().max() <= 1
    for f in (0.3, 1.7):
        assert (_jda.brightness(X, f).int() - TF.adjust_brightness(X, f).int()).abs().max() <= 1
        assert (_jda.sharpness(X, f).int() - TF.adjust_sharpness(X, f).int()).abs().max() <= 1
        assert (_jda.color(X, f).int() - TF.adjust_saturation(X, f).int()).abs().max() <= 1


def test_grey_images():
    grey = X[:, :1].contiguous()
    assert torch.equal(_jda.color(grey, FACTORS), grey)  # colour of a grey image is a no-op
    for name, fn in (("contrast", ImageEnhance.Contrast), ("sharpness", ImageEnhance.Sharpness)):
        op = getattr(_jda, name)
        assert torch.equal(op(grey, FACTORS), per_image(lambda im, i: fn(im).enhance(float(FACTORS[i])), grey)), name
    assert torch.equal(_jda.equalize(grey), per_image(lambda im, i: ImageOps.equalize(im), grey))


def test_magnitudes_are_autoaugment_linspace_points():
    """The reference's ranges: linspace over 10 levels (computed here with numpy)."""
    ranges = {"shear_x": np.linspace(0, 0.3, 10), "shear_y": np.linspace(0, 0.3, 10),
              "translate_x": np.linspace(0, 150 / 331, 10), "translate_y": np.linspace(0, 150 / 331, 10),
              "rotate": np.linspace(0, 30, 10), "color": np.linspace(0.0, 0.9, 10),
              "posterize": np.round(np.linspace(8, 4, 10), 0), "solarize": np.linspace(256, 0, 10),
              "contrast": np.linspace(0.0, 0.9, 10), "sharpness": np.linspace(0.0, 0.9, 10),
              "brightness": np.linspace(0.0, 0.9, 10)}
    for op, values in ranges.items():
        for level in range(10):
            assert _jda.magnitude(op, level) == pytest.approx(values[level], abs=1e-9), (op, level)
    cifar = dict(zip(_jda.OPS, _jda.CIFAR100_LEVELS))
    assert _jda.magnitude("rotate", cifar["rotate"]) == pytest.approx(10.0)
    assert _jda.magnitude("posterize", cifar["posterize"]) == 8  # the reference's posterize is a no-op
    assert _jda.magnitude("shear_y", cifar["shear_y"]) == 0.0  # and so is its shear_y
    with pytest.raises(ValueError):
        _jda.magnitude("rotate", 10)


# -- the chain -------------------------------------------------------------------------------


def pil_chain(img: Image.Image, applied, signs, levels) -> Image.Image:
    """The reference's chain on one PIL image with the given decisions."""
    w, h = img.size
    for k, op in enumerate(_jda.OPS):
        if not applied[k]:
            continue
        mag, s = _jda.magnitude(op, levels[k]), float(signs[k])
        if op == "autocontrast":
            img = ImageOps.autocontrast(img)
        elif op == "equalize":
            img = ImageOps.equalize(img)
        elif op == "invert":
            img = ImageOps.invert(img)
        elif op == "posterize":
            img = ImageOps.posterize(img, int(mag))
        elif op == "solarize":
            img = ImageOps.solarize(img, mag)
        elif op == "rotate":
            img = rotate_with_fill(img, mag)
        elif op in ("contrast", "brightness", "sharpness", "color"):
            enhancer = {"contrast": ImageEnhance.Contrast, "brightness": ImageEnhance.Brightness,
                        "sharpness": ImageEnhance.Sharpness, "color": ImageEnhance.Color}[op]
            img = enhancer(img).enhance(1 + mag * s)
        elif op == "shear_x":
            img = pil_affine(img, (1, mag * s, 0, 0, 1, 0), Image.BICUBIC)
        elif op == "shear_y":
            img = pil_affine(img, (1, 0, 0, mag * s, 1, 0), Image.BICUBIC)
        elif op == "translate_x":
            img = pil_affine(img, (1, 0, mag * w * s, 0, 1, 0))
        elif op == "translate_y":
            img = pil_affine(img, (1, 0, 0, 0, 1, mag * h * s))
    return img


#: every operation non-trivial, no shear (bicubic agrees with Pillow only to ±1)
LEVELS_NO_SHEAR = (2, 3, 6, 4, 8, 0, 3, 0, 4, 5, 4, 4, 8, 3)


def test_p0_leaves_images_unchanged_and_p1_applies_every_operation_in_order():
    gen = torch.Generator().manual_seed(3)
    assert torch.equal(_jda.jda(X, gen, 0.0, _jda.CIFAR100_LEVELS), X)
    draw = _jda.sample_draw(len(X), 1.0, torch.Generator().manual_seed(4))
    assert draw.apply.all()
    # against Pillow's operations composed in the reference order, with the same signs
    got = _jda.apply_chain(X, draw, LEVELS_NO_SHEAR)
    want = per_image(lambda im, i: pil_chain(im, draw.apply[:, i], draw.sign[:, i], LEVELS_NO_SHEAR), X)
    assert torch.equal(got, want)
    # with the reference's CIFAR-100 levels (shear included): the same chain of our ops, and Pillow's closely
    got = _jda.apply_chain(X, draw, _jda.CIFAR100_LEVELS)
    step = X.clone()
    for k, op in enumerate(_jda.OPS):
        step = _jda.apply_op(op, step, _jda.CIFAR100_LEVELS[k], draw.sign[k])
    assert torch.equal(got, step)
    want = per_image(lambda im, i: pil_chain(im, draw.apply[:, i], draw.sign[:, i], _jda.CIFAR100_LEVELS), X)
    assert (got.float() - want.float()).abs().mean() < 1.0
    assert not torch.equal(got, X)


def test_mixed_decisions_apply_each_operation_to_its_own_images_only():
    draw = _jda.sample_draw(len(X), 0.5, torch.Generator().manual_seed(11))
    assert 0 < draw.apply.sum() < draw.apply.numel()
    assert set(draw.sign.unique().tolist()) <= {-1.0, 1.0}
    got = _jda.apply_chain(X, draw, LEVELS_NO_SHEAR)
    want = per_image(lambda im, i: pil_chain(im, draw.apply[:, i], draw.sign[:, i], LEVELS_NO_SHEAR), X)
    assert torch.equal(got, want)


def test_chain_is_deterministic_under_the_generator_and_p_is_the_rate():
    a = _jda.jda(X, torch.Generator().manual_seed(5), 0.3)
    b = _jda.jda(X, torch.Generator().manual_seed(5), 0.3)
    assert torch.equal(a, b)
    draw = _jda.sample_draw(4000, 0.3, torch.Generator().manual_seed(6))
    assert draw.apply.float().mean().item() == pytest.approx(0.3, abs=0.01)
    with pytest.raises(ValueError):
        _jda.jda(X.float(), torch.Generator(), 0.3)


# -- the data wrapper --------------------------------------------------------------------------


def small_data(augment=Augment(4, True), channels=3) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData("t", torch.randint(0, 256, (20, channels, 16, 16), dtype=torch.uint8, generator=g),
                     torch.arange(20) % 5, torch.zeros(2, channels, 16, 16, dtype=torch.uint8),
                     torch.zeros(2, dtype=torch.long), [str(i) for i in range(5)], (0.5,) * channels,
                     (0.25,) * channels, augment)


def wrapped(overrides=None, data=None):
    data = data or small_data()
    td = TrainData(data, 6, torch.device("cpu"), seed=0)
    return td, method(overrides).wrap_train_dataset(td)


def test_batch_interleaves_views_and_repeats_labels_and_indices():
    td, wd = wrapped()
    assert isinstance(wd, JDATrainData) and wd.steps_per_epoch() == td.steps_per_epoch()
    idx = torch.tensor([4, 9, 2])
    batch = wd.make_batch(idx, epoch_generator(0, 0, 1))
    plain = td.make_batch(idx, epoch_generator(0, 0, 1))
    assert len(batch) == 6 and batch.x.dtype == torch.float32
    assert batch.y.tolist() == [4, 4, 4, 4, 2, 2] and batch.index.tolist() == [4, 4, 9, 9, 2, 2]
    assert torch.equal(batch.x[0::2], plain.x)  # even rows: the ordinary crop/flip batch
    assert not torch.equal(batch.x[1::2], plain.x)
    ones, twos = torch.full((2, 1, 1, 1), 1), torch.full((2, 1, 1, 1), 2)
    assert _jda.interleave_views(ones, twos).view(-1).tolist() == [1, 2, 1, 2]


def test_p0_views_equal_the_original():
    # jda_on="cropped": the augmented view is built from the cropped original → identical at p=0
    _, wd = wrapped({"jda_prob": 0.0, "jda_on": "cropped"})
    batch = wd.make_batch(torch.arange(6), epoch_generator(0, 0, 2))
    assert torch.equal(batch.x[0::2], batch.x[1::2])
    # jda_on="raw" (reference): each view has its own crop; without crop/flip they coincide at p=0
    _, wd = wrapped({"jda_prob": 0.0}, small_data(Augment(0, False)))
    batch = wd.make_batch(torch.arange(6), epoch_generator(0, 0, 2))
    assert torch.equal(batch.x[0::2], batch.x[1::2])
    # ...and at p=1 the augmented rows are the chain of the raw images
    _, wd = wrapped({"jda_prob": 1.0}, small_data(Augment(0, False)))
    aug = wd.augmented_view(wd.images[:6], torch.arange(6), epoch_generator(0, 0, 3))
    draw = _jda.sample_draw(6, 1.0, epoch_generator(0, 0, 3))
    assert torch.equal(aug, _jda.apply_chain(wd.images[:6], draw, _jda.CIFAR100_LEVELS))


def test_the_second_view_draws_from_the_methods_own_generator_only():
    """The standard rows of a CCD batch are exactly the shared stream's batch, whatever its
    own generator draws (a fused column builds the standard batch once for every method)."""
    td, wd = wrapped({"jda_prob": 0.5})
    idx = torch.tensor([1, 5, 3])
    plain = td.make_batch(idx, epoch_generator(0, 0, 1))
    a = wd.make_batch(idx, epoch_generator(0, 0, 1), own=epoch_generator(7, 0, 1))
    b = wd.make_batch(idx, epoch_generator(0, 0, 1), own=epoch_generator(8, 0, 1))
    assert torch.equal(a.x[0::2], plain.x) and torch.equal(b.x[0::2], plain.x)
    assert not torch.equal(a.x[1::2], b.x[1::2])


@pytest.mark.parametrize("on", ["raw", "cropped"])
def test_batches_are_deterministic_and_differ_across_epochs(on):
    _, wd = wrapped({"jda_on": on, "jda_prob": 0.5})
    idx = torch.arange(6)
    a = wd.make_batch(idx, epoch_generator(0, 0, 1))
    b = wd.make_batch(idx, epoch_generator(0, 0, 1))
    c = wd.make_batch(idx, epoch_generator(0, 0, 2))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    epoch = list(wd.epoch(epoch_generator(1, 0, 1)))
    again = list(wd.epoch(epoch_generator(1, 0, 1)))
    assert all(torch.equal(p.x, q.x) and torch.equal(p.y, q.y) for p, q in zip(epoch, again))


def test_grey_dataset_and_uniform_level():
    _, wd = wrapped({"jda_prob": 1.0, "jda_levels": [5]}, small_data(channels=1))
    batch = wd.make_batch(torch.arange(4), epoch_generator(0, 0, 1))
    assert batch.x.shape == (8, 1, 16, 16) and torch.isfinite(batch.x).all()
    with pytest.raises(ValueError, match="channels"):
        wrapped({}, small_data(channels=2))


# -- pairs ---------------------------------------------------------------------------------------


def test_check_serves_the_crd_grid_and_declines_without_teacher():
    cfg = resolve_config(CCD, {})
    for teacher, student in CRD_PAIRS:
        assert CCD.check(cfg, info(teacher), info(student)) is None, (teacher, student)
    reason = CCD.check(cfg, None, info("resnet8x4"))
    assert reason and "teacher" in reason


def test_method_builds_with_context():
    ctx = MethodContext(num_classes=100, num_train_samples=20, device=torch.device("cpu"), epochs=2,
                        steps_per_epoch=4, teacher_arch="resnet32x4", student_arch="resnet8x4", dataset="t",
                        input_size=(3, 32, 32))
    m = CCD(resolve_config(CCD, {}), info("resnet32x4"), info("resnet8x4"), ctx)
    assert m.extra_parameters() == 0 and m.phases() == []
