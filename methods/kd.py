"""``kd``: Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural Network", 2015.

Loss: ``ce_weight · CE(z_s, y) + kd_weight · T² · KL(softmax(z_t/T) ‖ softmax(z_s/T))``
(KL summed over classes, averaged over the batch). Defaults follow RepDistiller's
CIFAR-100 setting (T=4, ce 0.1, kd 0.9); mdistiller uses the same T with ce 0.1 and kd 0.9.
No deviation from the reference.
"""
from __future__ import annotations

from dataclasses import dataclass

from kdbench.method import Method, MethodConfig, Needs
from kdbench.registry import register_method
from kdbench.methods._common import kl_div_t


@register_method("kd")
class KD(Method):
    """Response-based distillation of temperature-softened logits."""

    name = "kd"
    version = 1

    @dataclass(frozen=True)
    class Config(MethodConfig):
        ce_weight: float = 0.1
        kd_weight: float = 0.9
        temperature: float = 4.0

    needs = Needs(teacher=True, logits=True)

    def loss(self, s, t, batch, step):
        return {"loss_kd": self.cfg.kd_weight * kl_div_t(s.logits, t.logits, self.cfg.temperature)}
