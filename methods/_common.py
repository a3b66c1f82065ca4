"""Pieces shared by several methods: the temperature-scaled KL divergence, connectors."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


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
