"""Joint data augmentation (JDA) for CCD, as batched tensor operations.

Li et al. (ACCV 2022, "What Role Does Data Augmentation Play in Knowledge Distillation?")
give every training image a second, *augmented* view that teacher and student both see. In
their code (``PolicyDatasetC100``) the augmented view is a fixed chain of 14 AutoAugment
operations, each applied independently with probability ``p`` (CIFAR-100: 0.3), to the raw
image before the usual crop/flip:

    autocontrast, contrast, posterize, solarize, translate_y, shear_x, brightness,
    shear_y, translate_x, sharpness, invert, color, equalize, rotate

Every operation has a *level* on AutoAugment's 0–9 scale; the magnitude is that level's
point of the operation's range (AutoAugment's ``linspace(lo, hi, 10)``):

    =============  ==========================  =========  ===========================
    operation      range (level 0 → 9)         CIFAR-100  magnitude at that level
                                               level
    =============  ==========================  =========  ===========================
    autocontrast   –                           2          –
    contrast       factor 1 ± [0, 0.9]         3          1 ± 0.3
    posterize      bits 8 → 4 (rounded)        0          8 bits (a no-op)
    solarize       threshold 256 → 0           4          142.2 (pixels ≥ it inverted)
    translate_y    ± [0, 150/331] × height     8          ± 0.403 × H (12.9 px at 32)
    shear_x        ± [0, 0.3]                  5          ± 0.167
    brightness     factor 1 ± [0, 0.9]         3          1 ± 0.3
    shear_y        ± [0, 0.3]                  0          0 (a no-op)
    translate_x    ± [0, 150/331] × width      1          ± 0.050 × W (1.6 px at 32)
    sharpness      factor 1 ± [0, 0.9]         5          1 ± 0.5
    invert         –                           4          –
    color          factor 1 ± [0, 0.9]         4          1 ± 0.4
    equalize       –                           8          –
    rotate         [0, 30] degrees             3          10° counter-clockwise
    =============  ==========================  =========  ===========================

The "CIFAR-100 level" column is the reference's policy (:data:`CIFAR100_LEVELS`); a run may
use other levels (one level for all operations, RandAugment-style, or one per operation).
"±" means a random sign drawn per image, as in the reference; the rotation has no random
sign in the reference (always counter-clockwise) and none here. Geometric operations fill
uncovered pixels with grey 128, as the reference does.

Semantics follow Pillow's operations used by the reference, reproduced on uint8 tensors
(every operation maps uint8 to uint8, as PIL does between chained operations):

* autocontrast / equalize — per image and channel, Pillow's ``ImageOps`` look-up tables
  (autocontrast without cut-off; equalize with Pillow's step rule, clipped to 255).
* posterize / solarize / invert — bit mask; ``x ≥ threshold → 255 − x``; ``255 − x``.
* brightness / contrast / color / sharpness — Pillow's ``ImageEnhance``: a blend
  ``d + f·(x − d)`` with the degenerate image ``d`` (black; the rounded mean luma; the luma
  image; the 3×3 SMOOTH-filtered image with its border untouched), clipped and truncated.
  Luma is Pillow's ``L = (19595 R + 38470 G + 7471 B + 2¹⁵) >> 16``.
* translate / rotate — nearest neighbour (Pillow's default for these), the output pixel
  centre mapped through the inverse affine map and floored; outside → fill.
* shear — Pillow's affine BICUBIC: cubic convolution with a = −1 along the sheared axis
  (the other coordinate is an exact pixel centre), edge-clamped taps, truncation; a
  source point outside the image → fill. The shear is about the image's top-left corner
  (``(1, m, 0, 0, 1, 0)`` in Pillow's convention), as in the reference.

The tests check each operation against Pillow (and torchvision where it implements the
same operation).

Batching: the random decisions (apply or not, signs) of all 14 operations for the whole
batch are drawn at once from the CPU generator (so CPU and CUDA runs agree and an epoch
replays exactly); each operation then runs once on the sub-batch of images it applies to
(rows chosen on the CPU, so no device synchronisation), with per-image parameters as
tensors. There is a loop over the 14 operations, none over images.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

#: the reference's chain, in its order
OPS: tuple[str, ...] = ("autocontrast", "contrast", "posterize", "solarize", "translate_y", "shear_x", "brightness",
                        "shear_y", "translate_x", "sharpness", "invert", "color", "equalize", "rotate")
#: the reference's CIFAR-100 level (0–9) of every operation, in :data:`OPS` order
CIFAR100_LEVELS: tuple[int, ...] = (2, 3, 0, 4, 8, 5, 3, 0, 1, 5, 4, 4, 8, 3)
#: the reference's CIFAR-100 probability of each operation
CIFAR100_PROB = 0.3
MAX_LEVEL = 9
#: grey used by the reference for pixels a geometric operation uncovers
FILL = 128

ENHANCE_OPS = ("contrast", "brightness", "sharpness", "color")
SIGNED_OPS = ENHANCE_OPS + ("shear_x", "shear_y", "translate_x", "translate_y")


def magnitude(op: str, level: int) -> float:
    """The magnitude of ``op`` at ``level`` (0–9) on AutoAugment's scale (see the table)."""
    if op not in OPS:
        raise ValueError(f"unknown JDA operation {op!r}; known: {OPS}")
    if not 0 <= level <= MAX_LEVEL:
        raise ValueError(f"JDA level must be in [0, {MAX_LEVEL}], got {level}")
    frac = level / MAX_LEVEL
    if op in ("shear_x", "shear_y"):
        return 0.3 * frac
    if op in ("translate_x", "translate_y"):
        return 150 / 331 * frac
    if op == "rotate":
        return 30.0 * frac
    if op in ENHANCE_OPS:
        return 0.9 * frac
    if op == "posterize":
        return float(round(8 - 4 * frac))
    if op == "solarize":
        return 256.0 - 256.0 * frac
    return 0.0


