"""Pieces shared by several methods: the temperature-scaled KL divergence, pooling two
feature maps to a common size, and the spatial bridge conv of regressors/connectors."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def kl_div_t(student_logits: Tensor, teacher_logits: Tensor, temperature: float, t_squared: bool = True) -> Tensor:
    """KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over the batch,
    times T² (Hinton et al. 2015: keeps gradient magnitudes comparable across T).

    Computed in float32 whatever the autocast dtype (log-softmax of bf16 logits is too
    coarse for small KL values).
    """
    log_p_s = F.log_softmax(student_logits.float() / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits.float() / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (temperature**2) if t_squared else kl


def pool_to_common(f_s: Tensor, f_t: Tensor) -> tuple[Tensor, Tensor]:
    """Adaptive-average-pool the larger of two maps (per spatial dimension) to the smaller,
    as RepDistiller's AT, VID and FT do when student and teacher sizes differ."""
    size = (min(f_s.shape[2], f_t.shape[2]), min(f_s.shape[3], f_t.shape[3]))
    if tuple(f_s.shape[2:]) != size:
        f_s = F.adaptive_avg_pool2d(f_s, size)
    if tuple(f_t.shape[2:]) != size:
        f_t = F.adaptive_avg_pool2d(f_t, size)
    return f_s, f_t


def bridge_kind(s_hw: tuple[int, int], t_hw: tuple[int, int]) -> str | None:
    """How one conv maps a student map of spatial size ``s_hw`` onto a teacher map of
    ``t_hw`` (RepDistiller's ``ConvReg``, used by FitNets' regressor and AB's connector):
    ``"down2"`` (3×3 stride-2 conv) when the student map is exactly 2× larger, ``"up2"``
    (4×4 stride-2 transposed conv) when exactly 2× smaller, ``"valid"`` (a valid conv of
    kernel 1+s−t per dimension, 1×1 for equal sizes) when larger or equal, else ``None``."""
    (hs, ws), (ht, wt) = s_hw, t_hw
    if hs == 2 * ht and ws == 2 * wt:
        return "down2"
    if 2 * hs == ht and 2 * ws == wt:
        return "up2"
    if hs >= ht and ws >= wt:
        return "valid"
    return None


def bridge_conv(in_channels: int, out_channels: int, s_hw: tuple[int, int], t_hw: tuple[int, int],
                bias: bool = True) -> nn.Module:
    """The conv of :func:`bridge_kind` from ``in_channels`` to ``out_channels``."""
    kind = bridge_kind(s_hw, t_hw)
    if kind == "down2":
        return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=2, padding=1, bias=bias)
    if kind == "up2":
        return nn.ConvTranspose2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias)
    if kind == "valid":
        kernel = (1 + s_hw[0] - t_hw[0], 1 + s_hw[1] - t_hw[1])
        return nn.Conv2d(in_channels, out_channels, kernel_size=kernel, bias=bias)
    raise ValueError(f"no single conv maps a {s_hw} map onto a {t_hw} map (only exact 2x ratios or a larger "
                     f"student map)")