def expand_levels(levels: Sequence[int]) -> tuple[int, ...]:
    """One level for every operation (a single level is used for all 14)."""
    levels = tuple(int(v) for v in levels)
    if len(levels) == 1:
        levels = levels * len(OPS)
    if len(levels) != len(OPS):
        raise ValueError(f"JDA levels: give 1 or {len(OPS)} levels (one per operation {OPS}), got {len(levels)}")
    bad = [v for v in levels if not 0 <= v <= MAX_LEVEL]
    if bad:
        raise ValueError(f"JDA levels must be integers in [0, {MAX_LEVEL}], got {bad}")
    return levels


def is_identity(op: str, level: int) -> bool:
    """Whether ``op`` at ``level`` leaves every image unchanged (posterize to 8 bits,
    solarize at 256, zero shear/translation/rotation, enhancement factor exactly 1)."""
    mag = magnitude(op, level)
    if op == "posterize":
        return mag >= 8
    if op == "solarize":
        return mag >= 256
    if op in SIGNED_OPS or op == "rotate":
        return mag == 0.0
    return False


# -- per-operation kernels (uint8 N×C×H×W in, uint8 out; parameters per image) --------------

def _per_image(values: Tensor | float, n: int, device: torch.device) -> Tensor:
    """Per-image parameter as a float32 column on ``device`` (scalars are broadcast)."""
    if not isinstance(values, Tensor):
        values = torch.full((n,), float(values), dtype=torch.float64)
    return values.to(device=device, dtype=torch.float32).view(n)


def _luma(x: Tensor) -> Tensor:
    """Pillow's RGB → L conversion (int32 N×1×H×W); a 1-channel image is its own luma."""
    if x.shape[1] == 1:
        return x.int()
    if x.shape[1] != 3:
        raise ValueError(f"JDA colour operations need 1 or 3 channels, got {x.shape[1]}")
    xi = x.int()
    return (xi[:, 0:1] * 19595 + xi[:, 1:2] * 38470 + xi[:, 2:3] * 7471 + 32768) >> 16


def _blend(degenerate: Tensor, x: Tensor, factor: Tensor) -> Tensor:
    """Pillow's ``Image.blend(degenerate, x, f)``: ``d + f·(x − d)`` in float32, clipped to
    [0, 255] and truncated."""
    f = factor.view(-1, 1, 1, 1)
    d = degenerate.float()
    out = d + f * (x.float() - d)
    return out.clamp_(0.0, 255.0).floor_().to(torch.uint8)


def autocontrast(x: Tensor) -> Tensor:
    """Stretch every channel of every image to [0, 255] (``ImageOps.autocontrast``)."""
    xi = x.int()
    lo = xi.amin(dim=(2, 3), keepdim=True)
    hi = xi.amax(dim=(2, 3), keepdim=True)
    span = hi - lo
    stretched = torch.div((xi - lo) * 255, span.clamp(min=1), rounding_mode="floor")
    return torch.where(span > 0, stretched, xi).to(torch.uint8)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per image and channel (``ImageOps.equalize``)."""
    n, c, h, w = x.shape
    flat = x.reshape(n * c, h * w).long()
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device).scatter_add_(1, flat, torch.ones_like(flat))
    last = hist.gather(1, flat.amax(dim=1, keepdim=True))  # count in the last non-empty bin
    step = torch.div(h * w - last, 255, rounding_mode="floor")
    before = hist.cumsum(1) - hist  # pixels strictly below each value
    lut = torch.div(torch.div(step, 2, rounding_mode="floor") + before, step.clamp(min=1), rounding_mode="floor")
    identity = torch.arange(256, device=x.device).expand_as(lut)
    lut = torch.where(step > 0, lut.clamp(max=255), identity)
    return lut.gather(1, flat).to(torch.uint8).view(n, c, h, w)


def posterize(x: Tensor, bits: int) -> Tensor:
    """Keep the ``bits`` most significant bits (``ImageOps.posterize``)."""
    if not 1 <= bits <= 8:
        raise ValueError(f"posterize bits must be in [1, 8], got {bits}")
    mask = (0xFF << (8 - bits)) & 0xFF
    return x & mask


def solarize(x: Tensor, threshold: float) -> Tensor:
    """Invert the pixels at or above ``threshold`` (``ImageOps.solarize``)."""
    return torch.where(x.float() >= threshold, 255 - x, x)


def invert(x: Tensor) -> Tensor:
    """``255 − x`` (``ImageOps.invert``)."""
    return 255 - x


def brightness(x: Tensor, factor: Tensor | float) -> Tensor:
    """``ImageEnhance.Brightness``: blend with black."""
    return _blend(torch.zeros((), device=x.device), x, _per_image(factor, x.shape[0], x.device))


def contrast(x: Tensor, factor: Tensor | float) -> Tensor:
    """``ImageEnhance.Contrast``: blend with the image's mean luma, rounded to an integer."""
    n, _, h, w = x.shape
    total = _luma(x).sum(dim=(1, 2, 3), keepdim=True, dtype=torch.long)
    mean = torch.div(2 * total + h * w, 2 * h * w, rounding_mode="floor")  # int(mean + 0.5)
    return _blend(mean, x, _per_image(factor, n, x.device))


def color(x: Tensor, factor: Tensor | float) -> Tensor:
    """``ImageEnhance.Color``: blend with the luma (grey) image."""
    return _blend(_luma(x), x, _per_image(factor, x.shape[0], x.device))


def sharpness(x: Tensor, factor: Tensor | float) -> Tensor:
    """``ImageEnhance.Sharpness``: blend with the SMOOTH-filtered image (3×3 kernel
    [[1,1,1],[1,5,1],[1,1,1]]/13, rounded; the one-pixel border is left unfiltered)."""
    n, c, h, w = x.shape
    degenerate = x.int()
    if h >= 3 and w >= 3:
        kernel = torch.ones(1, 1, 3, 3, device=x.device)
        kernel[0, 0, 1, 1] = 5.0
        sums = F.conv2d(x.float().reshape(n * c, 1, h, w), kernel).round_().int()  # exact integers
        smooth = torch.div(2 * sums + 13, 26, rounding_mode="floor")  # round(sum / 13)
        degenerate = degenerate.clone()
        degenerate[:, :, 1:-1, 1:-1] = smooth.view(n, c, h - 2, w - 2)
    return _blend(degenerate, x, _per_image(factor, n, x.device))


def _centres(h: int, w: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Continuous coordinates of the output pixel centres: u (1×1×W), v (1×H×1)."""
    u = torch.arange(w, device=device, dtype=torch.float32).add_(0.5).view(1, 1, w)
    v = torch.arange(h, device=device, dtype=torch.float32).add_(0.5).view(1, h, 1)
    return u, v


def _nearest(x: Tensor, src_u: Tensor, src_v: Tensor, fill: int) -> Tensor:
    """Sample ``x`` at continuous source points (N×H×W each) by flooring; outside → fill."""
    n, c, h, w = x.shape
    iu, iv = src_u.floor().long(), src_v.floor().long()
    inside = (iu >= 0) & (iu < w) & (iv >= 0) & (iv < h)
    flat = (iv.clamp(0, h - 1) * w + iu.clamp(0, w - 1)).view(n, 1, h * w).expand(n, c, h * w)
    vals = x.reshape(n, c, h * w).gather(2, flat).view(n, c, h, w)
    return torch.where(inside.unsqueeze(1), vals, torch.full((), fill, dtype=x.dtype, device=x.device))


def translate(x: Tensor, shift: Tensor | float, axis: str, fill: int = FILL) -> Tensor:
    """Pillow's translate-by-affine: output pixel (u, v) reads the input at ``u + shift``
    (``axis="x"``) or ``v + shift`` (``axis="y"``); ``shift`` in pixels, per image."""
    n, _, h, w = x.shape
    s = _per_image(shift, n, x.device).view(n, 1, 1)
    u, v = _centres(h, w, x.device)
    u, v = u.expand(n, h, w), v.expand(n, h, w)
    if axis == "x":
        return _nearest(x, u + s, v, fill)
    if axis == "y":
        return _nearest(x, u, v + s, fill)
    raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")


def rotate(x: Tensor, degrees: Tensor | float, fill: int = FILL) -> Tensor:
    """Counter-clockwise rotation about the image centre by ``degrees`` (per image),
    nearest neighbour, uncovered pixels filled (``rotate_with_fill`` of the reference)."""
    n, _, h, w = x.shape
    rad = _per_image(degrees, n, x.device).view(n, 1, 1) * (math.pi / 180.0)
    cos, sin = torch.cos(rad), torch.sin(rad)
    u, v = _centres(h, w, x.device)
    du, dv = u - w / 2.0, v - h / 2.0
    return _nearest(x, cos * du - sin * dv + w / 2.0, sin * du + cos * dv + h / 2.0, fill)


def _cubic_weights(d: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cubic-convolution weights (a = −1, Pillow's transform kernel) of the taps at offsets
    −1, 0, 1, 2 for a fractional position ``d`` in [0, 1)."""
    def near(t: Tensor) -> Tensor:  # |t| ≤ 1: (a+2)|t|³ − (a+3)|t|² + 1 with a = −1
        return t * t * t - 2.0 * t * t + 1.0

    def far(t: Tensor) -> Tensor:  # 1 < |t| < 2: a|t|³ − 5a|t|² + 8a|t| − 4a with a = −1
        return -t * t * t + 5.0 * t * t - 8.0 * t + 4.0

    return far(d + 1.0), near(d), near(1.0 - d), far(2.0 - d)


def shear(x: Tensor, factor: Tensor | float, axis: str, fill: int = FILL) -> Tensor:
    """Pillow's affine shear ``(1, m, 0, 0, 1, 0)`` (``axis="x"``: output (u, v) reads the
    input at ``u + m·v``) or ``(1, 0, 0, m, 1, 0)`` (``axis="y"``), bicubic, per image ``m``."""
    if axis == "y":
        return shear(x.transpose(2, 3), factor, "x", fill).transpose(2, 3).contiguous()
    if axis != "x":
        raise ValueError(f"axis must be 'x' or 'y', got {axis!r}")
    n, c, h, w = x.shape
    m = _per_image(factor, n, x.device).view(n, 1, 1)
    u, v = _centres(h, w, x.device)
    src = u + m * v  # N×H×W, continuous
    inside = (src >= 0) & (src < w)
    pos = src - 0.5
    base = pos.floor()
    d = pos - base
    base = base.long()
    rows = x.float()
    out = torch.zeros(n, c, h, w, device=x.device)
    for offset, weight in zip((-1, 0, 1, 2), _cubic_weights(d)):
        idx = (base + offset).clamp(0, w - 1).unsqueeze(1).expand(n, c, h, w)
        out += weight.unsqueeze(1) * rows.gather(3, idx)
    out = out.clamp_(0.0, 255.0).floor_().to(torch.uint8)
    return torch.where(inside.unsqueeze(1), out, torch.full((), fill, dtype=x.dtype, device=x.device))


# -- the chain ---------------------------------------------------------------------------

@dataclass(frozen=True)
class JDADraw:
    """The random decisions for one batch: ``apply`` (ops × batch, bool) and ``sign``
    (ops × batch, ±1.0), both on the CPU."""

    apply: Tensor
    sign: Tensor


def sample_draw(batch: int, prob: float, gen: torch.Generator) -> JDADraw:
    """Draw the decisions of all operations for ``batch`` images from ``gen`` (CPU)."""
    apply = torch.rand(len(OPS), batch, generator=gen) < prob
    sign = torch.randint(0, 2, (len(OPS), batch), generator=gen).to(torch.float64).mul_(2).sub_(1)
    return JDADraw(apply=apply, sign=sign)


def apply_op(op: str, x: Tensor, level: int, sign: Tensor) -> Tensor:
    """Operation ``op`` at ``level`` on every image of ``x``, with per-image signs
    (a CPU float64 vector of ±1; ignored by unsigned operations)."""
    mag = magnitude(op, level)
    h, w = x.shape[2:]
    if op == "autocontrast":
        return autocontrast(x)
    if op == "equalize":
        return equalize(x)
    if op == "invert":
        return invert(x)
    if op == "posterize":
        return posterize(x, int(mag))
    if op == "solarize":
        return solarize(x, mag)
    if op == "rotate":
        return rotate(x, mag)
    if op in ENHANCE_OPS:
        factor = 1.0 + mag * sign
        return {"contrast": contrast, "brightness": brightness, "sharpness": sharpness, "color": color}[op](x, factor)
    if op in ("shear_x", "shear_y"):
        return shear(x, mag * sign, op[-1])
    if op == "translate_x":
        return translate(x, mag * w * sign, "x")
    if op == "translate_y":
        return translate(x, mag * h * sign, "y")
    raise ValueError(f"unknown JDA operation {op!r}")


def apply_chain(x: Tensor, draw: JDADraw, levels: Sequence[int]) -> Tensor:
    """Apply the 14 operations in order, each to the images ``draw.apply`` selects."""
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"JDA expects a uint8 N×C×H×W batch, got {x.dtype} {tuple(x.shape)}")
    levels = expand_levels(levels)
    out = x.clone()
    for k, op in enumerate(OPS):
        if is_identity(op, levels[k]):
            continue
        rows = draw.apply[k].nonzero().view(-1)  # CPU: no device sync
        if rows.numel() == 0:
            continue
        if rows.numel() == out.shape[0]:
            out = apply_op(op, out, levels[k], draw.sign[k])
            continue
        rows_dev = rows.to(out.device, non_blocking=True)
        sub = apply_op(op, out.index_select(0, rows_dev), levels[k], draw.sign[k, rows])
        out.index_copy_(0, rows_dev, sub)
    return out


def jda(x: Tensor, gen: torch.Generator, prob: float = CIFAR100_PROB,
        levels: Sequence[int] = CIFAR100_LEVELS) -> Tensor:
    """The augmented view of a uint8 batch: draw the decisions from ``gen``, apply the chain."""
    return apply_chain(x, sample_draw(x.shape[0], prob, gen), levels)


def interleave_views(original: Tensor, augmented: Tensor) -> Tensor:
    """Rows ``[orig_0, aug_0, orig_1, aug_1, …]`` (the reference's layout: even rows
    original, odd rows augmented)."""
    if original.shape != augmented.shape:
        raise ValueError(f"views differ in shape: {tuple(original.shape)} vs {tuple(augmented.shape)}")
    return torch.stack((original, augmented), dim=1).reshape(-1, *original.shape[1:])
